//! The engine core: request lifecycle around the scheduler and the executor.
//!
//! A request goes waiting → running → (preempted → waiting) → finished, finishing on a stop
//! string, a stop token, EOS (unless ignore_eos), max_tokens / the max_model_len cap, abort,
//! or an error. [`EngineCore`] is driven from one thread: [`crate::EngineHandle`] runs it on
//! its own thread, and tests drive it step by step. With async scheduling the executor runs
//! on a step thread of its own, one step behind the scheduler (`engine/stepping.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::batch::{Batch, Executor, PromptLogprob, SamplingParams, SeqId, StepOutput};
use crate::detokenizer::{IncrementalDetokenizer, StopStrings};
use crate::error::EngineError;
use crate::metrics::EngineStats;
use crate::scheduler::{SchedulerConfig, SeqParams, TokenStop};
use crate::step_thread::StepThread;
use crate::structured::Constraints;
use crate::Scheduler;

mod stepping;
pub use stepping::{Phase, PhaseSpan};

/// Engine limits and cache geometry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks in the cache, block 0 included (reserved as the null block).
    pub num_blocks: usize,
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Tokens computed per step, all sequences together.
    pub max_num_batched_tokens: usize,
    /// Prompt + generated tokens of one sequence.
    pub max_model_len: usize,
    pub enable_prefix_caching: bool,
    pub enable_chunked_prefill: bool,
    /// Requests accepted but not yet admitted to run; beyond it, `submit` answers QueueFull.
    pub max_waiting_requests: usize,
    /// Tokens that end generation (unless a request sets ignore_eos).
    pub eos_token_ids: Vec<u32>,
    /// vLLM's `--async-scheduling`: schedule step N+1 while the executor runs step N, on a
    /// thread of its own; step N's tokens are processed one step later. Needs an executor
    /// that resolves [`Batch::deferred_inputs`]; otherwise steps stay synchronous.
    #[serde(default)]
    pub async_scheduling: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_blocks: 4096,
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            max_model_len: 4096,
            enable_prefix_caching: true,
            enable_chunked_prefill: true,
            max_waiting_requests: 4096,
            eos_token_ids: Vec::new(),
            async_scheduling: false,
        }
    }
}

impl EngineConfig {
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidConfig(m));
        if self.block_size == 0 {
            return bad("block_size must be at least 1".into());
        }
        if self.num_blocks < 2 {
            return bad(format!(
                "num_blocks is {}; at least 2 are needed (block 0 is reserved)",
                self.num_blocks
            ));
        }
        if (self.num_blocks as u128) * (self.block_size as u128) > u32::MAX as u128 {
            return bad("num_blocks * block_size must fit in a u32 slot index".into());
        }
        if self.max_num_seqs == 0 || self.max_num_batched_tokens == 0 {
            return bad("max_num_seqs and max_num_batched_tokens must be at least 1".into());
        }
        if self.max_model_len < 2 || self.max_model_len > u32::MAX as usize {
            return bad(format!(
                "max_model_len {} is out of range",
                self.max_model_len
            ));
        }
        if self.max_waiting_requests == 0 {
            return bad("max_waiting_requests must be at least 1".into());
        }
        Ok(())
    }

    fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            block_size: self.block_size,
            num_blocks: self.num_blocks,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_model_len: self.max_model_len,
            enable_prefix_caching: self.enable_prefix_caching,
            enable_chunked_prefill: self.enable_chunked_prefill,
            eos_token_ids: self.eos_token_ids.clone(),
        }
    }

    /// Tokens one sequence can hold in KV: every usable block, plus the last sampled token
    /// (never fed back, so never stored).
    pub fn kv_capacity_tokens(&self) -> usize {
        self.num_blocks.saturating_sub(1) * self.block_size + 1
    }
}

