//! The router on a loopback port over the real engine (fake executor), driven by raw HTTP:
//! every endpoint, streaming and not, the error cases, auth, 429/503, client disconnects,
//! and the reasoning and tool-call paths.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Content, reasoning and tool calls put together from chat chunks of choice `index`.
#[derive(Debug, Default, PartialEq)]
struct Assembled {
    content: String,
    reasoning: String,
    /// (id, name, arguments)
    calls: Vec<(String, String, String)>,
    finish: Option<String>,
}

/// With `parsed`, tags must not reach the content.
fn assemble_with(chunks: &[Value], index: usize, parsed: bool) -> Assembled {
    let mut a = Assembled::default();
    for c in chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        for ch in c["choices"].as_array().into_iter().flatten() {
            if ch["index"] != index {
                continue;
            }
            let d = &ch["delta"];
            if let Some(t) = d["content"].as_str() {
                assert!(
                    !parsed || !(t.contains("<tool_call>") || t.contains("think>")),
                    "tag in content: {t:?}"
                );
                a.content.push_str(t);
            }
            if let Some(t) = d["reasoning_content"].as_str() {
                assert_eq!(d["reasoning"], d["reasoning_content"]);
                a.reasoning.push_str(t);
            }
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().unwrap_or(99) as usize;
                if i == a.calls.len() {
                    // A call starts with its id, type and name.
                    assert_eq!(tc["type"], "function", "{tc}");
                    let id = tc["id"].as_str().unwrap_or_default().to_string();
                    assert!(id.starts_with("chatcmpl-tool-"), "{tc}");
                    let name = tc["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    a.calls.push((id, name, String::new()));
                } else {
                    assert!(
                        tc.get("id").is_none() && tc["function"].get("name").is_none(),
                        "{tc}"
                    );
                }
                if let Some(args) = tc["function"]["arguments"].as_str() {
                    a.calls[i].2.push_str(args);
                }
            }
            if let Some(f) = ch["finish_reason"].as_str() {
                assert!(a.finish.is_none(), "two finish reasons");
                a.finish = Some(f.to_string());
            }
        }
    }
    a
}

fn assemble(chunks: &[Value], index: usize) -> Assembled {
    assemble_with(chunks, index, true)
}

