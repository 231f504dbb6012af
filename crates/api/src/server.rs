//! The HTTP server: state, router, middleware (request ids, access log, API key), serving.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use qwen3_engine::EngineHandle;
use tracing::{debug, info};

use crate::chat_template::ChatTemplate;
use crate::error::ApiError;
pub use crate::openai::SamplingDefaults;
use crate::routes;

/// What the server is configured with (the binary fills it from its command line).
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `--served-model-name`: the names requests may use; the first is reported.
    pub served_model_names: Vec<String>,
    /// What /v1/models reports as `root` (the model path).
    pub model_root: String,
    pub max_model_len: usize,
    /// `--api-key`: required as `Authorization: Bearer <key>` on /v1/*.
    pub api_key: Option<String>,
    /// `--reasoning-parser qwen3`.
    pub reasoning_parser: bool,
    /// `--tool-call-parser hermes`.
    pub tool_parser: bool,
    /// `--enable-auto-tool-choice`.
    pub enable_auto_tool_choice: bool,
    /// generation_config.json's sampling fields (`--generation-config auto`).
    pub defaults: SamplingDefaults,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// `--seed`: requests without a seed get `seed + n` for the n-th such request, so a
    /// server started with the same seed and fed the same requests gives the same outputs.
    pub default_seed: Option<u64>,
    /// `--max-logprobs`: the most `logprobs` / `top_logprobs` / `prompt_logprobs` a request
    /// may ask for.
    pub max_logprobs: u32,
}

/// Everything a request handler needs.
pub struct AppState {
    pub config: ApiConfig,
    pub engine: EngineHandle,
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    /// None when the model has none: /v1/chat/completions then answers 400.
    pub template: Option<ChatTemplate>,
    /// NPU readings for /metrics and the device-health half of /health (stays empty
    /// without NPUs or DCMI).
    pub npu: Arc<crate::npu::NpuTelemetry>,
    /// What /health reports beyond the engine's own state.
    pub health: Arc<crate::health::Health>,
    /// Compiles structured-output constraints (shared with the engine); None when the
    /// tokenizer cannot be used for them (such requests are then refused).
    pub structured: Option<Arc<qwen3_guided::Compiler>>,
}

pub(crate) type St = State<Arc<AppState>>;

impl AppState {
    /// The name to answer with: the requested one if served, the first when none is given.
    pub(crate) fn check_model(&self, model: Option<&str>) -> Result<String, ApiError> {
        let names = &self.config.served_model_names;
        match model {
            None | Some("") => Ok(names.first().cloned().unwrap_or_default()),
            Some(m) if names.iter().any(|n| n == m) => Ok(m.to_string()),
            Some(m) => Err(ApiError::model_not_found(m)),
        }
    }

    /// A request's seed, or the server's `--seed` sequence.
    pub(crate) fn seed(&self, requested: Option<u64>) -> Option<u64> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        requested.or_else(|| {
            self.config
                .default_seed
                .map(|base| base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)))
        })
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A process-unique id: `prefix-` and 24 hex digits (time and a counter).
pub(crate) fn new_id(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{prefix}-{nanos:016x}{:08x}",
        N.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff
    )
}

/// Byte-wise equality in time that depends only on the lengths, so a key cannot be guessed
/// byte by byte from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// The request id: the client's `X-Request-Id`, or a new one.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub String);

/// Set on a response whose handler logs the request itself (when generation ends).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoggedByHandler;

/// The token of `Authorization: Bearer <token>`: the scheme compared case-insensitively
/// (RFC 9110 11.1); none when the header is absent, repeated, or of another scheme.
fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let (value, None) = (values.next()?, values.next()) else {
        return None;
    };
    let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn auth(State(s): St, req: Request, next: Next) -> Response {
    // As vLLM: only the OpenAI routes need the key; health, metrics, tokenize stay open.
    if let Some(key) = &s.config.api_key {
        if req.uri().path().starts_with("/v1") {
            let given = bearer_token(req.headers()).unwrap_or("");
            if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
                return ApiError::unauthorized().into_response();
            }
        }
    }
    next.run(req).await
}

/// POST bodies must be declared JSON (415 otherwise, as FastAPI): a browser's "simple"
/// cross-origin POST (text/plain, form, multipart) then cannot drive the server.
async fn require_json(req: Request, next: Next) -> Response {
    if req.method() == axum::http::Method::POST {
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                let m = m.trim();
                m.eq_ignore_ascii_case("application/json")
                    || (m.len() > 5 && m[..m.len() - 5].contains('/') && m.ends_with("+json"))
            });
        if !json {
            return ApiError::with_status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the request body must be JSON, sent with `Content-Type: application/json`",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Request id in and out, and one access-log line per request that no handler logs itself.
async fn request_context(mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .map_or_else(|| new_id("req"), str::to_string);
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    if resp.extensions().get::<LoggedByHandler>().is_none() {
        let status = resp.status().as_u16();
        let elapsed_ms = start.elapsed().as_secs_f64() * 1e3;
        let error = resp
            .extensions()
            .get::<ApiError>()
            .map(|e| e.message.as_str());
        if (path.starts_with("/health") || path == "/metrics") && status < 400 {
            debug!(request_id = %id, %method, path, status, elapsed_ms, "request");
        } else {
            info!(request_id = %id, %method, path, status, elapsed_ms, error, "request");
        }
    }
    resp
}

/// A request body, or the error its reading met (413 beyond the limit, 408 past the body
/// deadline the connection layer sets).
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if let Some(t) = err.downcast_ref::<crate::conn::BodyTimeout>() {
                return ApiError::with_status(StatusCode::REQUEST_TIMEOUT, t.to_string());
            }
            source = err.source();
        }
        match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::with_status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than the server accepts",
            ),
            status => ApiError::with_status(status, e.body_text()),
        }
    })
}

/// A POST route that refuses bodies not declared JSON. Layered on the method's handler, not the
/// router, so a POST to a GET-only route stays a 405.
fn json_only(r: MethodRouter<Arc<AppState>>) -> MethodRouter<Arc<AppState>> {
    r.route_layer(middleware::from_fn(require_json))
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route(
            "/v1/completions",
            json_only(post(routes::completions::completions)),
        )
        .route(
            "/v1/chat/completions",
            json_only(post(routes::chat::chat_completions)),
        )
        .route("/v1/models", get(routes::misc::models))
        .route("/health", get(routes::misc::health_alias))
        .route("/health/live", get(routes::misc::health_live))
        .route("/health/ready", get(routes::misc::health_ready))
        .route("/version", get(routes::misc::version))
        .route("/tokenize", json_only(post(routes::misc::tokenize)))
        .route("/detokenize", json_only(post(routes::misc::detokenize)))
        .route("/metrics", get(routes::misc::metrics))
        .route("/openapi.json", get(routes::misc::openapi))
        .fallback(|| async { ApiError::with_status(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::with_status(
                StatusCode::METHOD_NOT_ALLOWED,
                "this method is not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

/// Serves `app` on `listener` with the default [`crate::conn::ConnLimits`] until `shutdown` resolves;
/// then stops accepting connections and lets open responses (streams included) finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::conn::serve_with(listener, app, crate::conn::ConnLimits::default(), shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"sekrit", b"sekrit"));
        assert!(!constant_time_eq(b"sekrit", b"sekriT"));
        assert!(!constant_time_eq(b"sekrit", b"sekrit2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn ids_are_unique() {
        let a = new_id("cmpl");
        let b = new_id("cmpl");
        assert_ne!(a, b);
        assert!(a.starts_with("cmpl-") && a.len() == 5 + 24, "{a}");
    }
}
