//! Executors: run the engine's [`Batch`] through the model and sample on the backend.
//!
//! Like vLLM V1's workers, an executor keeps each sequence's token history and sampling
//! parameters from the step that introduced it, so later steps ship only new tokens. That
//! history also feeds async scheduling's deferred inputs (`Batch::deferred_inputs`): a
//! decode whose input the engine has not seen yet takes the token this executor sampled for
//! it in the step before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use qwen3_backend::comm::{Communicator, SingleRank};
use qwen3_backend::sampling::{draw_seed, SampleRow, SamplingParams};
use qwen3_backend::{Backend, StepMeta};
use qwen3_step::batch::SeqPromptLogprobs;
use qwen3_step::{Batch, Executor, ExecutorError, SeqId, SeqOutput, StepOutput};

use crate::error::ModelError;
use crate::prompt_logprobs::{self, PromptSpan};
use crate::qwen3::Qwen3;

struct SeqState {
    tokens: Vec<u32>,
    num_prompt: usize,
    params: Arc<SamplingParams>,
    seed: u64,
}

/// Sampler-side state of every live sequence.
#[derive(Default)]
pub struct SeqStates {
    seqs: HashMap<SeqId, SeqState>,
}

/// Seeds for requests that gave none: distinct per request, never repeated in a process.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    draw_seed(t, n)
}

impl SeqStates {
    /// Applies the batch's new and finished sequences.
    pub fn update(&mut self, batch: &Batch) {
        for id in &batch.finished {
            self.seqs.remove(id);
        }
        for s in &batch.new_seqs {
            self.seqs.insert(
                s.seq_id,
                SeqState {
                    tokens: s.token_ids.to_vec(),
                    num_prompt: s.num_prompt_tokens,
                    seed: s.sampling.seed.unwrap_or_else(fresh_seed),
                    params: s.sampling.clone(),
                },
            );
        }
    }

    /// Samples one token for every sequence of the batch with `sample == true`, whose logits
    /// are the rows of `logits` in order, and records the tokens.
    pub fn sample<B: Backend>(
        &mut self,
        backend: &B,
        batch: &Batch,
        logits: &B::Tensor,
    ) -> Result<StepOutput, ExecutorError> {
        let mut rows = Vec::new();
        // Published by the engine while the forward pass ran; waits only if it has not yet.
        let masks = batch.masks.as_deref().map(|m| m.wait());
        for (i, s) in batch.seqs.iter().enumerate().filter(|(_, s)| s.sample) {
            let st = self.seqs.get(&s.seq_id).ok_or_else(|| {
                ExecutorError(format!("sequence {} was never introduced", s.seq_id))
            })?;
            let (prompt, output) = st.tokens.split_at(st.num_prompt.min(st.tokens.len()));
            rows.push(SampleRow {
                params: &st.params,
                prompt_tokens: prompt,
                output_tokens: output,
                suppressed: &s.suppressed,
                allowed: masks.and_then(|m| m.get(i)).and_then(|m| m.as_deref()),
                rng_seed: draw_seed(st.seed, output.len() as u64),
            });
        }
        let sampled = backend
            .sample(logits, &rows)
            .map_err(|e| ExecutorError(e.to_string()))?;
        drop(rows);
        let mut outputs = Vec::with_capacity(sampled.len());
        let ids = batch.seqs.iter().filter(|s| s.sample).map(|s| s.seq_id);
        for (id, sampled) in ids.zip(sampled) {
            if let Some(st) = self.seqs.get_mut(&id) {
                st.tokens.push(sampled.token);
            }
            outputs.push(SeqOutput {
                seq_id: id,
                sampled,
            });
        }
        Ok(StepOutput {
            outputs,
            ..StepOutput::default()
        })
    }

    /// Records tokens another rank sampled (tensor parallelism: rank 0 samples, and every
    /// rank needs them for deferred inputs).
    pub fn record_sampled(&mut self, sampled: &[(SeqId, u32)]) {
        for &(id, t) in sampled {
            if let Some(st) = self.seqs.get_mut(&id) {
                st.tokens.push(t);
            }
        }
    }

    /// The token sampled last for `id`, when it sits at `position` (what a deferred input
    /// at that position must be).
    pub fn sampled_at(&self, id: SeqId, position: usize) -> Option<u32> {
        let st = self.seqs.get(&id)?;
        (st.tokens.len() == position + 1 && position >= st.num_prompt).then(|| st.tokens[position])
    }

