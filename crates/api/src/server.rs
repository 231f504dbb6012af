//! The HTTP server: OpenAI routes, vLLM's extra endpoints, auth, request ids, metrics.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use qwen3_engine::{
    EngineHandle, EngineRequest, FinishReason, RequestOutput, RequestStream, StopReason,
    TokenLogprob,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::info;

use crate::error::ApiError;
use crate::openai::{parse_body, ChatRequest, CompletionRequest, Prompt, Sampling};
use crate::parsers::{split_reasoning, split_tool_calls, StreamParser, ToolCall};
use crate::template::ChatTemplate;
use qwen3_engine::batch::SamplingParams;

/// Sampling defaults from the model's generation_config.json, used where a request is silent.
#[derive(Clone, Debug, Default)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub served_model_names: Vec<String>,
    /// What /v1/models reports as `root` (the model path).
    pub model_root: String,
    pub max_model_len: usize,
    pub api_key: Option<String>,
    /// `--reasoning-parser qwen3`.
    pub reasoning_parser: bool,
    /// `--tool-call-parser hermes`.
    pub tool_parser: bool,
    pub enable_auto_tool_choice: bool,
    pub defaults: SamplingDefaults,
    pub max_body_bytes: usize,
    /// `--seed`: requests without a seed get `seed + n` for the n-th such request, so a
    /// server started with the same seed and fed the same requests gives the same outputs.
    pub default_seed: Option<u64>,
}

pub struct AppState {
    pub config: ApiConfig,
    pub engine: EngineHandle,
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    pub template: Option<ChatTemplate>,
}

type St = State<Arc<AppState>>;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_id(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{prefix}-{:016x}{:04x}",
        nanos,
        N.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

/// Byte-wise equality that takes the same time wherever the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

async fn auth(State(s): St, req: Request, next: Next) -> Response {
    if let Some(key) = &s.config.api_key {
        if req.uri().path().starts_with("/v1") {
            let given = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
                return ApiError::with_status(
                    StatusCode::UNAUTHORIZED,
                    "invalid or missing API key",
                )
                .into_response();
            }
        }
    }
    next.run(req).await
}

#[derive(Clone)]
struct RequestId(String);

async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .map(str::to_string)
        .unwrap_or_else(|| new_id("req"));
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::with_status(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn(request_id))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops accepting and lets open responses finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn body_bytes(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::with_status(e.status(), e.body_text()))
}

