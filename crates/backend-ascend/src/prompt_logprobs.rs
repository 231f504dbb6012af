//! Prompt logprobs on the device: for each row of prompt logits, the log-softmax read at the
//! token that followed, that token's rank and the row's top N, computed by aclnn operators so
//! that only those numbers cross to the host (`8 + 12·N` bytes a row, not `4·vocab`).
//!
//! Per chunk of rows: `Gather` reads each row's target logit; `GtTensor` against it and
//! `ReduceSum` count the tokens scoring strictly higher (rank = 1 + count, ties sharing the
//! best rank, as vLLM's); `LogSoftmax` (F32 out, from BF16 or F32 logits) then `Gather` and
//! `Topk` give the target's logprob and the top N. Rows are taken [`rows_per_chunk`] at a time,
//! so the temporaries stay under [`TEMP_BYTES_PER_CHUNK`] whatever the caller passes.
//!
//! Without `LogSoftmax`, `GtTensor` or `ReduceSum` in the installed CANN the host computes
//! them from the logits instead (logged once).

use std::sync::atomic::{AtomicBool, Ordering};

use ascend_sys::fns::{self, AclnnRun};

use qwen3_backend::logprobs::{host_prompt_logprobs, PromptLogprob};
use qwen3_backend::{Backend, Result};

use crate::desc::{Dt, IntArrayDesc, View};
use crate::{shape_err, AscendBackend, AscendTensor};

/// Bytes of one `[rows, vocab]` F32 temporary (the comparison mask, then the log-softmax):
/// two live at most, and the pool hands the first's buffer to the second.
pub const TEMP_BYTES_PER_CHUNK: usize = 32 << 20;

/// Rows per chunk for a vocabulary of `vocab` tokens (at least one).
pub fn rows_per_chunk(vocab: usize) -> usize {
    (TEMP_BYTES_PER_CHUNK / (vocab.max(1) * 4)).max(1)
}

/// The numbers of `rows` rows, on the device: target logprob, count above it, top N.
struct Outputs {
    logprob: AscendTensor,
    above: AscendTensor,
    top_vals: Option<AscendTensor>,
    top_ids: Option<AscendTensor>,
}

/// The optional operators this path needs, resolved once per call.
#[derive(Clone, Copy)]
struct Ops {
    gt: (fns::aclnnGtTensorGetWorkspaceSize, AclnnRun),
    sum: (fns::aclnnReduceSumGetWorkspaceSize, AclnnRun),
    log_softmax: (fns::aclnnLogSoftmaxGetWorkspaceSize, AclnnRun),
}

/// A view of rows `r0..r0 + n` of a contiguous `[rows, cols]` tensor.
fn row_view(t: &AscendTensor, r0: usize, n: usize) -> View {
    let cols = t.shape.last().copied().unwrap_or(1);
    let mut v = View::contiguous(t.buf.ptr, t.dt, &[n, cols]);
    v.offset = (r0 * cols) as i64;
    v.storage = t.numel() as i64;
    v
}

impl AscendBackend {
    pub(crate) fn prompt_logprobs_impl(
        &self,
        logits: &AscendTensor,
        targets: &[u32],
        top_n: usize,
    ) -> Result<Vec<PromptLogprob>> {
        let step = rows_per_chunk(logits.matrix().1);
        self.prompt_logprobs_chunked(logits, targets, top_n, step)
    }