/// A generation request, already tokenized.
#[derive(Clone, Debug)]
pub struct EngineRequest {
    pub request_id: String,
    pub prompt_token_ids: Vec<u32>,
    pub sampling: SamplingParams,
    /// None: up to max_model_len (and what the KV cache can hold for one sequence).
    pub max_tokens: Option<u32>,
    pub min_tokens: u32,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub include_stop_str_in_output: bool,
    pub skip_special_tokens: bool,
}

impl EngineRequest {
    /// A greedy request with OpenAI-like defaults (for tests and simple callers).
    pub fn new(request_id: impl Into<String>, prompt_token_ids: Vec<u32>) -> Self {
        Self {
            request_id: request_id.into(),
            prompt_token_ids,
            sampling: SamplingParams::greedy(),
            max_tokens: None,
            min_tokens: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            include_stop_str_in_output: false,
            skip_special_tokens: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum FinishReason {
    Stop,
    Length,
    Abort,
    Error(String),
}

impl FinishReason {
    /// The OpenAI / vLLM spelling ("stop", "length", "abort", "error").
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Error(_) => "error",
        }
    }
}

/// What stopped a request finished with `Stop` (vLLM's stop_reason; None for EOS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum StopReason {
    TokenId(u32),
    Text(String),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    /// Top alternatives (token, logprob), best first.
    pub top: Vec<(u32, f32)>,
}

/// One step's news for one request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestOutput {
    /// Tokens generated since the last output.
    pub token_ids: Vec<u32>,
    /// Text since the last output (may lag the tokens: broken characters and possible stop
    /// string starts are held back until resolved).
    pub text: String,
    /// One per new token when logprobs were asked for (and the executor returned them).
    pub logprobs: Vec<TokenLogprob>,
    /// Set on the last output of a request.
    pub finish_reason: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
    pub num_prompt_tokens: usize,
    /// Tokens generated so far.
    pub num_output_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
    /// With `prompt_logprobs` asked for, on the first output only: one entry per prompt token
    /// after the first (which has no logprob), in order.
    pub prompt_logprobs: Option<Vec<PromptLogprob>>,
}

impl RequestOutput {
    /// A final output with no new tokens.
    pub fn finished(reason: FinishReason) -> Self {
        Self {
            token_ids: Vec::new(),
            text: String::new(),
            logprobs: Vec::new(),
            finish_reason: Some(reason),
            stop_reason: None,
            num_prompt_tokens: 0,
            num_output_tokens: 0,
            num_cached_tokens: 0,
            prompt_logprobs: None,
        }
    }
}

/// Checks a request against the limits; returns its effective max_tokens.
pub fn validate_request(
    cfg: &EngineConfig,
    vocab_size: usize,
    req: &EngineRequest,
) -> Result<usize, EngineError> {
    let prompt = req.prompt_token_ids.len();
    if prompt == 0 {
        return Err(EngineError::InvalidRequest("the prompt is empty".into()));
    }
    if let Some(&bad) = req
        .prompt_token_ids
        .iter()
        .find(|&&t| t as usize >= vocab_size)
    {
        return Err(EngineError::InvalidRequest(format!(
            "prompt token id {bad} is outside the vocabulary (size {vocab_size})"
        )));
    }
    // Ids that reach the sampler (suppression lists, logit bias) must be in range: an
    // out-of-range id could fail the whole step, and with it every request in flight.
    if let Some(&bad) = req
        .stop_token_ids
        .iter()
        .chain(req.sampling.logit_bias.iter().map(|(t, _)| t))
        .find(|&&t| t as usize >= vocab_size)
    {
        return Err(EngineError::InvalidRequest(format!(
            "token id {bad} in stop_token_ids or logit_bias is outside the vocabulary \
             (size {vocab_size})"
        )));
    }
    let max_tokens = match req.max_tokens {
        Some(0) => {
            return Err(EngineError::InvalidRequest(
                "max_tokens must be at least 1".into(),
            ))
        }
        Some(n) => n as usize,
        None => cfg
            .max_model_len
            .min(cfg.kv_capacity_tokens())
            .saturating_sub(prompt),
    };
    if max_tokens == 0 || prompt + max_tokens > cfg.max_model_len {
        return Err(EngineError::ContextLengthExceeded {
            prompt_tokens: prompt,
            max_tokens: max_tokens.max(1),
            max_model_len: cfg.max_model_len,
        });
    }
    // The last sampled token is never stored, so the KV cache needs prompt + max_tokens - 1.
    let needed = prompt + max_tokens - 1;
    let capacity = cfg.num_blocks.saturating_sub(1) * cfg.block_size;
    if needed > capacity {
        return Err(EngineError::ExceedsKvCache {
            needed_tokens: needed,
            capacity_tokens: capacity,
        });
    }
    if !cfg.enable_chunked_prefill && prompt > cfg.max_num_batched_tokens {
        return Err(EngineError::PromptExceedsBatch {
            prompt_tokens: prompt,
            max_num_batched_tokens: cfg.max_num_batched_tokens,
        });
    }
    if req.min_tokens as usize > max_tokens {
        return Err(EngineError::InvalidRequest(format!(
            "min_tokens ({}) is larger than max_tokens ({max_tokens})",
            req.min_tokens
        )));
    }
    Ok(max_tokens)
}

