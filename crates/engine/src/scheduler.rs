//! The scheduler: once per step, picks which sequences run and how many tokens each computes,
//! allocates their KV slots and fills the [`Batch`].
//!
//! As vLLM V1's scheduler, there are no separate prefill and decode phases: every sequence
//! has "tokens known" and "tokens computed", and a step computes some of the difference.
//! Running sequences go first (decodes, and with chunked prefill the rest of partial
//! prefills), then waiting ones in FCFS order, within `max_num_seqs` and
//! `max_num_batched_tokens`. When the pool runs out of blocks the most recently admitted
//! running sequence is preempted: its blocks are freed and it goes back to the front of the
//! waiting queue, to be recomputed later from its prompt and generated tokens.
//!
//! Async scheduling (vLLM's `--async-scheduling`): the engine may schedule step N+1 before
//! step N's tokens have come back. A sequence sampled at N then has a token "in flight": it
//! counts as known for scheduling, its decode at N+1 feeds it through
//! [`Batch::deferred_inputs`], and it joins `tokens` (with its stop checks) when
//! [`Scheduler::update_from_output`] takes N's output. Each launched step's plan is kept
//! until then, keyed by sequence id, so a token for a sequence that finished, was aborted or
//! was freed in the meantime is dropped, never appended.
//!
//! The scheduler is generic over a per-request payload `P` (the engine keeps its output
//! channel and detokenizer there), so one slab holds everything about a request and a step
//! does no look-ups. The steady-state decode path allocates nothing: every Vec is reused.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::batch::{Batch, NewSeq, SamplingParams, ScheduledSeq, SeqId, StepOutput};
use crate::kv_cache_manager::{KvCacheManager, SeqBlocks};

/// Scheduling limits and cache geometry (the subset of the engine config the scheduler uses).
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub block_size: usize,
    pub num_blocks: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub max_model_len: usize,
    pub enable_prefix_caching: bool,
    pub enable_chunked_prefill: bool,
    pub eos_token_ids: Vec<u32>,
}

/// A sequence as submitted to the scheduler. Length limits are assumed validated.
#[derive(Clone, Debug)]
pub struct SeqParams {
    pub seq_id: SeqId,
    pub prompt: Vec<u32>,
    pub sampling: Arc<SamplingParams>,
    pub max_tokens: usize,
    pub min_tokens: usize,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqStatus {
    Waiting,
    Running,
}

/// A request's token-level state.
#[derive(Debug)]
pub struct Seq<P> {
    seq_id: SeqId,
    /// Prompt followed by generated tokens.
    tokens: Vec<u32>,
    num_prompt_tokens: usize,
    num_computed_tokens: usize,
    num_cached_tokens: usize,
    blocks: SeqBlocks,
    sampling: Arc<SamplingParams>,
    max_tokens: usize,
    min_tokens: usize,
    stop_token_ids: Vec<u32>,
    ignore_eos: bool,
    /// Ids suppressed while below min_tokens: EOS (unless ignore_eos) and stop token ids.
    suppress_ids: Vec<u32>,
    status: SeqStatus,
    /// The executor holds state for this sequence (it was in `new_seqs`, and not yet in
    /// `finished`).
    known_to_executor: bool,
    admitted_once: bool,
    num_preemptions: u32,
    /// Tokens sampled by launched steps whose ids have not come back yet (async scheduling;
    /// always 0 between steps when synchronous).
    num_in_flight: usize,
    pub payload: P,
}

impl<P> Seq<P> {
    pub fn seq_id(&self) -> SeqId {
        self.seq_id
    }
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    pub fn prompt_tokens(&self) -> &[u32] {
        &self.tokens[..self.num_prompt_tokens]
    }
    pub fn output_tokens(&self) -> &[u32] {
        &self.tokens[self.num_prompt_tokens..]
    }
    pub fn num_prompt_tokens(&self) -> usize {
        self.num_prompt_tokens
    }
    pub fn num_output_tokens(&self) -> usize {
        self.tokens.len() - self.num_prompt_tokens
    }
    pub fn num_computed_tokens(&self) -> usize {
        self.num_computed_tokens
    }
    /// Prompt tokens found in the prefix cache when first admitted.
    pub fn num_cached_tokens(&self) -> usize {
        self.num_cached_tokens
    }
    pub fn sampling(&self) -> &Arc<SamplingParams> {
        &self.sampling
    }
    pub fn status(&self) -> SeqStatus {
        self.status
    }
    pub fn num_preemptions(&self) -> u32 {
        self.num_preemptions
    }
    pub fn block_table(&self) -> &[u32] {
        self.blocks.table()
    }
    /// Tokens sampled on the device whose ids the host does not know yet.
    pub fn num_in_flight(&self) -> usize {
        self.num_in_flight
    }
    /// Prompt and generated tokens, the ones still in flight included.
    fn num_known_tokens(&self) -> usize {
        self.tokens.len() + self.num_in_flight
    }
}

/// Why the token just sampled ends its sequence (token-level checks; stop strings are the
/// detokenizer's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenStop {
    /// max_tokens reached (or the max_model_len cap).
    Length,
    /// An EOS token (and not ignore_eos).
    Eos,
    /// One of the request's stop_token_ids.
    StopToken(u32),
}