    /// [`Self::prompt_logprobs_impl`], `step` rows at a time.
    fn prompt_logprobs_chunked(
        &self,
        logits: &AscendTensor,
        targets: &[u32],
        top_n: usize,
        step: usize,
    ) -> Result<Vec<PromptLogprob>> {
        let (rows, vocab) = logits.matrix();
        if logits.shape.len() != 2 || rows != targets.len() {
            return Err(shape_err(
                "prompt_logprobs",
                format!("logits {:?} for {} targets", logits.shape, targets.len()),
            ));
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        let o = &self.cann_ref().ops;
        let ops = match (
            o.aclnnGtTensorGetWorkspaceSize.zip(o.aclnnGtTensor),
            o.aclnnReduceSumGetWorkspaceSize.zip(o.aclnnReduceSum),
            o.aclnnLogSoftmaxGetWorkspaceSize.zip(o.aclnnLogSoftmax),
        ) {
            (Some(gt), Some(sum), Some(log_softmax)) => Some(Ops {
                gt,
                sum,
                log_softmax,
            }),
            _ => None,
        };
        let Some(ops) = ops else {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "prompt logprobs: this CANN lacks aclnnLogSoftmax, aclnnGtTensor or aclnnReduceSum; the host computes them from the logits"
                );
            }
            let host = self.to_host_f32(logits)?;
            return Ok(host_prompt_logprobs(&host, vocab, targets, top_n));
        };
        self.finish_graph_step()?;
        let top_n = top_n.min(vocab);
        // Out-of-vocabulary targets (a tokenizer larger than the head) read column 0 here and
        // are given -inf with the last rank below, as the host reference does.
        let idx: Vec<i64> = targets
            .iter()
            .map(|&t| if (t as usize) < vocab { t as i64 } else { 0 })
            .collect();
        let idx = self.upload_i64(&idx, &[rows, 1])?;
        let out = Outputs {
            logprob: self.empty(Dt::F32, &[rows, 1])?,
            above: self.empty(Dt::F32, &[rows, 1])?,
            top_vals: (top_n > 0)
                .then(|| self.empty(Dt::F32, &[rows, top_n]))
                .transpose()?,
            top_ids: (top_n > 0)
                .then(|| self.empty(Dt::I64, &[rows, top_n]))
                .transpose()?,
        };
        let mut r0 = 0;
        while r0 < rows {
            let n = step.max(1).min(rows - r0);
            self.prompt_logprob_chunk(ops, logits, &idx, &out, (r0, n), top_n)?;
            r0 += n;
        }
        let logprob = self.to_host_f32_impl(&out.logprob)?;
        let above = self.to_host_f32_impl(&out.above)?;
        let (vals, ids) = match (&out.top_vals, &out.top_ids) {
            (Some(v), Some(i)) => (self.to_host_f32_impl(v)?, self.download_i64(i)?),
            _ => (Vec::new(), Vec::new()),
        };
        Ok(targets
            .iter()
            .enumerate()
            .map(|(r, &t)| {
                let top = (0..top_n)
                    .map(|k| (ids[r * top_n + k] as u32, vals[r * top_n + k]))
                    .collect();
                let (logprob, rank) = if (t as usize) < vocab {
                    (logprob[r], 1 + above[r] as u32)
                } else {
                    (f32::NEG_INFINITY, vocab as u32)
                };
                PromptLogprob {
                    token_id: t,
                    logprob,
                    rank,
                    top,
                }
            })
            .collect())
    }

    /// Rows `r0..r0 + n` of `logits` into the same rows of `out`.
    fn prompt_logprob_chunk(
        &self,
        ops: Ops,
        logits: &AscendTensor,
        idx: &AscendTensor,
        out: &Outputs,
        (r0, n): (usize, usize),
        top_n: usize,
    ) -> Result<()> {
        let c = self.cann_ref();
        let vocab = logits.matrix().1;
        let x = row_view(logits, r0, n);
        let ix = row_view(idx, r0, n);
        let last = IntArrayDesc::new(c, &[1])?;
        // The target's logit, in the logits' own type (exact), then the count above it.
        let target = self.empty(logits.dt, &[n, 1])?;
        self.gather_cols(&x, &ix, &target.view())?;
        {
            let mask = self.empty(Dt::F32, &[n, vocab])?;
            let (a, b, m) = (
                self.td(&x)?,
                self.td(&target.view())?,
                self.td(&mask.view())?,
            );
            aclnn!(&self.dev, "aclnnGtTensor", ops.gt.0, ops.gt.1; a.raw, b.raw, m.raw)?;
            let count = self.td(&row_view(&out.above, r0, n))?;
            // The counts stay exact in F32 (below 2^24, larger than any vocabulary).
            aclnn!(&self.dev, "aclnnReduceSum", ops.sum.0, ops.sum.1;
                m.raw, last.raw.cast_const(), true, Dt::F32.acl(), count.raw)?;
        }
        let lsm = self.empty(Dt::F32, &[n, vocab])?;
        {
            let (a, o) = (self.td(&x)?, self.td(&lsm.view())?);
            aclnn!(&self.dev, "aclnnLogSoftmax", ops.log_softmax.0, ops.log_softmax.1;
                a.raw, 1i64, o.raw)?;
        }
        self.gather_cols(&lsm.view(), &ix, &row_view(&out.logprob, r0, n))?;
        if let (Some(v), Some(i)) = (&out.top_vals, &out.top_ids) {
            let (a, vd, id) = (
                self.td(&lsm.view())?,
                self.td(&row_view(v, r0, n))?,
                self.td(&row_view(i, r0, n))?,
            );
            aclnn!(&self.dev, "aclnnTopk", c.ops.aclnnTopkGetWorkspaceSize, c.ops.aclnnTopk;
                a.raw, top_n as i64, 1i64, true, true, vd.raw, id.raw)?;
        }
        Ok(())
    }

    /// `out[r, 0] = x[r, idx[r, 0]]` (aclnnGather along the last axis).
    fn gather_cols(&self, x: &View, idx: &View, out: &View) -> Result<()> {
        let c = self.cann_ref();
        let (a, i, o) = (self.td(x)?, self.td(idx)?, self.td(out)?);
        aclnn!(&self.dev, "aclnnGather", c.ops.aclnnGatherGetWorkspaceSize, c.ops.aclnnGather;
            a.raw, 1i64, i.raw, o.raw)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use qwen3_backend::logprobs::host_prompt_logprobs;
    use qwen3_backend::{Backend, HostData};

    use super::*;

    /// Device results against the host reference on the same (BF16-exact) logits: ties, an
    /// out-of-vocabulary target, rows split over several chunks, top 0 and top = vocab.
    #[test]
    fn device_matches_the_host_reference_across_chunks_and_dtypes() {
        let _g = cann_emu::harness::exclusive();
        cann_emu::harness::reset().expect("reset");
        let dir = cann_emu::harness::lib_dir().expect("emulator built");
        let cann = Arc::new(ascend_sys::Cann::load_from([dir]).expect("emulated CANN"));
        let b = AscendBackend::open(cann, 0).expect("device 0");
        let (rows, vocab) = (7usize, 40usize);
        // Multiples of 1/8 in [-4, 4): exact in BF16, with many ties.
        let logits: Vec<f32> = (0..rows * vocab)
            .map(|i| ((i * 37 + i / 3) % 64) as f32 / 8.0 - 4.0)
            .collect();
        let targets: Vec<u32> = vec![0, 39, 5, 1000, 17, 17, 2];
        let bf: Vec<half::bf16> = logits.iter().map(|&x| half::bf16::from_f32(x)).collect();
        for data in [HostData::F32(&logits), HostData::BF16(&bf)] {
            let t = b.upload(data, &[rows, vocab]).expect("upload");
            for (top_n, step) in [(3, 3), (0, 2), (vocab, 100), (5, 1)] {
                let got = b
                    .prompt_logprobs_chunked(&t, &targets, top_n, step)
                    .expect("device prompt logprobs");
                let want = host_prompt_logprobs(&logits, vocab, &targets, top_n);
                for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                    let what = format!("row {r}, top {top_n}, {step} rows a chunk");
                    assert_eq!((g.token_id, g.rank), (w.token_id, w.rank), "{what}");
                    assert!(
                        g.logprob == w.logprob || (g.logprob - w.logprob).abs() < 1e-5,
                        "{what}: {} vs {}",
                        g.logprob,
                        w.logprob
                    );
                    assert_eq!(g.top.len(), w.top.len(), "{what}");
                    for (&(gi, gl), &(wi, wl)) in g.top.iter().zip(&w.top) {
                        assert!((gl - wl).abs() < 1e-5, "{what}: {gl} vs {wl}");
                        // Tied logits may come in another order: the id must score the same.
                        let at = |i: u32| logits[r * vocab + i as usize];
                        assert_eq!(at(gi), at(wi), "{what}: ids {gi} vs {wi}");
                    }
                }
            }
        }
        assert_eq!(rows_per_chunk(151_936), 55);
        assert_eq!(rows_per_chunk(usize::MAX / 8), 1);
        drop(b);
        let s = cann_emu::harness::stats().expect("stats");
        assert_eq!(
            (s.leaks(), s.violations(), s.exec_errors),
            (0, 0, 0),
            "{s:?}"
        );
    }
}
