//! Route handlers, and what the two generation routes share: submitting choices, collecting
//! or merging their outputs, logprobs, SSE, and the one log line per request.

pub mod chat;
pub mod completions;
pub mod misc;
mod structured;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use qwen3_engine::batch::PromptLogprob;
use qwen3_engine::{
    EngineError, EngineRequest, FinishReason, RequestOutput, RequestStream, StopReason,
    TokenLogprob,
};
use serde::Serialize;
use serde_json::{Map, Value as Json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::info;

use crate::error::ApiError;
use crate::openai::{
    finite_logprob, ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, PromptLogprobs,
    RankedLogprob, TopLogprob,
};
use crate::server::{AppState, LoggedByHandler};
use crate::tokenize::prompt_too_long;

/// Checks that a prompt of `prompt_len` tokens leaves room to generate.
fn check_context(
    s: &AppState,
    base: &EngineRequest,
    prompt_len: usize,
    param: &str,
) -> Result<(), ApiError> {
    let max_len = s.config.max_model_len;
    let context_error = |msg: String| ApiError {
        code: Some("context_length_exceeded"),
        ..ApiError::invalid(param, msg)
    };
    if prompt_len >= max_len {
        return Err(prompt_too_long(param, max_len, prompt_len));
    }
    if let Some(max_tokens) = base.max_tokens {
        if prompt_len + max_tokens as usize > max_len {
            return Err(ApiError {
                param: Some("max_tokens".into()),
                ..context_error(format!(
                    "This model's maximum context length is {max_len} tokens. However, you requested {} tokens ({prompt_len} in the input, {max_tokens} in the completion). Please reduce the length of the input or the completion.",
                    prompt_len + max_tokens as usize,
                ))
            });
        }
    }
    Ok(())
}

/// Submits `n` choices of each prompt (`(request-id prefix, token ids)`; seeds `seed + i`
/// when seeded), all or none: every prompt is checked, then places for all the sequences
/// are reserved in the waiting queue, and only then is anything queued. A request that
/// could never fit the queue is a 400 naming the limit; one that does not fit now, a 429.
pub(crate) fn submit_all(
    s: &AppState,
    base: &EngineRequest,
    prompts: Vec<(String, Vec<u32>)>,
    n: u32,
    param: &str,
) -> Result<Vec<RequestStream>, ApiError> {
    let mut requests = Vec::with_capacity(prompts.len() * n as usize);
    for (prefix, ids) in prompts {
        check_context(s, base, ids.len(), param)?;
        let mut r = base.clone();
        r.prompt_token_ids = ids;
        s.engine.check(&r)?;
        for i in 0..n {
            let mut c = r.clone();
            c.request_id = format!("{prefix}-{i}");
            c.sampling.seed = base.sampling.seed.map(|x| x.wrapping_add(u64::from(i)));
            requests.push(c);
        }
    }
    let mut places = s.engine.reserve(requests.len()).map_err(|e| {
        let too_many = matches!(e, EngineError::TooManySequences { .. });
        let e = ApiError::from(e);
        if too_many {
            ApiError {
                param: Some("n".into()),
                ..e
            }
        } else {
            e
        }
    })?;
    // On an error the streams already queued are dropped, which aborts them.
    requests
        .into_iter()
        .map(|r| places.submit(r).map_err(ApiError::from))
        .collect()
}

/// Everything one choice produced (non-streaming).
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    /// Set when prompt logprobs were asked for.
    pub prompt_logprobs: Option<Vec<PromptLogprob>>,
    pub finish: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub cached_tokens: usize,
    pub first_token: Option<Instant>,
    pub token_ids: Vec<u32>,
}

impl Collected {
    pub fn add(&mut self, o: RequestOutput) {
        if self.first_token.is_none() && !o.token_ids.is_empty() {
            self.first_token = Some(Instant::now());
        }
        self.text.push_str(&o.text);
        self.token_ids.extend_from_slice(&o.token_ids);
        self.logprobs.extend(o.logprobs);
        if o.prompt_logprobs.is_some() {
            self.prompt_logprobs = o.prompt_logprobs;
        }
        self.prompt_tokens = self.prompt_tokens.max(o.num_prompt_tokens);
        self.output_tokens = self.output_tokens.max(o.num_output_tokens);
        self.cached_tokens = self.cached_tokens.max(o.num_cached_tokens);
        if o.finish_reason.is_some() {
            self.finish = o.finish_reason;
            self.stop_reason = o.stop_reason;
        }
    }

    /// A choice the engine failed is an error for the whole request.
    pub fn error(&self) -> Option<ApiError> {
        match &self.finish {
            Some(FinishReason::Error(msg)) => Some(ApiError::internal(msg.clone())),
            _ => None,
        }
    }
}