/// One sampled token, in the order of the step's sampled sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenEvent {
    pub slot: usize,
    /// Index into the step's `StepOutput::outputs`.
    pub output_index: usize,
    pub token: u32,
    pub stop: Option<TokenStop>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("sequence id {0} is already scheduled")]
    DuplicateSeq(SeqId),
    #[error("executor output does not match the batch: {0}")]
    OutputMismatch(String),
}

/// What one `schedule` call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepSummary {
    pub num_seqs: usize,
    pub num_tokens: usize,
    pub num_preempted: usize,
    /// Sequences admitted for the first time (see [`Scheduler::admitted`]).
    pub num_admitted: usize,
}

#[derive(Clone, Copy, Debug)]
struct Scheduled {
    slot: usize,
    seq_id: SeqId,
    start: usize,
    len: usize,
    sample: bool,
}

pub struct Scheduler<P> {
    cfg: SchedulerConfig,
    kv: KvCacheManager,
    slots: Vec<Option<Seq<P>>>,
    free_slots: Vec<usize>,
    by_id: HashMap<SeqId, usize>,
    /// In admission order: the last is the first to be preempted.
    running: Vec<usize>,
    waiting: VecDeque<usize>,
    scheduled: Vec<Scheduled>,
    /// Plans of the steps launched and not yet given to `update_from_output`, oldest first
    /// (at most one while synchronous, two with async scheduling).
    launched: VecDeque<Vec<Scheduled>>,
    /// Emptied plans, reused so the steady state allocates nothing.
    spare_plans: Vec<Vec<Scheduled>>,
    admitted: Vec<usize>,
    events: Vec<TokenEvent>,
    /// Finished or preempted sequences the executor still holds state for.
    pending_finished: Vec<SeqId>,
    /// Emptied `ScheduledSeq::suppressed` Vecs from earlier steps, reused.
    suppressed_pool: Vec<Vec<u32>>,
    num_preemptions: u64,
}

