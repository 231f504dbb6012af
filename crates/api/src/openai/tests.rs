//! Request parsing and validation, and response shapes, against what OpenAI and vLLM accept.

use super::*;
use serde_json::json;

/// Parsed and checked against the default `--max-logprobs`, as the route does.
fn completion(v: Json) -> Result<CompletionRequest, ApiError> {
    let r = CompletionRequest::parse(v.to_string().as_bytes())?;
    r.check_limits(MAX_LOGPROBS).map(|()| r)
}

fn chat(v: Json) -> Result<ChatRequest, ApiError> {
    let r = ChatRequest::parse(v.to_string().as_bytes())?;
    r.check_limits(MAX_LOGPROBS).map(|()| r)
}

fn param_of(r: Result<impl std::fmt::Debug, ApiError>) -> Option<String> {
    match r {
        Ok(v) => panic!("accepted: {v:?}"),
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400, "{e:?}");
            e.param
        }
    }
}

#[test]
fn completion_prompt_forms_and_defaults() {
    let r = completion(json!({"prompt": "hi", "model": null, "unknown_field": 1}));
    let r = r.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(r.prompt, Prompt::Text("hi".into()));
    assert_eq!(r.max_tokens, 16);
    assert_eq!(r.sampling, SamplingRequest::default());
    for (p, want) in [
        (
            json!(["a", "b"]),
            Prompt::Texts(vec!["a".into(), "b".into()]),
        ),
        (json!([1, 2]), Prompt::Ids(vec![1, 2])),
        (
            json!([[1], [2, 3]]),
            Prompt::IdLists(vec![vec![1], vec![2, 3]]),
        ),
    ] {
        assert_eq!(completion(json!({"prompt": p})).map(|r| r.prompt), Ok(want));
    }
    for bad in [
        json!([]),
        json!([[]]),
        json!([1, "a"]),
        json!({"a": 1}),
        json!([-1]),
        json!(5),
    ] {
        assert_eq!(
            param_of(completion(json!({"prompt": bad}))).as_deref(),
            Some("prompt")
        );
    }
    assert_eq!(param_of(completion(json!({}))).as_deref(), Some("prompt"));
}

#[test]
fn chat_validates_as_completions_and_integral_floats_are_integers() {
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let with = |extra: Json| {
        let mut v = json!({"messages": msgs});
        if let (Some(o), Json::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        chat(v)
    };
    for (extra, param) in [
        (json!({"echo": "yes"}), "echo"),
        (json!({"echo": true}), "echo"),
        (json!({"best_of": 1000000}), "best_of"),
        (json!({"best_of": "x"}), "best_of"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}),
            "tools",
        ),
        (
            json!({"chat_template_kwargs": {"enable_thinking": "x"}}),
            "chat_template_kwargs",
        ),
        (json!({"max_tokens": 4.5}), "max_tokens"),
    ] {
        assert_eq!(
            param_of(with(extra.clone())).as_deref(),
            Some(param),
            "{extra}"
        );
    }
    let r = with(
        json!({"max_tokens": 4.0, "n": 2.0, "echo": false, "best_of": 1,
        "chat_template_kwargs": {"enable_thinking": false}}),
    );
    assert_eq!(
        r.as_ref().map(|r| (r.max_tokens, r.sampling.n)),
        Ok((Some(4), 2))
    );
    assert_eq!(
        completion(json!({"prompt": "x", "max_tokens": 4.0})).map(|r| r.max_tokens),
        Ok(4)
    );
    // A float field still takes an integral value as a float.
    assert!(completion(json!({"prompt": "x", "temperature": 1.0})).is_ok());
}

