//! The contract between the engine and an executor: one step's work, and what comes back.
//!
//! The executor keeps per-request state of its own (token history for penalties, sampling
//! parameters), as vLLM V1's workers do, so a step ships only what changed: new requests
//! once, then per-step token ids and positions.

use std::sync::Arc;

pub use crate::sampling::PromptLogprob;
use crate::sampling::{Sampled, SamplingParams};
use crate::structured::StepMasks;

/// Engine-internal request id (the API's string id maps onto it).
pub type SeqId = u64;

/// A request the executor has not seen before (or is seeing again after preemption).
#[derive(Clone, Debug)]
pub struct NewSeq {
    pub seq_id: SeqId,
    /// Prompt tokens followed by any tokens already generated before a preemption.
    pub token_ids: Arc<[u32]>,
    /// How many of `token_ids` are the prompt.
    pub num_prompt_tokens: usize,
    pub sampling: Arc<SamplingParams>,
}

/// One sequence's slice of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub seq_id: SeqId,
    /// Offset of this sequence's first token in `Batch::token_ids`.
    pub query_start: u32,
    /// Tokens computed this step (a prefill chunk, or 1 for a decode).
    pub query_len: u32,
    /// Tokens in the KV cache once this step is done (cached + computed before + query_len).
    pub context_len: u32,
    /// Whether this step ends with a token to sample (false for a non-final prefill chunk).
    pub sample: bool,
    /// Tokens suppressed at this step (EOS and stop ids while below min_tokens).
    pub suppressed: Vec<u32>,
}

/// One step: the flattened tokens of every scheduled sequence, prefill chunks and decodes mixed.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub new_seqs: Vec<NewSeq>,
    /// Sequences finished or preempted since the last step: drop their executor-side state.
    pub finished: Vec<SeqId>,
    pub seqs: Vec<ScheduledSeq>,
    pub token_ids: Vec<u32>,
    pub positions: Vec<u32>,
    /// Per token: where its K/V goes, `block * block_size + offset`.
    pub slot_mapping: Vec<u32>,
    /// Row-major `[seqs.len(), max_blocks_per_seq]`; unused entries are 0.
    pub block_tables: Vec<u32>,
    pub max_blocks_per_seq: usize,
    pub block_size: usize,
    /// Allowed-token masks for the rows that sample under a structured-output constraint;
    /// None when no row in this step is constrained. Filled while the step runs: a sampler
    /// calls [`StepMasks::wait`] just before it needs them.
    pub masks: Option<Arc<StepMasks>>,
    /// Async scheduling: flattened indices into `token_ids` whose input is the token the
    /// executor sampled for that sequence in the step it ran just before this one (the engine
    /// does not know it yet; `token_ids` holds a placeholder 0 there). Each is a decode's one
    /// token, at position `context_len - 1`. Empty with synchronous scheduling. An executor
    /// honours it only if [`Executor::resolves_deferred_inputs`] says so.
    pub deferred_inputs: Vec<u32>,
}

impl Batch {
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Seq `i`'s block table (`max_blocks_per_seq` entries; only the first
    /// `ceil(context_len / block_size)` are meaningful).
    pub fn block_table(&self, i: usize) -> &[u32] {
        let w = self.max_blocks_per_seq;
        &self.block_tables[i * w..(i + 1) * w]
    }

    /// `token_ids` with every deferred input filled in, into `out` (its capacity reused).
    /// `sampled(seq_id, position)` is the token the executor sampled for that sequence in
    /// its previous step, which must sit at `position`; None (not sampled there) is an error.
    pub fn resolve_inputs(
        &self,
        out: &mut Vec<u32>,
        mut sampled: impl FnMut(SeqId, usize) -> Option<u32>,
    ) -> Result<(), ExecutorError> {
        out.clear();
        out.extend_from_slice(&self.token_ids);
        for &j in &self.deferred_inputs {
            let i = self
                .seqs
                .partition_point(|s| s.query_start <= j)
                .checked_sub(1)
                .ok_or_else(|| ExecutorError(format!("deferred input {j} before any sequence")))?;
            let s = &self.seqs[i];
            let offset = j - s.query_start;
            if offset >= s.query_len {
                return Err(ExecutorError(format!(
                    "deferred input {j} is in no sequence"
                )));
            }
            let pos = (s.context_len - s.query_len + offset) as usize;
            let t = sampled(s.seq_id, pos).ok_or_else(|| {
                ExecutorError(format!(
                    "sequence {}: no token sampled at position {pos} for its deferred input",
                    s.seq_id
                ))
            })?;
            if let Some(slot) = out.get_mut(j as usize) {
                *slot = t;
            }
        }
        Ok(())
    }

    /// Resets for reuse without freeing capacity (the scheduler reuses one Batch per step).
    pub fn clear(&mut self) {
        self.new_seqs.clear();
        self.finished.clear();
        self.seqs.clear();
        self.token_ids.clear();
        self.positions.clear();
        self.slot_mapping.clear();
        self.block_tables.clear();
        self.max_blocks_per_seq = 0;
        self.masks = None;
        self.deferred_inputs.clear();
    }
}

/// What sampling produced for one sequence with `sample == true`, in `Batch::seqs` order.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqOutput {
    pub seq_id: SeqId,
    pub sampled: Sampled,
}

/// Prompt logprobs a step computed for one sequence that asked for them (its prompt rows in
/// this step's chunk), in prompt order.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqPromptLogprobs {
    pub seq_id: SeqId,
    /// Prompt index of the token `entries[0]` scores (at least 1: the first token has none).
    pub first_index: usize,
    pub entries: Vec<PromptLogprob>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutput {
    pub outputs: Vec<SeqOutput>,
    /// Only for sequences whose sampling parameters set `prompt_logprobs`.
    pub prompt_logprobs: Vec<SeqPromptLogprobs>,
}

/// A device or model fault while running a step; the engine fails the requests in flight.
#[derive(Debug, thiserror::Error)]
#[error("executor failed: {0}")]
pub struct ExecutorError(pub String);

/// What runs a step: the model on one or more devices, or a fake in scheduler tests.
pub trait Executor: Send {
    fn execute(&mut self, batch: &Batch) -> Result<StepOutput, ExecutorError>;

    /// True once a fault has left the executor unable to run any further step (a
    /// tensor-parallel group whose collectives were aborted); the engine then stops, so
    /// `/health` turns 503 and an orchestrator restarts the process.
    fn is_broken(&self) -> bool {
        false
    }

    /// Whether this executor fills [`Batch::deferred_inputs`] from the tokens it sampled in
    /// its previous step, which lets the engine schedule a step before the previous one's
    /// tokens reach it (async scheduling). Executors that do not stay synchronous.
    fn resolves_deferred_inputs(&self) -> bool {
        false
    }
}
