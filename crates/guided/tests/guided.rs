//! The compiler and matchers on the real Qwen3 tokenizer (the fixture's): walks that take
//! random allowed tokens until the grammar lets them stop must always produce valid output,
//! and what must be refused is refused.

use std::sync::Arc;

use qwen3_guided::tools::{tool_call_grammar, ToolSpec};
use qwen3_guided::{Compiler, CompilerLimits, ConstraintKind, GuidedError, StructuredSpec};
use qwen3_step::mask_allows;
use serde_json::{json, Value};
use tokenizers::Tokenizer;

const VOCAB: usize = 151_936;
const EOS: [u32; 2] = [151_645, 151_643];

fn fixture_tokenizer() -> (String, Arc<Tokenizer>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-qwen3/tokenizer.json"
    );
    let json = std::fs::read_to_string(path).expect("fixture tokenizer");
    let tok = Tokenizer::from_bytes(json.as_bytes()).expect("tokenizer parses");
    (json, Arc::new(tok))
}

fn compiler() -> (Compiler, Arc<Tokenizer>) {
    let (json, tok) = fixture_tokenizer();
    let env = qwen3_guided::tok_env(&json, Arc::clone(&tok), VOCAB, &EOS).expect("tok env");
    (
        Compiler::new(env, CompilerLimits::default()).expect("compiler"),
        tok,
    )
}

fn spec(kind: ConstraintKind) -> StructuredSpec {
    StructuredSpec {
        kind,
        after_token: None,
    }
}

/// xorshift: deterministic per seed, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random allowed tokens until EOS is drawn (EOS taken with probability 1/2 once allowed).
fn walk(c: &Compiler, tok: &Tokenizer, kind: &ConstraintKind, seed: u64) -> String {
    let mut m = c.matcher(&spec(kind.clone())).expect("matcher");
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = Vec::new();
    for _ in 0..2000 {
        let mask = m.mask().expect("mask").expect("active");
        let allowed: Vec<u32> = (0..VOCAB as u32)
            .filter(|&t| mask_allows(&mask, t))
            .collect();
        assert!(!allowed.is_empty());
        let eos_ok = allowed.iter().any(|t| EOS.contains(t));
        assert_eq!(
            eos_ok,
            m.is_accepting(),
            "EOS allowed exactly where accepting"
        );
        let non_eos: Vec<u32> = allowed
            .iter()
            .copied()
            .filter(|t| !EOS.contains(t))
            .collect();
        if eos_ok && (non_eos.is_empty() || rng.next().is_multiple_of(2)) {
            return tok.decode(&out, false).expect("decode");
        }
        let t = non_eos[(rng.next() % non_eos.len() as u64) as usize];
        m.advance(t).expect("an allowed token is accepted");
        out.push(t);
    }
    panic!("walk did not finish: {:?}", tok.decode(&out, false));
}

fn nested_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 5},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"}
                },
                "required": ["city", "zip"],
                "additionalProperties": false
            }
        },
        "required": ["name", "age", "address"],
        "additionalProperties": false
    })
}

#[test]
fn json_schema_walks_validate() {
    let (c, tok) = compiler();
    let schema = nested_schema();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let kind = ConstraintKind::JsonSchema(schema.to_string());
    for seed in 1..=12 {
        let text = walk(&c, &tok, &kind, seed);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(validator.is_valid(&v), "{text} does not validate");
    }
}

#[test]
fn json_object_takes_an_object_and_ends_only_when_closed() {
    // Unbounded keys and strings: a random walk need not end, so follow a known text.
    let (c, tok) = compiler();
    let mut m = c
        .matcher(&spec(ConstraintKind::JsonObject))
        .expect("matcher");
    let text = r#"{"a": [1, "x"], "b": {"c": null}}"#;
    let ids = tok.encode(text, false).expect("encode").get_ids().to_vec();
    for (i, &t) in ids.iter().enumerate() {
        let mask = m.mask().expect("mask").expect("active");
        assert!(mask_allows(&mask, t), "token {i} of {text} refused");
        assert!(
            EOS.iter().all(|&e| !mask_allows(&mask, e)),
            "EOS inside the object"
        );
        m.advance(t).expect("advance");
    }
    let mask = m.mask().expect("mask").expect("active");
    assert!(
        EOS.iter().all(|&e| mask_allows(&mask, e)),
        "EOS once the object is closed"
    );
    let mut bad = c
        .matcher(&spec(ConstraintKind::JsonObject))
        .expect("matcher");
    let array = tok.encode("[1]", false).expect("encode").get_ids()[0];
    assert!(bad.advance(array).is_err(), "an array is not an object");
}

#[test]
fn regex_and_choice_walks_match() {
    let (c, tok) = compiler();
    let rx = "[a-z]{2,5}-[0-9]{2}(\\.[A-Z])?";
    let check = regex::Regex::new(&format!("^(?:{rx})$")).expect("regex");
    for seed in 1..=10 {
        let text = walk(&c, &tok, &ConstraintKind::Regex(rx.into()), seed);
        assert!(check.is_match(&text), "{text:?}");
    }
    let choices = vec![
        "positive".to_string(),
        "neg\"ative".into(),
        "neutral 中".into(),
    ];
    for seed in 1..=10 {
        let text = walk(&c, &tok, &ConstraintKind::Choice(choices.clone()), seed);
        assert!(choices.contains(&text), "{text:?}");
    }
}

