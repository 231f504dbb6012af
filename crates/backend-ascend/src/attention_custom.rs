//! Attention through qwen3-serve's own AscendC kernels (`kernels/`, `--attention-backend
//! custom`): one chunked-prefill attention launch per layer serves prefill chunks and decodes
//! alike over the BF16 paged cache, tiled on the host by `qwen3-kernels`.

use ascend_sys::KernelsApi;
use qwen3_backend::{AttnGeometry, BackendError, KvCacheShape, Result};
use qwen3_kernels::{chunked_prefill_tiling, AttnShape, CoreSpec};

use crate::desc::Dt;
use crate::mem::dev_err;
use crate::{unsupported, AscendBackend, AscendStep, AscendTensor};

/// The kernels library's launch table, or why the custom backend cannot run.
pub(crate) fn kernels_api(cann: &ascend_sys::Cann) -> Result<&KernelsApi> {
    let api = cann.kernels.as_ref().ok_or_else(|| {
        unsupported(
            "--attention-backend custom: libqwen3_ascendc_kernels.so not found beside CANN's libraries (build it with kernels/build-atlas.sh)",
        )
    })?;
    if api.aclrtlaunch_chunked_prefill_attention.is_none() {
        return Err(unsupported(
            "--attention-backend custom: libqwen3_ascendc_kernels.so lacks aclrtlaunch_chunked_prefill_attention",
        ));
    }
    Ok(api)
}

/// Vector cores of the SoC CANN reports (910B3/B4: 20 AI cores, 40 vector; else 910B1/B2's 48).
fn core_spec(soc: Option<&str>) -> CoreSpec {
    match soc {
        Some(s) if s.contains("910B3") || s.contains("910B4") => CoreSpec::ASCEND_910B3,
        _ => CoreSpec::ASCEND_910B2,
    }
}

impl AscendBackend {
    /// `q` BF16 `[tokens, heads * head_dim]` against layer caches `k`, `v`; BF16 output.
    pub(crate) fn custom_attention(
        &self,
        q: &AscendTensor,
        k: &AscendTensor,
        v: &AscendTensor,
        step: &AscendStep,
        g: &AttnGeometry,
        s: &KvCacheShape,
    ) -> Result<AscendTensor> {
        let c = self.cann_ref();
        let launch = kernels_api(c)?
            .aclrtlaunch_chunked_prefill_attention
            .ok_or_else(|| BackendError::Device("custom attention launch missing".into()))?;
        let mut starts = Vec::with_capacity(step.cu_q.len() + 1);
        starts.push(0i32);
        starts.extend(step.cu_q.iter().map(|&e| e as i32));
        let q_lens: Vec<u32> = starts.windows(2).map(|w| (w[1] - w[0]) as u32).collect();
        let shape = AttnShape {
            num_q_heads: g.num_heads as u32,
            num_kv_heads: g.num_kv_heads as u32,
            head_dim: g.head_dim as u32,
            block_size: s.block_size as u32,
            max_blocks_per_seq: step.max_blocks as u32,
            num_cache_blocks: s.num_blocks as u32,
            scale: g.scale,
        };
        let tiling = chunked_prefill_tiling(&shape, &q_lens, &core_spec(c.soc_name().as_deref()))
            .map_err(|e| unsupported(&format!("custom attention: {e}")))?;
        let lens: Vec<i32> = step.kv_lens.iter().map(|&l| l as i32).collect();
        // SAFETY: the tiling struct is plain u32/f32 fields; its bytes are initialised.
        let tiling_bytes = unsafe {
            std::slice::from_raw_parts(
                (&tiling as *const qwen3_kernels::ChunkedPrefillTiling).cast::<u8>(),
                std::mem::size_of_val(&tiling),
            )
        }
        .to_vec();
        let words = tiling_bytes.len() / 4;
        let tiling_dev = self.upload_bytes(tiling_bytes, Dt::I32, &[words])?;
        let starts_dev = self.upload_i32(&starts, &[starts.len()])?;
        let lens_dev = self.upload_i32(&lens, &[lens.len()])?;
        let out = self.empty(Dt::BF16, &[step.num_tokens, g.num_heads * g.head_dim])?;
        self.dev.bind()?;
        // SAFETY: device buffers of the extents the tiling implies (q and out
        // `[tokens, heads * head_dim]` BF16, the caches `[blocks, block, kv_heads * head_dim]`,
        // the step's `[seqs, max_blocks]` block table, `seqs + 1` starts, `seqs` lengths),
        // all on this device and kept alive by the pool until the stream has run.
        let rc = unsafe {
            launch(
                tiling.block_dim,
                self.dev.stream.0,
                q.buf.ptr.0,
                k.buf.ptr.0,
                v.buf.ptr.0,
                step.block_table.buf.ptr.0,
                starts_dev.buf.ptr.0,
                lens_dev.buf.ptr.0,
                out.buf.ptr.0,
                tiling_dev.buf.ptr.0,
            )
        };
        if rc != 0 {
            return Err(dev_err(ascend_sys::AclError::new(
                "aclrtlaunch_chunked_prefill_attention",
                rc as i32,
                c.acl.recent_error_message(),
            )));
        }
        Ok(out)
    }
}