fn check_model(s: &AppState, model: Option<&str>) -> Result<String, ApiError> {
    let first = s
        .config
        .served_model_names
        .first()
        .cloned()
        .unwrap_or_default();
    match model {
        None | Some("") => Ok(first),
        Some(m) if s.config.served_model_names.iter().any(|n| n == m) => Ok(m.to_string()),
        Some(m) => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{m}` does not exist."),
            param: Some("model".into()),
        }),
    }
}

/// Validated sampling parameters and engine request fields, shared by both endpoints.
fn engine_request(
    s: &AppState,
    f: &Sampling,
    max_tokens: Option<u32>,
    logprobs: Option<u32>,
) -> Result<EngineRequest, ApiError> {
    let d = &s.config.defaults;
    let temperature = f.temperature.or(d.temperature).unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            "temperature must be in [0, 2]",
        ));
    }
    let top_p = f.top_p.or(d.top_p).unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", "top_p must be in (0, 1]"));
    }
    let top_k = f.top_k.or(d.top_k).unwrap_or(0);
    if top_k < -1 {
        return Err(ApiError::invalid(
            "top_k",
            "top_k must be -1 (disabled) or at least 1",
        ));
    }
    let min_p = f.min_p.or(d.min_p).unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::invalid("min_p", "min_p must be in [0, 1]"));
    }
    let presence = f.presence_penalty.unwrap_or(0.0);
    let frequency = f.frequency_penalty.unwrap_or(0.0);
    for (name, v) in [
        ("presence_penalty", presence),
        ("frequency_penalty", frequency),
    ] {
        if !(-2.0..=2.0).contains(&v) {
            return Err(ApiError::invalid(
                name,
                format!("{name} must be in [-2, 2]"),
            ));
        }
    }
    let repetition = f.repetition_penalty.or(d.repetition_penalty).unwrap_or(1.0);
    if repetition <= 0.0 || !repetition.is_finite() {
        return Err(ApiError::invalid(
            "repetition_penalty",
            "repetition_penalty must be > 0",
        ));
    }
    if let Some(n) = logprobs {
        if n > 20 {
            return Err(ApiError::invalid(
                "logprobs",
                "at most 20 logprobs can be returned",
            ));
        }
    }
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let mut logit_bias = Vec::new();
    for (k, v) in f.logit_bias.iter().flatten() {
        let id: u32 = k.parse().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("logit_bias key {k:?} is not a token id"),
            )
        })?;
        if !(-100.0..=100.0).contains(v) {
            return Err(ApiError::invalid(
                "logit_bias",
                "logit_bias values must be in [-100, 100]",
            ));
        }
        logit_bias.push((id, *v));
    }
    Ok(EngineRequest {
        request_id: String::new(),
        prompt_token_ids: Vec::new(),
        sampling: SamplingParams {
            temperature,
            top_p,
            top_k: if top_k <= 0 { 0 } else { top_k as u32 },
            min_p,
            presence_penalty: presence,
            frequency_penalty: frequency,
            repetition_penalty: repetition,
            logit_bias,
            seed: f.seed.or_else(|| {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                s.config
                    .default_seed
                    .map(|base| base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)))
            }),
            logprobs,
        },
        max_tokens,
        min_tokens: f.min_tokens.unwrap_or(0),
        stop: f.stop.as_ref().map_or_else(Vec::new, |s| match s {
            crate::openai::Stop::One(x) => vec![x.clone()],
            crate::openai::Stop::Many(v) => v.clone(),
        }),
        stop_token_ids: f.stop_token_ids.clone().unwrap_or_default(),
        ignore_eos: f.ignore_eos.unwrap_or(false),
        include_stop_str_in_output: f.include_stop_str_in_output.unwrap_or(false),
        skip_special_tokens: f.skip_special_tokens.unwrap_or(true),
    })
}

fn n_choices(f: &Sampling) -> Result<u32, ApiError> {
    let n = f.n.unwrap_or(1);
    if n == 0 || n > 128 {
        return Err(ApiError::invalid("n", "n must be between 1 and 128"));
    }
    Ok(n)
}

fn encode(s: &AppState, text: &str) -> Result<Vec<u32>, ApiError> {
    s.tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| ApiError::bad_request(format!("cannot tokenize the prompt: {e}")))
}

fn token_str(s: &AppState, id: u32) -> String {
    s.tokenizer.decode(&[id], false).unwrap_or_default()
}

/// Submits `n` copies (seeds `seed + i`) of a request; on error the earlier ones are dropped,
/// which aborts them.
fn submit_n(
    s: &AppState,
    base: &EngineRequest,
    ids: &[u32],
    n: u32,
    tag: &str,
) -> Result<Vec<RequestStream>, ApiError> {
    if ids.len() >= s.config.max_model_len {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "This model's maximum context length is {} tokens. However, your prompt has {} tokens.",
                s.config.max_model_len,
                ids.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut r = base.clone();
        r.request_id = format!("{tag}-{i}");
        r.prompt_token_ids = ids.to_vec();
        r.sampling.seed = base.sampling.seed.map(|x| x.wrapping_add(u64::from(i)));
        out.push(s.engine.submit(r)?);
    }
    Ok(out)
}

#[derive(Default)]
struct Collected {
    text: String,
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
    stop_reason: Option<StopReason>,
    prompt_tokens: usize,
    output_tokens: usize,
}

impl Collected {
    fn add(&mut self, o: RequestOutput) {
        self.text.push_str(&o.text);
        self.tokens.extend(&o.token_ids);
        self.logprobs.extend(o.logprobs);
        self.prompt_tokens = o.num_prompt_tokens.max(self.prompt_tokens);
        self.output_tokens = o.num_output_tokens.max(self.output_tokens);
        if o.finish_reason.is_some() {
            self.finish = o.finish_reason;
            self.stop_reason = o.stop_reason;
        }
    }
}

async fn collect(mut stream: RequestStream) -> Collected {
    let mut c = Collected::default();
    while let Some(o) = stream.next().await {
        c.add(o);
    }
    c
}

fn finish_str(f: &Option<FinishReason>) -> Value {
    match f {
        None => Value::Null,
        Some(FinishReason::Error(_)) => json!("error"),
        Some(r) => json!(r.as_str()),
    }
}

fn stop_reason_json(r: &Option<StopReason>) -> Value {
    match r {
        Some(StopReason::TokenId(t)) => json!(t),
        Some(StopReason::Text(s)) => json!(s),
        None => Value::Null,
    }
}

fn failed(c: &Collected) -> Option<ApiError> {
    match &c.finish {
        Some(FinishReason::Error(msg)) => Some(ApiError::with_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            msg.clone(),
        )),
        _ => None,
    }
}

fn completion_logprobs(s: &AppState, lps: &[TokenLogprob], offset0: usize) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    let mut off = offset0;
    for lp in lps {
        let t = token_str(s, lp.token_id);
        offsets.push(off);
        off += t.len();
        tokens.push(json!(t));
        token_logprobs.push(json!(lp.logprob));
        let mut m = serde_json::Map::new();
        for (id, l) in &lp.top {
            m.insert(token_str(s, *id), json!(l));
        }
        top.push(Value::Object(m));
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

fn chat_logprobs(s: &AppState, lps: &[TokenLogprob]) -> Value {
    let entry = |id: u32, l: f32| {
        let t = token_str(s, id);
        json!({"token": t, "logprob": l, "bytes": t.as_bytes()})
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|lp| {
            let mut e = entry(lp.token_id, lp.logprob);
            e["top_logprobs"] = Value::Array(lp.top.iter().map(|(id, l)| entry(*id, *l)).collect());
            e
        })
        .collect();
    json!({"content": content})
}

fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// One stream of `(choice index, output)` from the requests of all choices, as they arrive.
fn merge_streams(
    streams: Vec<RequestStream>,
) -> impl futures::Stream<Item = (usize, RequestOutput)> + Unpin {
    futures::stream::select_all(streams.into_iter().enumerate().map(|(i, st)| {
        futures::stream::unfold(st, |mut st| async move { st.next().await.map(|o| (o, st)) })
            .map(move |o| (i, o))
            .boxed()
    }))
}

fn sse_response(rx: mpsc::Receiver<String>) -> Response {
    let stream =
        ReceiverStream::new(rx).map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    Sse::new(stream).into_response()
}

fn log_done(id: &str, route: &str, prompt: usize, output: usize, start: Instant) {
    info!(
        request_id = id,
        route,
        prompt_tokens = prompt,
        output_tokens = output,
        elapsed_ms = start.elapsed().as_millis() as u64,
        "request finished"
    );
}

async fn completions(
    State(s): St,
    axum::Extension(rid): axum::Extension<RequestId>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let body = body_bytes(body)?;
    let req: CompletionRequest = parse_body(&body)?;
    let model = check_model(&s, req.model.as_deref())?;
    if req.suffix.is_some() {
        return Err(ApiError::invalid("suffix", "suffix is not supported"));
    }
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid(
            "best_of",
            "best_of must be 1 (or absent)",
        ));
    }
    let echo = req.echo.unwrap_or(false);
    if echo && req.logprobs.is_some() {
        return Err(ApiError::invalid(
            "echo",
            "echo together with logprobs (prompt logprobs) is not supported",
        ));
    }
    let n = n_choices(&req.sampling)?;
    let base = engine_request(
        &s,
        &req.sampling,
        Some(req.max_tokens.unwrap_or(16)),
        req.logprobs,
    )?;
    let prompts: Vec<Vec<u32>> = match req.prompt {
        Prompt::Text(t) => vec![encode(&s, &t)?],
        Prompt::Texts(ts) => ts.iter().map(|t| encode(&s, t)).collect::<Result<_, _>>()?,
        Prompt::Ids(ids) => vec![ids],
        Prompt::IdLists(l) => l,
    };
    if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    let mut streams = Vec::new();
    let mut echoes = Vec::new();
    for (p, ids) in prompts.iter().enumerate() {
        let text = if echo {
            s.tokenizer.decode(ids, false).unwrap_or_default()
        } else {
            String::new()
        };
        for st in submit_n(&s, &base, ids, n, &format!("{}-{p}", rid.0))? {
            streams.push(st);
            echoes.push(text.clone());
        }
    }
    let id = new_id("cmpl");
    let created = now_secs();
    let stream = req.sampling.stream.unwrap_or(false);
    let include_usage = req
        .sampling
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    if !stream {
        let collected = futures::future::join_all(streams.into_iter().map(collect)).await;
        if let Some(e) = collected.iter().find_map(failed) {
            return Err(e);
        }
        let mut prompt_tokens = 0;
        let mut completion_tokens = 0;
        let choices: Vec<Value> = collected
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i % n as usize == 0 {
                    prompt_tokens += c.prompt_tokens;
                }
                completion_tokens += c.output_tokens;
                let lp = req
                    .logprobs
                    .map(|_| completion_logprobs(&s, &c.logprobs, echoes[i].len()));
                json!({
                    "index": i,
                    "text": format!("{}{}", echoes[i], c.text),
                    "logprobs": lp,
                    "finish_reason": finish_str(&c.finish),
                    "stop_reason": stop_reason_json(&c.stop_reason),
                })
            })
            .collect();
        log_done(
            &rid.0,
            "/v1/completions",
            prompt_tokens,
            completion_tokens,
            start,
        );
        return Ok(Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage(prompt_tokens, completion_tokens, 0),
        }))
        .into_response());
    }
    let (tx, rx) = mpsc::channel::<String>(64);
    let state = s.clone();
    let logprobs = req.logprobs;
    tokio::spawn(async move {
        let chunk = |choice: Value| {
            let mut c = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": [choice]});
            if include_usage {
                c["usage"] = Value::Null;
            }
            c.to_string()
        };
        let mut merged = merge_streams(streams);
        for (i, e) in echoes.iter().enumerate() {
            if !e.is_empty()
                && tx
                    .send(chunk(
                        json!({"index": i, "text": e, "logprobs": null, "finish_reason": null}),
                    ))
                    .await
                    .is_err()
            {
                return;
            }
        }
        let mut offsets = vec![0usize; echoes.len()];
        let mut prompt_tokens = vec![0usize; echoes.len()];
        let mut output_tokens = vec![0usize; echoes.len()];
        while let Some((i, o)) = merged.next().await {
            prompt_tokens[i] = o.num_prompt_tokens;
            output_tokens[i] = o.num_output_tokens;
            if o.text.is_empty() && o.finish_reason.is_none() {
                continue;
            }
            let lp = logprobs.map(|_| completion_logprobs(&state, &o.logprobs, offsets[i]));
            offsets[i] += o.text.len();
            let c = json!({
                "index": i, "text": o.text, "logprobs": lp,
                "finish_reason": finish_str(&o.finish_reason),
                "stop_reason": stop_reason_json(&o.stop_reason),
            });
            if tx.send(chunk(c)).await.is_err() {
                return; // client gone: dropping the streams aborts the requests
            }
        }
        let p: usize = prompt_tokens.iter().step_by(n as usize).sum();
        let c: usize = output_tokens.iter().sum();
        if include_usage {
            let u = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": [], "usage": usage(p, c, 0)});
            let _ = tx.send(u.to_string()).await;
        }
        let _ = tx.send("[DONE]".into()).await;
        log_done(&rid.0, "/v1/completions", p, c, start);
    });
    Ok(sse_response(rx))
}

/// Whether the request's tools are to be parsed, per tool_choice and the server's flags.
fn tool_mode(s: &AppState, req: &ChatRequest) -> Result<bool, ApiError> {
    let has_tools = req.tools.as_ref().is_some_and(|t| !t.is_empty());
    let choice = req.tool_choice.as_ref();
    match choice {
        Some(Value::String(c)) if c == "none" => Ok(false),
        Some(Value::String(c)) if c == "auto" || c == "required" => {
            if !has_tools {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("tool_choice \"{c}\" needs tools"),
                ));
            }
            if c == "auto" && !(s.config.enable_auto_tool_choice && s.config.tool_parser) {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
                ));
            }
            Ok(true)
        }
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(|n| n.as_str())
                .ok_or_else(|| {
                    ApiError::invalid("tool_choice", "tool_choice must name a function")
                })?;
            let known = req.tools.iter().flatten().any(|t| {
                t.get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(|n| n.as_str())
                    == Some(name)
            });
            if !known {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("tool_choice names unknown function {name:?}"),
                ));
            }
            Ok(true)
        }
        Some(Value::String(c)) => Err(ApiError::invalid(
            "tool_choice",
            format!("unknown tool_choice {c:?}"),
        )),
        Some(_) => Err(ApiError::invalid("tool_choice", "invalid tool_choice")),
        // Absent: "auto" when tools are given and the server parses them, else none.
        None => Ok(has_tools && s.config.enable_auto_tool_choice && s.config.tool_parser),
    }
}

fn tool_calls_json(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect(),
    )
}

async fn chat_completions(
    State(s): St,
    axum::Extension(rid): axum::Extension<RequestId>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let body = body_bytes(body)?;
    let req: ChatRequest = parse_body(&body)?;
    let model = check_model(&s, req.model.as_deref())?;
    if let Some(rf) = &req.response_format {
        match rf.get("type").and_then(|t| t.as_str()) {
            Some("text") | None => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    "response_format",
                    format!("response_format {other:?} (structured output) is not supported"),
                ))
            }
        }
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let parse_tools = tool_mode(&s, &req)?;
    let top = if req.logprobs.unwrap_or(false) {
        Some(req.top_logprobs.unwrap_or(0))
    } else if req.top_logprobs.is_some_and(|t| t > 0) {
        return Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        ));
    } else {
        None
    };
    let n = n_choices(&req.sampling)?;
    let base = engine_request(
        &s,
        &req.sampling,
        req.max_completion_tokens.or(req.max_tokens),
        top,
    )?;
    let template = s.template.as_ref().ok_or_else(|| {
        ApiError::bad_request("this model has no chat template; use /v1/completions")
    })?;
    let tools = match req.tool_choice.as_ref() {
        Some(Value::String(c)) if c == "none" => None,
        _ => req.tools.as_deref(),
    };
    let kwargs = req.chat_template_kwargs.clone().unwrap_or_default();
    let prompt = template
        .render(
            &req.messages,
            tools,
            req.add_generation_prompt.unwrap_or(true),
            &kwargs,
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let ids = encode(&s, &prompt)?;
    let streams = submit_n(&s, &base, &ids, n, &rid.0)?;
    let id = new_id("chatcmpl");
    let created = now_secs();
    let reasoning = s.config.reasoning_parser;
    let stream = req.sampling.stream.unwrap_or(false);
    let include_usage = req
        .sampling
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    if !stream {
        let collected = futures::future::join_all(streams.into_iter().map(collect)).await;
        if let Some(e) = collected.iter().find_map(failed) {
            return Err(e);
        }
        let mut completion_tokens = 0;
        let mut prompt_tokens = 0;
        let choices: Vec<Value> = collected
            .iter()
            .enumerate()
            .map(|(i, c)| {
                completion_tokens += c.output_tokens;
                prompt_tokens = c.prompt_tokens;
                let (reasoning_content, content) = if reasoning {
                    split_reasoning(&c.text)
                } else {
                    (None, c.text.clone())
                };
                let (content, calls) = if parse_tools {
                    split_tool_calls(&content)
                } else {
                    (content, Vec::new())
                };
                let mut msg = json!({"role": "assistant", "content": content});
                if !calls.is_empty() {
                    msg["content"] = if content.trim().is_empty() {
                        Value::Null
                    } else {
                        json!(content)
                    };
                    msg["tool_calls"] = tool_calls_json(&calls);
                }
                if let Some(r) = reasoning_content {
                    msg["reasoning_content"] = json!(r);
                    msg["reasoning"] = json!(r);
                }
                let finish = if calls.is_empty() {
                    finish_str(&c.finish)
                } else {
                    json!("tool_calls")
                };
                json!({
                    "index": i, "message": msg,
                    "logprobs": top.map(|_| chat_logprobs(&s, &c.logprobs)),
                    "finish_reason": finish, "stop_reason": stop_reason_json(&c.stop_reason),
                })
            })
            .collect();
        log_done(
            &rid.0,
            "/v1/chat/completions",
            prompt_tokens,
            completion_tokens,
            start,
        );
        return Ok(Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage(prompt_tokens, completion_tokens, 0),
        }))
        .into_response());
    }
    let (tx, rx) = mpsc::channel::<String>(64);
    let state = s.clone();
    tokio::spawn(async move {
        let chunk = |choice: Value| {
            let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]});
            if include_usage {
                c["usage"] = Value::Null;
            }
            c.to_string()
        };
        for i in 0..n as usize {
            let first = json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null});
            if tx.send(chunk(first)).await.is_err() {
                return;
            }
        }
        let mut parsers: Vec<StreamParser> = (0..n)
            .map(|_| StreamParser::new(reasoning, parse_tools))
            .collect();
        let mut merged = merge_streams(streams);
        let mut prompt_tokens = 0;
        let mut output_tokens = vec![0usize; n as usize];
        while let Some((i, o)) = merged.next().await {
            prompt_tokens = o.num_prompt_tokens;
            output_tokens[i] = o.num_output_tokens;
            let last = o.finish_reason.is_some();
            let d = parsers[i].push(&o.text, last);
            let mut delta = serde_json::Map::new();
            if !d.reasoning.is_empty() {
                delta.insert("reasoning_content".into(), json!(d.reasoning));
                delta.insert("reasoning".into(), json!(d.reasoning));
            }
            if !d.content.is_empty() {
                delta.insert("content".into(), json!(d.content));
            }
            if !d.tool_calls.is_empty() {
                let calls: Vec<Value> = d
                    .tool_calls
                    .iter()
                    .map(|(idx, c)| json!({"index": idx, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
                delta.insert("tool_calls".into(), Value::Array(calls));
            }
            let lp = top
                .filter(|_| !o.logprobs.is_empty())
                .map(|_| chat_logprobs(&state, &o.logprobs));
            if delta.is_empty() && !last && lp.is_none() {
                continue;
            }
            let finish = if last && parsers[i].saw_tool_call && parse_tools {
                json!("tool_calls")
            } else {
                finish_str(&o.finish_reason)
            };
            let c = json!({"index": i, "delta": Value::Object(delta), "logprobs": lp, "finish_reason": finish});
            if tx.send(chunk(c)).await.is_err() {
                return;
            }
        }
        let c: usize = output_tokens.iter().sum();
        if include_usage {
            let u = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage(prompt_tokens, c, 0)});
            let _ = tx.send(u.to_string()).await;
        }
        let _ = tx.send("[DONE]".into()).await;
        log_done(&rid.0, "/v1/chat/completions", prompt_tokens, c, start);
    });
    Ok(sse_response(rx))
}

async fn models(State(s): St) -> Json<Value> {
    let created = now_secs();
    let data: Vec<Value> = s
        .config
        .served_model_names
        .iter()
        .map(|name| {
            json!({
                "id": name, "object": "model", "created": created, "owned_by": "qwen3-serve",
                "root": s.config.model_root, "parent": null, "max_model_len": s.config.max_model_len,
                "permission": [],
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn health(State(s): St) -> StatusCode {
    if s.engine.is_alive() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

async fn tokenize(
    State(s): St,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body_bytes(body)?;
    let v: Value = parse_body(&body)?;
    check_model(&s, v.get("model").and_then(|m| m.as_str()))?;
    let text = if let Some(p) = v.get("prompt").and_then(|p| p.as_str()) {
        p.to_string()
    } else if let Some(Value::Array(msgs)) = v.get("messages") {
        let t = s
            .template
            .as_ref()
            .ok_or_else(|| ApiError::bad_request("this model has no chat template"))?;
        let agp = v
            .get("add_generation_prompt")
            .and_then(|b| b.as_bool())
            .unwrap_or(true);
        let kwargs = v
            .get("chat_template_kwargs")
            .and_then(|k| k.as_object())
            .cloned()
            .unwrap_or_default();
        t.render(msgs, None, agp, &kwargs)
            .map_err(|e| ApiError::bad_request(e.to_string()))?
    } else {
        return Err(ApiError::invalid("prompt", "give a prompt or messages"));
    };
    let add_special = v
        .get("add_special_tokens")
        .and_then(|b| b.as_bool())
        .unwrap_or(true);
    let ids = s
        .tokenizer
        .encode(text.as_str(), add_special)
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .get_ids()
        .to_vec();
    Ok(Json(
        json!({"count": ids.len(), "max_model_len": s.config.max_model_len, "tokens": ids}),
    ))
}

async fn detokenize(
    State(s): St,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body_bytes(body)?;
    let v: Value = parse_body(&body)?;
    check_model(&s, v.get("model").and_then(|m| m.as_str()))?;
    let ids: Vec<u32> = serde_json::from_value(v.get("tokens").cloned().unwrap_or(Value::Null))
        .map_err(|_| ApiError::invalid("tokens", "tokens must be a list of token ids"))?;
    let vocab = s.tokenizer.get_vocab_size(true) as u32;
    if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
        return Err(ApiError::invalid(
            "tokens",
            format!("token id {bad} is outside the vocabulary"),
        ));
    }
    let text = s
        .tokenizer
        .decode(&ids, false)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(json!({"prompt": text})))
}

async fn metrics(State(s): St, _h: HeaderMap) -> Response {
    let text = crate::metrics::render(&s.engine.stats(), &s.config.served_model_names);
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}
