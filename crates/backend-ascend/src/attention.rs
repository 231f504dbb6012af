//! Attention over the paged KV cache: fused infer attention (V4/V3/V2) or our own kernels
//! (`attention_custom.rs`) on a BF16 cache, or
//! eager matmul + mask + softmax per sequence on an F32 cache; inside a captured graph,
//! attention runs eagerly between segments.

use ascend_sys::AttentionApi;
use qwen3_backend::{AttnGeometry, BackendError, KvCacheShape, Result};

use crate::desc::{c_string, Dt, IntArrayDesc, TensorListDesc, View};
use crate::{
    shape_err, unsupported, AscendBackend, AscendKvCache, AscendStep, AscendTensor,
    AttentionBackend,
};

impl AscendBackend {
    pub(crate) fn attention_impl(
        &self,
        q: &AscendTensor,
        cache: &AscendKvCache,
        layer: usize,
        step: &AscendStep,
        g: &AttnGeometry,
    ) -> Result<AscendTensor> {
        let s = cache.shape;
        let width = g.num_heads * g.head_dim;
        if layer >= s.num_layers
            || q.matrix() != (step.num_tokens, width)
            || g.num_kv_heads != s.num_kv_heads
            || g.head_dim != s.head_dim
            || g.num_kv_heads == 0
            || !g.num_heads.is_multiple_of(g.num_kv_heads)
        {
            return Err(shape_err(
                "attention",
                format!("q {:?}, geometry {g:?}, cache {s:?}", q.shape),
            ));
        }
        if !self.in_graph_mode() {
            return self.attention_now(q, cache, layer, step, g);
        }
        if self.full_graph_step() {
            return self.attention_full(q, cache, layer, step, g);
        }
        // The next segment reads attention's output from a buffer of the graph; attention
        // itself runs eagerly with this step's lengths and pool buffers, then lands there.
        // (The K/V write before it usually opened the eager region already.)
        let dst = self.empty_region_output(q.dt, &q.shape)?;
        self.graph_segment_end()?;
        let out = self
            .attention_now(q, cache, layer, step, g)
            .and_then(|out| self.copy_view(&dst.view(), &out.view()));
        self.graph_segment_begin()?;
        out.map(|()| dst)
    }

    pub(crate) fn attention_now(
        &self,
        q: &AscendTensor,
        cache: &AscendKvCache,
        layer: usize,
        step: &AscendStep,
        g: &AttnGeometry,
    ) -> Result<AscendTensor> {
        let s = cache.shape;
        if self.opts.kv_cache_f32 {
            return self.eager_attention(q, &cache.k[layer], &cache.v[layer], step, g, &s);
        }
        if g.sliding_window.is_some() {
            return Err(unsupported(
                "sliding-window attention with a BF16 KV cache (use the F32 cache)",
            ));
        }
        let out_dt = q.dt;
        let qc = self.cast(q, Dt::BF16)?;
        let qb = qc.as_ref().unwrap_or(q);
        let (k, v) = (&cache.k[layer], &cache.v[layer]);
        let out = match self.opts.attention_backend {
            AttentionBackend::Fia => self.fia(qb, k, v, step, g, &s)?,
            AttentionBackend::Custom => self.custom_attention(qb, k, v, step, g, &s)?,
        };
        let mut out = match self.cast(&out, out_dt)? {
            Some(o) => o,
            None => out,
        };
        out.shape = q.shape.clone();
        Ok(out)
    }

    pub(crate) fn fia(
        &self,
        q: &AscendTensor,
        k: &AscendTensor,
        v: &AscendTensor,
        step: &AscendStep,
        g: &AttnGeometry,
        s: &KvCacheShape,
    ) -> Result<AscendTensor> {
        let api = self.attention_api.ok_or_else(|| {
            unsupported("attention: no aclnnFusedInferAttentionScore V2/V3/V4 is exported")
        })?;
        let lens = (&step.cu_q[..], &step.kv_lens[..]);
        self.fia_call(api, q, k, v, lens, &step.block_table, step.num_tokens, g, s)
    }