pub(crate) async fn collect(mut stream: RequestStream) -> Collected {
    let mut c = Collected::default();
    while let Some(o) = stream.next().await {
        c.add(o);
    }
    c
}

/// One stream of `(choice index, output)` from all choices, as outputs arrive.
pub(crate) fn merge_streams(
    streams: Vec<RequestStream>,
) -> impl Stream<Item = (usize, RequestOutput)> + Unpin + Send {
    futures::stream::select_all(streams.into_iter().enumerate().map(|(i, st)| {
        futures::stream::unfold(st, |mut st| async move { st.next().await.map(|o| (o, st)) })
            .map(move |o| (i, o))
            .boxed()
    }))
}

pub(crate) fn finish_str(f: &Option<FinishReason>) -> Option<&'static str> {
    f.as_ref().map(FinishReason::as_str)
}

pub(crate) fn stop_reason_json(r: &Option<StopReason>) -> Json {
    match r {
        Some(StopReason::TokenId(t)) => Json::from(*t),
        Some(StopReason::Text(s)) => Json::from(s.as_str()),
        None => Json::Null,
    }
}

/// A token's text as logprobs show it (a byte-level piece of a character decodes to U+FFFD,
/// as in vLLM).
pub(crate) fn token_str(s: &AppState, id: u32) -> String {
    s.tokenizer.decode(&[id], false).unwrap_or_default()
}

/// How a request's logprobs name tokens: their text, or `token_id:N` with vLLM's
/// `return_tokens_as_token_ids` (for tokens whose text is not valid UTF-8 alone).
#[derive(Clone, Copy)]
pub(crate) struct TokenNames<'a> {
    pub s: &'a AppState,
    pub as_ids: bool,
}

impl<'a> TokenNames<'a> {
    pub fn new(s: &'a AppState, as_ids: bool) -> Self {
        Self { s, as_ids }
    }

    fn name(&self, id: u32) -> String {
        if self.as_ids {
            format!("token_id:{id}")
        } else {
            token_str(self.s, id)
        }
    }
}

fn empty_completion_logprobs(n: usize) -> CompletionLogprobs {
    CompletionLogprobs {
        text_offset: Vec::with_capacity(n),
        token_logprobs: Vec::with_capacity(n),
        tokens: Vec::with_capacity(n),
        top_logprobs: Vec::with_capacity(n),
    }
}

/// Appends token `id` at `offset` (advanced past its text), with its logprob and top
/// alternatives when it has them (`null` for both otherwise).
fn push_completion_token(
    names: TokenNames<'_>,
    out: &mut CompletionLogprobs,
    id: u32,
    scored: Option<(f32, &[(u32, f32)])>,
    offset: &mut usize,
) {
    let t = names.name(id);
    out.text_offset.push(*offset);
    // Offsets run over the text, whatever the tokens are named.
    *offset += if names.as_ids {
        token_str(names.s, id).chars().count()
    } else {
        t.chars().count()
    };
    out.token_logprobs
        .push(scored.map(|(l, _)| finite_logprob(l)));
    out.top_logprobs.push(scored.map(|(l, alts)| {
        // As vLLM: the chosen token is among its top logprobs.
        let mut top = Map::new();
        top.insert(t.clone(), Json::from(finite_logprob(l)));
        for (id, l) in alts {
            top.entry(names.name(*id))
                .or_insert_with(|| Json::from(finite_logprob(*l)));
        }
        top
    }));
    out.tokens.push(t);
}

/// Completions' logprobs for some tokens; `offset` is the text offset of the first, advanced
/// past them.
pub(crate) fn completion_logprobs(
    names: TokenNames<'_>,
    lps: &[TokenLogprob],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = empty_completion_logprobs(lps.len());
    for lp in lps {
        let scored = Some((lp.logprob, &lp.top[..]));
        push_completion_token(names, &mut out, lp.token_id, scored, offset);
    }
    out
}

/// The echoed prompt's logprobs in completions' shape: the first token has none (`null`), as
/// OpenAI and vLLM return it; `offset` advances past the prompt's tokens.
pub(crate) fn echo_logprobs(
    names: TokenNames<'_>,
    prompt: &[u32],
    lps: &[PromptLogprob],
    offset: &mut usize,
) -> CompletionLogprobs {
    let mut out = empty_completion_logprobs(prompt.len());
    for (i, &id) in prompt.iter().enumerate() {
        let lp = i.checked_sub(1).and_then(|j| lps.get(j));
        let scored = lp.map(|lp| (lp.logprob, &lp.top[..]));
        push_completion_token(names, &mut out, id, scored, offset);
    }
    out
}

