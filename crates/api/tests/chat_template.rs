//! The real Qwen3 chat template renders byte-identically to transformers' apply_chat_template.

use std::path::Path;

use qwen3_api::ChatTemplate;
use serde_json::Value;

#[test]
fn qwen3_template_matches_transformers() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let t = ChatTemplate::from_model_dir(&fixtures.join("tiny-qwen3")).expect("template");
    let text =
        std::fs::read_to_string(fixtures.join("goldens/chat_template.json")).expect("goldens");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("json");
    assert!(cases.len() >= 6, "{} cases", cases.len());
    for c in &cases {
        let name = c["name"].as_str().unwrap_or("?");
        let messages = c["messages"].as_array().cloned().unwrap_or_default();
        let tools = c["tools"].as_array().cloned();
        let mut kwargs = serde_json::Map::new();
        if let Some(b) = c["enable_thinking"].as_bool() {
            kwargs.insert("enable_thinking".into(), Value::Bool(b));
        }
        let got = t
            .render(
                &messages,
                tools.as_deref(),
                c["add_generation_prompt"].as_bool().unwrap_or(true),
                &kwargs,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            got,
            c["expected"].as_str().unwrap_or_default(),
            "case {name}"
        );
    }
}

#[test]
fn content_parts_are_joined_and_string_arguments_parsed() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let t = ChatTemplate::from_model_dir(&fixtures.join("tiny-qwen3")).expect("template");
    let parts: Value = serde_json::json!([{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]);
    let plain: Value = serde_json::json!([{"role": "user", "content": "a\nb"}]);
    let kw = serde_json::Map::new();
    let a = t
        .render(parts.as_array().expect("array"), None, true, &kw)
        .expect("parts");
    let b = t
        .render(plain.as_array().expect("array"), None, true, &kw)
        .expect("plain");
    assert_eq!(a, b);
    let call = |args: Value| {
        serde_json::json!([
            {"role": "user", "content": "w?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "f", "arguments": args}}]}])
    };
    let s = t
        .render(
            call(Value::String("{\"x\": 1}".into()))
                .as_array()
                .expect("a"),
            None,
            false,
            &kw,
        )
        .expect("string args");
    let o = t
        .render(
            call(serde_json::json!({"x": 1})).as_array().expect("a"),
            None,
            false,
            &kw,
        )
        .expect("object args");
    assert_eq!(s, o);
}
