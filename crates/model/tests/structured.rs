//! Structured outputs with the real model (the random-weight fixture, whose free text is
//! gibberish): every constrained output is valid — JSON checked by a JSON-schema validator,
//! regexes by `regex`, choices, hermes tool calls against their schema — greedy and sampled,
//! several at once, under TP 2, on a prefix-cache hit, and through preemption with a tiny
//! KV cache; `max_tokens` cuts a JSON short with finish reason `length`.

mod common;

use common::*;
use qwen3_engine::batch::{ConstraintKind, SamplingParams, StructuredSpec};
use qwen3_engine::{EngineHandle, EngineRequest, FinishReason};
use qwen3_guided::tools::{tool_call_grammar, ToolSpec};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

const MODEL: &str = "tiny-qwen3";

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(fixtures().join(MODEL).join("tokenizer.json")).expect("tokenizer")
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["x", "y", "z"]}, "maxItems": 3},
            "home": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 6}, "ok": {"type": "boolean"}},
                "required": ["city", "ok"],
                "additionalProperties": false
            }
        },
        "required": ["name", "age", "home"],
        "additionalProperties": false
    })
}

/// A request for `kind`: greedy when `seed` is None, else sampled at temperature 1.
fn request(id: &str, prompt: &str, kind: ConstraintKind, seed: Option<u64>) -> EngineRequest {
    let ids = tokenizer()
        .encode(prompt, false)
        .expect("encode")
        .get_ids()
        .to_vec();
    let mut r = EngineRequest::new(id, ids);
    r.sampling = SamplingParams {
        temperature: if seed.is_some() { 1.0 } else { 0.0 },
        seed,
        structured: Some(StructuredSpec {
            kind,
            after_token: None,
        }),
        ..SamplingParams::default()
    };
    r.max_tokens = Some(200);
    r
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs every request at once; returns each one's text and finish reason, in order.
fn run(e: &EngineHandle, reqs: Vec<EngineRequest>) -> Vec<(String, FinishReason)> {
    rt().block_on(async {
        let streams: Vec<_> = reqs
            .into_iter()
            .map(|r| e.submit(r).expect("submit"))
            .collect();
        let mut out = Vec::new();
        for mut s in streams {
            let (mut text, mut finish) = (String::new(), None);
            while let Some(o) = s.next().await {
                text.push_str(&o.text);
                finish = finish.or(o.finish_reason);
            }
            out.push((text, finish.expect("a finish reason")));
        }
        out
    })
}

fn assert_valid_json(results: &[(String, FinishReason)]) {
    let validator = jsonschema::validator_for(&schema()).expect("schema");
    for (text, finish) in results {
        assert_eq!(*finish, FinishReason::Stop, "{text:?}");
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(validator.is_valid(&v), "{text} does not validate");
    }
}

fn json_requests(prefix: &str, prompt: &str) -> Vec<EngineRequest> {
    let kind = ConstraintKind::JsonSchema(schema().to_string());
    // One greedy, three sampled (the engine side of n = 3).
    [None, Some(1), Some(2), Some(3)]
        .into_iter()
        .enumerate()
        .map(|(i, seed)| request(&format!("{prefix}{i}"), prompt, kind.clone(), seed))
        .collect()
}

#[test]
fn json_schema_outputs_validate_greedy_and_sampled() {
    let (e, _) = structured_engine(MODEL, &Setup::default());
    assert_valid_json(&run(&e, json_requests("j", "Describe a person as JSON:")));
}

#[test]
fn regex_choice_and_json_object_outputs_match() {
    let (e, _) = structured_engine(MODEL, &Setup::default());
    let rx = "[a-z]{3,8}@[a-z]{2,5}\\.(com|org)";
    let choices = vec!["red".to_string(), "green".into(), "blue sky".into()];
    let mut reqs = Vec::new();
    for seed in [None, Some(7), Some(8)] {
        reqs.push(request(
            "rx",
            "An email:",
            ConstraintKind::Regex(rx.into()),
            seed,
        ));
        reqs.push(request(
            "ch",
            "A colour:",
            ConstraintKind::Choice(choices.clone()),
            seed,
        ));
    }
    for (i, r) in reqs.iter_mut().enumerate() {
        r.request_id = format!("{}{i}", r.request_id);
    }
    let check = regex::Regex::new(&format!("^(?:{rx})$")).expect("regex");
    for (i, (text, finish)) in run(&e, reqs).into_iter().enumerate() {
        assert_eq!(finish, FinishReason::Stop, "{text:?}");
        if i.is_multiple_of(2) {
            assert!(check.is_match(&text), "{text:?}");
        } else {
            assert!(choices.contains(&text), "{text:?}");
        }
    }
}

#[test]
fn forced_tool_calls_parse_against_the_tool_schema() {
    let (e, _) = structured_engine(MODEL, &Setup::default());
    let params = json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"],
        "additionalProperties": false
    });
    let grammar = tool_call_grammar(
        &[ToolSpec {
            name: "get_weather",
            parameters: Some(&params),
        }],
        false,
    );
    let reqs = [None, Some(4), Some(5)]
        .into_iter()
        .enumerate()
        .map(|(i, seed)| {
            request(
                &format!("t{i}"),
                "Weather?",
                ConstraintKind::Lark(grammar.clone()),
                seed,
            )
        })
        .collect();
    let validator = jsonschema::validator_for(&params).expect("schema");
    for (text, finish) in run(&e, reqs) {
        assert_eq!(finish, FinishReason::Stop, "{text:?}");
        let body = text
            .strip_prefix("<tool_call>\n")
            .and_then(|t| t.strip_suffix("\n</tool_call>"))
            .unwrap_or_else(|| panic!("not a hermes tool call: {text:?}"));
        let call: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
        assert_eq!(call["name"], "get_weather");
        assert!(validator.is_valid(&call["arguments"]), "{body}");
    }
}

