//! The OpenAPI 3 document served at `/openapi.json`, generated from the response types and
//! the handlers' `#[utoipa::path]` attributes.
//!
//! The request types are parsed field by field ([`crate::openai::Fields`]), not derived from
//! JSON, so their schemas are the types here; a test keeps each in step with its parser
//! (every field the parser reads is in the schema or refused by name).

use serde::Serialize;
use serde_json::{Map, Value as Json};
use utoipa::{IntoResponses, OpenApi, ToSchema};

use crate::error::ErrorBody;
use crate::openai::*;
use crate::routes::misc::{DetokenizeResponse, TokenizeResponse, VersionResponse};

/// `prompt` of /v1/completions: text, texts, token ids, or lists of token ids.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum PromptSchema {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// The sampling and stopping fields both generation routes take.
#[derive(Serialize, ToSchema)]
pub struct SamplingSchema {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    /// Token id (as a string) to a bias in [-100, 100].
    logit_bias: Option<Map<String, Json>>,
    seed: Option<i64>,
    #[schema(minimum = 1, maximum = 128)]
    n: Option<u32>,
    /// A string or a list of strings.
    stop: Option<Json>,
    stream: Option<bool>,
    stream_options: Option<Map<String, Json>>,
    user: Option<String>,
    stop_token_ids: Option<Vec<u32>>,
    include_stop_str_in_output: Option<bool>,
    ignore_eos: Option<bool>,
    min_tokens: Option<u32>,
    skip_special_tokens: Option<bool>,
    /// `{"type": "text"}`, `{"type": "json_object"}`, or `{"type": "json_schema",
    /// "json_schema": {"name", "schema", "strict"}}`: enforced token by token.
    response_format: Option<ResponseFormatSchema>,
    /// vLLM's structured outputs: one of `json` (a schema), `regex`, `choice`, `grammar`
    /// (Lark, llguidance's dialect) or `json_object`.
    structured_outputs: Option<StructuredOutputsSchema>,
    /// vLLM's older spellings of `structured_outputs`: a JSON schema (object or string).
    guided_json: Option<Json>,
    guided_regex: Option<String>,
    guided_choice: Option<Vec<String>>,
    /// A Lark grammar (llguidance's dialect).
    guided_grammar: Option<String>,
    /// Accepted and ignored: one backend (llguidance) enforces every constraint.
    guided_decoding_backend: Option<String>,
    /// Accepted and ignored (llguidance's JSON whitespace rules apply).
    guided_whitespace_pattern: Option<String>,
    /// vLLM's: the prompt's and each choice's token ids in the response (streamed: the
    /// prompt's in each choice's first chunk, each chunk's own ids with it).
    return_token_ids: Option<bool>,
    /// vLLM's: logprobs name tokens `token_id:N` instead of their text.
    return_tokens_as_token_ids: Option<bool>,
    /// Only 1 (as the default) is accepted.
    #[schema(minimum = 1, maximum = 1)]
    best_of: Option<u32>,
    /// vLLM's: top logprobs per prompt token besides its own (at most `--max-logprobs`, 20
    /// by default; not with `stream`).
    #[schema(maximum = 20)]
    prompt_logprobs: Option<u32>,
}

/// `response_format`.
#[derive(Serialize, ToSchema)]
pub struct ResponseFormatSchema {
    /// "text", "json_object" or "json_schema".
    #[serde(rename = "type")]
    kind: String,
    /// For "json_schema": `{"name": ..., "schema": {...}, "strict": ...}`.
    json_schema: Option<Map<String, Json>>,
}

/// vLLM's `structured_outputs`: set exactly one constraint.
#[derive(Serialize, ToSchema)]
pub struct StructuredOutputsSchema {
    /// A JSON schema (object or string).
    json: Option<Json>,
    regex: Option<String>,
    choice: Option<Vec<String>>,
    grammar: Option<String>,
    json_object: Option<bool>,
}

/// POST /v1/completions.
#[derive(Serialize, ToSchema)]
pub struct CompletionRequestSchema {
    model: Option<String>,
    prompt: PromptSchema,
    /// 0 only with `echo`: the prompt and its logprobs, nothing generated.
    #[schema(minimum = 0)]
    max_tokens: Option<u32>,
    #[schema(maximum = 20)]
    logprobs: Option<u32>,
    echo: Option<bool>,
    add_special_tokens: Option<bool>,
    #[serde(flatten)]
    sampling: SamplingSchema,
}

/// `role` of a chat message.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

/// A message's `content`: text, or OpenAI's content parts (`{"type": "text", "text"}`).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ContentSchema {
    Text(String),
    Parts(Vec<Map<String, Json>>),
}

/// One chat message, as OpenAI's (assistant `tool_calls` and `reasoning_content`, a tool
/// reply's `tool_call_id`, ...).
#[derive(Serialize, ToSchema)]
pub struct MessageSchema {
    role: Role,
    content: Option<ContentSchema>,
    name: Option<String>,
    tool_calls: Option<Vec<Map<String, Json>>>,
    tool_call_id: Option<String>,
    reasoning_content: Option<String>,
}