/// Where a request's outputs go.
pub type OutputSink = UnboundedSender<RequestOutput>;

/// The last output of a finishing request.
enum Final {
    /// Nobody is listening.
    Silent,
    /// A final output without new tokens (abort, error).
    Empty,
    Send(RequestOutput),
}

/// Per-request state the engine keeps beside the scheduler's.
struct ReqState {
    request_id: String,
    sink: OutputSink,
    detok: IncrementalDetokenizer,
    want_logprobs: bool,
    /// Prompt logprobs gathered chunk by chunk until the first output carries them; None when
    /// not asked for or already sent.
    prompt_logprobs: Option<Vec<PromptLogprob>>,
    arrival: Instant,
    last_token: Option<Instant>,
    /// Counted in the handle's waiting-request counter until admitted or dropped.
    counted: bool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the metrics down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where steps run: inline on the engine's thread, or (async scheduling) on a step thread.
enum Runner {
    Inline(Box<dyn Executor>),
    Thread(StepThread),
}

pub struct EngineCore {
    config: EngineConfig,
    scheduler: Scheduler<ReqState>,
    runner: Runner,
    /// Batches back from the step thread, reused for the next schedule.
    spare_batches: Vec<Batch>,
    /// Host-clock spans of each phase, when recording (see [`EngineCore::record_timeline`]).
    timeline: Option<Vec<PhaseSpan>>,
    tokenizer: Arc<Tokenizer>,
    vocab_size: usize,
    batch: Batch,
    by_request_id: HashMap<String, SeqId>,
    next_seq_id: SeqId,
    stats: Arc<Mutex<EngineStats>>,
    /// Requests accepted by the handle and not yet admitted (for max_waiting_requests).
    queued: Arc<AtomicUsize>,
    constraints: Constraints,
}

impl EngineCore {
    pub fn new(
        config: EngineConfig,
        executor: Box<dyn Executor>,
        tokenizer: Arc<Tokenizer>,
    ) -> Result<Self, EngineError> {
        config.validate()?;
        let scheduler = Scheduler::new(config.scheduler_config());
        let stats = EngineStats {
            num_kv_blocks: config.num_blocks - 1,
            ..EngineStats::default()
        };
        let runner = if !config.async_scheduling {
            Runner::Inline(executor)
        } else if executor.resolves_deferred_inputs() {
            Runner::Thread(StepThread::start(executor)?)
        } else {
            tracing::warn!(
                "async scheduling asked for, but this executor cannot feed a step the tokens \
                 of the one before it; steps stay synchronous"
            );
            Runner::Inline(executor)
        };
        Ok(Self {
            vocab_size: tokenizer.get_vocab_size(true),
            scheduler,
            runner,
            spare_batches: Vec::new(),
            timeline: None,
            tokenizer,
            batch: Batch::default(),
            by_request_id: HashMap::new(),
            next_seq_id: 1 << 62,
            stats: Arc::new(Mutex::new(stats)),
            queued: Arc::new(AtomicUsize::new(0)),
            constraints: Constraints::new(None),
            config,
        })
    }