/// vLLM's `prompt_logprobs`: `null` first, then per prompt token its own logprob and rank
/// and the top N (ranks 1..N), keyed by token id.
pub(crate) fn prompt_logprobs_json(s: &AppState, lps: &[PromptLogprob]) -> PromptLogprobs {
    let entry = |id: u32, l: f32, rank: u32| RankedLogprob {
        logprob: finite_logprob(l),
        rank,
        decoded_token: token_str(s, id),
    };
    std::iter::once(None)
        .chain(lps.iter().map(|lp| {
            let mut m = std::collections::BTreeMap::new();
            for (r, &(id, l)) in lp.top.iter().enumerate() {
                m.insert(id, entry(id, l, r as u32 + 1));
            }
            m.insert(lp.token_id, entry(lp.token_id, lp.logprob, lp.rank));
            Some(m)
        }))
        .collect()
}

pub(crate) fn chat_logprobs(names: TokenNames<'_>, lps: &[TokenLogprob]) -> ChatLogprobs {
    let top = |id: u32, l: f32| {
        let token = names.name(id);
        TopLogprob {
            bytes: token.as_bytes().to_vec(),
            token,
            logprob: finite_logprob(l),
        }
    };
    ChatLogprobs {
        content: lps
            .iter()
            .map(|lp| {
                let t = top(lp.token_id, lp.logprob);
                ChatTokenLogprob {
                    token: t.token,
                    logprob: t.logprob,
                    bytes: t.bytes,
                    top_logprobs: lp.top.iter().map(|(id, l)| top(*id, *l)).collect(),
                }
            })
            .collect(),
    }
}

/// The one log line of a generation request, written when it ends.
pub(crate) struct GenLog {
    pub request_id: String,
    pub route: &'static str,
    pub start: Instant,
    pub first_token: Option<Instant>,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub cached_tokens: usize,
    pub n: usize,
    pub stream: bool,
}

impl GenLog {
    pub fn new(
        request_id: &str,
        route: &'static str,
        start: Instant,
        n: usize,
        stream: bool,
    ) -> Self {
        Self {
            request_id: request_id.to_string(),
            route,
            start,
            first_token: None,
            prompt_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            n,
            stream,
        }
    }

    pub fn first_token_now(&mut self) {
        self.first_token.get_or_insert_with(Instant::now);
    }

    pub fn done(&self, finish: &str) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let e2e = self.start.elapsed();
        let ttft = self.first_token.map(|t| ms(t - self.start));
        let tpot = match (self.first_token, self.output_tokens) {
            (Some(t), n) if n > self.n => {
                Some(ms(t.elapsed()) / (n - self.n) as f64 * self.n as f64)
            }
            _ => None,
        };
        info!(
            request_id = %self.request_id,
            route = self.route,
            stream = self.stream,
            n = self.n,
            prompt_tokens = self.prompt_tokens,
            cached_tokens = self.cached_tokens,
            output_tokens = self.output_tokens,
            ttft_ms = ttft,
            tpot_ms = tpot,
            e2e_ms = ms(e2e),
            finish,
            "request finished"
        );
    }
}

/// Writes a streaming response's events; `false` once the client is gone.
pub(crate) struct SseSender {
    tx: mpsc::Sender<String>,
}

impl SseSender {
    pub async fn send(&self, data: String) -> bool {
        self.tx.send(data).await.is_ok()
    }

    pub async fn json<T: Serialize>(&self, v: &T) -> bool {
        match serde_json::to_string(v) {
            Ok(s) => self.send(s).await,
            Err(e) => {
                self.send(ApiError::internal(format!("serialising a chunk: {e}")).to_json_string())
                    .await
            }
        }
    }

    /// The next item of `s`, or `Err(())` as soon as the client disconnects (dropping the
    /// engine streams then aborts their requests).
    pub async fn next_or_gone<S: Stream + Unpin>(&self, s: &mut S) -> Result<Option<S::Item>, ()> {
        tokio::select! {
            biased;
            _ = self.tx.closed() => Err(()),
            item = s.next() => Ok(item),
        }
    }
}

/// An SSE response (`data: <json>\n\n` events) whose events `task` writes.
pub(crate) fn sse<F, Fut>(task: F) -> Response
where
    F: FnOnce(SseSender) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<String>(64);
    tokio::spawn(task(SseSender { tx }));
    let events =
        ReceiverStream::new(rx).map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    let mut resp = Sse::new(events).into_response();
    resp.extensions_mut().insert(LoggedByHandler);
    resp
}

/// A JSON response for a request whose handler logged it.
pub(crate) fn logged_json<T: Serialize>(v: &T) -> Response {
    let mut resp = axum::Json(v).into_response();
    resp.extensions_mut().insert(LoggedByHandler);
    resp
}
