//! POST /v1/completions.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use qwen3_engine::FinishReason;

use super::{
    collect, completion_logprobs, echo_logprobs, finish_str, logged_json, merge_streams,
    prompt_logprobs_json, sse, stop_reason_json, submit_all, Collected, GenLog, TokenNames,
};
use crate::error::ApiError;
use crate::openai::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, Prompt, Usage,
};
use crate::server::{body_bytes, new_id, now_secs, AppState, RequestId, St};
use crate::tokenize::encode_bounded;

fn encode(s: &AppState, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, ApiError> {
    let max_len = s.config.max_model_len;
    encode_bounded(&s.tokenizer, text, add_special_tokens, max_len, "prompt")
        .map(|e| e.get_ids().to_vec())
}

/// Distinct finish reasons, for the log line.
fn summary(reasons: &[Option<&'static str>]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for r in reasons.iter().map(|r| r.unwrap_or("none")) {
        if !seen.contains(&r) {
            seen.push(r);
        }
    }
    seen.join(",")
}

/// A non-streamed choice's logprobs: the echoed prompt's (when echoing), then the generated
/// tokens' (unless `max_tokens` was 0), with text offsets running on from the echo's.
fn choice_logprobs(
    names: TokenNames<'_>,
    req: &CompletionRequest,
    prompt: &[u32],
    echo: &str,
    c: &Collected,
) -> CompletionLogprobs {
    let mut offset = 0;
    let mut out = if req.echo {
        let lps = c.prompt_logprobs.as_deref().unwrap_or_default();
        echo_logprobs(names, prompt, lps, &mut offset)
    } else {
        completion_logprobs(names, &[], &mut offset)
    };
    if req.max_tokens > 0 {
        offset = offset.max(echo.chars().count());
        let gen = completion_logprobs(names, &c.logprobs, &mut offset);
        out.text_offset.extend(gen.text_offset);
        out.token_logprobs.extend(gen.token_logprobs);
        out.tokens.extend(gen.tokens);
        out.top_logprobs.extend(gen.top_logprobs);
    }
    out
}

#[utoipa::path(post, path = "/v1/completions", request_body = crate::openapi::CompletionRequestSchema, responses((status = 200, content((CompletionResponse = "application/json"), (String = "text/event-stream"))), crate::openapi::GenerationErrors))]
pub async fn completions(
    State(s): St,
    Extension(rid): Extension<RequestId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let req = CompletionRequest::parse(&body_bytes(body)?)?;
    req.check_limits(s.config.max_logprobs)?;
    let model = s.check_model(req.model.as_deref())?;
    // `max_tokens: 0` (echo only) runs as 1, its token dropped, as vLLM does.
    let echo_only = req.max_tokens == 0;
    let mut base = req.sampling.engine_request(
        &s.config.defaults,
        Some(req.max_tokens.max(1)),
        req.logprobs,
    )?;
    if req.echo && req.logprobs.is_some() {
        // As vLLM: the echoed prompt's logprobs are prompt logprobs of the same count.
        base.sampling.prompt_logprobs = base.sampling.prompt_logprobs.max(req.logprobs);
    }
    let keep_prompt = base.sampling.prompt_logprobs.is_some();
    base.sampling.seed = s.seed(base.sampling.seed);
    base.sampling.structured =
        super::structured::compile(&s, req.sampling.structured.clone(), None).await?;
    // (token ids, echo text) per prompt.
    let prompts: Vec<(Vec<u32>, String)> = match &req.prompt {
        Prompt::Text(t) => vec![(encode(&s, t, req.add_special_tokens)?, t.clone())],
        Prompt::Texts(ts) => ts
            .iter()
            .map(|t| Ok((encode(&s, t, req.add_special_tokens)?, t.clone())))
            .collect::<Result<_, ApiError>>()?,
        Prompt::Ids(ids) => vec![(ids.clone(), String::new())],
        Prompt::IdLists(l) => l.iter().map(|ids| (ids.clone(), String::new())).collect(),
    };
    let id = new_id("cmpl");
    let n = req.sampling.n;
    let mut streams = Vec::new();
    let mut echoes = Vec::new();
    // Per choice, its prompt ids where prompt logprobs will be shown.
    let mut prompt_ids = Vec::new();
    // Per choice, its prompt ids for `return_token_ids`.
    let mut all_prompt_ids = Vec::new();
    let mut queued = Vec::with_capacity(prompts.len());
    for (p, (ids, text)) in prompts.into_iter().enumerate() {
        let echo = match (req.echo, text.is_empty()) {
            (false, _) => String::new(),
            (true, false) => text,
            (true, true) => s.tokenizer.decode(&ids, false).unwrap_or_default(),
        };
        let kept = if keep_prompt { ids.clone() } else { Vec::new() };
        if req.sampling.return_token_ids {
            all_prompt_ids.extend(std::iter::repeat_n(ids.clone(), n as usize));
        }
        prompt_ids.extend(std::iter::repeat_n(kept, n as usize));
        echoes.extend(std::iter::repeat_n(echo, n as usize));
        queued.push((format!("{id}-{p}"), ids));
    }
    streams.extend(submit_all(&s, &base, queued, n, "prompt")?);
    let created = now_secs();
    let mut log = GenLog::new(
        &rid.0,
        "/v1/completions",
        start,
        streams.len(),
        req.sampling.stream,
    );
    let n = n as usize;
    let as_ids = req.sampling.return_tokens_as_token_ids;
    if !req.sampling.stream {
        let names = TokenNames::new(&s, as_ids);
        let collected = futures::future::join_all(streams.into_iter().map(collect)).await;
        if let Some(e) = collected.iter().find_map(|c| c.error()) {
            return Err(e);
        }
        let mut choices = Vec::with_capacity(collected.len());
        for (i, c) in collected.iter().enumerate() {
            if i % n == 0 {
                log.prompt_tokens += c.prompt_tokens;
                log.cached_tokens += c.cached_tokens;
            }
            if !echo_only {
                log.output_tokens += c.output_tokens;
            }
            if let Some(t) = c.first_token {
                log.first_token = Some(log.first_token.map_or(t, |f| f.min(t)));
            }
            let text = if echo_only { "" } else { c.text.as_str() };
            choices.push(CompletionChoice {
                index: i,
                text: format!("{}{}", echoes[i], text),
                logprobs: req
                    .logprobs
                    .map(|_| choice_logprobs(names, &req, &prompt_ids[i], &echoes[i], c)),
                finish_reason: finish_str(&c.finish),
                stop_reason: if echo_only {
                    serde_json::Value::Null
                } else {
                    stop_reason_json(&c.stop_reason)
                },
                prompt_logprobs: req.sampling.prompt_logprobs.map(|_| {
                    prompt_logprobs_json(&s, c.prompt_logprobs.as_deref().unwrap_or_default())
                }),
                prompt_token_ids: req
                    .sampling
                    .return_token_ids
                    .then(|| all_prompt_ids[i].clone()),
                token_ids: req.sampling.return_token_ids.then(|| {
                    if echo_only {
                        Vec::new()
                    } else {
                        c.token_ids.clone()
                    }
                }),
            });
        }
        log.done(&summary(
            &choices.iter().map(|c| c.finish_reason).collect::<Vec<_>>(),
        ));
        return Ok(logged_json(&CompletionResponse {
            id,
            object: "text_completion",
            created,
            model,
            usage: Some(Some(Usage::new(
                log.prompt_tokens,
                log.output_tokens,
                log.cached_tokens,
            ))),
            choices,
        }));
    }
    let include_usage = req.sampling.include_usage;
    let (logprobs, echo) = (req.logprobs, req.echo);
    let return_ids = req.sampling.return_token_ids;
    Ok(sse(move |tx| async move {
        let chunk = |choice: CompletionChoice| CompletionResponse {
            id: id.clone(),
            object: "text_completion",
            created,
            model: model.clone(),
            choices: vec![choice],
            usage: include_usage.then_some(None),
        };
        let echo_chunk = |i: usize, logprobs: Option<CompletionLogprobs>| CompletionChoice {
            index: i,
            text: echoes[i].clone(),
            logprobs,
            finish_reason: None,
            stop_reason: serde_json::Value::Null,
            prompt_logprobs: None,
            prompt_token_ids: None,
            token_ids: None,
        };
        // With logprobs, a choice's echo waits for its prompt logprobs (its first output).
        let echo_scored = echo && logprobs.is_some();
        if !echo_scored {
            for i in (0..echoes.len()).filter(|&i| !echoes[i].is_empty()) {
                if !tx.json(&chunk(echo_chunk(i, None))).await {
                    return log.done("client disconnected");
                }
            }
        }
        let k = echoes.len();
        let mut offsets: Vec<usize> = if echo_scored {
            vec![0; k]
        } else {
            echoes.iter().map(|e| e.chars().count()).collect()
        };
        let (mut prompt, mut output, mut cached) = (vec![0; k], vec![0; k], vec![0; k]);
        let mut finishes = vec![None; k];
        // As vLLM: with `return_token_ids`, a choice's first chunk carries its prompt ids
        // and each chunk the ids it adds.
        let mut prompt_ids_left: Vec<Option<Vec<u32>>> =
            all_prompt_ids.into_iter().map(Some).collect();
        let mut merged = merge_streams(streams);
        loop {
            let (i, o) = match tx.next_or_gone(&mut merged).await {
                Err(()) => return log.done("client disconnected"),
                Ok(None) => break,
                Ok(Some(x)) => x,
            };
            prompt[i] = o.num_prompt_tokens.max(prompt[i]);
            if let (true, Some(lps)) = (echo_scored, &o.prompt_logprobs) {
                let scored = echo_logprobs(
                    TokenNames::new(&s, as_ids),
                    &prompt_ids[i],
                    lps,
                    &mut offsets[i],
                );
                offsets[i] = offsets[i].max(echoes[i].chars().count());
                if !tx.json(&chunk(echo_chunk(i, Some(scored)))).await {
                    return log.done("client disconnected");
                }
            }
            if !echo_only {
                output[i] = o.num_output_tokens.max(output[i]);
            }
            cached[i] = o.num_cached_tokens.max(cached[i]);
            if !o.token_ids.is_empty() {
                log.first_token_now();
            }
            if let Some(FinishReason::Error(msg)) = &o.finish_reason {
                tx.send(ApiError::internal(msg.clone()).to_json_string())
                    .await;
                tx.send("[DONE]".into()).await;
                return log.done("error");
            }
            let has_logprobs = logprobs.is_some() && !o.logprobs.is_empty() && !echo_only;
            let has_ids = return_ids && !o.token_ids.is_empty() && !echo_only;
            if o.text.is_empty() && o.finish_reason.is_none() && !has_logprobs && !has_ids {
                continue; // tokens held back by the detokenizer: nothing to show yet
            }
            finishes[i] = finish_str(&o.finish_reason);
            let (text, lps) = if echo_only {
                (String::new(), &[][..])
            } else {
                (o.text, &o.logprobs[..])
            };
            let c = CompletionChoice {
                index: i,
                text,
                logprobs: logprobs.map(|_| {
                    completion_logprobs(TokenNames::new(&s, as_ids), lps, &mut offsets[i])
                }),
                finish_reason: finish_str(&o.finish_reason),
                stop_reason: if echo_only {
                    serde_json::Value::Null
                } else {
                    stop_reason_json(&o.stop_reason)
                },
                prompt_logprobs: None,
                prompt_token_ids: prompt_ids_left.get_mut(i).and_then(Option::take),
                token_ids: return_ids.then(|| if echo_only { Vec::new() } else { o.token_ids }),
            };
            if !tx.json(&chunk(c)).await {
                return log.done("client disconnected");
            }
        }
        log.prompt_tokens = prompt.iter().step_by(n).sum();
        log.cached_tokens = cached.iter().step_by(n).sum();
        log.output_tokens = output.iter().sum();
        if include_usage {
            let u = CompletionResponse {
                id: id.clone(),
                object: "text_completion",
                created,
                model: model.clone(),
                choices: Vec::new(),
                usage: Some(Some(Usage::new(
                    log.prompt_tokens,
                    log.output_tokens,
                    log.cached_tokens,
                ))),
            };
            tx.json(&u).await;
        }
        tx.send("[DONE]".into()).await;
        log.done(&summary(&finishes));
    }))
}