impl<P> Scheduler<P> {
    pub fn new(cfg: SchedulerConfig) -> Self {
        let kv = KvCacheManager::new(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching);
        let cap = cfg.max_num_seqs;
        Self {
            kv,
            slots: Vec::with_capacity(cap),
            free_slots: Vec::new(),
            by_id: HashMap::with_capacity(cap * 2),
            running: Vec::with_capacity(cap),
            waiting: VecDeque::new(),
            scheduled: Vec::with_capacity(cap),
            launched: VecDeque::with_capacity(2),
            spare_plans: Vec::with_capacity(2),
            admitted: Vec::with_capacity(cap),
            events: Vec::with_capacity(cap),
            pending_finished: Vec::with_capacity(cap),
            suppressed_pool: Vec::new(),
            num_preemptions: 0,
            cfg,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    /// Queues a sequence at the back of the waiting queue; returns its slot.
    pub fn add(&mut self, params: SeqParams, payload: P) -> Result<usize, ScheduleError> {
        if self.by_id.contains_key(&params.seq_id) {
            return Err(ScheduleError::DuplicateSeq(params.seq_id));
        }
        let num_prompt = params.prompt.len();
        // Room for every token the sequence may ever hold, so decoding never reallocates
        // (capped: a huge max_tokens should not reserve memory it will likely not use).
        let max_len = num_prompt + params.max_tokens.min(1 << 14);
        let mut tokens = params.prompt;
        tokens.reserve_exact(max_len.saturating_sub(tokens.len()));
        let mut suppress_ids = Vec::new();
        if params.min_tokens > 0 {
            if !params.ignore_eos {
                suppress_ids.extend_from_slice(&self.cfg.eos_token_ids);
            }
            suppress_ids.extend_from_slice(&params.stop_token_ids);
            suppress_ids.sort_unstable();
            suppress_ids.dedup();
        }
        let seq = Seq {
            seq_id: params.seq_id,
            tokens,
            num_prompt_tokens: num_prompt,
            num_computed_tokens: 0,
            num_cached_tokens: 0,
            blocks: SeqBlocks::with_capacity(
                max_len,
                self.cfg.block_size,
                self.cfg.enable_prefix_caching,
            ),
            sampling: params.sampling,
            max_tokens: params.max_tokens,
            min_tokens: params.min_tokens,
            stop_token_ids: params.stop_token_ids,
            ignore_eos: params.ignore_eos,
            suppress_ids,
            status: SeqStatus::Waiting,
            known_to_executor: false,
            admitted_once: false,
            num_preemptions: 0,
            num_in_flight: 0,
            payload,
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.slots[s] = Some(seq);
                s
            }
            None => {
                self.slots.push(Some(seq));
                self.slots.len() - 1
            }
        };
        self.by_id.insert(params.seq_id, slot);
        self.waiting.push_back(slot);
        Ok(slot)
    }

    pub fn seq(&self, slot: usize) -> Option<&Seq<P>> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    pub fn seq_mut(&mut self, slot: usize) -> Option<&mut Seq<P>> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    pub fn slot_of(&self, seq_id: SeqId) -> Option<usize> {
        self.by_id.get(&seq_id).copied()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Running slots, in admission order.
    pub fn running(&self) -> &[usize] {
        &self.running
    }

    /// Waiting slots, front first.
    pub fn waiting(&self) -> impl Iterator<Item = usize> + '_ {
        self.waiting.iter().copied()
    }

    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }

    /// Slots admitted for the first time by the last `schedule`.
    pub fn admitted(&self) -> &[usize] {
        &self.admitted
    }

    /// Steps scheduled (and so launched) whose outputs `update_from_output` has not taken.
    pub fn num_launched(&self) -> usize {
        self.launched.len()
    }

    /// Forgets every launched step's plan (their outputs will never come: the executor
    /// failed). Tokens they had in flight are dropped.
    pub fn forget_launched(&mut self) {
        while let Some(mut plan) = self.launched.pop_front() {
            self.release_in_flight(&plan);
            plan.clear();
            self.spare_plans.push(plan);
        }
    }

    /// Tokens sampled in the last `update_from_output`, in batch order.
    pub fn events(&self) -> &[TokenEvent] {
        &self.events
    }

    pub fn reset_prefix_cache(&mut self) {
        self.kv.reset_prefix_cache();
    }