/// POST /v1/chat/completions.
#[derive(Serialize, ToSchema)]
pub struct ChatRequestSchema {
    model: Option<String>,
    #[schema(min_items = 1)]
    messages: Vec<MessageSchema>,
    #[schema(minimum = 1)]
    max_tokens: Option<u32>,
    #[schema(minimum = 1)]
    max_completion_tokens: Option<u32>,
    logprobs: Option<bool>,
    #[schema(maximum = 20)]
    top_logprobs: Option<u32>,
    tools: Option<Vec<Map<String, Json>>>,
    /// `"none"`, `"auto"`, `"required"` or `{"type": "function", "function": {"name"}}`.
    tool_choice: Option<Json>,
    parallel_tool_calls: Option<bool>,
    chat_template_kwargs: Option<Map<String, Json>>,
    /// Only false: echoing the last message is not implemented.
    echo: Option<bool>,
    add_generation_prompt: Option<bool>,
    continue_final_message: Option<bool>,
    #[serde(flatten)]
    sampling: SamplingSchema,
}

/// POST /tokenize: `prompt`, or `messages` through the chat template.
#[derive(Serialize, ToSchema)]
pub struct TokenizeRequestSchema {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<MessageSchema>>,
    tools: Option<Vec<Map<String, Json>>>,
    chat_template_kwargs: Option<Map<String, Json>>,
    add_generation_prompt: Option<bool>,
    continue_final_message: Option<bool>,
    add_special_tokens: Option<bool>,
    return_token_strs: Option<bool>,
}

/// POST /detokenize.
#[derive(Serialize, ToSchema)]
pub struct DetokenizeRequestSchema {
    model: Option<String>,
    tokens: Vec<u32>,
}

/// The errors a generation route can answer, each an OpenAI-shaped [`ErrorBody`].
#[derive(IntoResponses)]
pub enum GenerationErrors {
    #[response(
        status = 400,
        description = "invalid request (the field is in `param`)"
    )]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "missing or wrong API key")]
    Unauthorized(ErrorBody),
    #[response(status = 404, description = "no such model")]
    NotFound(ErrorBody),
    #[response(status = 408, description = "the body was not sent in time")]
    Timeout(ErrorBody),
    #[response(status = 413, description = "the body is too large")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "the body is not JSON")]
    NotJson(ErrorBody),
    #[response(status = 429, description = "the waiting queue is full; retry later")]
    TooMany(ErrorBody),
    #[response(status = 503, description = "the engine is not serving")]
    Unavailable(ErrorBody),
}

/// The errors /tokenize and /detokenize can answer (open without an API key).
#[derive(IntoResponses)]
pub enum BodyErrors {
    #[response(
        status = 400,
        description = "invalid request (the field is in `param`)"
    )]
    BadRequest(ErrorBody),
    #[response(status = 404, description = "no such model")]
    NotFound(ErrorBody),
    #[response(status = 408, description = "the body was not sent in time")]
    Timeout(ErrorBody),
    #[response(status = 413, description = "the body is too large")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "the body is not JSON")]
    NotJson(ErrorBody),
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "qwen3-serve",
        description = "OpenAI-compatible API (vLLM's extras included)"
    ),
    paths(
        crate::routes::completions::completions,
        crate::routes::chat::chat_completions,
        crate::routes::misc::models,
        crate::routes::misc::health_live,
        crate::routes::misc::health_alias,
        crate::routes::misc::health_ready,
        crate::routes::misc::version,
        crate::routes::misc::tokenize,
        crate::routes::misc::detokenize,
        crate::routes::misc::metrics,
    ),
    components(schemas(
        ErrorBody,
        CompletionResponse,
        ChatCompletionResponse,
        ChatCompletionChunk,
        ModelList,
        VersionResponse,
        TokenizeResponse,
        DetokenizeResponse,
    ))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::READ_FIELDS;
    use std::collections::BTreeSet;

    /// Read by the parsers but refused when set: not part of the documented request.
    const REFUSED: &[&str] = &["suffix", "use_beam_search", "chat_template"];

    /// The property names of a schema component, through `allOf` (serde's flatten).
    fn properties(doc: &Json, schema: &Json, out: &mut BTreeSet<String>) {
        if let Some(r) = schema.get("$ref").and_then(Json::as_str) {
            let name = r.rsplit('/').next().unwrap();
            return properties(doc, &doc["components"]["schemas"][name], out);
        }
        if let Some(p) = schema.get("properties").and_then(Json::as_object) {
            out.extend(p.keys().cloned());
        }
        for s in schema
            .get("allOf")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            properties(doc, s, out);
        }
    }

    fn documented(name: &str) -> BTreeSet<String> {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut out = BTreeSet::new();
        properties(&doc, &doc["components"]["schemas"][name], &mut out);
        assert!(!out.is_empty(), "{name} is not in the document");
        out
    }

    /// The fields a parser reads on a minimal valid body (it reads every field it knows,
    /// present or not), less the refused ones.
    fn read_by(parse: impl FnOnce()) -> BTreeSet<String> {
        READ_FIELDS.with(|r| r.borrow_mut().clear());
        parse();
        READ_FIELDS.with(|r| {
            r.borrow()
                .iter()
                .filter(|k| !REFUSED.contains(&k.as_str()))
                .cloned()
                .collect()
        })
    }

    #[test]
    fn completion_schema_matches_its_parser() {
        let read = read_by(|| {
            CompletionRequest::parse(br#"{"prompt": "hi"}"#).unwrap();
        });
        assert_eq!(read, documented("CompletionRequestSchema"));
    }

    #[test]
    fn chat_schema_matches_its_parser() {
        let read = read_by(|| {
            ChatRequest::parse(br#"{"messages": [{"role": "user", "content": "hi"}]}"#).unwrap();
        });
        assert_eq!(read, documented("ChatRequestSchema"));
    }
}
