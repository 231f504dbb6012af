//! POST /v1/chat/completions: the chat template, then generation, then the reasoning and
//! tool-call parsers over the output (whole, or incrementally for streams).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use qwen3_engine::FinishReason;

use super::structured::{self, tool_constraint};
use super::{
    chat_logprobs, collect, finish_str, logged_json, merge_streams, prompt_logprobs_json, sse,
    stop_reason_json, submit_all, Collected, GenLog, TokenNames,
};
use crate::chat_template::{RenderOptions, TemplateError};
use crate::error::ApiError;
use crate::openai::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionResponse, ChatDelta,
    ChatMessage, ChatRequest, ToolChoice, Usage,
};
use crate::reasoning::{prompt_opens_think, split_reasoning, ReasoningParser, THINK_END};
use crate::server::{body_bytes, new_id, now_secs, AppState, RequestId, St};
use crate::tokenize::encode_bounded;
use crate::tool_parser::{parse_tool_calls, ToolStreamParser};

/// Whether tool calls are parsed out of the output, per `tool_choice` and the server's flags
/// (vLLM's rules; "required" and named choices are enforced by a grammar, so their output
/// always parses, with or without --tool-call-parser).
fn parse_tools(s: &AppState, choice: &ToolChoice) -> Result<bool, ApiError> {
    match choice {
        ToolChoice::None => Ok(false),
        ToolChoice::Auto if s.config.enable_auto_tool_choice && s.config.tool_parser => Ok(true),
        ToolChoice::Auto => Err(ApiError::invalid(
            "tool_choice",
            "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
        )),
        ToolChoice::Required | ToolChoice::Function(_) => Ok(true),
    }
}

/// The assistant message of a whole output.
fn message(
    c: &Collected,
    reasoning: bool,
    prompt_opens: bool,
    tools: bool,
    parallel: bool,
) -> ChatMessage {
    let (reasoning_content, content) = if reasoning {
        split_reasoning(&c.text, prompt_opens)
    } else {
        (None, Some(c.text.clone()))
    };
    let (content, tool_calls) = match content
        .as_deref()
        .filter(|_| tools)
        .and_then(parse_tool_calls)
    {
        Some((before, mut calls)) => {
            if !parallel {
                calls.truncate(1);
            }
            (before, calls)
        }
        None => (content, Vec::new()),
    };
    ChatMessage {
        role: "assistant",
        content,
        reasoning: reasoning_content.clone(),
        reasoning_content,
        tool_calls,
    }
}

/// One choice's stream parsers.
struct ChoiceParsers {
    reasoning: Option<ReasoningParser>,
    tools: Option<ToolStreamParser>,
}

impl ChoiceParsers {
    /// The delta for a piece of text; `last` flushes what the parsers held back.
    fn delta(&mut self, text: &str, last: bool) -> ChatDelta {
        let mut delta = ChatDelta::default();
        let content = match &mut self.reasoning {
            Some(p) => {
                let mut d = p.push(text);
                if last {
                    let end = p.finish();
                    d.reasoning.push_str(&end.reasoning);
                    d.content.push_str(&end.content);
                }
                if !d.reasoning.is_empty() {
                    delta.reasoning = Some(d.reasoning.clone());
                    delta.reasoning_content = Some(d.reasoning);
                }
                d.content
            }
            None => text.to_string(),
        };
        let content = match &mut self.tools {
            Some(p) => {
                let mut d = p.push(&content);
                if last {
                    let end = p.finish();
                    d.content.push_str(&end.content);
                    d.tool_calls.extend(end.tool_calls);
                }
                delta.tool_calls = d.tool_calls;
                d.content
            }
            None => content,
        };
        if !content.is_empty() {
            delta.content = Some(content);
        }
        delta
    }
}

