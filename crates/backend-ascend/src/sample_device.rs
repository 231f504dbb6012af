//! Sampling on the device: argmax and top-k candidates computed there, the draw on the host
//! (the row plans and the draw over candidates are in [`crate::sample`]).

use qwen3_backend::sampling::{sample_row, SampleRow, Sampled};
use qwen3_backend::{Backend, BackendError, Result};

use crate::desc::{Dt, View};
use crate::mem::DevPtr;
use crate::sample::{plan_row, sample_candidates, RowPlan};
use crate::{shape_err, AscendBackend, AscendTensor};

impl AscendBackend {
    pub(crate) fn sample_impl(
        &self,
        logits: &AscendTensor,
        rows: &[SampleRow<'_>],
    ) -> Result<Vec<Sampled>> {
        let (all, vocab) = logits.matrix();
        let n = rows.len();
        if all != n && !self.is_padded_logits(all, n) {
            return Err(shape_err(
                "sample",
                format!("{n} rows of logits for {} requests", rows.len()),
            ));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let lc = self.cast(logits, Dt::F32)?;
        let mask_ops = self.mask_ops(vocab);
        let plans: Vec<RowPlan> = rows
            .iter()
            .map(|r| plan_row(r, vocab, mask_ops.is_some()))
            .collect();
        // Masks applied on the device, for the rows that select there (a full row goes to
        // the host unmasked: its logprobs are of the raw distribution, and the host masks).
        let masks: Vec<Option<&[u32]>> = rows
            .iter()
            .zip(&plans)
            .map(|(r, p)| r.allowed.filter(|_| *p != RowPlan::Full))
            .collect();
        let mut own = None;
        if let Some(ops) = mask_ops.filter(|_| masks.iter().any(Option::is_some)) {
            // In place on the cast copy, else on a copy: the caller's logits stay as given.
            let t = match lc {
                Some(t) => t,
                None => {
                    let t = self.empty(Dt::F32, &[n, vocab])?;
                    let src = View {
                        shape: vec![n as i64, vocab as i64],
                        ..logits.view()
                    };
                    self.copy_view(&t.view(), &src)?;
                    t
                }
            };
            let v = View {
                shape: vec![n as i64, vocab as i64],
                ..t.view()
            };
            self.apply_masks_on_device(ops, &v, &masks)?;
            own = Some(t);
        } else if let Some(t) = lc {
            own = Some(t);
        }
        let l = own.as_ref().unwrap_or(logits);
        // A padded step's real rows come first.
        let lv = View {
            shape: vec![n as i64, vocab as i64],
            ..l.view()
        };
        let c = self.cann_ref();
        let mut argmax: Option<Vec<i64>> = None;
        if plans.contains(&RowPlan::Argmax) {
            let out = self.empty(Dt::I64, &[n])?;
            {
                let (a, o) = (self.td(&lv)?, self.td(&out.view())?);
                aclnn!(&self.dev, "aclnnArgMax", c.ops.aclnnArgMaxGetWorkspaceSize,
                    c.ops.aclnnArgMax; a.raw, 1i64, false, o.raw)?;
            }
            argmax = Some(self.download_i64(&out)?);
        }
        let k_max = plans
            .iter()
            .filter_map(|p| match p {
                RowPlan::TopK { k, .. } => Some(*k),
                _ => None,
            })
            .max();
        let mut topk: Option<(Vec<f32>, Vec<i64>, usize)> = None;
        if let Some(k) = k_max {
            let vals = self.empty(Dt::F32, &[n, k])?;
            let ids = self.empty(Dt::I64, &[n, k])?;
            {
                let (a, vd, id) = (self.td(&lv)?, self.td(&vals.view())?, self.td(&ids.view())?);
                aclnn!(&self.dev, "aclnnTopk", c.ops.aclnnTopkGetWorkspaceSize, c.ops.aclnnTopk;
                    a.raw, k as i64, 1i64, true, true, vd.raw, id.raw)?;
            }
            topk = Some((self.to_host_f32(&vals)?, self.download_i64(&ids)?, k));
        }
        let mut out = Vec::with_capacity(n);
        let mut scratch = Vec::new();
        for (r, (row, plan)) in rows.iter().zip(&plans).enumerate() {
            let s = match *plan {
                RowPlan::Argmax => {
                    let id = argmax.as_ref().and_then(|a| a.get(r)).copied().unwrap_or(0);
                    Sampled {
                        token: u32::try_from(id).unwrap_or(0),
                        logprob: None,
                        top_logprobs: Vec::new(),
                    }
                }
                RowPlan::TopK { keep, .. } => {
                    let (v, i, k) = topk
                        .as_ref()
                        .ok_or_else(|| BackendError::Device("top-k missing".into()))?;
                    let (v, i) = (&v[r * k..(r + 1) * k], &i[r * k..(r + 1) * k]);
                    sample_candidates(v, i, keep, row)
                }
                RowPlan::Full => {
                    // Penalties, bias, logprobs, an unbounded top-k or a mask the device
                    // cannot apply: this row's logits go to the host whole.
                    let mut bytes = vec![0u8; vocab * 4];
                    let off = r * vocab * 4;
                    let p = DevPtr(l.buf.ptr.0.cast::<u8>().wrapping_add(off).cast());
                    self.dev.download(p, l.buf.bytes - off, &mut bytes)?;
                    let row_l: Vec<f32> = bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    sample_row(&row_l, row, &mut scratch)
                }
            };
            out.push(s);
        }
        Ok(out)
    }

    pub(crate) fn download_i64(&self, t: &AscendTensor) -> Result<Vec<i64>> {
        let mut bytes = vec![0u8; t.numel() * 8];
        self.dev.download(t.buf.ptr, t.buf.bytes, &mut bytes)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| i64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }
}
