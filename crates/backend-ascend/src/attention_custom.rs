//! Attention through qwen3-serve's own AscendC kernels (`kernels/`, `--attention-backend
//! custom`) over the BF16 paged cache, tiled on the host by `qwen3-kernels`: a pure-decode
//! step runs the split-KV paged decode kernel (flash-decoding, merged by log-sum-exp when
//! split), any step with a prefill chunk the chunked-prefill kernel (decodes mixed in).

use std::ptr::null_mut;

use qwen3_backend::{AttnGeometry, KvCacheShape, Result};
use qwen3_kernels::{chunked_prefill_tiling, paged_decode_tiling, AttnShape, SplitKv};

use crate::custom_kernels::{kernels_api, missing};
use crate::desc::Dt;
use crate::{unsupported, AscendBackend, AscendStep, AscendTensor};

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
        let shape = AttnShape {
            num_q_heads: g.num_heads as u32,
            num_kv_heads: g.num_kv_heads as u32,
            head_dim: g.head_dim as u32,
            block_size: s.block_size as u32,
            max_blocks_per_seq: step.max_blocks as u32,
            num_cache_blocks: s.num_blocks as u32,
            scale: g.scale,
        };
        let lens: Vec<i32> = step.kv_lens.iter().map(|&l| l as i32).collect();
        let lens_dev = self.upload_i32(&lens, &[lens.len()])?;
        let out = self.empty(Dt::BF16, &[step.num_tokens, g.num_heads * g.head_dim])?;
        if step.cu_q.len() == step.num_tokens {
            self.custom_decode(q, (k, v), step, &shape, &lens_dev, &out)?;
        } else {
            self.custom_prefill(q, (k, v), step, &shape, &lens_dev, &out)?;
        }
        Ok(out)
    }

    /// One query token per sequence: the paged decode kernel, split over KV where the
    /// sequences alone would leave cores idle, then the merge of the splits.
    fn custom_decode(
        &self,
        q: &AscendTensor,
        (k, v): (&AscendTensor, &AscendTensor),
        step: &AscendStep,
        shape: &AttnShape,
        lens: &AscendTensor,
        out: &AscendTensor,
    ) -> Result<()> {
        let api = kernels_api(self.cann_ref())?;
        let run = api
            .aclrtlaunch_paged_decode_attention
            .ok_or_else(|| missing("aclrtlaunch_paged_decode_attention"))?;
        let merge = api
            .aclrtlaunch_paged_decode_merge
            .ok_or_else(|| missing("aclrtlaunch_paged_decode_merge"))?;
        let seqs = step.kv_lens.len();
        let longest = step.kv_lens.iter().copied().max().unwrap_or(1) as u32;
        let t = paged_decode_tiling(
            shape,
            seqs as u32,
            longest,
            SplitKv::Auto,
            &self.kernel_cores(),
        )
        .map_err(|e| unsupported(&format!("custom decode attention: {e}")))?;
        let tiling = self.upload_tiling(&t)?;
        let rows = seqs * shape.num_q_heads as usize * t.num_splits as usize;
        // Without splits the kernel writes `out` itself and never touches the partials.
        let partials = if t.num_splits > 1 {
            let d = shape.head_dim as usize;
            Some((
                self.empty(Dt::F32, &[rows, d])?,
                self.empty(Dt::F32, &[rows, 2])?,
            ))
        } else {
            None
        };
        let (po, ps) = partials
            .as_ref()
            .map_or((null_mut(), null_mut()), |(o, s)| {
                (o.buf.ptr.0, s.buf.ptr.0)
            });
        self.dev.bind()?;
        // SAFETY: device buffers of the extents `t` implies (q and out `[seqs, heads *
        // head_dim]` BF16, the caches `[blocks, block, kv_heads * head_dim]` BF16, the step's
        // `[seqs, max_blocks]` block table, `seqs` lengths, partials `[seqs * splits * heads]`
        // rows when split, else unread), on this device and kept alive by the pool until the
        // stream has run them.
        let rc = unsafe {
            run(
                t.block_dim,
                self.dev.stream.0,
                q.buf.ptr.0,
                k.buf.ptr.0,
                v.buf.ptr.0,
                step.block_table.buf.ptr.0,
                lens.buf.ptr.0,
                out.buf.ptr.0,
                po,
                ps,
                tiling.buf.ptr.0,
            )
        };
        self.launched("aclrtlaunch_paged_decode_attention", rc)?;
        if partials.is_none() {
            return Ok(());
        }
        // SAFETY: as above; queued after the decode kernel on the same stream.
        let rc = unsafe {
            merge(
                t.merge_block_dim,
                self.dev.stream.0,
                po,
                ps,
                out.buf.ptr.0,
                tiling.buf.ptr.0,
            )
        };
        self.launched("aclrtlaunch_paged_decode_merge", rc)
    }

    /// Prefill chunks (decodes mixed in): the chunked-prefill kernel, the cached prefix plus
    /// causal attention within each chunk.
    fn custom_prefill(
        &self,
        q: &AscendTensor,
        (k, v): (&AscendTensor, &AscendTensor),
        step: &AscendStep,
        shape: &AttnShape,
        lens: &AscendTensor,
        out: &AscendTensor,
    ) -> Result<()> {
        let launch = kernels_api(self.cann_ref())?
            .aclrtlaunch_chunked_prefill_attention
            .ok_or_else(|| missing("aclrtlaunch_chunked_prefill_attention"))?;
        let mut starts = Vec::with_capacity(step.cu_q.len() + 1);
        starts.push(0i32);
        starts.extend(step.cu_q.iter().map(|&e| e as i32));
        let q_lens: Vec<u32> = starts.windows(2).map(|w| (w[1] - w[0]) as u32).collect();
        let t = chunked_prefill_tiling(shape, &q_lens, &self.kernel_cores())
            .map_err(|e| unsupported(&format!("custom attention: {e}")))?;
        let tiling = self.upload_tiling(&t)?;
        let starts_dev = self.upload_i32(&starts, &[starts.len()])?;
        self.dev.bind()?;
        // SAFETY: device buffers of the extents `t` implies (q and out `[tokens, heads *
        // head_dim]` BF16, the caches `[blocks, block, kv_heads * head_dim]`, the step's
        // `[seqs, max_blocks]` block table, `seqs + 1` starts, `seqs` lengths), all on this
        // device and kept alive by the pool until the stream has run.
        let rc = unsafe {
            launch(
                t.block_dim,
                self.dev.stream.0,
                q.buf.ptr.0,
                k.buf.ptr.0,
                v.buf.ptr.0,
                step.block_table.buf.ptr.0,
                starts_dev.buf.ptr.0,
                lens.buf.ptr.0,
                out.buf.ptr.0,
                tiling.buf.ptr.0,
            )
        };
        self.launched("aclrtlaunch_chunked_prefill_attention", rc)
    }
}