    /// Plans one step into `batch` (cleared first, its capacity reused).
    pub fn schedule(&mut self, batch: &mut Batch) -> StepSummary {
        // Keep the suppressed-id Vecs of the last step before the batch drops them.
        for s in batch.seqs.iter_mut() {
            if s.suppressed.capacity() > 0 {
                let mut v = std::mem::take(&mut s.suppressed);
                v.clear();
                self.suppressed_pool.push(v);
            }
        }
        batch.clear();
        batch.block_size = self.cfg.block_size;
        self.scheduled.clear();
        self.admitted.clear();
        self.events.clear();

        let mut budget = self.cfg.max_num_batched_tokens;
        let mut num_preempted = 0;

        // 1. Running sequences: decodes and continuing prefill chunks.
        let mut i = 0;
        'running: while i < self.running.len() && budget > 0 {
            let slot = self.running[i];
            let Some(seq) = self.slots[slot].as_mut() else {
                // Cannot happen (finish removes from running); keep the list clean anyway.
                self.running.remove(i);
                continue;
            };
            let remaining = seq.num_known_tokens() - seq.num_computed_tokens;
            // A token still in flight may be the last the sequence can have: computing after
            // it would be wasted (and could need a block beyond what validation reserved).
            let at_limit = seq.num_in_flight > 0
                && (seq.num_output_tokens() + seq.num_in_flight >= seq.max_tokens
                    || seq.num_known_tokens() >= self.cfg.max_model_len);
            if remaining == 0 || at_limit {
                i += 1;
                continue;
            }
            let n = remaining.min(budget);
            loop {
                let Some(seq) = self.slots[slot].as_mut() else {
                    continue 'running;
                };
                if self.kv.allocate_slots(
                    &mut seq.blocks,
                    &seq.tokens,
                    seq.num_computed_tokens,
                    0,
                    n,
                ) {
                    break;
                }
                // Out of blocks: preempt the most recently admitted sequence (never one
                // already scheduled this step: those sit before index i).
                let Some(victim) = self.running.pop() else {
                    break 'running;
                };
                self.preempt(victim);
                num_preempted += 1;
                if victim == slot {
                    continue 'running;
                }
            }
            let Some(seq) = self.slots[slot].as_mut() else {
                continue;
            };
            let sample = seq.num_computed_tokens + n == seq.num_known_tokens();
            self.scheduled.push(Scheduled {
                slot,
                seq_id: seq.seq_id,
                start: seq.num_computed_tokens,
                len: n,
                sample,
            });
            seq.num_computed_tokens += n;
            seq.num_in_flight += usize::from(sample);
            budget -= n;
            i += 1;
        }

        // 2. Waiting sequences, FCFS; none in a step that had to preempt (vLLM does the same:
        // the cache is under pressure, and a just-preempted sequence must not be re-admitted
        // in the very step that freed it).
        if num_preempted == 0 {
            while budget > 0 && self.running.len() < self.cfg.max_num_seqs {
                let Some(&slot) = self.waiting.front() else {
                    break;
                };
                let Some(seq) = self.slots[slot].as_mut() else {
                    self.waiting.pop_front();
                    continue;
                };
                if seq.num_in_flight > 0 {
                    // Preempted with a token in flight: recompute once it has come back.
                    break;
                }
                // A request for prompt logprobs needs the logits of every prompt position, so
                // it recomputes its prompt instead of reading cached blocks (as vLLM does);
                // the blocks it computes are still cached for others.
                let hit = if seq.sampling.prompt_logprobs.is_some() {
                    0
                } else {
                    self.kv.find_cached_prefix(&mut seq.blocks, &seq.tokens)
                };
                let remaining = seq.tokens.len() - hit;
                let n = if self.cfg.enable_chunked_prefill
                    || remaining > self.cfg.max_num_batched_tokens
                {
                    // Without chunked prefill only a recomputation after preemption can be
                    // longer than the whole budget; it is chunked rather than stuck forever.
                    remaining.min(budget)
                } else if remaining <= budget {
                    remaining
                } else {
                    break; // the whole prompt must wait for a step with room for it
                };
                if !self
                    .kv
                    .allocate_slots(&mut seq.blocks, &seq.tokens, 0, hit, n)
                {
                    break;
                }
                self.waiting.pop_front();
                seq.status = SeqStatus::Running;
                seq.num_computed_tokens = hit;
                if !seq.admitted_once {
                    seq.admitted_once = true;
                    seq.num_cached_tokens = hit;
                    self.kv.record_prefix_lookup(seq.tokens.len(), hit);
                    self.admitted.push(slot);
                }
                seq.known_to_executor = true;
                batch.new_seqs.push(NewSeq {
                    seq_id: seq.seq_id,
                    token_ids: Arc::from(seq.tokens.as_slice()),
                    num_prompt_tokens: seq.num_prompt_tokens,
                    sampling: Arc::clone(&seq.sampling),
                });
                let sample = hit + n == seq.tokens.len();
                self.scheduled.push(Scheduled {
                    slot,
                    seq_id: seq.seq_id,
                    start: hit,
                    len: n,
                    sample,
                });
                seq.num_computed_tokens += n;
                seq.num_in_flight += usize::from(sample);
                budget -= n;
                self.running.push(slot);
            }
        }