    /// Enables structured outputs: requests whose sampling parameters carry a constraint get
    /// a matcher from `compiler` (built for this model's tokenizer and vocabulary).
    pub fn with_structured(mut self, compiler: Arc<qwen3_guided::Compiler>) -> Self {
        self.constraints = Constraints::new(Some(compiler));
        self
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Requests in flight, or steps launched whose tokens are still to be processed.
    pub fn has_work(&self) -> bool {
        self.scheduler.has_work() || self.scheduler.num_launched() > 0
    }

    /// Whether steps run one ahead of their outputs (async scheduling in effect).
    pub fn is_async(&self) -> bool {
        matches!(self.runner, Runner::Thread(_))
    }

    pub fn num_running(&self) -> usize {
        self.scheduler.num_running()
    }

    pub fn num_waiting(&self) -> usize {
        self.scheduler.num_waiting()
    }

    /// KV blocks free (including evictable cached ones).
    pub fn num_free_blocks(&self) -> usize {
        self.scheduler.kv().num_free_blocks()
    }

    pub fn stats(&self) -> EngineStats {
        lock(&self.stats).clone()
    }

    pub(crate) fn shared_stats(&self) -> Arc<Mutex<EngineStats>> {
        Arc::clone(&self.stats)
    }

    pub(crate) fn queued_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.queued)
    }

    /// Queues a request; its outputs go to `sink`. Returns its engine-internal id.
    pub fn add_request(
        &mut self,
        req: EngineRequest,
        sink: OutputSink,
    ) -> Result<SeqId, EngineError> {
        let seq_id = self.next_seq_id;
        self.next_seq_id += 1;
        self.add_request_with_id(seq_id, req, sink, Instant::now(), false)?;
        Ok(seq_id)
    }

    pub(crate) fn add_request_with_id(
        &mut self,
        seq_id: SeqId,
        req: EngineRequest,
        sink: OutputSink,
        arrival: Instant,
        counted: bool,
    ) -> Result<(), EngineError> {
        let max_tokens = validate_request(&self.config, self.vocab_size, &req)?;
        if self.by_request_id.contains_key(&req.request_id) {
            return Err(EngineError::InvalidRequest(format!(
                "request id {:?} is already in flight",
                req.request_id
            )));
        }
        let detok = IncrementalDetokenizer::new(
            Arc::clone(&self.tokenizer),
            &req.prompt_token_ids,
            req.skip_special_tokens,
            StopStrings {
                stop: req.stop,
                include_stop_str_in_output: req.include_stop_str_in_output,
                min_tokens: req.min_tokens as usize,
            },
        );
        if let Some(spec) = &req.sampling.structured {
            self.constraints.add(seq_id, spec)?;
        }
        let state = ReqState {
            request_id: req.request_id.clone(),
            sink,
            detok,
            want_logprobs: req.sampling.logprobs.is_some(),
            prompt_logprobs: req
                .sampling
                .prompt_logprobs
                .map(|_| Vec::with_capacity(req.prompt_token_ids.len().saturating_sub(1))),
            arrival,
            last_token: None,
            counted,
        };
        let params = SeqParams {
            seq_id,
            prompt: req.prompt_token_ids,
            sampling: Arc::new(req.sampling),
            max_tokens,
            min_tokens: req.min_tokens as usize,
            stop_token_ids: req.stop_token_ids,
            ignore_eos: req.ignore_eos,
        };
        if let Err(e) = self.scheduler.add(params, state) {
            self.constraints.remove(seq_id);
            return Err(EngineError::InvalidRequest(e.to_string()));
        }
        self.by_request_id.insert(req.request_id, seq_id);
        self.publish_gauges(&mut lock(&self.stats));
        Ok(())
    }