    /// One fused-attention call through `api`: `lens` are FIA's `actualSeqLengths`
    /// (cumulative query ends) and `actualSeqLengthsKv`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fia_call(
        &self,
        api: AttentionApi,
        q: &AscendTensor,
        k: &AscendTensor,
        v: &AscendTensor,
        lens: (&[i64], &[i64]),
        block_table: &AscendTensor,
        t: usize,
        g: &AttnGeometry,
        s: &KvCacheShape,
    ) -> Result<AscendTensor> {
        let c = self.cann_ref();
        let out = self.empty(Dt::BF16, &[t, g.num_heads * g.head_dim])?;
        let qd = self.td(&q.view().reshape(&[t, g.num_heads, g.head_dim])?)?;
        let cache_shape = [s.num_blocks, s.block_size, s.num_kv_heads * s.head_dim];
        let kl = TensorListDesc::new(c, vec![self.td(&k.view().reshape(&cache_shape)?)?])?;
        let vl = TensorListDesc::new(c, vec![self.td(&v.view().reshape(&cache_shape)?)?])?;
        let mask_guard = self.causal_mask()?;
        let mask = mask_guard
            .as_ref()
            .ok_or_else(|| BackendError::Device("mask missing".into()))?;
        let md = self.td(&mask.view())?;
        let aq = IntArrayDesc::new(c, lens.0)?;
        let akv = IntArrayDesc::new(c, lens.1)?;
        let bt = self.td(&block_table.view())?;
        let od = self.td(&out.view().reshape(&[t, g.num_heads, g.head_dim])?)?;
        let layout = c_string("TND");
        let lp = layout.as_ptr() as *mut std::ffi::c_char;
        let nul = std::ptr::null();
        let nula = std::ptr::null();
        let (nh, nkv, scale) = (g.num_heads as i64, g.num_kv_heads as i64, g.scale as f64);
        let bs = s.block_size as i64;
        // sparse_mode 3 (right-down causal) ignores pre/next tokens; these are the defaults.
        let (pre, next) = (i64::from(i32::MAX), i64::from(i32::MAX));
        let (sparse, inner) = (3i64, 1i64);
        match api {
            AttentionApi::FiaV4 => {
                let ops = &c.ops;
                let (Some(ws), Some(run)) = (
                    ops.aclnnFusedInferAttentionScoreV4GetWorkspaceSize,
                    ops.aclnnFusedInferAttentionScoreV4,
                ) else {
                    return Err(unsupported("FIA V4"));
                };
                aclnn!(&self.dev, "aclnnFusedInferAttentionScoreV4", ws, run;
                    qd.raw, kl.raw, vl.raw, nul, md.raw, aq.raw, akv.raw,
                    nul, nul, nul, nul, nul, nul, nul, bt.raw, nul, nul, nul, nul, nul, nul,
                    nul, nul, nula, nul, nul, nul, nul, nul,
                    nh, scale, pre, next, lp, nkv, sparse, inner, bs, 0i64, false, 0i64, 0i64,
                    0i64, od.raw, nul)?;
            }
            AttentionApi::FiaV3 => {
                let ops = &c.ops;
                let (Some(ws), Some(run)) = (
                    ops.aclnnFusedInferAttentionScoreV3GetWorkspaceSize,
                    ops.aclnnFusedInferAttentionScoreV3,
                ) else {
                    return Err(unsupported("FIA V3"));
                };
                aclnn!(&self.dev, "aclnnFusedInferAttentionScoreV3", ws, run;
                    qd.raw, kl.raw, vl.raw, nul, md.raw, aq.raw, akv.raw,
                    nul, nul, nul, nul, nul, nul, nul, bt.raw, nul, nul, nul, nul, nul, nul,
                    nul, nul, nula, nul, nul, nul,
                    nh, scale, pre, next, lp, nkv, sparse, inner, bs, 0i64, false, 0i64, 0i64,
                    od.raw, nul)?;
            }
            AttentionApi::FiaV2 | AttentionApi::IfaV4PfaV3 => {
                let ops = &c.ops;
                let (Some(ws), Some(run)) = (
                    ops.aclnnFusedInferAttentionScoreV2GetWorkspaceSize,
                    ops.aclnnFusedInferAttentionScoreV2,
                ) else {
                    return Err(unsupported("FIA V2"));
                };
                aclnn!(&self.dev, "aclnnFusedInferAttentionScoreV2", ws, run;
                    qd.raw, kl.raw, vl.raw, nul, md.raw, aq.raw, akv.raw,
                    nul, nul, nul, nul, nul, nul, nul, bt.raw, nul, nul, nul, nul, nul, nul,
                    nul, nul, nula,
                    nh, scale, pre, next, lp, nkv, sparse, inner, bs, 0i64, false, 0i64, 0i64,
                    od.raw, nul)?;
            }
        }
        Ok(out)
    }

    /// Attention as matmul, mask and softmax per sequence over its gathered context, in
    /// F32: the F32-cache path (fused infer attention takes no F32).
    pub(crate) fn eager_attention(
        &self,
        q: &AscendTensor,
        kc: &AscendTensor,
        vc: &AscendTensor,
        step: &AscendStep,
        g: &AttnGeometry,
        s: &KvCacheShape,
    ) -> Result<AscendTensor> {
        let (t, nh, hd, kvh) = (step.num_tokens, g.num_heads, g.head_dim, g.num_kv_heads);
        let grp = nh / kvh;
        let row = kvh * hd;
        let qc = self.cast(q, Dt::F32)?;
        let qf = qc.as_ref().unwrap_or(q);
        let scale = self.upload_f32(&[g.scale], &[1])?;
        let qs = self.empty(Dt::F32, &[t, nh * hd])?;
        self.mul(&qf.view(), &scale.view(), &qs.view())?;
        let out = self.empty(Dt::F32, &[t, nh * hd])?;
        let mut eager = step.eager.lock().unwrap_or_else(|p| p.into_inner());
        if eager.as_ref().is_none_or(|e| e.0 != g.sliding_window) {
            *eager = Some((g.sliding_window, self.eager_tables(step, g.sliding_window)?));
        }
        let tables = &eager
            .as_ref()
            .ok_or_else(|| BackendError::Device("attention tables".into()))?
            .1;
        let cache2 = |c: &AscendTensor| c.view().reshape(&[s.num_blocks * s.block_size, row]);
        // Query heads grouped by their KV head, `[kvh, group, len, hd]`, of the rows of a
        // `[t, nh * hd]` tensor from `start`.
        let grouped = |base: &AscendTensor, start: usize, len: usize| View {
            shape: vec![kvh as i64, grp as i64, len as i64, hd as i64],
            strides: vec![(grp * hd) as i64, hd as i64, (nh * hd) as i64, 1],
            offset: (start * nh * hd) as i64,
            ..base.view()
        };
        let mut start = 0usize;
        for (i, (slots, mask)) in tables.iter().enumerate() {
            let end = step.cu_q[i] as usize;
            let (len, ctx) = (end - start, step.kv_lens[i] as usize);
            let kg = self.empty(Dt::F32, &[ctx, row])?;
            let vg = self.empty(Dt::F32, &[ctx, row])?;
            self.index_select(&cache2(kc)?, slots, &kg.view())?;
            self.index_select(&cache2(vc)?, slots, &vg.view())?;
            let kt = View {
                shape: vec![kvh as i64, 1, hd as i64, ctx as i64],
                strides: vec![hd as i64, hd as i64, 1, row as i64],
                ..kg.view()
            };
            let scores = self.empty(Dt::F32, &[kvh, grp, len, ctx])?;
            self.matmul(&grouped(&qs, start, len), &kt, &scores.view())?;
            let masked = self.empty(Dt::F32, &[kvh, grp, len, ctx])?;
            self.add(&scores.view(), &mask.view(), &masked.view())?;
            let probs = self.empty(Dt::F32, &[kvh, grp, len, ctx])?;
            {
                let c = self.cann_ref();
                let (a, o) = (self.td(&masked.view())?, self.td(&probs.view())?);
                aclnn!(&self.dev, "aclnnSoftmax", c.ops.aclnnSoftmaxGetWorkspaceSize,
                    c.ops.aclnnSoftmax; a.raw, 3i64, o.raw)?;
            }
            let v4 = View {
                shape: vec![kvh as i64, 1, ctx as i64, hd as i64],
                strides: vec![hd as i64, hd as i64, row as i64, 1],
                ..vg.view()
            };
            let o = self.empty(Dt::F32, &[kvh, grp, len, hd])?;
            self.matmul(&probs.view(), &v4, &o.view())?;
            self.copy_view(&grouped(&out, start, len), &o.view())?;
            start = end;
        }
        drop(eager);
        let mut out = match self.cast(&out, q.dt)? {
            Some(o) => o,
            None => out,
        };
        out.shape = q.shape.clone();
        Ok(out)
    }

    /// Per sequence: its context's cache slots and its additive mask (0 where a query may
    /// look, a large negative number where it may not).
    pub(crate) fn eager_tables(
        &self,
        step: &AscendStep,
        window: Option<usize>,
    ) -> Result<Vec<(AscendTensor, AscendTensor)>> {
        let bs = step.block_size;
        let mut out = Vec::with_capacity(step.kv_lens.len());
        let mut start = 0usize;
        for (i, &ctx) in step.kv_lens.iter().enumerate() {
            let ctx = ctx as usize;
            let end = step.cu_q[i] as usize;
            let len = end - start;
            let table = &step.block_tables[i * step.max_blocks..(i + 1) * step.max_blocks];
            let slots: Vec<i64> = (0..ctx)
                .map(|j| (table[j / bs] as usize * bs + j % bs) as i64)
                .collect();
            let mut mask = vec![0.0f32; len * ctx];
            for r in 0..len {
                let pos = step.positions[start + r] as usize;
                let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                for (j, m) in mask[r * ctx..(r + 1) * ctx].iter_mut().enumerate() {
                    if j > pos || j < lo {
                        *m = -1e30;
                    }
                }
            }
            out.push((
                self.upload_i64(&slots, &[ctx])?,
                self.upload_f32(&mask, &[len, ctx])?,
            ));
            start = end;
        }
        Ok(out)
    }
}
