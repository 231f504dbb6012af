//! The grammar that forces tool calls in the hermes format Qwen3's chat template teaches
//! (`<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`), with each tool's
//! arguments held to its parameter schema: `tool_choice: "required"` or a named function.

use serde_json::Value;

/// One callable tool: its name and its parameters' JSON schema (None: any object).
pub struct ToolSpec<'a> {
    pub name: &'a str,
    pub parameters: Option<&'a Value>,
}

/// A Lark grammar for one tool call to any of `tools` (several, newline separated, when
/// `parallel`). The caller checks `tools` is not empty.
pub fn tool_call_grammar(tools: &[ToolSpec<'_>], parallel: bool) -> String {
    let mut g = String::new();
    g.push_str(if parallel {
        "start: tool_call (\"\\n\" tool_call)*\n"
    } else {
        "start: tool_call\n"
    });
    let alts: Vec<String> = (0..tools.len()).map(|i| format!("call_{i}")).collect();
    g.push_str(&format!(
        "tool_call: \"<tool_call>\\n\" ({}) \"\\n</tool_call>\"\n",
        alts.join(" | ")
    ));
    let any_object = serde_json::json!({"type": "object"});
    for (i, tool) in tools.iter().enumerate() {
        // `{"name": "f", "arguments": ` as a Lark string literal (JSON escapes).
        let head = format!(
            "{{\"name\": {}, \"arguments\": ",
            Value::String(tool.name.to_string())
        );
        // Arguments as the template's `json.dumps` writes them.
        let schema =
            crate::compiler::with_layout(tool.parameters.unwrap_or(&any_object).clone(), false);
        g.push_str(&format!(
            "call_{i}: {} args_{i} \"}}\"\nargs_{i}: %json {schema}\n",
            Value::String(head)
        ));
    }
    g
}
