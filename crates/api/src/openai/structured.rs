//! Structured-output request fields, as OpenAI and vLLM spell them: `response_format`
//! (`json_object`, `json_schema`), vLLM's `structured_outputs` object and its older
//! `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` fields. Each becomes a
//! [`ConstraintKind`] tagged with the field that asked for it, so compile errors name it.

use serde_json::{Map, Value as Json};

use super::Fields;
use crate::error::ApiError;
use qwen3_engine::batch::ConstraintKind;

/// A constraint and the request field it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredRequest {
    pub field: String,
    pub kind: ConstraintKind,
}

fn schema_text(field: &str, v: Json) -> Result<ConstraintKind, ApiError> {
    match v {
        // A schema may come serialized (vLLM accepts both).
        Json::String(s) => match serde_json::from_str::<Json>(&s) {
            Ok(_) => Ok(ConstraintKind::JsonSchema(s)),
            Err(e) => Err(ApiError::invalid(
                field,
                format!("`{field}` is not a JSON schema: {e}"),
            )),
        },
        v @ (Json::Object(_) | Json::Bool(_)) => Ok(ConstraintKind::JsonSchema(v.to_string())),
        _ => Err(ApiError::invalid(
            field,
            format!("`{field}` must be a JSON schema object"),
        )),
    }
}

fn string(field: &str, v: Json) -> Result<String, ApiError> {
    match v {
        Json::String(s) => Ok(s),
        _ => Err(ApiError::invalid(
            field,
            format!("`{field}` must be a string"),
        )),
    }
}

fn choices(field: &str, v: Json) -> Result<ConstraintKind, ApiError> {
    let list: Vec<String> = serde_json::from_value(v)
        .map_err(|_| ApiError::invalid(field, format!("`{field}` must be a list of strings")))?;
    if list.is_empty() {
        return Err(ApiError::invalid(field, format!("`{field}` is empty")));
    }
    Ok(ConstraintKind::Choice(list))
}

fn regex(field: &str, v: Json) -> Result<ConstraintKind, ApiError> {
    Ok(ConstraintKind::Regex(string(field, v)?))
}

fn grammar(field: &str, v: Json) -> Result<ConstraintKind, ApiError> {
    Ok(ConstraintKind::Lark(string(field, v)?))
}

type ParseKind = fn(&str, Json) -> Result<ConstraintKind, ApiError>;

/// vLLM's older top-level spellings, each what one `structured_outputs` key is.
const GUIDED: [(&str, ParseKind); 4] = [
    ("guided_json", schema_text),
    ("guided_regex", regex),
    ("guided_choice", choices),
    ("guided_grammar", grammar),
];

/// `response_format`.
fn response_format(rf: Json) -> Result<Option<StructuredRequest>, ApiError> {
    const F: &str = "response_format";
    let kind = match rf.get("type").and_then(Json::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => ConstraintKind::JsonObject,
        Some("json_schema") => {
            let js = rf
                .get("json_schema")
                .and_then(Json::as_object)
                .ok_or_else(|| {
                    ApiError::invalid(
                        F,
                        "`response_format.json_schema` is required for type \"json_schema\"",
                    )
                })?;
            // OpenAI names the schema `schema`; vLLM also took `json_schema`.
            match js.get("schema").or_else(|| js.get("json_schema")) {
                Some(s) if !s.is_null() => {
                    schema_text("response_format.json_schema.schema", s.clone())?
                }
                _ => ConstraintKind::JsonObject,
            }
        }
        Some("structural_tag") => {
            return Err(ApiError::unsupported(
                F,
                "`response_format` \"structural_tag\"",
            ))
        }
        _ => {
            return Err(ApiError::invalid(
                F,
                "`response_format.type` must be \"text\", \"json_object\" or \"json_schema\"",
            ))
        }
    };
    Ok(Some(StructuredRequest {
        field: F.into(),
        kind,
    }))
}

/// vLLM's `structured_outputs` object: exactly one of its constraint keys.
fn structured_outputs(o: Map<String, Json>) -> Result<Option<StructuredRequest>, ApiError> {
    let mut found = Vec::new();
    for (key, v) in o {
        if v.is_null() || v == Json::Bool(false) {
            continue;
        }
        let field = format!("structured_outputs.{key}");
        let kind = match key.as_str() {
            "json" => schema_text(&field, v)?,
            "regex" => regex(&field, v)?,
            "choice" => choices(&field, v)?,
            "grammar" => grammar(&field, v)?,
            "json_object" => ConstraintKind::JsonObject,
            "structural_tag" => return Err(ApiError::unsupported(&field, "`structural_tag`")),
            // Options of the other backends (whitespace, fallback) change nothing here.
            _ => continue,
        };
        found.push(StructuredRequest { field, kind });
    }
    if found.len() > 1 {
        return Err(ApiError::invalid(
            "structured_outputs",
            "`structured_outputs` must set only one of json, regex, choice, grammar, json_object",
        ));
    }
    Ok(found.pop())
}

/// Every structured-output field of a request; at most one may be set.
pub fn parse_structured(f: &mut Fields) -> Result<Option<StructuredRequest>, ApiError> {
    let mut found = Vec::new();
    if let Some(rf) = f.raw("response_format") {
        found.extend(response_format(rf)?);
    }
    if let Some(so) = f.raw("structured_outputs") {
        match so {
            Json::Object(o) => found.extend(structured_outputs(o)?),
            _ => {
                return Err(ApiError::invalid(
                    "structured_outputs",
                    "`structured_outputs` must be an object",
                ))
            }
        }
    }
    for (key, parse) in GUIDED {
        if let Some(v) = f.raw(key) {
            found.push(StructuredRequest {
                kind: parse(key, v)?,
                field: key.into(),
            });
        }
    }
    // Backend choice and whitespace options of vLLM's guided decoding: one backend here.
    let _ = f.opt::<String>("guided_decoding_backend")?;
    let _ = f.opt::<String>("guided_whitespace_pattern")?;
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|s| s.field.as_str()).collect();
        return Err(ApiError::invalid(
            &found[1].field,
            format!(
                "only one structured-output constraint per request; got {}",
                names.join(", ")
            ),
        ));
    }
    Ok(found.pop())
}