    /// A sequence's prompt and `prompt_logprobs` count, when it asked for prompt logprobs.
    pub fn prompt_logprobs_of(&self, id: SeqId) -> Option<(&[u32], u32)> {
        let st = self.seqs.get(&id)?;
        let n = st.params.prompt_logprobs?;
        Some((&st.tokens[..st.num_prompt.min(st.tokens.len())], n))
    }

    /// The step's prompt-logprob rows (none unless a sequence in it asked).
    pub fn prompt_spans(&self, batch: &Batch) -> Vec<PromptSpan> {
        prompt_logprobs::plan(batch, |id| self.prompt_logprobs_of(id))
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// The per-step arrays the backend wants, derived from the batch; kept across steps so a
/// decode step reuses their capacity instead of allocating.
#[derive(Default)]
pub struct StepArrays {
    query_start: Vec<u32>,
    query_len: Vec<u32>,
    context_len: Vec<u32>,
    /// Flattened row of each sequence's last token, for those that sample.
    sample_rows: Vec<u32>,
    /// The step's input ids with its deferred inputs filled in (used only when it has some).
    inputs: Vec<u32>,
}

impl StepArrays {
    pub fn new(batch: &Batch) -> Self {
        let mut a = Self::default();
        a.refill(batch);
        a
    }

    /// Replaces the arrays with `batch`'s, keeping their capacity.
    pub fn refill(&mut self, batch: &Batch) {
        self.query_start.clear();
        self.query_len.clear();
        self.context_len.clear();
        self.sample_rows.clear();
        for s in &batch.seqs {
            self.query_start.push(s.query_start);
            self.query_len.push(s.query_len);
            self.context_len.push(s.context_len);
            if s.sample {
                self.sample_rows
                    .push(s.query_start + s.query_len.saturating_sub(1));
            }
        }
    }

    /// Fills the batch's deferred inputs from the tokens `states` sampled in the step before.
    pub fn resolve_inputs(
        &mut self,
        batch: &Batch,
        states: &SeqStates,
    ) -> Result<(), ExecutorError> {
        if batch.deferred_inputs.is_empty() {
            return Ok(());
        }
        batch.resolve_inputs(&mut self.inputs, |id, pos| states.sampled_at(id, pos))
    }

    pub fn meta<'a>(&'a self, batch: &'a Batch, rope: &'a qwen3_backend::RopeSpec) -> StepMeta<'a> {
        let token_ids = if batch.deferred_inputs.is_empty() {
            &batch.token_ids
        } else {
            &self.inputs
        };
        StepMeta {
            token_ids,
            positions: &batch.positions,
            slot_mapping: &batch.slot_mapping,
            query_start: &self.query_start,
            query_len: &self.query_len,
            context_len: &self.context_len,
            block_tables: &batch.block_tables,
            max_blocks_per_seq: batch.max_blocks_per_seq,
            block_size: batch.block_size,
            rope,
        }
    }

    pub fn sample_rows(&self) -> &[u32] {
        &self.sample_rows
    }
}

/// One model shard with its KV cache on one device: what a rank owns.
pub struct Worker<B: Backend> {
    pub backend: B,
    pub model: Qwen3<B>,
    pub kv: B::KvCache,
}

impl<B: Backend> Worker<B> {
    /// Replaces the KV cache with one of `num_blocks` blocks (the old one is freed first).
    pub fn resize_kv(&mut self, num_blocks: usize, block_size: usize) -> Result<(), ModelError> {
        let shape = self.model.kv_shape(num_blocks, block_size);
        let empty = self.model.kv_shape(0, block_size);
        self.kv = self.backend.alloc_kv_cache(empty)?;
        self.kv = self.backend.alloc_kv_cache(shape)?;
        Ok(())
    }

    /// Device bytes of one KV block of `block_size` tokens on this rank (K and V, every layer),
    /// as the backend lays it out.
    pub fn kv_block_bytes(&self, block_size: usize) -> u64 {
        self.backend
            .kv_block_bytes(self.model.kv_shape(1, block_size))
    }