#[test]
fn every_bad_field_names_itself() {
    let cases = [
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"temperature": -0.1}), "temperature"),
        (json!({"temperature": "hot"}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"top_p": 1.5}), "top_p"),
        (json!({"top_k": -2}), "top_k"),
        (json!({"min_p": 2}), "min_p"),
        (json!({"presence_penalty": 3}), "presence_penalty"),
        (json!({"frequency_penalty": -3}), "frequency_penalty"),
        (json!({"repetition_penalty": 0}), "repetition_penalty"),
        (json!({"n": 0}), "n"),
        (json!({"n": 1000}), "n"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": -5}), "max_tokens"),
        (json!({"logprobs": 21}), "logprobs"),
        (json!({"logit_bias": {"abc": 1}}), "logit_bias"),
        (json!({"logit_bias": {"5": 500}}), "logit_bias"),
        (json!({"stop": 5}), "stop"),
        (json!({"stop": ["a", 1]}), "stop"),
        (json!({"seed": 1.5}), "seed"),
        (
            json!({"stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (json!({"suffix": "x"}), "suffix"),
        (json!({"best_of": 2}), "best_of"),
        (json!({"prompt_logprobs": 21}), "prompt_logprobs"),
        (
            json!({"prompt_logprobs": 1, "stream": true}),
            "prompt_logprobs",
        ),
        (json!({"use_beam_search": true}), "use_beam_search"),
        (json!({"guided_json": 5}), "guided_json"),
        (json!({"guided_choice": []}), "guided_choice"),
        (json!({"guided_regex": ["x"]}), "guided_regex"),
        (
            json!({"structured_outputs": {"regex": "a", "choice": ["b"]}}),
            "structured_outputs",
        ),
        (
            json!({"structured_outputs": {"json": "{not json"}}),
            "structured_outputs.json",
        ),
        (
            json!({"guided_regex": "a", "response_format": {"type": "json_object"}}),
            "guided_regex",
        ),
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format",
        ),
        (json!({"stop_token_ids": "x"}), "stop_token_ids"),
    ];
    for (extra, param) in cases {
        let mut body = json!({"prompt": "x"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        assert_eq!(
            param_of(completion(body.clone())).as_deref(),
            Some(param),
            "{body}"
        );
    }
    assert!(matches!(
        CompletionRequest::parse(b"{not json"),
        Err(ApiError { param: None, .. })
    ));
    assert!(CompletionRequest::parse(b"[1]").is_err());
}

#[test]
fn accepted_values() {
    let r = completion(json!({
        "prompt": "x", "temperature": 0, "top_p": 1, "top_k": -1, "seed": -3, "n": 2,
        "stop": "END", "logit_bias": {"7": -100}, "best_of": 1, "stream": true,
        "stream_options": {"include_usage": true}, "response_format": {"type": "text"},
        "use_beam_search": false, "min_tokens": 2, "max_tokens": 5
    }))
    .unwrap_or_else(|e| panic!("{e:?}"));
    let s = &r.sampling;
    assert_eq!(s.seed, Some((-3i64) as u64));
    assert_eq!(s.stop, vec!["END".to_string()]);
    assert_eq!(s.logit_bias, vec![(7, -100.0)]);
    assert!(s.stream && s.include_usage);
    let e = s
        .engine_request(&SamplingDefaults::default(), Some(r.max_tokens), None)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(e.sampling.top_k, 0);
    assert_eq!(e.min_tokens, 2);
    let bad = s.engine_request(&SamplingDefaults::default(), Some(1), None);
    assert_eq!(param_of(bad).as_deref(), Some("min_tokens"));
}

#[test]
fn echo_logprobs_max_tokens_zero_and_prompt_logprobs() {
    // What lm-evaluation-harness sends for loglikelihoods, and the prompt-only form.
    for max_tokens in [0, 1] {
        let r = completion(json!({
            "prompt": [[1, 2, 3]], "echo": true, "logprobs": 1, "max_tokens": max_tokens,
            "temperature": 0
        }))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (r.max_tokens, r.logprobs, r.echo),
            (max_tokens, Some(1), true)
        );
    }
    let r = completion(json!({"prompt": "x", "prompt_logprobs": 20}))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(r.sampling.prompt_logprobs, Some(20));
    let e = r
        .sampling
        .engine_request(&SamplingDefaults::default(), Some(1), None)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(e.sampling.prompt_logprobs, Some(20));
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let r =
        chat(json!({"messages": msgs, "prompt_logprobs": 0})).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(r.sampling.prompt_logprobs, Some(0));
    // `max_tokens: 0` means the prompt alone, which only `echo` returns.
    assert_eq!(
        param_of(completion(json!({"prompt": "x", "max_tokens": 0}))).as_deref(),
        Some("max_tokens")
    );
}

#[test]
fn generation_defaults_fill_what_the_request_leaves_out() {
    let d = SamplingDefaults {
        temperature: Some(0.6),
        top_p: Some(0.95),
        top_k: Some(20),
        min_p: None,
        repetition_penalty: Some(1.1),
    };
    let r = completion(json!({"prompt": "x", "top_p": 0.5})).unwrap_or_else(|e| panic!("{e:?}"));
    let e = r
        .sampling
        .engine_request(&d, Some(3), Some(2))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(e.sampling.temperature, 0.6);
    assert_eq!(e.sampling.top_p, 0.5);
    assert_eq!(e.sampling.top_k, 20);
    assert_eq!(e.sampling.min_p, 0.0);
    assert_eq!(e.sampling.repetition_penalty, 1.1);
    assert_eq!(e.sampling.logprobs, Some(2));
    assert_eq!(e.max_tokens, Some(3));
    let e = SamplingRequest::default()
        .engine_request(&SamplingDefaults::default(), None, None)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!((e.sampling.temperature, e.sampling.top_p), (1.0, 1.0));
}

#[test]
fn chat_fields() {
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    let r = chat(json!({"messages": msgs, "max_tokens": 5, "max_completion_tokens": 7}))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(r.max_tokens, Some(7));
    assert_eq!(r.tool_choice, ToolChoice::None);
    assert!(r.add_generation_prompt);
    assert_eq!(r.logprobs, None);
    let r = chat(json!({"messages": msgs, "logprobs": true})).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(r.logprobs, Some(0));
    let r = chat(json!({"messages": msgs, "tools": tools})).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(r.tool_choice, ToolChoice::Auto);
    let r = chat(json!({"messages": msgs, "tools": tools, "tool_choice": {"type": "function", "function": {"name": "f"}}}))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(r.tool_choice, ToolChoice::Function("f".into()));
    let r = chat(json!({"messages": msgs, "tools": [], "tool_choice": "required"}))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!((r.tool_choice, r.tools), (ToolChoice::None, None));
    let cases = [
        (json!({"messages": []}), "messages"),
        (json!({}), "messages"),
        (json!({"messages": [{"content": "x"}]}), "messages"),
        (
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            "messages",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            "messages",
        ),
        (json!({"messages": msgs, "top_logprobs": 2}), "top_logprobs"),
        (
            json!({"messages": msgs, "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            json!({"messages": msgs, "max_completion_tokens": 0}),
            "max_completion_tokens",
        ),
        (
            json!({"messages": msgs, "tool_choice": "auto"}),
            "tool_choice",
        ),
        (
            json!({"messages": msgs, "tools": tools, "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"messages": msgs, "tools": tools, "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "tool_choice",
        ),
        (
            json!({"messages": msgs, "tools": [{"type": "function"}]}),
            "tools",
        ),
        (
            json!({"messages": msgs, "response_format": {"type": "json_schema"}}),
            "response_format",
        ),
        (
            json!({"messages": msgs, "continue_final_message": true}),
            "continue_final_message",
        ),
        (
            json!({"messages": msgs, "chat_template": "{{ x }}"}),
            "chat_template",
        ),
        (
            json!({"messages": msgs, "chat_template_kwargs": 3}),
            "chat_template_kwargs",
        ),
    ];
    for (body, param) in cases {
        assert_eq!(
            param_of(chat(body.clone())).as_deref(),
            Some(param),
            "{body}"
        );
    }
}

#[test]
fn response_shapes() {
    let chunk = ChatCompletionChunk {
        id: "chatcmpl-1".into(),
        object: "chat.completion.chunk",
        created: 1,
        model: "m".into(),
        choices: vec![ChatChunkChoice {
            index: 0,
            delta: ChatDelta {
                tool_calls: vec![DeltaToolCall {
                    index: 0,
                    id: None,
                    kind: None,
                    function: DeltaFunctionCall {
                        name: None,
                        arguments: Some("{\"a\"".into()),
                    },
                }],
                ..ChatDelta::default()
            },
            logprobs: None,
            finish_reason: None,
            stop_reason: None,
            token_ids: None,
        }],
        usage: Some(None),
        prompt_token_ids: None,
    };
    assert_eq!(
        serde_json::to_value(&chunk).unwrap_or_default(),
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]},
            "logprobs": null, "finish_reason": null}], "usage": null})
    );
    assert_eq!(
        serde_json::to_value(Usage::new(3, 4, 1)).unwrap_or_default(),
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_tokens_details": {"cached_tokens": 1}})
    );
    assert_eq!(finite_logprob(f32::NEG_INFINITY), -9999.0);
}