#[utoipa::path(post, path = "/v1/chat/completions", request_body = crate::openapi::ChatRequestSchema, responses((status = 200, content((ChatCompletionResponse = "application/json"), (String = "text/event-stream"))), crate::openapi::GenerationErrors))]
pub async fn chat_completions(
    State(s): St,
    Extension(rid): Extension<RequestId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let req = ChatRequest::parse(&body_bytes(body)?)?;
    req.check_limits(s.config.max_logprobs)?;
    let model = s.check_model(req.model.as_deref())?;
    let tools = parse_tools(&s, &req.tool_choice)?;
    let template = s.template.as_ref().ok_or_else(|| {
        ApiError::bad_request("this model has no chat template; use /v1/completions")
    })?;
    let prompt = template
        .render_with(
            &req.messages,
            &RenderOptions {
                tools: req.tools.as_deref(),
                add_generation_prompt: req.add_generation_prompt,
                continue_final_message: req.continue_final_message,
                kwargs: Some(&req.chat_template_kwargs),
            },
        )
        .map_err(|e| match e {
            TemplateError::InvalidMessages(m) => ApiError::invalid("messages", m),
            other => ApiError::bad_request(other.to_string()),
        })?;
    // The template wrote the special tokens; vLLM adds none for chat.
    let max_len = s.config.max_model_len;
    let ids = encode_bounded(&s.tokenizer, &prompt, false, max_len, "messages")?
        .get_ids()
        .to_vec();
    let mut base = req
        .sampling
        .engine_request(&s.config.defaults, req.max_tokens, req.logprobs)?;
    base.sampling.seed = s.seed(base.sampling.seed);
    let tools_forced = tool_constraint(
        req.tools.as_deref().unwrap_or_default(),
        &req.tool_choice,
        req.parallel_tool_calls,
    );
    let constraint = match (tools_forced, req.sampling.structured.clone()) {
        (Some(_), Some(other)) => {
            return Err(ApiError::invalid(
                &other.field,
                format!(
                    "`{}` cannot be combined with a `tool_choice` that forces a tool call",
                    other.field
                ),
            ))
        }
        (forced, other) => forced.or(other),
    };
    // With thinking on, the constraint starts after the reasoning, as vLLM's does.
    let thinking = s.config.reasoning_parser && !prompt.trim_end().ends_with(THINK_END);
    let after = thinking
        .then(|| s.tokenizer.token_to_id(THINK_END))
        .flatten();
    base.sampling.structured = structured::compile(&s, constraint, after).await?;
    let id = new_id("chatcmpl");
    let n = req.sampling.n as usize;
    let return_ids = req.sampling.return_token_ids;
    let prompt_token_ids = return_ids.then(|| ids.clone());
    let streams = submit_all(
        &s,
        &base,
        vec![(id.clone(), ids)],
        req.sampling.n,
        "messages",
    )?;
    let want_prompt_logprobs = base.sampling.prompt_logprobs.is_some();
    let reasoning = s.config.reasoning_parser;
    let prompt_opens = reasoning && prompt_opens_think(&prompt);
    let created = now_secs();
    let mut log = GenLog::new(
        &rid.0,
        "/v1/chat/completions",
        start,
        n,
        req.sampling.stream,
    );
    let parallel = req.parallel_tool_calls;
    let want_logprobs = req.logprobs.is_some();
    let tokens_as_ids = req.sampling.return_tokens_as_token_ids;
    if !req.sampling.stream {
        let names = TokenNames::new(&s, tokens_as_ids);
        let collected = futures::future::join_all(streams.into_iter().map(collect)).await;
        if let Some(e) = collected.iter().find_map(|c| c.error()) {
            return Err(e);
        }
        let mut choices = Vec::with_capacity(n);
        for (i, c) in collected.iter().enumerate() {
            log.prompt_tokens = c.prompt_tokens;
            log.cached_tokens = c.cached_tokens;
            log.output_tokens += c.output_tokens;
            if let Some(t) = c.first_token {
                log.first_token = Some(log.first_token.map_or(t, |f| f.min(t)));
            }
            let message = message(c, reasoning, prompt_opens, tools, parallel);
            let finish_reason = if message.tool_calls.is_empty() {
                finish_str(&c.finish)
            } else {
                Some("tool_calls")
            };
            choices.push(ChatChoice {
                index: i,
                message,
                logprobs: want_logprobs.then(|| chat_logprobs(names, &c.logprobs)),
                finish_reason,
                stop_reason: stop_reason_json(&c.stop_reason),
                token_ids: return_ids.then(|| c.token_ids.clone()),
            });
        }
        log.done(
            choices
                .first()
                .and_then(|c| c.finish_reason)
                .unwrap_or("none"),
        );
        return Ok(logged_json(&ChatCompletionResponse {
            id,
            object: "chat.completion",
            created,
            model,
            usage: Usage::new(log.prompt_tokens, log.output_tokens, log.cached_tokens),
            prompt_logprobs: want_prompt_logprobs.then(|| {
                let lps = collected.first().and_then(|c| c.prompt_logprobs.as_deref());
                prompt_logprobs_json(&s, lps.unwrap_or_default())
            }),
            prompt_token_ids,
            choices,
        }));
    }
    let include_usage = req.sampling.include_usage;
    Ok(sse(move |tx| async move {
        let chunk = |choice: ChatChunkChoice| ChatCompletionChunk {
            id: id.clone(),
            object: "chat.completion.chunk",
            created,
            model: model.clone(),
            choices: vec![choice],
            usage: include_usage.then_some(None),
            prompt_token_ids: None,
        };
        // As OpenAI: each choice starts with the role.
        for i in 0..n {
            let first = ChatChunkChoice {
                index: i,
                delta: ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..ChatDelta::default()
                },
                logprobs: None,
                finish_reason: None,
                stop_reason: None,
                token_ids: None,
            };
            // As vLLM: with `return_token_ids`, each choice's first chunk carries the
            // prompt's ids, and every chunk the ids it adds.
            let first = ChatCompletionChunk {
                prompt_token_ids: prompt_token_ids.clone(),
                ..chunk(first)
            };
            if !tx.json(&first).await {
                return log.done("client disconnected");
            }
        }
        let mut parsers: Vec<ChoiceParsers> = (0..n)
            .map(|_| ChoiceParsers {
                reasoning: reasoning.then(|| ReasoningParser::new(prompt_opens)),
                tools: tools.then(|| ToolStreamParser::new(parallel)),
            })
            .collect();
        let (mut output, mut finish) = (vec![0; n], None);
        let mut merged = merge_streams(streams);
        loop {
            let (i, o) = match tx.next_or_gone(&mut merged).await {
                Err(()) => return log.done("client disconnected"),
                Ok(None) => break,
                Ok(Some(x)) => x,
            };
            log.prompt_tokens = log.prompt_tokens.max(o.num_prompt_tokens);
            log.cached_tokens = log.cached_tokens.max(o.num_cached_tokens);
            output[i] = o.num_output_tokens.max(output[i]);
            if !o.token_ids.is_empty() {
                log.first_token_now();
            }
            if let Some(FinishReason::Error(msg)) = &o.finish_reason {
                tx.send(ApiError::internal(msg.clone()).to_json_string())
                    .await;
                tx.send("[DONE]".into()).await;
                return log.done("error");
            }
            let last = o.finish_reason.is_some();
            let delta = parsers[i].delta(&o.text, last);
            let logprobs = (want_logprobs && !o.logprobs.is_empty())
                .then(|| chat_logprobs(TokenNames::new(&s, tokens_as_ids), &o.logprobs));
            let has_ids = return_ids && !o.token_ids.is_empty();
            if delta.is_empty() && !last && logprobs.is_none() && !has_ids {
                continue;
            }
            let finish_reason = match &parsers[i].tools {
                Some(t) if last && t.called() => Some("tool_calls"),
                _ => finish_str(&o.finish_reason),
            };
            finish = finish.or(finish_reason);
            let c = ChatChunkChoice {
                index: i,
                delta,
                logprobs,
                finish_reason,
                stop_reason: last.then(|| stop_reason_json(&o.stop_reason)),
                token_ids: return_ids.then(|| o.token_ids.clone()),
            };
            if !tx.json(&chunk(c)).await {
                return log.done("client disconnected");
            }
        }
        log.output_tokens = output.iter().sum();
        if include_usage {
            let u = ChatCompletionChunk {
                id: id.clone(),
                object: "chat.completion.chunk",
                created,
                model: model.clone(),
                choices: Vec::new(),
                usage: Some(Some(Usage::new(
                    log.prompt_tokens,
                    log.output_tokens,
                    log.cached_tokens,
                ))),
                prompt_token_ids: None,
            };
            tx.json(&u).await;
        }
        tx.send("[DONE]".into()).await;
        log.done(finish.unwrap_or("none"));
    }))
}
