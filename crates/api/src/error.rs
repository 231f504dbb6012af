//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
//!
//! `type` uses vLLM's names (`BadRequestError`, `NotFoundError`, ...). `code` is OpenAI's
//! string code where OpenAI defines one for the case (`model_not_found`, `invalid_api_key`,
//! `context_length_exceeded`), else the HTTP status as a number, as vLLM sends it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use qwen3_engine::{EngineError, ErrorKind};
use serde::Serialize;
use serde_json::Value as Json;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

/// The JSON body of an error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorInfo,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Json,
}

impl ApiError {
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::with_status(StatusCode::BAD_REQUEST, message)
    }

    /// A 400 that names the offending request field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::bad_request(message)
        }
    }

    /// A field the API knows but this server does not implement.
    pub fn unsupported(param: &str, what: impl std::fmt::Display) -> Self {
        Self::invalid(param, format!("{what} is not supported by this server"))
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist."),
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::with_status(
                StatusCode::UNAUTHORIZED,
                "Incorrect or missing API key: send `Authorization: Bearer <key>`",
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::with_status(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 405 | 413 | 415 | 422 => "BadRequestError",
            401 => "AuthenticationError",
            403 => "PermissionDeniedError",
            404 => "NotFoundError",
            429 => "RateLimitError",
            503 => "ServiceUnavailableError",
            _ => "InternalServerError",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorInfo {
                message: self.message.clone(),
                kind: self.kind(),
                param: self.param.clone(),
                code: self
                    .code
                    .map_or_else(|| Json::from(self.status.as_u16()), Json::from),
            },
        }
    }

    /// The body as JSON text (for SSE error events).
    pub fn to_json_string(&self) -> String {
        serde_json::to_string(&self.body()).unwrap_or_else(|_| "{}".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        // Lets the logging middleware say why a request failed.
        resp.extensions_mut().insert(self);
        resp
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match e.kind() {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = match &e {
            EngineError::ContextLengthExceeded { .. } | EngineError::ExceedsKvCache { .. } => {
                Some("context_length_exceeded")
            }
            _ => None,
        };
        Self {
            code,
            ..Self::with_status(status, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let e = serde_json::to_value(ApiError::invalid("top_p", "bad").body()).unwrap_or_default();
        assert_eq!(
            e,
            serde_json::json!({"error": {"message": "bad", "type": "BadRequestError", "param": "top_p", "code": 400}})
        );
        let e = serde_json::to_value(ApiError::model_not_found("m").body()).unwrap_or_default();
        assert_eq!(e["error"]["code"], "model_not_found");
        assert_eq!(e["error"]["type"], "NotFoundError");
        let e: ApiError = EngineError::QueueFull { limit: 3 }.into();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        let e: ApiError = EngineError::EngineDead.into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let e: ApiError = EngineError::ContextLengthExceeded {
            prompt_tokens: 5,
            max_tokens: 10,
            max_model_len: 8,
        }
        .into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, Some("context_length_exceeded"))
        );
    }
}
