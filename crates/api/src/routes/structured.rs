//! The structured-output constraint of a generation request: from its fields or from a
//! forcing `tool_choice`, compiled (and so validated, a 400 naming the field) before anything
//! is scheduled. Compiling runs on the blocking pool: a big schema must not stall the server.

use qwen3_engine::batch::{ConstraintKind, StructuredSpec};
use qwen3_guided::tools::{tool_call_grammar, ToolSpec};
use serde_json::Value as Json;

use crate::error::ApiError;
use crate::openai::{StructuredRequest, ToolChoice};
use crate::server::AppState;

/// The grammar that forces a hermes tool call for `tool_choice` "required" or a named
/// function (None for "auto" and "none").
pub(crate) fn tool_constraint(
    tools: &[Json],
    choice: &ToolChoice,
    parallel: bool,
) -> Option<StructuredRequest> {
    let spec = |t: &Json| -> Option<(String, Option<Json>)> {
        let f = t.get("function")?;
        let name = f.get("name")?.as_str()?.to_string();
        Some((name, f.get("parameters").filter(|p| p.is_object()).cloned()))
    };
    let specs: Vec<(String, Option<Json>)> = match choice {
        ToolChoice::Required => tools.iter().filter_map(spec).collect(),
        ToolChoice::Function(name) => tools
            .iter()
            .filter_map(spec)
            .filter(|(n, _)| n == name)
            .take(1)
            .collect(),
        ToolChoice::None | ToolChoice::Auto => return None,
    };
    if specs.is_empty() {
        return None;
    }
    let refs: Vec<ToolSpec<'_>> = specs
        .iter()
        .map(|(name, p)| ToolSpec {
            name,
            parameters: p.as_ref(),
        })
        .collect();
    // A named function is called once, as OpenAI does.
    let parallel = parallel && matches!(choice, ToolChoice::Required);
    Some(StructuredRequest {
        field: "tools".into(),
        kind: ConstraintKind::Lark(tool_call_grammar(&refs, parallel)),
    })
}

/// Compiles `req`'s constraint (cached by content), or answers 400 naming its field.
/// `after_token`: the reasoning end the constraint waits for (thinking on).
pub(crate) async fn compile(
    s: &AppState,
    req: Option<StructuredRequest>,
    after_token: Option<u32>,
) -> Result<Option<StructuredSpec>, ApiError> {
    let Some(req) = req else { return Ok(None) };
    let Some(compiler) = s.structured.clone() else {
        return Err(ApiError::unsupported(
            &req.field,
            "structured output with this model's tokenizer",
        ));
    };
    let kind = req.kind.clone();
    let compiled = tokio::task::spawn_blocking(move || compiler.compile(&kind).map(|_| ()))
        .await
        .map_err(|e| ApiError::internal(format!("compiling the constraint: {e}")))?;
    compiled.map_err(|e| {
        ApiError::invalid(
            &req.field,
            format!("`{}` cannot be enforced: {e}", req.field),
        )
    })?;
    Ok(Some(StructuredSpec {
        kind: req.kind,
        after_token,
    }))
}
