//! Structured outputs over HTTP (router, real engine, fake executor that samples only what
//! the mask allows): every field spelling reaches the engine as a constraint and comes back
//! valid, streaming and not, with n = 3; forced tool calls parse against their schema;
//! `parallel_tool_calls: false`; the constraint waits for `</think>` when thinking is on;
//! `return_token_ids`.

mod common;

use common::*;
use serde_json::{json, Value};

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "answer": {"type": "string", "maxLength": 5},
            "score": {"type": "integer", "minimum": 0, "maximum": 9},
            "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}
        },
        "required": ["answer", "score"],
        "additionalProperties": false
    })
}

fn valid(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let validator = jsonschema::validator_for(&schema()).expect("schema");
    assert!(validator.is_valid(&v), "{text}");
}

fn chat_texts(r: &Value) -> Vec<String> {
    r["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .map(|c| {
            c["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn chat_json_schema_and_json_object_validate_with_n_3() {
    let srv = start(Opts::default()).await;
    let rf = json!({"type": "json_schema", "json_schema": {"name": "a", "schema": schema(), "strict": true}});
    let r = post(&srv.addr, "/v1/chat/completions", &json!({
        "messages": user("json please"), "response_format": rf, "n": 3, "max_tokens": 120, "temperature": 1.0
    })).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let texts = chat_texts(&r.json());
    assert_eq!(texts.len(), 3);
    texts.iter().for_each(|t| valid(t));
    let r = post(&srv.addr, "/v1/chat/completions", &json!({
        "messages": user("any object"), "response_format": {"type": "json_object"}, "max_tokens": 200
    })).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Free keys and strings may run to max_tokens; what is finished is an object.
    let v = r.json();
    let c = &v["choices"][0];
    let t = c["message"]["content"].as_str().unwrap_or_default();
    assert!(t.starts_with('{'), "{t:?}");
    if c["finish_reason"] == "stop" {
        let v: Value = serde_json::from_str(t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
        assert!(v.is_object());
    }
}

#[tokio::test]
async fn streamed_constrained_chat_is_valid() {
    let srv = start(Opts::default()).await;
    let r = post(
        &srv.addr,
        "/v1/chat/completions",
        &json!({
            "messages": user("stream json"), "structured_outputs": {"json": schema()},
            "stream": true, "n": 3, "max_tokens": 120
        }),
    )
    .await;
    let mut texts = vec![String::new(); 3];
    for e in r.events().iter().filter(|e| *e != "[DONE]") {
        let c: Value = serde_json::from_str(e).expect("chunk");
        for ch in c["choices"].as_array().into_iter().flatten() {
            let i = ch["index"].as_u64().expect("index") as usize;
            texts[i].push_str(ch["delta"]["content"].as_str().unwrap_or_default());
        }
    }
    texts.iter().for_each(|t| valid(t));
}

#[tokio::test]
async fn completions_take_every_guided_spelling() {
    let srv = start(Opts::default()).await;
    let rx = "[a-c]{2,4}-[0-9]";
    let check = regex::Regex::new(&format!("^(?:{rx})$")).expect("regex");
    let cases = [
        json!({"guided_regex": rx}),
        json!({"structured_outputs": {"regex": rx}}),
    ];
    for extra in cases {
        let mut body = json!({"prompt": "x", "max_tokens": 30, "n": 3});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let r = post(&srv.addr, "/v1/completions", &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        for c in r.json()["choices"].as_array().expect("choices") {
            let t = c["text"].as_str().expect("text");
            assert!(check.is_match(t), "{t:?}");
            assert_eq!(c["finish_reason"], "stop");
        }
    }
    let choices = ["alpha", "beta gamma"];
    for extra in [
        json!({"guided_choice": choices}),
        json!({"structured_outputs": {"choice": choices}}),
        json!({"guided_grammar": "start: \"alpha\" | \"beta gamma\""}),
    ] {
        let mut body = json!({"prompt": "pick", "max_tokens": 30});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let r = post(&srv.addr, "/v1/completions", &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let t = r.json()["choices"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(choices.contains(&t.as_str()), "{t:?}");
    }
    let r = post(&srv.addr, "/v1/completions", &json!({
        "prompt": "j", "max_tokens": 120, "guided_json": schema().to_string(), "return_token_ids": true
    })).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = &r.json()["choices"][0];
    valid(c["text"].as_str().expect("text"));
    let ids: Vec<u32> = serde_json::from_value(c["token_ids"].clone()).expect("token_ids");
    let tok = tokenizer();
    assert_eq!(tok.decode(&ids, true).expect("decode"), c["text"]);
    assert_eq!(
        c["prompt_token_ids"],
        json!(tok.encode("j", true).expect("enc").get_ids())
    );
}

#[tokio::test]
async fn max_tokens_cuts_constrained_output_with_length() {
    let srv = start(Opts::default()).await;
    let r = post(
        &srv.addr,
        "/v1/completions",
        &json!({
            "prompt": "j", "max_tokens": 2, "guided_json": schema()
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["finish_reason"], "length");
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 6}, "days": {"type": "integer", "minimum": 1, "maximum": 3}},
            "required": ["city", "days"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}, "additionalProperties": false}}}
    ])
}

fn check_calls(msg: &Value, name: Option<&str>, max: usize) {
    let calls = msg["tool_calls"]
        .as_array()
        .unwrap_or_else(|| panic!("no tool calls: {msg}"));
    assert!(!calls.is_empty() && calls.len() <= max, "{msg}");
    let weather = jsonschema::validator_for(&tools()[0]["function"]["parameters"]).expect("schema");
    for c in calls {
        let f = &c["function"];
        let args: Value =
            serde_json::from_str(f["arguments"].as_str().expect("args")).expect("args parse");
        match f["name"].as_str() {
            Some("get_weather") => assert!(weather.is_valid(&args), "{args}"),
            Some("ping") => assert_eq!(args, json!({})),
            other => panic!("unknown tool {other:?}"),
        }
        if let Some(n) = name {
            assert_eq!(f["name"], n);
        }
    }
}

#[tokio::test]
async fn forced_tool_choice_always_parses() {
    // No --tool-call-parser: "required" and named choices are enforced by the grammar.
    let srv = start(Opts::default()).await;
    for (choice, name, parallel, max) in [
        (json!("required"), None, true, usize::MAX),
        (json!("required"), None, false, 1),
        (
            json!({"type": "function", "function": {"name": "get_weather"}}),
            Some("get_weather"),
            true,
            1,
        ),
    ] {
        let r = post(
            &srv.addr,
            "/v1/chat/completions",
            &json!({
                "messages": user("weather?"), "tools": tools(), "tool_choice": choice,
                "parallel_tool_calls": parallel, "max_tokens": 150, "n": 2, "temperature": 1.0
            }),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        for c in r.json()["choices"].as_array().expect("choices") {
            assert_eq!(c["finish_reason"], "tool_calls", "{c}");
            check_calls(&c["message"], name, max);
        }
    }
}

#[tokio::test]
async fn the_constraint_follows_the_thinking_switch() {
    let srv = start(Opts {
        reasoning: true,
        ..Opts::default()
    })
    .await;
    // Thinking off: the template closes the think block, so the JSON starts at once.
    let r = post(
        &srv.addr,
        "/v1/chat/completions",
        &json!({
            "messages": user("json"), "structured_outputs": {"json": schema()}, "max_tokens": 120,
            "chat_template_kwargs": {"enable_thinking": false}
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    valid(
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .expect("content"),
    );
    // Thinking on: the scripted reasoning is free text; the JSON starts after `</think>`.
    let r = post(
        &srv.addr,
        "/v1/chat/completions",
        &json!({
            "messages": user("#script:think# json"), "structured_outputs": {"json": schema()},
            "max_tokens": 150
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let msg = &r.json()["choices"][0]["message"];
    assert_eq!(msg["reasoning_content"], "\nHmm, 2<3 is true.\n", "{msg}");
    valid(msg["content"].as_str().expect("content"));
}

#[tokio::test]
async fn return_tokens_as_token_ids_names_logprob_tokens_by_id() {
    let srv = start(Opts::default()).await;
    let r = post(
        &srv.addr,
        "/v1/chat/completions",
        &json!({
            "messages": user("hi"), "max_tokens": 4, "logprobs": true, "top_logprobs": 2,
            "return_tokens_as_token_ids": true, "return_token_ids": true
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let ids: Vec<u32> = serde_json::from_value(v["choices"][0]["token_ids"].clone()).expect("ids");
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs")
        .clone();
    assert_eq!(content.len(), ids.len());
    for (c, id) in content.iter().zip(&ids) {
        assert_eq!(c["token"], format!("token_id:{id}"));
        for t in c["top_logprobs"].as_array().expect("top") {
            assert!(
                t["token"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("token_id:")),
                "{t}"
            );
        }
    }
    assert!(v["prompt_token_ids"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
}

/// Streamed `return_token_ids`, as vLLM: each choice's first chunk carries the prompt's
/// ids, and the ids the chunks carry, joined, are the choice's tokens (which decode to its
/// text), on chat and completions, with n = 2.
#[tokio::test]
async fn streamed_return_token_ids_give_prompt_and_output_ids() {
    let srv = start(Opts::default()).await;
    let tok = tokenizer();
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"messages": user("stream ids"), "guided_json": schema(), "stream": true,
                   "n": 2, "max_tokens": 60, "return_token_ids": true}),
        ),
        (
            "/v1/completions",
            json!({"prompt": "stream ids", "guided_json": schema(), "stream": true,
                   "n": 2, "max_tokens": 60, "return_token_ids": true}),
        ),
    ] {
        let r = post(&srv.addr, path, &body).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let chat = path.contains("chat");
        let (mut ids, mut texts) = (vec![Vec::<u32>::new(); 2], vec![String::new(); 2]);
        let mut prompts: Vec<Option<Value>> = vec![None; 2];
        for c in r.chunks() {
            for ch in c["choices"].as_array().into_iter().flatten() {
                let i = ch["index"].as_u64().expect("index") as usize;
                let prompt = if chat {
                    &c["prompt_token_ids"]
                } else {
                    &ch["prompt_token_ids"]
                };
                if !prompt.is_null() {
                    assert!(
                        prompts[i].is_none(),
                        "{path}: prompt ids twice for choice {i}"
                    );
                    prompts[i] = Some(prompt.clone());
                }
                if let Some(t) = ch["token_ids"].as_array() {
                    ids[i].extend(t.iter().map(|x| x.as_u64().expect("id") as u32));
                }
                let text = if chat {
                    &ch["delta"]["content"]
                } else {
                    &ch["text"]
                };
                texts[i].push_str(text.as_str().unwrap_or_default());
            }
        }
        for i in 0..2 {
            valid(&texts[i]);
            assert_eq!(
                tok.decode(&ids[i], true).expect("decode"),
                texts[i],
                "{path}"
            );
            let p: Vec<u32> = serde_json::from_value(prompts[i].clone().expect("prompt ids"))
                .expect("prompt ids");
            assert!(!p.is_empty(), "{path}");
            if !chat {
                assert_eq!(p, tok.encode("stream ids", true).expect("enc").get_ids());
            }
        }
    }
}
