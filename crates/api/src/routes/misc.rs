//! The small routes: /v1/models, /health, /version, /tokenize, /detokenize, /metrics.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::{OpenApi, ToSchema};

use crate::chat_template::{RenderOptions, TemplateError};
use crate::error::{ApiError, ErrorBody};
use crate::openai::{Fields, ModelCard, ModelList};
use crate::openapi::{ApiDoc, BodyErrors, DetokenizeRequestSchema, TokenizeRequestSchema};
use crate::server::{body_bytes, now_secs, AppState, St};
use crate::tokenize::{encode_bounded, prompt_too_long};

#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)))]
pub async fn models(State(s): St) -> Json<ModelList> {
    let created = now_secs();
    let data = s
        .config
        .served_model_names
        .iter()
        .map(|name| ModelCard {
            id: name.clone(),
            object: "model",
            created,
            owned_by: "qwen3-serve",
            root: s.config.model_root.clone(),
            parent: None,
            max_model_len: s.config.max_model_len,
            permission: Vec::new(),
        })
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

fn health_response(state: Result<(), String>) -> Response {
    match state {
        Ok(()) => StatusCode::OK.into_response(),
        Err(why) => ApiError::with_status(StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// Live unless a restart is needed: the engine's own state, a fault marked fatal, or a
/// serving NPU in a fatal health state (DCMI, sampled in the background).
fn live(s: &AppState) -> Result<(), String> {
    s.health.live(&s.engine)?;
    s.npu.fatal().map_or(Ok(()), Err)
}

/// `/health/live`: 503 once only a restart can help.
#[utoipa::path(get, path = "/health/live", responses((status = 200, description = "live"), (status = 503, body = ErrorBody)))]
pub async fn health_live(State(s): St) -> Response {
    health_response(live(&s))
}

/// `/health`, vLLM's name for `/health/live`.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "live"), (status = 503, body = ErrorBody)))]
pub async fn health_alias(s: St) -> Response {
    health_live(s).await
}

/// `/health/ready`: also 503 while draining for shutdown.
#[utoipa::path(get, path = "/health/ready", responses((status = 200, description = "ready"), (status = 503, body = ErrorBody)))]
pub async fn health_ready(State(s): St) -> Response {
    health_response(live(&s).and_then(|()| s.health.ready(&s.engine)))
}

#[derive(Serialize, ToSchema)]
pub struct VersionResponse {
    version: &'static str,
}

#[utoipa::path(get, path = "/version", responses((status = 200, body = VersionResponse)))]
pub async fn version() -> Json<VersionResponse> {
    Json(VersionResponse {
        version: env!("CARGO_PKG_VERSION"),
    })
}

#[derive(Serialize, ToSchema)]
pub struct TokenizeResponse {
    count: usize,
    max_model_len: usize,
    tokens: Vec<u32>,
    /// Set when `return_token_strs` is true.
    token_strs: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct DetokenizeResponse {
    prompt: String,
}

/// The OpenAPI document of these routes.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// vLLM's /tokenize: `{"prompt"}` or `{"messages"}` (through the chat template) to
/// `{"count", "max_model_len", "tokens", "token_strs"}`.
#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequestSchema, responses((status = 200, body = TokenizeResponse), BodyErrors))]
pub async fn tokenize(
    State(s): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let mut f = Fields::parse(&body_bytes(body)?)?;
    s.check_model(f.opt::<String>("model")?.as_deref())?;
    let return_token_strs = f.opt::<bool>("return_token_strs")?.unwrap_or(false);
    let (text, add_special_default) = if let Some(prompt) = f.opt::<String>("prompt")? {
        (prompt, true)
    } else if let Some(messages) = f.opt::<Vec<Value>>("messages")? {
        let t = s
            .template
            .as_ref()
            .ok_or_else(|| ApiError::bad_request("this model has no chat template"))?;
        let tools = f.opt::<Vec<Value>>("tools")?;
        let kwargs = f.opt::<Map<String, Value>>("chat_template_kwargs")?;
        let opts = RenderOptions {
            tools: tools.as_deref(),
            add_generation_prompt: f.opt("add_generation_prompt")?.unwrap_or(true),
            continue_final_message: f.opt("continue_final_message")?.unwrap_or(false),
            kwargs: kwargs.as_ref(),
        };
        let text = t.render_with(&messages, &opts).map_err(|e| match e {
            TemplateError::InvalidMessages(m) => ApiError::invalid("messages", m),
            other => ApiError::bad_request(other.to_string()),
        })?;
        (text, false)
    } else {
        return Err(ApiError::invalid("prompt", "give a `prompt` or `messages`"));
    };
    let add_special = f
        .opt::<bool>("add_special_tokens")?
        .unwrap_or(add_special_default);
    // Capped as generation is (vLLM's /tokenize also refuses more than max_model_len): it is
    // open without an API key, so its work must stay bounded.
    let max_len = s.config.max_model_len;
    let enc = encode_bounded(&s.tokenizer, &text, add_special, max_len, "prompt")?;
    if enc.len() > max_len {
        return Err(prompt_too_long("prompt", max_len, enc.len()));
    }
    let ids = enc.get_ids().to_vec();
    let token_strs = return_token_strs.then(|| enc.get_tokens().to_vec());
    Ok(Json(TokenizeResponse {
        count: ids.len(),
        max_model_len: s.config.max_model_len,
        tokens: ids,
        token_strs,
    }))
}

/// vLLM's /detokenize: `{"tokens"}` to `{"prompt"}`.
#[utoipa::path(post, path = "/detokenize", request_body = DetokenizeRequestSchema, responses((status = 200, body = DetokenizeResponse), BodyErrors))]
pub async fn detokenize(
    State(s): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let mut f = Fields::parse(&body_bytes(body)?)?;
    s.check_model(f.opt::<String>("model")?.as_deref())?;
    let ids: Vec<u32> = f.req("tokens")?;
    let vocab = s.tokenizer.get_vocab_size(true);
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            "tokens",
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
        ));
    }
    let text = s
        .tokenizer
        .decode(&ids, false)
        .map_err(|e| ApiError::bad_request(format!("cannot detokenize: {e}")))?;
    Ok(Json(DetokenizeResponse { prompt: text }))
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(s): St) -> Response {
    let names = &s.config.served_model_names;
    let mut text = crate::metrics::render(&s.engine.stats(), names);
    s.npu.render(&crate::metrics::model_label(names), &mut text);
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}