    /// Aborts a request by its API id (no-op if unknown or finished).
    pub fn abort_request(&mut self, request_id: &str) -> bool {
        match self.by_request_id.get(request_id) {
            Some(&seq_id) => self.abort_seq(seq_id),
            None => false,
        }
    }

    /// Aborts a request by its engine id, freeing its KV blocks at once.
    pub fn abort_seq(&mut self, seq_id: SeqId) -> bool {
        let Some(slot) = self.scheduler.slot_of(seq_id) else {
            return false;
        };
        self.finish_slot(slot, FinishReason::Abort, None, Final::Empty);
        self.publish_gauges(&mut lock(&self.stats));
        true
    }

    /// Aborts everything in flight (shutdown).
    pub fn abort_all(&mut self) {
        loop {
            let next = match self.scheduler.running().last() {
                Some(&slot) => Some(slot),
                None => self.scheduler.waiting().next(),
            };
            let Some(slot) = next else { break };
            self.finish_slot(slot, FinishReason::Abort, None, Final::Empty);
        }
        self.publish_gauges(&mut lock(&self.stats));
    }

    /// Appends each sequence's new prompt logprobs to what it has gathered. A recomputation
    /// after preemption repeats positions already gathered (or sent): those are skipped.
    fn gather_prompt_logprobs(&mut self, out: &mut StepOutput) {
        for p in out.prompt_logprobs.drain(..) {
            let Some(slot) = self.scheduler.slot_of(p.seq_id) else {
                continue;
            };
            let Some(seq) = self.scheduler.seq_mut(slot) else {
                continue;
            };
            let Some(have) = seq.payload.prompt_logprobs.as_mut() else {
                continue;
            };
            // `have[i]` scores prompt token `i + 1`.
            let skip = (have.len() + 1).saturating_sub(p.first_index);
            if p.first_index <= have.len() + 1 {
                have.extend(p.entries.into_iter().skip(skip));
            }
        }
    }

