//! The paged KV cache: per layer K and V `[blocks, block_size, kv_heads, head_dim]`, its
//! allocation and the writes of a step's K/V into their slots.

use qwen3_backend::{KvCacheShape, Result};

use crate::desc::{c_string, Dt};
use crate::mem::dev_err;
use crate::{shape_err, unsupported, AscendBackend, AscendStep, AscendTensor};

/// Per layer, K and V caches `[num_blocks, block_size, kv_heads, head_dim]` in BF16.
pub struct AscendKvCache {
    pub(crate) shape: KvCacheShape,
    pub(crate) k: Vec<AscendTensor>,
    pub(crate) v: Vec<AscendTensor>,
}

impl AscendKvCache {
    pub fn shape(&self) -> KvCacheShape {
        self.shape
    }
}

impl AscendBackend {
    pub(crate) fn kv_dt(&self) -> Dt {
        if self.opts.kv_cache_f32 {
            Dt::F32
        } else {
            Dt::BF16
        }
    }

    pub(crate) fn alloc_kv_cache_impl(&self, s: KvCacheShape) -> Result<AscendKvCache> {
        if !self.opts.kv_cache_f32 {
            // A 910B's fused attention refuses these in layout TND: say so at start-up.
            if let Some(why) = crate::attn_rules::tnd_refusal(s.head_dim, s.block_size) {
                return Err(unsupported(&why));
            }
        }
        // Piecewise steps never touch the cache (K/V writes and attention run between
        // segments), so those graphs stay valid; full graphs hold its address and go.
        self.kv_cache_changed()?;
        let shape = [s.num_blocks, s.block_size, s.num_kv_heads, s.head_dim];
        let dt = self.kv_dt();
        let bytes = shape.iter().product::<usize>() * dt.size();
        let alloc = || -> Result<AscendTensor> {
            let buf = self.dev.alloc_direct(bytes, crate::mem::MemKind::KvCache)?;
            // Zeroed, so that never-written slots hold finite values.
            self.dev.bind()?;
            // SAFETY: `buf` holds `bytes` (at least 1) bytes on this device; queued on the
            // device's stream.
            let rc = unsafe {
                (self.dev.cann.acl.aclrtMemsetAsync)(
                    buf.ptr.0,
                    buf.bytes,
                    0,
                    bytes,
                    self.dev.stream.0,
                )
            };
            self.dev
                .cann
                .check(rc, "aclrtMemsetAsync")
                .map_err(dev_err)?;
            Ok(AscendTensor {
                buf,
                shape: shape.to_vec(),
                dt,
                quant: None,
            })
        };
        let mut k = Vec::with_capacity(s.num_layers);
        let mut v = Vec::with_capacity(s.num_layers);
        for _ in 0..s.num_layers {
            k.push(alloc()?);
            v.push(alloc()?);
        }
        Ok(AscendKvCache { shape: s, k, v })
    }

    pub(crate) fn write_kv_impl(
        &self,
        cache: &mut AscendKvCache,
        layer: usize,
        k: &AscendTensor,
        v: &AscendTensor,
        step: &AscendStep,
    ) -> Result<()> {
        let s = cache.shape;
        let row = s.num_kv_heads * s.head_dim;
        if layer >= s.num_layers
            || k.shape != v.shape
            || k.matrix() != (step.num_tokens, row)
            || step.block_size != s.block_size
        {
            return Err(shape_err(
                "write_kv",
                format!("layer {layer}, k {:?}, v {:?}, row {row}", k.shape, v.shape),
            ));
        }
        if step.num_tokens == 0 {
            return Ok(());
        }
        // In a graph step the K/V write opens the eager region attention closes, as vLLM's
        // piecewise split op (attention with its cache write): no graph holds the cache's
        // address, so graphs can be captured before the cache is sized.
        self.graph_segment_end()?;
        let c = self.cann_ref();
        let pa = (self.opts.scatter_pa_kv_cache && !self.opts.kv_cache_f32)
            .then_some(())
            .and(
                c.ops
                    .aclnnScatterPaKvCacheGetWorkspaceSize
                    .zip(c.ops.aclnnScatterPaKvCache),
            );
        if let Some((ws, run)) = pa {
            let kc = self.cast(k, Dt::BF16)?;
            let vc = self.cast(v, Dt::BF16)?;
            let (k, v) = (kc.as_ref().unwrap_or(k), vc.as_ref().unwrap_or(v));
            let tok = [step.num_tokens, s.num_kv_heads, s.head_dim];
            let cache_shape = [s.num_blocks, s.block_size, s.num_kv_heads, s.head_dim];
            let kd = self.td(&k.view().reshape(&tok)?)?;
            let vd = self.td(&v.view().reshape(&tok)?)?;
            let kcd = self.td(&cache.k[layer].view().reshape(&cache_shape)?)?;
            let vcd = self.td(&cache.v[layer].view().reshape(&cache_shape)?)?;
            let sd = self.td(&step.slots_i32.view())?;
            let mode = c_string("Norm");
            let mp = mode.as_ptr() as *mut std::ffi::c_char;
            let nul = std::ptr::null();
            aclnn!(&self.dev, "aclnnScatterPaKvCache", ws, run;
                kd.raw, kcd.raw, sd.raw, vd.raw, vcd.raw, nul, nul, nul, mp,
                std::ptr::null_mut(), std::ptr::null(), std::ptr::null())?;
            return Ok(());
        }
        self.write_one(&cache.k[layer], k, step, &s)?;
        self.write_one(&cache.v[layer], v, step, &s)
    }

    pub(crate) fn write_one(
        &self,
        cache: &AscendTensor,
        x: &AscendTensor,
        step: &AscendStep,
        s: &KvCacheShape,
    ) -> Result<()> {
        let c = self.cann_ref();
        let t = step.num_tokens;
        let row = s.num_kv_heads * s.head_dim;
        let cast = self.cast(x, cache.dt)?;
        let x = cast.as_ref().unwrap_or(x);
        let (ws, run) = match (
            c.ops.aclnnScatterNdUpdateGetWorkspaceSize,
            c.ops.aclnnScatterNdUpdate,
        ) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(unsupported(
                    "KV cache writes (neither aclnnScatterPaKvCache nor aclnnScatterNdUpdate is exported)",
                ))
            }
        };
        let var = self.td(&cache.view().reshape(&[s.num_blocks * s.block_size, row])?)?;
        let idx = self.td(&step.slots_i64.view())?;
        let upd = self.td(&x.view().reshape(&[t, row])?)?;
        aclnn!(&self.dev, "aclnnScatterNdUpdate", ws, run; var.raw, idx.raw, upd.raw)
    }
}
