//! Rotary position embedding: the cos/sin table built once on the host (grown when a position
//! exceeds it), the step's rows gathered on the device, and the rotation (fused op or
//! decomposed into copies, multiplies and an add).

use qwen3_backend::{BackendError, Result, RopeSpec};

use crate::desc::{Dt, View};
use crate::{shape_err, AscendBackend, AscendStep, AscendTensor};

pub(crate) struct RopeTable {
    spec: RopeSpec,
    pub(crate) rows: usize,
    pub(crate) head_dim: usize,
    /// F32 `[rows, head_dim]`, both halves alike (the fused kernel reads the first).
    pub(crate) cos: AscendTensor,
    pub(crate) sin: AscendTensor,
    sin_signed: AscendTensor,
}

impl AscendBackend {
    /// cos, sin, signed sin `[rows, head_dim]` for positions `0..rows`, computed on the host
    /// as the CPU path and transformers do (angle in F32).
    pub(crate) fn rope_host_tables(spec: &RopeSpec, rows: usize) -> [Vec<f32>; 3] {
        let half = spec.inv_freq.len();
        let d = 2 * half;
        let mut cos = vec![0.0f32; rows * d];
        let mut sin = vec![0.0f32; rows * d];
        let mut sgn = vec![0.0f32; rows * d];
        for p in 0..rows {
            for (i, &f) in spec.inv_freq.iter().enumerate() {
                let a = p as f32 * f;
                let (c, s) = (a.cos() * spec.mscale, a.sin() * spec.mscale);
                cos[p * d + i] = c;
                cos[p * d + half + i] = c;
                sin[p * d + i] = s;
                sin[p * d + half + i] = s;
                sgn[p * d + i] = -s;
                sgn[p * d + half + i] = s;
            }
        }
        [cos, sin, sgn]
    }

    /// Gathers this step's cos/sin rows from the start-up table (rebuilt, larger, when a
    /// position exceeds it or the RoPE parameters change).
    pub(crate) fn gather_rope(
        &self,
        spec: &RopeSpec,
        positions: &[u32],
    ) -> Result<(AscendTensor, AscendTensor, AscendTensor)> {
        let d = 2 * spec.inv_freq.len();
        let n = positions.len();
        // An eager step past the table (a long prompt after warm-up traffic) rebuilds it:
        // graphs captured earlier gather from the old, shorter one and must go.
        if self.refresh_rope(spec, positions)? {
            self.drop_graphs()?;
        }
        let g = self.rope.lock().unwrap_or_else(|p| p.into_inner());
        let table = g
            .as_ref()
            .ok_or_else(|| BackendError::Device("rope table missing".into()))?;
        let pos: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let idx = self.upload_i64(&pos, &[n])?;
        let out = |t: &AscendTensor| -> Result<AscendTensor> {
            let o = self.empty(Dt::F32, &[n, d])?;
            if n > 0 {
                self.index_select(&t.view(), &idx, &o.view())?;
            }
            Ok(o)
        };
        Ok((out(&table.cos)?, out(&table.sin)?, out(&table.sin_signed)?))
    }

    /// Builds the cos/sin table (larger) when a position exceeds it or the RoPE parameters
    /// changed; returns whether it did (captured graphs read the old one then).
    pub(crate) fn refresh_rope(&self, spec: &RopeSpec, positions: &[u32]) -> Result<bool> {
        let d = 2 * spec.inv_freq.len();
        let need = positions
            .iter()
            .copied()
            .max()
            .map_or(0, |p| p as usize + 1);
        let mut g = self.rope.lock().unwrap_or_else(|p| p.into_inner());
        let stale = match g.as_ref() {
            Some(t) => t.spec != *spec || t.rows < need || t.head_dim != d,
            None => true,
        };
        if stale {
            let rows = need.max(4096).next_power_of_two();
            let [c, s, sg] = Self::rope_host_tables(spec, rows);
            *g = Some(RopeTable {
                spec: spec.clone(),
                rows,
                head_dim: d,
                cos: self.upload_f32(&c, &[rows, d])?,
                sin: self.upload_f32(&s, &[rows, d])?,
                sin_signed: self.upload_f32(&sg, &[rows, d])?,
            });
        }
        Ok(stale)
    }

    pub(crate) fn rope_impl(
        &self,
        x: &mut AscendTensor,
        step: &AscendStep,
        head_dim: usize,
    ) -> Result<()> {
        let (t, width) = x.matrix();
        if t != step.num_tokens
            || head_dim == 0
            || !head_dim.is_multiple_of(2)
            || !width.is_multiple_of(head_dim)
            || step.cos.shape != [t, head_dim]
        {
            return Err(shape_err(
                "rope",
                format!(
                    "x {:?} with head_dim {head_dim} for {} tokens",
                    x.shape, step.num_tokens
                ),
            ));
        }
        if t == 0 {
            return Ok(());
        }
        let heads = width / head_dim;
        self.with_rope_tables(step, x.dt, |cos, sin, sgn| {
            self.rope_with(x, cos, sin, sgn, t, heads, head_dim)
        })
    }