    fn process_outputs(&mut self, out: &mut StepOutput) {
        let now = Instant::now();
        let stats_arc = Arc::clone(&self.stats);
        for i in 0..self.scheduler.events().len() {
            let ev = self.scheduler.events()[i];
            let Some(seq) = self.scheduler.seq_mut(ev.slot) else {
                continue;
            };
            let num_prompt_tokens = seq.num_prompt_tokens();
            let num_output_tokens = seq.num_output_tokens();
            let num_cached_tokens = seq.num_cached_tokens();
            let seq_id = seq.seq_id();
            let st = &mut seq.payload;
            {
                let mut stats = lock(&stats_arc);
                stats.generation_tokens_total += 1;
                match st.last_token {
                    None => {
                        stats.prompt_tokens_total += num_prompt_tokens as u64;
                        stats
                            .time_to_first_token
                            .observe(now.duration_since(st.arrival).as_secs_f64());
                    }
                    Some(t) => stats
                        .inter_token_latency
                        .observe(now.duration_since(t).as_secs_f64()),
                }
            }
            st.last_token = Some(now);

            let mut finish = match ev.stop {
                None => None,
                Some(TokenStop::Length) => Some((FinishReason::Length, None)),
                Some(TokenStop::Eos) => Some((FinishReason::Stop, None)),
                Some(TokenStop::StopToken(t)) => {
                    Some((FinishReason::Stop, Some(StopReason::TokenId(t))))
                }
            };
            let stop_terminated = matches!(ev.stop, Some(TokenStop::Eos | TokenStop::StopToken(_)));
            match st.detok.push(ev.token, stop_terminated) {
                Ok(Some(i)) => {
                    let s = st.detok.stop_strings().get(i).cloned().unwrap_or_default();
                    finish = Some((FinishReason::Stop, Some(StopReason::Text(s))));
                }
                Ok(None) => {
                    if finish.is_some() {
                        if let Err(e) = st.detok.flush() {
                            finish = Some((FinishReason::Error(e.to_string()), None));
                        }
                    }
                }
                Err(e) => finish = Some((FinishReason::Error(e.to_string()), None)),
            }
            // A token the grammar could not vouch for ends the request (its text is kept).
            let structured = match self.constraints.failure(seq_id) {
                Some(e) => Err(e),
                None => self.constraints.advance(seq_id, ev.token),
            };
            if let Err(e) = structured {
                finish = Some((FinishReason::Error(e), None));
            }
            let text = st.detok.take_delta(finish.is_some());
            let mut logprobs = Vec::new();
            if st.want_logprobs {
                if let Some(o) = out.outputs.get_mut(ev.output_index) {
                    if let Some(lp) = o.sampled.logprob {
                        logprobs.push(crate::TokenLogprob {
                            token_id: ev.token,
                            logprob: lp,
                            top: std::mem::take(&mut o.sampled.top_logprobs),
                        });
                    }
                }
            }
            let (finish_reason, stop_reason) = match &finish {
                Some((r, s)) => (Some(r.clone()), s.clone()),
                None => (None, None),
            };
            let output = RequestOutput {
                token_ids: vec![ev.token],
                text,
                logprobs,
                finish_reason,
                stop_reason,
                num_prompt_tokens,
                num_output_tokens,
                num_cached_tokens,
                prompt_logprobs: st.prompt_logprobs.take(),
            };
            match finish {
                Some((reason, stop)) => {
                    self.finish_slot(ev.slot, reason, stop, Final::Send(output));
                }
                None => {
                    if st.sink.send(output).is_err() {
                        // The client is gone (stream dropped): abort now, without waiting
                        // for the abort command.
                        self.finish_slot(ev.slot, FinishReason::Abort, None, Final::Silent);
                    }
                }
            }
        }
    }

    /// Removes a request, frees its blocks and records its end, then sends its final output:
    /// a client that sees its stream end also sees the request gone from the stats.
    fn finish_slot(
        &mut self,
        slot: usize,
        reason: FinishReason,
        stop_reason: Option<StopReason>,
        last: Final,
    ) {
        let Some(seq) = self.scheduler.finish(slot) else {
            return;
        };
        self.constraints.remove(seq.seq_id());
        let st = &seq.payload;
        if st.counted {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        if self.by_request_id.get(&st.request_id) == Some(&seq.seq_id()) {
            self.by_request_id.remove(&st.request_id);
        }
        {
            let mut stats = lock(&self.stats);
            stats
                .e2e_request_latency
                .observe(st.arrival.elapsed().as_secs_f64());
            let c = &mut stats.request_success_total;
            match &reason {
                FinishReason::Stop => c.stop += 1,
                FinishReason::Length => c.length += 1,
                FinishReason::Abort => c.abort += 1,
                FinishReason::Error(_) => c.error += 1,
            }
            self.publish_gauges(&mut stats);
        }
        let output = match last {
            Final::Silent => return,
            Final::Send(o) => o,
            Final::Empty => RequestOutput {
                stop_reason,
                num_prompt_tokens: seq.num_prompt_tokens(),
                num_output_tokens: seq.num_output_tokens(),
                num_cached_tokens: seq.num_cached_tokens(),
                ..RequestOutput::finished(reason)
            },
        };
        let _ = st.sink.send(output);
    }

    fn publish_gauges(&self, stats: &mut EngineStats) {
        stats.num_running = self.scheduler.num_running();
        stats.num_waiting = self.scheduler.num_waiting();
        stats.kv_cache_usage = self.scheduler.kv().usage();
        stats.num_preemptions_total = self.scheduler.num_preemptions();
        let (q, h) = self.scheduler.kv().prefix_cache_counters();
        stats.prefix_cache_queries_total = q;
        stats.prefix_cache_hits_total = h;
    }
}
