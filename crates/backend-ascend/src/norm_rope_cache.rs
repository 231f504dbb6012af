//! A layer's q/k RMSNorm, RoPE and K/V-cache write as one launch of qwen3-serve's fused
//! AscendC kernel (`kernels/ascendc/qk_norm_rope_cache.cpp`) wherever its library loads and
//! the layer fits it (BF16 activations, weights and cache), under either attention backend;
//! else the four aclnn ops. In a graph step the launch opens the eager region, as the K/V
//! write it replaces did, so no graph holds the cache's address.

use qwen3_backend::{unfused_qk_norm_rope_write_kv, BackendError, Result};
use qwen3_kernels::{qk_norm_rope_cache_tiling, NormRopeShape, QkNormRopeCacheTiling};

use crate::desc::Dt;
use crate::{shape_err, AscendBackend, AscendKvCache, AscendStep, AscendTensor};

impl AscendBackend {
    /// Whether layers run the fused kernel: asked for, exported, and a BF16 cache.
    pub fn fuses_qk_norm_rope_cache(&self) -> bool {
        self.opts.fused_qk_norm_rope_cache
            && !self.opts.kv_cache_f32
            && self
                .cann_ref()
                .kernels
                .as_ref()
                .is_some_and(|k| k.aclrtlaunch_qk_norm_rope_cache.is_some())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn qk_norm_rope_write_kv_impl(
        &self,
        q: &mut AscendTensor,
        k: AscendTensor,
        v: &AscendTensor,
        norms: (&AscendTensor, &AscendTensor),
        eps: f32,
        cache: &mut AscendKvCache,
        layer: usize,
        step: &AscendStep,
        head_dim: usize,
    ) -> Result<()> {
        let launch = self
            .cann_ref()
            .kernels
            .as_ref()
            .and_then(|k| k.aclrtlaunch_qk_norm_rope_cache)
            .filter(|_| self.fuses_qk_norm_rope_cache());
        let bf16 = [&*q, &k, v, norms.0, norms.1]
            .iter()
            .all(|t| t.dt == Dt::BF16 && t.quant.is_none());
        let tiling = (launch.is_some() && bf16)
            .then(|| self.norm_rope_tiling(q, &k, v, norms, cache, layer, step, head_dim, eps))
            .transpose()?
            .flatten();
        let (Some(launch), Some(t), Some(positions)) =
            (launch, tiling, step.positions_i32.as_ref())
        else {
            return unfused_qk_norm_rope_write_kv(
                self, q, k, v, norms, eps, cache, layer, step, head_dim,
            );
        };
        // The write opens the eager region attention closes (see `write_kv_impl`).
        self.graph_segment_end()?;
        let q_out = self.empty(Dt::BF16, &q.shape)?;
        let tiling = self.upload_tiling(&t)?;
        let rope = self.rope.lock().unwrap_or_else(|p| p.into_inner());
        let table = rope
            .as_ref()
            .ok_or_else(|| BackendError::Device("the rope table is gone".into()))?;
        self.dev.bind()?;
        // SAFETY: device buffers of the extents `t` implies, checked by `norm_rope_tiling`:
        // q and q_out `[tokens, q_heads * head_dim]`, k and v `[tokens, kv_heads * head_dim]`,
        // the norm weights `[head_dim]` (all BF16), the rope tables `[rows, head_dim]` F32
        // (read `head_dim / 2` per row), positions and slots `[tokens]` i32 (positions below
        // the table's rows, which `prepare_step` grew to cover them), the layer's caches
        // `[blocks * block, kv_heads * head_dim]` BF16; all on this device and kept alive by
        // the pool until the stream has run the kernel.
        let rc = unsafe {
            launch(
                t.block_dim,
                self.dev.stream.0,
                q.buf.ptr.0,
                k.buf.ptr.0,
                v.buf.ptr.0,
                norms.0.buf.ptr.0,
                norms.1.buf.ptr.0,
                table.cos.buf.ptr.0,
                table.sin.buf.ptr.0,
                positions.buf.ptr.0,
                step.slots_i32.buf.ptr.0,
                q_out.buf.ptr.0,
                cache.k[layer].buf.ptr.0,
                cache.v[layer].buf.ptr.0,
                tiling.buf.ptr.0,
            )
        };
        drop(rope);
        self.launched("aclrtlaunch_qk_norm_rope_cache", rc)?;
        *q = q_out;
        Ok(())
    }

    /// The fused kernel's tiling for this layer, `None` where the kernel does not fit it
    /// (the four ops then run), an error where the shapes disagree.
    #[allow(clippy::too_many_arguments)]
    fn norm_rope_tiling(
        &self,
        q: &AscendTensor,
        k: &AscendTensor,
        v: &AscendTensor,
        norms: (&AscendTensor, &AscendTensor),
        cache: &AscendKvCache,
        layer: usize,
        step: &AscendStep,
        head_dim: usize,
        eps: f32,
    ) -> Result<Option<QkNormRopeCacheTiling>> {
        let s = cache.shape;
        let (t, qw) = q.matrix();
        let kv_row = s.num_kv_heads * s.head_dim;
        if layer >= s.num_layers
            || t != step.num_tokens
            || head_dim != s.head_dim
            || !qw.is_multiple_of(head_dim.max(1))
            || k.shape != v.shape
            || k.matrix() != (t, kv_row)
            || norms.0.numel() != head_dim
            || norms.1.numel() != head_dim
            || step.block_size != s.block_size
        {
            return Err(shape_err(
                "qk_norm_rope_write_kv",
                format!(
                    "layer {layer}, q {:?}, k {:?}, v {:?}, cache {s:?}",
                    q.shape, k.shape, v.shape
                ),
            ));
        }
        if t == 0 {
            return Ok(None);
        }
        let rope = self.rope.lock().unwrap_or_else(|p| p.into_inner());
        let Some(table) = rope.as_ref().filter(|r| r.head_dim == head_dim) else {
            return Ok(None);
        };
        let shape = NormRopeShape {
            num_q_heads: (qw / head_dim) as u32,
            num_kv_heads: s.num_kv_heads as u32,
            head_dim: head_dim as u32,
            num_slots: (s.num_blocks * s.block_size) as u32,
            rope_rows: table.rows as u32,
            rope_stride: head_dim as u32,
            eps,
        };
        Ok(qk_norm_rope_cache_tiling(t as u32, &shape, &self.kernel_cores()).ok())
    }
}