#[test]
fn prefix_cache_hit_and_tp2_keep_outputs_valid() {
    let prompt = "A long shared prompt that fills more than one block of sixteen tokens, \
                  so the second run starts from the prefix cache: describe a person as JSON.";
    let (e, _) = structured_engine(MODEL, &Setup::default());
    let first = run(&e, json_requests("a", prompt));
    let second = run(&e, json_requests("b", prompt));
    assert_valid_json(&first);
    assert_valid_json(&second);
    assert_eq!(
        first[0], second[0],
        "greedy output changed on a prefix-cache hit"
    );
    assert!(e.stats().prefix_cache_hits_total > 0);

    let (tp, _) = structured_engine(
        MODEL,
        &Setup {
            tp: 2,
            ..Setup::default()
        },
    );
    let on_tp = run(&tp, json_requests("c", prompt));
    assert_valid_json(&on_tp);
}

#[test]
fn preemption_with_a_tiny_cache_keeps_outputs_valid() {
    // 8 usable blocks of 16 tokens for 8 sequences of up to ~100 tokens: preemption is forced.
    let (e, _) = structured_engine(
        MODEL,
        &Setup {
            num_blocks: 9,
            prefix_caching: false,
            ..Setup::default()
        },
    );
    let mut reqs = json_requests("p", "Describe a person as JSON:");
    reqs.extend(json_requests("q", "Another person, as JSON please:"));
    // One sequence must fit the 128-token cache on its own.
    for r in &mut reqs {
        r.max_tokens = Some(100);
    }
    assert_valid_json(&run(&e, reqs));
    assert!(e.stats().num_preemptions_total > 0, "expected preemptions");
}

#[test]
fn max_tokens_cuts_json_short_with_length() {
    let (e, _) = structured_engine(MODEL, &Setup::default());
    let mut r = request(
        "m",
        "JSON:",
        ConstraintKind::JsonSchema(schema().to_string()),
        None,
    );
    r.max_tokens = Some(3);
    let out = run(&e, vec![r]);
    let (text, finish) = &out[0];
    assert_eq!(*finish, FinishReason::Length);
    assert!(text.starts_with('{'), "{text:?}");
    assert!(
        serde_json::from_str::<Value>(text).is_err(),
        "3 tokens cannot close this object"
    );
}

#[test]
fn async_engine_runs_structured_requests_synchronously_and_validly() {
    // Masks need each token on the host before the next step: the async engine falls back
    // to synchronous steps while a constrained request is live, and gives the same output.
    let prompt = "Describe a person as JSON:";
    let (sync, _) = structured_engine(MODEL, &Setup::default());
    let (asynch, _) = structured_engine(
        MODEL,
        &Setup {
            async_scheduling: true,
            ..Setup::default()
        },
    );
    let want = run(&sync, json_requests("s", prompt));
    let got = run(&asynch, json_requests("s", prompt));
    assert_valid_json(&got);
    assert_eq!(want, got, "async scheduling changed a structured output");
}