        // 3. Lay the step out.
        let bs = self.cfg.block_size;
        let max_blocks = self
            .scheduled
            .iter()
            .filter_map(|s| self.slots[s.slot].as_ref())
            .map(|s| s.blocks.table().len())
            .max()
            .unwrap_or(0);
        batch.max_blocks_per_seq = max_blocks;
        for s in &self.scheduled {
            let Some(seq) = self.slots[s.slot].as_ref() else {
                continue;
            };
            let query_start = batch.token_ids.len() as u32;
            let end = s.start + s.len;
            let known_end = end.min(seq.tokens.len());
            batch
                .token_ids
                .extend_from_slice(&seq.tokens[s.start.min(known_end)..known_end]);
            // Inputs sampled by a step still in flight: the executor fills them in.
            for _ in known_end.max(s.start)..end {
                batch.deferred_inputs.push(batch.token_ids.len() as u32);
                batch.token_ids.push(0);
            }
            batch.positions.extend(s.start as u32..end as u32);
            let table = seq.blocks.table();
            batch
                .slot_mapping
                .extend((s.start..end).map(|pos| table[pos / bs] * bs as u32 + (pos % bs) as u32));
            batch.block_tables.extend_from_slice(table);
            batch
                .block_tables
                .resize(batch.block_tables.len() + (max_blocks - table.len()), 0);
            let mut suppressed = Vec::new();
            // Outputs before this step's token: the in-flight ones count (this step's own is
            // already among them).
            let outputs_before =
                seq.num_output_tokens() + seq.num_in_flight - usize::from(s.sample);
            if s.sample && outputs_before < seq.min_tokens && !seq.suppress_ids.is_empty() {
                suppressed = self.suppressed_pool.pop().unwrap_or_default();
                suppressed.extend_from_slice(&seq.suppress_ids);
            }
            batch.seqs.push(ScheduledSeq {
                seq_id: seq.seq_id,
                query_start,
                query_len: s.len as u32,
                context_len: end as u32,
                sample: s.sample,
                suppressed,
            });
        }
        // Finished ids travel with the next executed step; an empty step is not executed.
        if !batch.seqs.is_empty() {
            batch.finished.append(&mut self.pending_finished);
            let mut plan = self.spare_plans.pop().unwrap_or_default();
            plan.extend_from_slice(&self.scheduled);
            self.launched.push_back(plan);
        }
        StepSummary {
            num_seqs: batch.seqs.len(),
            num_tokens: batch.token_ids.len(),
            num_preempted,
            num_admitted: self.admitted.len(),
        }
    }

    /// Takes the output of the oldest launched step: appends its sampled tokens and runs the
    /// token-level stop checks; the results are in [`Scheduler::events`]. A token for a
    /// sequence no longer live (finished or aborted since the step was scheduled) is dropped.
    /// On a mismatch with the step's plan nothing is appended, and the plan is dropped.
    pub fn update_from_output(&mut self, out: &StepOutput) -> Result<(), ScheduleError> {
        self.events.clear();
        let Some(mut plan) = self.launched.pop_front() else {
            return Err(ScheduleError::OutputMismatch(
                "an output for a step that was never scheduled".into(),
            ));
        };
        let result = self.check_output(&plan, out);
        if result.is_ok() {
            self.apply_output(&plan, out);
        } else {
            self.release_in_flight(&plan);
        }
        plan.clear();
        self.spare_plans.push(plan);
        result
    }

    fn check_output(&self, plan: &[Scheduled], out: &StepOutput) -> Result<(), ScheduleError> {
        let mut k = 0;
        for s in plan.iter().filter(|s| s.sample) {
            match out.outputs.get(k) {
                Some(o) if o.seq_id == s.seq_id => {}
                Some(o) => {
                    return Err(ScheduleError::OutputMismatch(format!(
                        "output {k} is for sequence {}, expected {}",
                        o.seq_id, s.seq_id
                    )))
                }
                None => {
                    return Err(ScheduleError::OutputMismatch(format!(
                        "{} outputs, but more sequences sampled",
                        out.outputs.len()
                    )))
                }
            }
            k += 1;
        }
        if k != out.outputs.len() {
            return Err(ScheduleError::OutputMismatch(format!(
                "{} outputs for {k} sampled sequences",
                out.outputs.len()
            )));
        }
        Ok(())
    }

    /// The live sequence a plan entry was made for (None once it finished: its slot may
    /// hold another sequence by now).
    fn planned_seq<'a>(slots: &'a mut [Option<Seq<P>>], s: &Scheduled) -> Option<&'a mut Seq<P>> {
        slots
            .get_mut(s.slot)
            .and_then(Option::as_mut)
            .filter(|q| q.seq_id == s.seq_id)
    }

    fn release_in_flight(&mut self, plan: &[Scheduled]) {
        for s in plan.iter().filter(|s| s.sample) {
            if let Some(seq) = Self::planned_seq(&mut self.slots, s) {
                seq.num_in_flight = seq.num_in_flight.saturating_sub(1);
            }
        }
    }

    fn apply_output(&mut self, plan: &[Scheduled], out: &StepOutput) {
        let max_model_len = self.cfg.max_model_len;
        for (k, s) in plan.iter().filter(|s| s.sample).enumerate() {
            let Some(seq) = Self::planned_seq(&mut self.slots, s) else {
                continue;
            };
            seq.num_in_flight = seq.num_in_flight.saturating_sub(1);
            let token = out.outputs[k].sampled.token;
            seq.tokens.push(token);
            let stop = check_token_stop(seq, token, max_model_len, &self.cfg.eos_token_ids);
            self.events.push(TokenEvent {
                slot: s.slot,
                output_index: k,
                token,
                stop,
            });
        }
    }

    /// Removes a sequence (finished, aborted or failed), freeing its blocks; returns its state.
    pub fn finish(&mut self, slot: usize) -> Option<Seq<P>> {
        let mut seq = self.slots.get_mut(slot)?.take()?;
        match seq.status {
            SeqStatus::Running => {
                if let Some(pos) = self.running.iter().position(|&s| s == slot) {
                    self.running.remove(pos);
                }
            }
            SeqStatus::Waiting => {
                if let Some(pos) = self.waiting.iter().position(|&s| s == slot) {
                    self.waiting.remove(pos);
                }
            }
        }
        self.kv.free(&mut seq.blocks);
        if seq.known_to_executor {
            self.pending_finished.push(seq.seq_id);
        }
        self.by_id.remove(&seq.seq_id);
        self.free_slots.push(slot);
        Some(seq)
    }

    fn preempt(&mut self, slot: usize) {
        let Some(seq) = self.slots[slot].as_mut() else {
            return;
        };
        self.kv.free(&mut seq.blocks);
        seq.num_computed_tokens = 0;
        seq.status = SeqStatus::Waiting;
        seq.num_preemptions += 1;
        if seq.known_to_executor {
            seq.known_to_executor = false;
            self.pending_finished.push(seq.seq_id);
        }
        self.waiting.push_front(slot);
        self.num_preemptions += 1;
        tracing::debug!(
            seq_id = seq.seq_id,
            tokens = seq.tokens.len(),
            "preempted: KV cache full, will recompute"
        );
    }
}