    /// Runs `f` with the step's cos, sin and signed-sin tables in `dt` (cast once per step).
    fn with_rope_tables<R>(
        &self,
        step: &AscendStep,
        dt: Dt,
        f: impl FnOnce(&AscendTensor, &AscendTensor, &AscendTensor) -> Result<R>,
    ) -> Result<R> {
        if dt == Dt::F32 {
            return f(&step.cos, &step.sin, &step.sin_signed);
        }
        let mut cast = step.cast.lock().unwrap_or_else(|p| p.into_inner());
        if cast.as_ref().is_none_or(|c| c[0].dt != dt) {
            let one = |a: &AscendTensor| -> Result<AscendTensor> {
                self.cast(a, dt)?
                    .ok_or_else(|| BackendError::Device("cast".into()))
            };
            *cast = Some([one(&step.cos)?, one(&step.sin)?, one(&step.sin_signed)?]);
        }
        let c = cast
            .as_ref()
            .ok_or_else(|| BackendError::Device("rope tables".into()))?;
        f(&c[0], &c[1], &c[2])
    }

    /// RoPE of a layer's queries and keys in one `aclnnApplyRotaryPosEmb` call (in place,
    /// BSND with B = 1, rotate-half as RotaryPositionEmbedding's mode 0), when exported.
    pub(crate) fn rope_qk_impl(
        &self,
        q: &mut AscendTensor,
        k: &mut AscendTensor,
        step: &AscendStep,
        head_dim: usize,
    ) -> Result<()> {
        let c = self.cann_ref();
        let both = c
            .ops
            .aclnnApplyRotaryPosEmbGetWorkspaceSize
            .zip(c.ops.aclnnApplyRotaryPosEmb);
        let (t, qw) = q.matrix();
        let (tk, kw) = k.matrix();
        let fits = head_dim > 0
            && head_dim.is_multiple_of(2)
            && qw.is_multiple_of(head_dim)
            && kw.is_multiple_of(head_dim)
            && t == step.num_tokens
            && tk == t
            && q.dt == k.dt
            && t > 0
            && step.cos.shape == [t, head_dim];
        let Some((ws, run)) = both.filter(|_| self.opts.fused_rope && fits) else {
            self.rope_impl(q, step, head_dim)?;
            return self.rope_impl(k, step, head_dim);
        };
        self.with_rope_tables(step, q.dt, |cos, sin, _| {
            let qd = self.td(&q.view().reshape(&[1, t, qw / head_dim, head_dim])?)?;
            let kd = self.td(&k.view().reshape(&[1, t, kw / head_dim, head_dim])?)?;
            let cd = self.td(&cos.view().reshape(&[1, t, 1, head_dim])?)?;
            let sd = self.td(&sin.view().reshape(&[1, t, 1, head_dim])?)?;
            aclnn!(&self.dev, "aclnnApplyRotaryPosEmb", ws, run;
                qd.raw, kd.raw, cd.raw, sd.raw, 1i64)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn rope_with(
        &self,
        x: &mut AscendTensor,
        cos: &AscendTensor,
        sin: &AscendTensor,
        sgn: &AscendTensor,
        t: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        let width = heads * head_dim;
        let out = self.empty(x.dt, &x.shape)?;
        let c = self.cann_ref();
        let fused = if self.opts.fused_rope {
            c.ops
                .aclnnRotaryPositionEmbeddingGetWorkspaceSize
                .zip(c.ops.aclnnRotaryPositionEmbedding)
        } else {
            None
        };
        if let Some((ws, run)) = fused {
            // BSND with B = 1: x [1, T, N, D], cos/sin [1, T, 1, D]; mode 0 rotates halves.
            let xd = self.td(&x.view().reshape(&[1, t, heads, head_dim])?)?;
            let cd = self.td(&cos.view().reshape(&[1, t, 1, head_dim])?)?;
            let sd = self.td(&sin.view().reshape(&[1, t, 1, head_dim])?)?;
            let od = self.td(&out.view().reshape(&[1, t, heads, head_dim])?)?;
            aclnn!(&self.dev, "aclnnRotaryPositionEmbedding", ws, run;
                xd.raw, cd.raw, sd.raw, 0i64, od.raw)?;
        } else {
            // out = x * cos + swap_halves(x) * [-sin, sin].
            let half = head_dim / 2;
            let rot = self.empty(x.dt, &x.shape)?;
            let halves = |base: &AscendTensor, off: usize| View {
                shape: vec![t as i64, heads as i64, half as i64],
                strides: vec![width as i64, head_dim as i64, 1],
                offset: off as i64,
                ..base.view()
            };
            self.copy_view(&halves(&rot, 0), &halves(x, half))?;
            self.copy_view(&halves(&rot, half), &halves(x, 0))?;
            let x3 = x.view().reshape(&[t, heads, head_dim])?;
            let tmp = self.empty(x.dt, &x.shape)?;
            let tmp3 = tmp.view().reshape(&[t, heads, head_dim])?;
            let o3 = out.view().reshape(&[t, heads, head_dim])?;
            self.mul(&x3, &cos.view().reshape(&[t, 1, head_dim])?, &o3)?;
            self.mul(
                &rot.view().reshape(&[t, heads, head_dim])?,
                &sgn.view().reshape(&[t, 1, head_dim])?,
                &tmp3,
            )?;
            let sum = self.empty(x.dt, &x.shape)?;
            self.add(&o3, &tmp3, &sum.view().reshape(&[t, heads, head_dim])?)?;
            *x = sum;
            return Ok(());
        }
        *x = out;
        Ok(())
    }
}
