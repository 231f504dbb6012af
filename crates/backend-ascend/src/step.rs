//! One step's device-side metadata (slots, block table, sequence lengths, RoPE rows), built
//! once from the engine's [`StepMeta`] and shared by every layer.

use std::sync::Mutex;

use qwen3_backend::{Result, StepMeta};

use crate::{shape_err, AscendBackend, AscendTensor};

/// One step's device-side metadata, uploaded once and shared by every layer.
pub struct AscendStep {
    pub(crate) num_tokens: usize,
    pub(crate) token_ids: Vec<u32>,
    pub(crate) slots_i32: AscendTensor,
    /// The tokens' positions, for the fused norm/rope/cache kernel (when it runs).
    pub(crate) positions_i32: Option<AscendTensor>,
    pub(crate) slots_i64: AscendTensor,
    pub(crate) block_table: AscendTensor,
    /// Cumulative query ends per sequence (FIA's `actualSeqLengths` in TND).
    pub(crate) cu_q: Vec<i64>,
    /// Context length per sequence (FIA's `actualSeqLengthsKv`).
    pub(crate) kv_lens: Vec<i64>,
    pub(crate) block_size: usize,
    /// F32 `[tokens, head_dim]`: cos, sin, and sin with its first half negated (rotate-half
    /// folded in, for the decomposed RoPE).
    pub(crate) cos: AscendTensor,
    pub(crate) sin: AscendTensor,
    pub(crate) sin_signed: AscendTensor,
    /// The tables cast to the activations' dtype, made on first use.
    pub(crate) cast: Mutex<Option<[AscendTensor; 3]>>,
    /// Positions of the step's tokens and the block tables, for the eager attention path.
    pub(crate) positions: Vec<u32>,
    pub(crate) block_tables: Vec<u32>,
    pub(crate) max_blocks: usize,
    /// Per sequence, for the eager attention path (made on first use): the cache slots of
    /// its context `[ctx]` and its additive causal (and sliding-window) mask `[len, ctx]`.
    #[allow(clippy::type_complexity)]
    pub(crate) eager: Mutex<Option<(Option<usize>, Vec<(AscendTensor, AscendTensor)>)>>,
}

impl AscendBackend {
    pub(crate) fn prepare_step_impl(&self, m: &StepMeta<'_>) -> Result<AscendStep> {
        self.start_step_timer(!m.query_len.is_empty() && m.query_len.iter().all(|&l| l == 1));
        // A decode batch smaller than a captured size runs as that size, padded.
        let real_tokens = m.token_ids.len();
        let padded = self.graph_padding(m);
        let padded_meta = padded.as_ref().map(|p| p.meta(m));
        let m = padded_meta.as_ref().unwrap_or(m);
        let n = m.token_ids.len();
        let seqs = m.query_len.len();
        if m.positions.len() != n
            || m.slot_mapping.len() != n
            || m.query_start.len() != seqs
            || m.context_len.len() != seqs
            || m.block_tables.len() != seqs * m.max_blocks_per_seq
            || m.block_size == 0
        {
            return Err(shape_err(
                "prepare_step",
                format!(
                    "{n} tokens, {} positions, {} slots, {seqs} sequences, {} block table entries",
                    m.positions.len(),
                    m.slot_mapping.len(),
                    m.block_tables.len()
                ),
            ));
        }
        let mut cu_q = Vec::with_capacity(seqs);
        let mut kv_lens = Vec::with_capacity(seqs);
        let mut acc = 0u32;
        for s in 0..seqs {
            let (start, len, ctx) = (m.query_start[s], m.query_len[s], m.context_len[s]);
            // TND packs each sequence's tokens contiguously, in sequence order.
            if start != acc || len == 0 || len > ctx {
                return Err(shape_err(
                    "prepare_step",
                    format!("sequence {s}: query {start}+{len}, context {ctx}"),
                ));
            }
            if (ctx as usize).div_ceil(m.block_size) > m.max_blocks_per_seq {
                return Err(shape_err(
                    "prepare_step",
                    format!("sequence {s}: context {ctx} exceeds its block table"),
                ));
            }
            acc += len;
            cu_q.push(acc as i64);
            kv_lens.push(ctx as i64);
        }
        if acc as usize != n {
            return Err(shape_err(
                "prepare_step",
                "query lengths do not cover the tokens".into(),
            ));
        }
        let slots32: Vec<i32> = m.slot_mapping.iter().map(|&s| s as i32).collect();
        let slots64: Vec<i64> = m.slot_mapping.iter().map(|&s| s as i64).collect();
        let bt: Vec<i32> = m.block_tables.iter().map(|&b| b as i32).collect();
        self.enter_graph_mode(m, real_tokens)?;
        let (cos, sin, sin_signed) = self.gather_rope(m.rope, m.positions)?;
        let positions_i32 = if self.fuses_qk_norm_rope_cache() {
            let p: Vec<i32> = m.positions.iter().map(|&p| p as i32).collect();
            Some(self.upload_i32(&p, &[n])?)
        } else {
            None
        };
        Ok(AscendStep {
            num_tokens: n,
            token_ids: m.token_ids.to_vec(),
            slots_i32: self.upload_i32(&slots32, &[n])?,
            positions_i32,
            slots_i64: self.upload_i64(&slots64, &[n, 1])?,
            block_table: self.upload_i32(&bt, &[seqs, m.max_blocks_per_seq])?,
            cu_q,
            kv_lens,
            block_size: m.block_size,
            cos,
            sin,
            sin_signed,
            cast: Mutex::new(None),
            positions: m.positions.to_vec(),
            block_tables: m.block_tables.to_vec(),
            max_blocks: m.max_blocks_per_seq,
            eager: Mutex::new(None),
        })
    }
}