fn check_token_stop<P>(
    seq: &Seq<P>,
    token: u32,
    max_model_len: usize,
    eos: &[u32],
) -> Option<TokenStop> {
    let n_out = seq.num_output_tokens();
    if seq.tokens.len() >= max_model_len || n_out >= seq.max_tokens {
        return Some(TokenStop::Length);
    }
    if n_out < seq.min_tokens {
        return None;
    }
    if !seq.ignore_eos && eos.contains(&token) {
        return Some(TokenStop::Eos);
    }
    if seq.stop_token_ids.contains(&token) {
        return Some(TokenStop::StopToken(token));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Sampled, SeqOutput};

    fn cfg(chunked: bool, budget: usize, num_blocks: usize) -> SchedulerConfig {
        SchedulerConfig {
            block_size: 4,
            num_blocks,
            max_num_seqs: 8,
            max_num_batched_tokens: budget,
            max_model_len: 1024,
            enable_prefix_caching: false,
            enable_chunked_prefill: chunked,
            eos_token_ids: vec![99],
        }
    }

    fn params(id: SeqId, prompt_len: usize, max_tokens: usize) -> SeqParams {
        SeqParams {
            seq_id: id,
            prompt: (0..prompt_len as u32).collect(),
            sampling: Arc::new(SamplingParams::greedy()),
            max_tokens,
            min_tokens: 0,
            stop_token_ids: vec![],
            ignore_eos: false,
        }
    }

    fn outputs(batch: &Batch, token: u32) -> StepOutput {
        StepOutput {
            outputs: batch
                .seqs
                .iter()
                .filter(|s| s.sample)
                .map(|s| SeqOutput {
                    seq_id: s.seq_id,
                    sampled: Sampled {
                        token,
                        logprob: None,
                        top_logprobs: vec![],
                    },
                })
                .collect(),
            ..StepOutput::default()
        }
    }

    #[test]
    fn decodes_go_before_chunked_prefill() {
        let mut s: Scheduler<()> = Scheduler::new(cfg(true, 8, 64));
        s.add(params(1, 3, 10), ()).unwrap();
        let mut b = Batch::default();
        s.schedule(&mut b);
        assert_eq!(b.seqs.len(), 1);
        assert!(b.seqs[0].sample);
        s.update_from_output(&outputs(&b, 7)).unwrap();
        // A long prompt arrives: the decode goes first, the prompt takes the rest (7).
        s.add(params(2, 20, 10), ()).unwrap();
        s.schedule(&mut b);
        assert_eq!(b.seqs.len(), 2);
        assert_eq!((b.seqs[0].seq_id, b.seqs[0].query_len), (1, 1));
        assert_eq!((b.seqs[1].seq_id, b.seqs[1].query_len), (2, 7));
        assert!(!b.seqs[1].sample);
        assert_eq!(b.new_seqs.len(), 1);
        assert_eq!(b.token_ids[0], 7);
        assert_eq!(b.positions[0], 3);
        s.update_from_output(&outputs(&b, 7)).unwrap();
        assert_eq!(s.events().len(), 1);
    }

    #[test]
    fn whole_prefill_waits_for_budget() {
        let mut s: Scheduler<()> = Scheduler::new(cfg(false, 8, 64));
        s.add(params(1, 3, 10), ()).unwrap();
        s.add(params(2, 8, 10), ()).unwrap();
        let mut b = Batch::default();
        s.schedule(&mut b);
        // 3 + 8 > 8: the second prompt waits whole.
        assert_eq!(b.seqs.len(), 1);
        s.update_from_output(&outputs(&b, 7)).unwrap();
        s.schedule(&mut b);
        // 1 decode + 8 > 8: still waiting.
        assert_eq!(b.seqs.len(), 1);
    }

    #[test]
    fn preempts_latest_when_out_of_blocks() {
        // 4 usable blocks of 4 tokens.
        let mut s: Scheduler<()> = Scheduler::new(cfg(true, 64, 5));
        s.add(params(1, 8, 20), ()).unwrap();
        s.add(params(2, 8, 20), ()).unwrap();
        let mut b = Batch::default();
        s.schedule(&mut b);
        assert_eq!(b.seqs.len(), 2);
        s.update_from_output(&outputs(&b, 7)).unwrap();
        // Both need a third block now: only seq 1 gets it, seq 2 is preempted.
        let sum = s.schedule(&mut b);
        assert_eq!(sum.num_preempted, 1);
        assert_eq!(b.seqs.len(), 1);
        assert_eq!(b.seqs[0].seq_id, 1);
        assert_eq!(b.finished, vec![2]);
        assert_eq!(s.num_waiting(), 1);
        let slot = s.slot_of(2).unwrap();
        assert_eq!(s.seq(slot).unwrap().num_computed_tokens(), 0);
        assert_eq!(s.num_preemptions(), 1);
    }
}