async fn completion(addr: &str, body: Value) -> Value {
    let r = post(addr, "/v1/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_shapes_ids_and_usage() {
    let srv = start(Opts::default()).await;
    let a = srv.addr.as_str();
    let r = post(
        a,
        "/v1/completions",
        &json!({"model": "qwen3-test", "prompt": "#script:plain#", "max_tokens": 50}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    assert!(
        r.header("x-request-id")
            .is_some_and(|id| id.starts_with("req-")),
        "{}",
        r.headers
    );
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().is_some_and(|s| s.starts_with("cmpl-")));
    assert_eq!(v["model"], "qwen3-test");
    assert!(v["created"].as_u64().is_some());
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["text"], script("plain"));
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(c["logprobs"], Value::Null);
    let prompt_tokens = tokenizer()
        .encode("#script:plain#", true)
        .map(|e| e.len())
        .unwrap_or(0);
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    // The script and <|im_end|>, which is not shown.
    assert_eq!(v["usage"]["completion_tokens"], script_ids("plain").len());
    assert_eq!(
        v["usage"]["total_tokens"].as_u64(),
        Some(prompt_tokens as u64 + script_ids("plain").len() as u64)
    );
    assert!(v["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());

    // The client's request id comes back; the alias is served under its own name.
    let r = request(
        a,
        "POST",
        "/v1/completions",
        &[("X-Request-Id", "my-id-42")],
        json!({"model": "alias", "prompt": "x", "max_tokens": 2})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(r.header("x-request-id").as_deref(), Some("my-id-42"));
    assert_eq!(r.json()["model"], "alias");
    assert_eq!(r.json()["choices"][0]["finish_reason"], "length");
    assert_eq!(r.json()["usage"]["completion_tokens"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn completion_prompt_forms_n_echo_stop_and_logprobs() {
    let srv = start(Opts::default()).await;
    let a = srv.addr.as_str();
    // Two prompts × n=2: choices in prompt-major order.
    let v = completion(
        a,
        json!({"prompt": ["Hello", "#script:plain#"], "max_tokens": 30, "n": 2, "seed": 7}),
    )
    .await;
    let choices = v["choices"].as_array().cloned().unwrap_or_default();
    assert_eq!(choices.len(), 4);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    assert_eq!(choices[2]["text"], script("plain"));
    assert_eq!(choices[3]["text"], script("plain"));
    let hello = tokenizer()
        .encode("Hello", true)
        .map(|e| e.len())
        .unwrap_or(0);
    let plain = tokenizer()
        .encode("#script:plain#", true)
        .map(|e| e.len())
        .unwrap_or(0);
    assert_eq!(v["usage"]["prompt_tokens"], hello + plain);

    // Token ids give what the text gives.
    let ids = post(a, "/tokenize", &json!({"prompt": "#script:plain#"}))
        .await
        .json()["tokens"]
        .clone();
    let by_ids = completion(a, json!({"prompt": ids, "max_tokens": 30})).await;
    assert_eq!(by_ids["choices"][0]["text"], script("plain"));
    let lists = completion(a, json!({"prompt": [ids, [9707]], "max_tokens": 3})).await;
    assert_eq!(lists["choices"].as_array().map(Vec::len), Some(2));

    // echo: the prompt, then the completion.
    let v = completion(
        a,
        json!({"prompt": "#script:plain#", "max_tokens": 30, "echo": true}),
    )
    .await;
    assert_eq!(
        v["choices"][0]["text"],
        format!("#script:plain#{}", script("plain"))
    );
    let v = completion(a, json!({"prompt": ids, "max_tokens": 30, "echo": true})).await;
    assert_eq!(
        v["choices"][0]["text"],
        format!("#script:plain#{}", script("plain"))
    );

    // stop strings end the text before them; vLLM's stop_reason says which.
    let v = completion(
        a,
        json!({"prompt": "#script:stop#", "max_tokens": 30, "stop": ["STOP", "zzz"]}),
    )
    .await;
    assert_eq!(v["choices"][0]["text"], "one two three ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["stop_reason"], "STOP");
    let v = completion(a, json!({"prompt": "#script:stop#", "max_tokens": 30, "stop": "STOP", "include_stop_str_in_output": true})).await;
    assert_eq!(v["choices"][0]["text"], "one two three STOP");

    // logprobs: one entry per token, top alternatives, text offsets.
    let v = completion(
        a,
        json!({"prompt": "#script:stop#", "max_tokens": 4, "logprobs": 2}),
    )
    .await;
    let lp = &v["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().cloned().unwrap_or_default();
    assert_eq!(tokens.len(), 4);
    assert_eq!(lp["token_logprobs"].as_array().map(Vec::len), Some(4));
    assert!(lp["token_logprobs"][0].is_f64());
    let top = lp["top_logprobs"][0]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!((1..=3).contains(&top.len()), "{top:?}");
    assert!(top.contains_key(tokens[0].as_str().unwrap_or("?")));
    let joined: String = tokens.iter().filter_map(Value::as_str).collect();
    assert_eq!(joined, v["choices"][0]["text"].as_str().unwrap_or(""));
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_streaming() {
    let srv = start(Opts::default()).await;
    let a = srv.addr.as_str();
    let whole = completion(a, json!({"prompt": "#script:plain#", "max_tokens": 30})).await;
    let r = post(a, "/v1/completions", &json!({"prompt": "#script:plain#", "max_tokens": 30, "stream": true, "stream_options": {"include_usage": true}})).await;
    assert!(r.header("x-request-id").is_some());
    let chunks = r.chunks();
    let (usage, rest) = chunks.split_last().unwrap_or_else(|| panic!("no chunks"));
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);
    let mut text = String::new();
    for (i, c) in rest.iter().enumerate() {
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["usage"], Value::Null, "{c}");
        assert!(c.get("usage").is_some());
        text.push_str(c["choices"][0]["text"].as_str().unwrap_or(""));
        let finish = &c["choices"][0]["finish_reason"];
        assert_eq!(finish.is_null(), i + 1 < rest.len(), "{c}");
    }
    assert_eq!(text, script("plain"));
    assert_eq!(
        rest.last()
            .map(|c| c["choices"][0]["finish_reason"].clone()),
        Some(json!("stop"))
    );

    // Without include_usage there is no usage at all; echo comes first; n choices interleave.
    let r = post(a, "/v1/completions", &json!({"prompt": "#script:plain#", "max_tokens": 30, "stream": true, "n": 2, "echo": true})).await;
    let chunks = r.chunks();
    let mut texts = [String::new(), String::new()];
    let mut finished = [0, 0];
    for c in &chunks {
        assert!(c.get("usage").is_none(), "{c}");
        let i = c["choices"][0]["index"].as_u64().unwrap_or(9) as usize;
        texts[i].push_str(c["choices"][0]["text"].as_str().unwrap_or(""));
        if !c["choices"][0]["finish_reason"].is_null() {
            finished[i] += 1;
        }
    }
    let want = format!("#script:plain#{}", script("plain"));
    assert_eq!(texts, [want.clone(), want]);
    assert_eq!(finished, [1, 1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_without_parsers() {
    let srv = start(Opts::default()).await;
    let a = srv.addr.as_str();
    let body = json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "#script:think#"}], "logprobs": true, "top_logprobs": 2});
    let r = post(a, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().is_some_and(|s| s.starts_with("chatcmpl-")));
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    // No reasoning parser: the think block is content.
    assert_eq!(c["message"]["content"], script("think"));
    assert!(c["message"].get("reasoning_content").is_none());
    assert!(c["message"].get("tool_calls").is_none());
    assert_eq!(c["finish_reason"], "stop");
    let lp = c["logprobs"]["content"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        lp.len(),
        v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize
    );
    assert_eq!(lp[0]["top_logprobs"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        lp[0]["bytes"].as_array().map(Vec::len),
        lp[0]["token"].as_str().map(str::len)
    );
    // The prompt is the template's rendering.
    let rendered = post(a, "/tokenize", &json!({"messages": body["messages"]}))
        .await
        .json();
    assert_eq!(v["usage"]["prompt_tokens"], rendered["count"]);

    // Streaming: the role first, then content adding up to the same text.
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": user("#script:think#"), "stream": true, "n": 2}),
    )
    .await;
    let chunks = r.chunks();
    for i in 0..2 {
        let first = chunks
            .iter()
            .find(|c| c["choices"][0]["index"] == i)
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let got = assemble_with(&chunks, i, false);
        assert_eq!(got.content, script("think"));
        assert_eq!(got.reasoning, "");
        assert_eq!(got.finish.as_deref(), Some("stop"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_reasoning_and_tool_calls() {
    let srv = start(Opts {
        reasoning: true,
        tools: true,
        auto_tools: true,
        ..Opts::default()
    })
    .await;
    let a = srv.addr.as_str();
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {}}}
    ]);
    let body = json!({"messages": user("Weather in Paris? #script:tool#"), "tools": tools});
    let v = post(a, "/v1/chat/completions", &body).await.json();
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls", "{v}");
    let m = &c["message"];
    assert_eq!(m["reasoning_content"], "\nThe user wants the weather.\n");
    assert_eq!(m["reasoning"], m["reasoning_content"]);
    assert_eq!(m["content"], "\n\nLet me check.\n");
    let calls = m["tool_calls"].as_array().cloned().unwrap_or_default();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["type"], "function");
    assert!(calls[0]["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("chatcmpl-tool-")));
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    // As vLLM: json.dumps spacing.
    assert_eq!(
        calls[0]["function"]["arguments"],
        r#"{"city": "Paris", "unit": "celsius"}"#
    );
    assert_eq!(calls[1]["function"]["name"], "get_time");

    // The same, streamed: name first, then arguments adding up to the same text.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let got = assemble(&post(a, "/v1/chat/completions", &sbody).await.chunks(), 0);
    assert_eq!(got.reasoning, "\nThe user wants the weather.\n");
    assert_eq!(got.content, "\n\nLet me check.\n");
    let names: Vec<(&str, &str)> = got
        .calls
        .iter()
        .map(|(_, n, a)| (n.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("get_weather", r#"{"city": "Paris", "unit": "celsius"}"#),
            ("get_time", r#"{"tz": "Europe/Paris"}"#)
        ]
    );
    assert_eq!(got.finish.as_deref(), Some("tool_calls"));

    // parallel_tool_calls: false keeps the first call.
    let mut one = body.clone();
    one["parallel_tool_calls"] = json!(false);
    let v = post(a, "/v1/chat/completions", &one).await.json();
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // tool_choice "none": the tools are shown to the model, but calls stay text.
    let mut none = body.clone();
    none["tool_choice"] = json!("none");
    let v = post(a, "/v1/chat/completions", &none).await.json();
    let m = &v["choices"][0]["message"];
    assert!(m.get("tool_calls").is_none());
    assert!(m["content"]
        .as_str()
        .is_some_and(|c| c.contains("<tool_call>")));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // Reasoning without tools; streamed reasoning matches.
    let v = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": user("#script:think#")}),
    )
    .await
    .json();
    assert_eq!(
        v["choices"][0]["message"]["reasoning_content"],
        "\nHmm, 2<3 is true.\n"
    );
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "\n\nYes, 2 is less than 3."
    );
    let got = assemble(
        &post(
            a,
            "/v1/chat/completions",
            &json!({"messages": user("#script:think#"), "stream": true}),
        )
        .await
        .chunks(),
        0,
    );
    assert_eq!(
        (got.reasoning.as_str(), got.content.as_str()),
        ("\nHmm, 2<3 is true.\n", "\n\nYes, 2 is less than 3.")
    );

    // enable_thinking=false: the template closes the think block, the output is all content.
    let v = post(a, "/v1/chat/completions", &json!({"messages": user("#script:plain#"), "chat_template_kwargs": {"enable_thinking": false}})).await.json();
    assert_eq!(v["choices"][0]["message"]["content"], script("plain"));
    assert!(v["choices"][0]["message"]
        .get("reasoning_content")
        .is_none());

    // An earlier assistant turn with a tool call (arguments as JSON text) and its result.
    let history = json!([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 21}"},
        {"role": "user", "content": [{"type": "text", "text": "Thanks"}, {"type": "text", "text": "#script:plain#"}]}
    ]);
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": history, "tools": tools}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        script("plain")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_streamed_content_matches_whole() {
    let srv = start(Opts::default()).await;
    let a = srv.addr.as_str();
    let r = post(a, "/v1/chat/completions", &json!({"messages": user("#script:plain#"), "stream": true, "stream_options": {"include_usage": true}, "logprobs": true})).await;
    let chunks = r.chunks();
    let usage = chunks.last().cloned().unwrap_or_default();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["completion_tokens"],
        script_ids("plain").len()
    );
    let mut content = String::new();
    let mut lps = 0;
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["usage"], Value::Null);
        content.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        lps += c["choices"][0]["logprobs"]["content"]
            .as_array()
            .map_or(0, Vec::len);
    }
    assert_eq!(content, script("plain"));
    assert_eq!(lps, script_ids("plain").len());
}

#[tokio::test(flavor = "multi_thread")]
async fn error_cases() {
    let srv = start(Opts {
        max_model_len: 64,
        max_body_bytes: 4096,
        ..Opts::default()
    })
    .await;
    let a = srv.addr.as_str();
    let msgs = user("hi");
    let e = request(a, "POST", "/v1/completions", &[], b"{not json")
        .await
        .error(400);
    assert_eq!(e["type"], "BadRequestError");
    request(a, "POST", "/v1/chat/completions", &[], b"[1, 2]")
        .await
        .error(400);
    let cases = [
        (
            "/v1/completions",
            json!({"prompt": "x", "temperature": 5}),
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "top_p": 0}),
            "top_p",
        ),
        ("/v1/completions", json!({"prompt": "x", "n": 0}), "n"),
        (
            "/v1/completions",
            json!({"prompt": "x", "logprobs": 21}),
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 0}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "suffix": "y"}),
            "suffix",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "best_of": 3}),
            "best_of",
        ),
        ("/v1/completions", json!({"prompt": []}), "prompt"),
        ("/v1/completions", json!({}), "prompt"),
        (
            "/v1/completions",
            json!({"prompt": "x", "stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hello ".repeat(80)}),
            "prompt",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 1000}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": 5, "min_tokens": 6}),
            "min_tokens",
        ),
        ("/v1/chat/completions", json!({"messages": []}), "messages"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]}),
            "messages",
        ),
        // Constraints that do not compile are refused before anything is scheduled.
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}}),
            "response_format",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "guided_regex": "(unclosed"}),
            "guided_regex",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "structured_outputs": {"grammar": "start: nowhere"}}),
            "structured_outputs.grammar",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}}}}], "tool_choice": "required"}),
            "tools",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "tool_choice": "auto"}),
            "tool_choice",
        ),
        // Tools without tool_choice mean "auto", which this server was not started for.
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msgs, "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": user(&"hello ".repeat(80))}),
            "messages",
        ),
    ];
    for (path, body, param) in cases {
        let e = post(a, path, &body).await.error(400);
        assert_eq!(e["param"], param, "{body}: {e}");
    }
    let e = post(
        a,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1000}),
    )
    .await
    .error(400);
    assert_eq!(e["code"], "context_length_exceeded");
    let e = post(
        a,
        "/v1/completions",
        &json!({"model": "nope", "prompt": "x"}),
    )
    .await
    .error(404);
    assert_eq!(
        (e["code"].as_str(), e["type"].as_str()),
        (Some("model_not_found"), Some("NotFoundError"))
    );
    post(
        a,
        "/v1/chat/completions",
        &json!({"model": "nope", "messages": msgs}),
    )
    .await
    .error(404);
    // Out-of-vocabulary ids come back from the engine as 400.
    post(a, "/v1/completions", &json!({"prompt": [999_999_999u32]}))
        .await
        .error(400);
    post(
        a,
        "/v1/completions",
        &json!({"prompt": "x", "logit_bias": {"999999999": 5}}),
    )
    .await
    .error(400);
    post(a, "/detokenize", &json!({"tokens": [999_999_999u32]}))
        .await
        .error(400);
    post(a, "/tokenize", &json!({})).await.error(400);
    // Routes and methods.
    let e = get(a, "/v2/nothing").await.error(404);
    assert_eq!(e["code"], 404);
    get(a, "/v1/completions").await.error(405);
    // Bodies over the limit.
    let big = format!("{{\"prompt\": \"{}\"}}", "x".repeat(8000));
    request(a, "POST", "/v1/completions", &[], big.as_bytes())
        .await
        .error(413);
    // The server is still fine.
    assert_eq!(get(a, "/health").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_template_no_chat() {
    let srv = start(Opts {
        template: false,
        ..Opts::default()
    })
    .await;
    post(
        &srv.addr,
        "/v1/chat/completions",
        &json!({"messages": user("hi")}),
    )
    .await
    .error(400);
    assert_eq!(
        post(
            &srv.addr,
            "/v1/completions",
            &json!({"prompt": "hi", "max_tokens": 1})
        )
        .await
        .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key() {
    let srv = start(Opts {
        api_key: Some("sekrit".into()),
        ..Opts::default()
    })
    .await;
    let a = srv.addr.as_str();
    let e = get(a, "/v1/models").await.error(401);
    assert_eq!(e["code"], "invalid_api_key");
    request(
        a,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer wrong")],
        b"",
    )
    .await
    .error(401);
    request(a, "GET", "/v1/models", &[("Authorization", "sekrit")], b"")
        .await
        .error(401);
    let body = json!({"prompt": "x", "max_tokens": 1}).to_string();
    request(a, "POST", "/v1/completions", &[], body.as_bytes())
        .await
        .error(401);
    let ok = request(
        a,
        "POST",
        "/v1/completions",
        &[("Authorization", "Bearer sekrit")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        request(
            a,
            "GET",
            "/v1/models",
            &[("Authorization", "Bearer sekrit")],
            b""
        )
        .await
        .status,
        200
    );
    // Open routes, as vLLM.
    assert_eq!(get(a, "/health").await.status, 200);
    assert_eq!(get(a, "/metrics").await.status, 200);
    assert_eq!(get(a, "/version").await.status, 200);
    assert_eq!(
        post(a, "/tokenize", &json!({"prompt": "x"})).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn models_version_tokenize_detokenize_metrics() {
    let srv = start(Opts::default()).await;
    let a = srv.addr.as_str();
    let m = get(a, "/v1/models").await.json();
    assert_eq!(m["object"], "list");
    let ids: Vec<&str> = m["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, ["qwen3-test", "alias"]);
    assert_eq!(m["data"][0]["object"], "model");
    assert_eq!(m["data"][0]["owned_by"], "qwen3-serve");
    assert_eq!(m["data"][0]["max_model_len"], 512);
    assert_eq!(
        get(a, "/version").await.json()["version"],
        env!("CARGO_PKG_VERSION")
    );
    let h = get(a, "/health").await;
    assert_eq!((h.status, h.body.as_str()), (200, ""));

    let t = post(
        a,
        "/tokenize",
        &json!({"prompt": "Hello world", "return_token_strs": true}),
    )
    .await
    .json();
    assert_eq!(t["count"], 2);
    assert_eq!(t["max_model_len"], 512);
    assert_eq!(t["token_strs"], json!(["Hello", "Ġworld"]));
    let d = post(a, "/detokenize", &json!({"tokens": t["tokens"]}))
        .await
        .json();
    assert_eq!(d["prompt"], "Hello world");
    // Messages go through the template (with the generation prompt by default).
    let t = post(a, "/tokenize", &json!({"messages": user("hi")}))
        .await
        .json();
    let text = post(a, "/detokenize", &json!({"tokens": t["tokens"]}))
        .await
        .json();
    assert_eq!(
        text["prompt"],
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    let t = post(
        a,
        "/tokenize",
        &json!({"messages": user("hi"), "add_generation_prompt": false}),
    )
    .await
    .json();
    let text = post(a, "/detokenize", &json!({"tokens": t["tokens"]}))
        .await
        .json();
    assert_eq!(text["prompt"], "<|im_start|>user\nhi<|im_end|>\n");

    completion(a, json!({"prompt": "#script:plain#", "max_tokens": 30})).await;
    completion(a, json!({"prompt": "x", "max_tokens": 3})).await;
    let r = get(a, "/metrics").await;
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:num_preemptions_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:request_queue_time_seconds_sum",
    ] {
        assert!(
            r.body
                .contains(&format!("{name}{{model_name=\"qwen3-test\"")),
            "missing {name}"
        );
    }
    assert_eq!(
        metric(
            a,
            "vllm:request_success_total{model_name=\"qwen3-test\",finished_reason=\"stop\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            a,
            "vllm:request_success_total{model_name=\"qwen3-test\",finished_reason=\"length\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(a, "vllm:generation_tokens_total").await,
        (script_ids("plain").len() + 3) as f64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_names_every_route() {
    let srv = start(Opts::default()).await;
    let r = get(&srv.addr, "/openapi.json").await;
    assert_eq!(r.status, 200);
    let doc: Value = serde_json::from_str(&r.body).expect("valid JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')));
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/v1/completions", "post"),
        ("/v1/chat/completions", "post"),
        ("/v1/models", "get"),
        ("/health", "get"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/version", "get"),
        ("/tokenize", "post"),
        ("/detokenize", "post"),
        ("/metrics", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path}"
        );
    }
    let errors = &paths["/v1/completions"]["post"]["responses"];
    for status in ["400", "401", "404", "408", "413", "415", "429", "503"] {
        assert!(
            errors.get(status).is_some(),
            "completions documents {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_full_is_429_and_a_dead_engine_503() {
    let srv = start(Opts {
        max_num_seqs: 1,
        max_waiting: 1,
        ..Opts::default()
    })
    .await;
    srv.control
        .step_delay_us
        .store(2_000, std::sync::atomic::Ordering::Relaxed);
    let body = json!({"prompt": "x", "max_tokens": 100, "ignore_eos": true});
    let reqs = (0..4).map(|_| {
        let addr = srv.addr.clone();
        let body = body.clone();
        tokio::spawn(async move { post(&addr, "/v1/completions", &body).await })
    });
    let mut statuses = Vec::new();
    for r in futures::future::join_all(reqs).await {
        let r = r.unwrap_or_else(|e| panic!("{e}"));
        if r.status == 429 {
            assert_eq!(r.error(429)["type"], "RateLimitError");
        }
        statuses.push(r.status);
    }
    assert!(
        statuses.contains(&429) && statuses.contains(&200),
        "{statuses:?}"
    );
    srv.control
        .step_delay_us
        .store(0, std::sync::atomic::Ordering::Relaxed);

    // An executor fault fails the request in flight with a 500, not the server.
    srv.control
        .fail_next
        .store(true, std::sync::atomic::Ordering::Release);
    post(
        &srv.addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 3}),
    )
    .await
    .error(500);
    assert_eq!(get(&srv.addr, "/health").await.status, 200);
    // Mid-stream, the fault is an error event, then [DONE].
    srv.control
        .fail_next
        .store(true, std::sync::atomic::Ordering::Release);
    let r = post(
        &srv.addr,
        "/v1/chat/completions",
        &json!({"messages": user("x"), "max_tokens": 3, "stream": true}),
    )
    .await;
    let chunks = r.chunks();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().cloned().unwrap_or_default();
    assert!(last["error"]["message"].is_string(), "{last}");

    let engine = srv.engine.clone();
    tokio::task::spawn_blocking(move || engine.shutdown(Duration::from_millis(10)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let e = get(&srv.addr, "/health").await.error(503);
    assert_eq!(e["type"], "ServiceUnavailableError");
    post(&srv.addr, "/v1/completions", &json!({"prompt": "x"}))
        .await
        .error(503);
    post(
        &srv.addr,
        "/v1/chat/completions",
        &json!({"messages": user("x")}),
    )
    .await
    .error(503);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_mid_stream_aborts_its_request() {
    let srv = start(Opts::default()).await;
    srv.control
        .step_delay_us
        .store(1_000, std::sync::atomic::Ordering::Relaxed);
    for path in ["/v1/completions", "/v1/chat/completions"] {
        let body = if path == "/v1/completions" {
            json!({"prompt": "x", "max_tokens": 400, "ignore_eos": true, "stream": true})
        } else {
            json!({"messages": user("x"), "max_tokens": 400, "ignore_eos": true, "stream": true})
        }
        .to_string();
        let mut s = tokio::net::TcpStream::connect(&srv.addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let h = head(&srv.addr, "POST", path, &[], body.len());
        s.write_all(format!("{h}{body}").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap_or(0);
        assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
        let t0 = Instant::now();
        while srv.engine.stats().num_running == 0 {
            assert!(t0.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(s);
        let t0 = Instant::now();
        while srv.engine.stats().num_running + srv.engine.stats().num_waiting > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the request was not aborted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(srv.engine.stats().generation_tokens_total < 400 * 2);
    }
    // Non-streaming requests are aborted too when their client goes away.
    let body = json!({"prompt": "x", "max_tokens": 400, "ignore_eos": true}).to_string();
    let mut s = tokio::net::TcpStream::connect(&srv.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let h = head(&srv.addr, "POST", "/v1/completions", &[], body.len());
    s.write_all(format!("{h}{body}").as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    while srv.engine.stats().num_running == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(s);
    let t0 = Instant::now();
    while srv.engine.stats().num_running > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the request was not aborted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_open_streams_cleanly() {
    let srv = start(Opts::default()).await;
    let a = srv.addr.clone();
    let pending = tokio::spawn(async move {
        post(
            &a,
            "/v1/completions",
            &json!({"prompt": "#script:plain#", "max_tokens": 30, "stream": true}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Stops accepting, then the engine: the open stream ends with its finish and [DONE].
    drop(srv);
    let r = pending.await.unwrap_or_else(|e| panic!("{e}"));
    let chunks = r.chunks();
    let last = chunks.last().cloned().unwrap_or_default();
    assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");
}