    /// Runs the step; returns the gathered logits of the sampling rows, and the prompt
    /// logprobs of `spans` (read out only where `emit`: the rank that samples). `arrays` is
    /// refilled for the batch (kept by the caller so steps reuse its capacity).
    pub fn step(
        &mut self,
        batch: &Batch,
        arrays: &mut StepArrays,
        spans: &[PromptSpan],
        emit: bool,
        comm: &dyn Communicator<B>,
    ) -> Result<(B::Tensor, Vec<SeqPromptLogprobs>), ModelError> {
        arrays.refill(batch);
        if spans.is_empty() {
            let logits = self.forward_rows(batch, arrays, arrays.sample_rows(), comm)?;
            return Ok((logits, Vec::new()));
        }
        let meta = arrays.meta(batch, &self.model.rope);
        let (model, backend) = (&self.model, &self.backend);
        let hidden = model.hidden(backend, comm, &meta, &mut self.kv)?;
        let lps = prompt_logprobs::compute(model, backend, comm, &hidden, spans, emit)?;
        let logits = model.logits(backend, comm, &hidden, arrays.sample_rows())?;
        Ok((logits, lps))
    }

    /// Runs the step; returns the gathered logits of the given flattened token rows.
    pub fn forward_rows(
        &mut self,
        batch: &Batch,
        arrays: &StepArrays,
        rows: &[u32],
        comm: &dyn Communicator<B>,
    ) -> Result<B::Tensor, ModelError> {
        let meta = arrays.meta(batch, &self.model.rope);
        self.model
            .forward(&self.backend, comm, &meta, &mut self.kv, rows)
    }
}

/// An executor as start-up holds it: its KV cache can still be resized once the profiling
/// pass has measured what activations need. Boxed for the engine, it is a plain [`Executor`].
pub trait ResizableExecutor: Executor {
    /// Gives every rank a KV cache of `num_blocks` blocks of `block_size` tokens.
    fn resize_kv(&mut self, num_blocks: usize, block_size: usize) -> Result<(), ModelError>;
    /// Device bytes of one KV block of `block_size` tokens, all ranks together.
    fn kv_block_bytes(&self, block_size: usize) -> Result<u64, ModelError>;
}

/// Tensor parallel size 1: the model on one device, stepped on the engine's thread.
pub struct SingleExecutor<B: Backend> {
    worker: Worker<B>,
    states: SeqStates,
    arrays: StepArrays,
}

impl<B: Backend> SingleExecutor<B> {
    pub fn new(worker: Worker<B>) -> Self {
        Self {
            worker,
            states: SeqStates::default(),
            arrays: StepArrays::default(),
        }
    }

    pub fn worker(&self) -> &Worker<B> {
        &self.worker
    }

    /// Logits of the given flattened token rows of a step, without sampling (parity tests).
    pub fn logits(&mut self, batch: &Batch, rows: &[u32]) -> Result<Vec<f32>, ExecutorError> {
        let arrays = StepArrays::new(batch);
        let logits = self
            .worker
            .forward_rows(batch, &arrays, rows, &SingleRank)
            .map_err(exec_err)?;
        let mut v = self
            .worker
            .backend
            .to_host_f32(&logits)
            .map_err(|e| ExecutorError(e.to_string()))?;
        // A decode step padded to a captured graph's size has logits for the padding too.
        let vocab = self
            .worker
            .backend
            .shape(&logits)
            .last()
            .copied()
            .unwrap_or(0);
        v.truncate(rows.len() * vocab);
        Ok(v)
    }
}

pub(crate) fn exec_err(e: ModelError) -> ExecutorError {
    ExecutorError(e.to_string())
}

impl<B: Backend> ResizableExecutor for SingleExecutor<B> {
    fn resize_kv(&mut self, num_blocks: usize, block_size: usize) -> Result<(), ModelError> {
        self.worker.resize_kv(num_blocks, block_size)
    }

    fn kv_block_bytes(&self, block_size: usize) -> Result<u64, ModelError> {
        Ok(self.worker.kv_block_bytes(block_size))
    }
}

impl<B: Backend> Executor for SingleExecutor<B> {
    fn execute(&mut self, batch: &Batch) -> Result<StepOutput, ExecutorError> {
        self.states.update(batch);
        if batch.seqs.is_empty() {
            return Ok(StepOutput::default());
        }
        let (worker, arrays, states) = (&mut self.worker, &mut self.arrays, &mut self.states);
        B::run_step(move || {
            arrays.resolve_inputs(batch, states)?;
            let spans = states.prompt_spans(batch);
            let (logits, prompt) = worker
                .step(batch, arrays, &spans, true, &SingleRank)
                .map_err(exec_err)?;
            let mut out = states.sample(&worker.backend, batch, &logits)?;
            out.prompt_logprobs = prompt;
            Ok(out)
        })
    }

    fn resolves_deferred_inputs(&self) -> bool {
        true
    }
}