#[test]
fn tool_call_walks_parse_against_the_tool_schema() {
    let (c, tok) = compiler();
    let weather = json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"],
        "additionalProperties": false
    });
    // No arguments: unbounded ones would let a random walk run on forever.
    let noop = json!({"type": "object", "properties": {}, "additionalProperties": false});
    let tools = [
        ToolSpec {
            name: "get_weather",
            parameters: Some(&weather),
        },
        ToolSpec {
            name: "noop",
            parameters: Some(&noop),
        },
    ];
    let validator = jsonschema::validator_for(&weather).expect("schema");
    for parallel in [false, true] {
        let kind = ConstraintKind::Lark(tool_call_grammar(&tools, parallel));
        for seed in 1..=8 {
            let text = walk(&c, &tok, &kind, seed);
            let calls: Vec<&str> = text.split("<tool_call>\n").skip(1).collect();
            assert!(!calls.is_empty(), "{text:?}");
            assert!(parallel || calls.len() == 1, "{text:?}");
            for call in calls {
                let body = call.trim_end().trim_end_matches("</tool_call>").trim_end();
                let v: Value =
                    serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
                match v["name"].as_str() {
                    Some("get_weather") => assert!(validator.is_valid(&v["arguments"]), "{body}"),
                    Some("noop") => assert_eq!(v["arguments"], json!({}), "{body}"),
                    other => panic!("unknown tool {other:?} in {body}"),
                }
            }
        }
    }
}

#[test]
fn invalid_constraints_are_refused_with_a_reason() {
    let (c, _) = compiler();
    let bad = [
        ConstraintKind::Regex("(unclosed".into()),
        ConstraintKind::JsonSchema("{not json".into()),
        ConstraintKind::JsonSchema(json!({"type": "strin"}).to_string()),
        ConstraintKind::Lark("start: undefined_rule".into()),
        ConstraintKind::Choice(vec![]),
        ConstraintKind::Regex("a".repeat(300 * 1024)),
    ];
    for kind in bad {
        match c.compile(&kind) {
            Err(GuidedError::Invalid(msg)) => assert!(!msg.is_empty()),
            Err(e) => panic!("wrong error {e:?}"),
            Ok(_) => panic!(
                "accepted {:?}",
                &format!("{kind:?}")[..60.min(format!("{kind:?}").len())]
            ),
        }
    }
}

#[test]
fn compiled_grammars_are_cached_by_content() {
    let (c, _) = compiler();
    let a = c.compile(&ConstraintKind::Regex("[0-9]+".into())).unwrap();
    let b = c.compile(&ConstraintKind::Regex("[0-9]+".into())).unwrap();
    let other = c.compile(&ConstraintKind::Regex("[0-9]*".into())).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(&a, &other));
}

#[test]
fn a_refused_token_is_an_error_and_eos_waits_for_acceptance() {
    let (c, tok) = compiler();
    let mut m = c
        .matcher(&spec(ConstraintKind::Regex("[0-9]{3}".into())))
        .unwrap();
    let mask = m.mask().unwrap().unwrap();
    assert!(
        EOS.iter().all(|&e| !mask_allows(&mask, e)),
        "EOS before the grammar accepts"
    );
    assert!(
        !mask_allows(&mask, VOCAB as u32 - 1),
        "padding rows are never allowed"
    );
    let letter = tok.token_to_id("a").unwrap();
    assert!(!mask_allows(&mask, letter));
    assert!(matches!(m.advance(letter), Err(GuidedError::Matcher(_))));
}

#[test]
fn the_constraint_starts_after_the_reasoning_end() {
    let (c, tok) = compiler();
    let think_end = tok.token_to_id("</think>").unwrap();
    let mut m = c
        .matcher(&StructuredSpec {
            kind: ConstraintKind::Choice(vec!["yes".into(), "no".into()]),
            after_token: Some(think_end),
        })
        .unwrap();
    let word = tok.token_to_id("hello").unwrap();
    assert!(m.mask().unwrap().is_none());
    m.advance(word).unwrap();
    assert!(m.mask().unwrap().is_none());
    m.advance(think_end).unwrap();
    let mask = m.mask().unwrap().expect("constrained after </think>");
    assert!(!mask_allows(&mask, word));
    assert!(mask_allows(&mask, tok.token_to_id("yes").unwrap()));
}

/// The token table built in the background: the compiler exists before the table does
/// (start-up does not wait), the first compile waits for it and then works, and a table
/// that fails to build fails each compile with its error instead of blocking.
#[test]
fn the_token_table_builds_in_the_background_and_the_first_compile_waits() {
    let (json, tok) = fixture_tokenizer();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let c = Compiler::in_background(
        VOCAB,
        CompilerLimits::default(),
        move || {
            // Held until the test lets it go: the compiler must not need it before.
            wait.recv().ok();
            qwen3_guided::tok_env(&json, tok, VOCAB, &EOS)
        },
        move |built, _| {
            ready_tx.send(built.is_ok()).ok();
        },
    );
    assert!(!c.is_ready());
    assert_eq!(c.vocab_size(), VOCAB);
    go.send(()).expect("the build thread waits");
    let kind = ConstraintKind::Choice(vec!["yes".into(), "no".into()]);
    c.compile(&kind).expect("compiles once the table is built");
    assert!(c.is_ready());
    assert!(ready_rx.recv().expect("told"));

    let failing = Compiler::in_background(
        VOCAB,
        CompilerLimits::default(),
        || Err(GuidedError::Tokenizer("no table".into())),
        |built, _| assert!(built.is_err()),
    );
    let err = failing.compile(&kind).err().expect("refused");
    assert!(err.to_string().contains("no table"), "{err}");
}
