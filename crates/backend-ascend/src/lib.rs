//! The backend op set on Ascend NPUs: ACL runtime for memory and streams, aclnn operators
//! for the maths, HCCL for tensor parallelism.
//!
//! Activations keep the dtype of the weights (BF16 in serving, F32 when weights are
//! loaded as F32); the KV cache is BF16 and attention runs in BF16 (fused infer attention
//! takes no F32), with casts around it for F32 models. Every op is queued on the backend's
//! one stream; the host waits only when it reads results (logits, sampled ids).
//!
//! This file lists the modules and implements [`Backend`] by delegating to them.

// First: every module below calls operators through `aclnn!`.
#[macro_use]
mod aclnn_macro;

mod attention;
mod attention_custom;
pub mod attn_rules;
mod backend;
pub mod comm;
mod custom_kernels;
pub mod desc;
pub mod device_query;
mod device_timer;
pub mod doctor;
pub mod doctor_graph;
pub mod doctor_kernels;
mod doctor_layers;
pub mod fia_check;
mod graph;
mod graph_full;
pub mod host_calls;
mod kv_cache;
mod mask;
pub mod mem;
mod mem_kind;
mod moe;
mod moe_w8a8;
mod norm_rope_cache;
mod ops;
mod options;
mod prompt_logprobs;
mod quant;
mod rope;
pub mod sample;
mod sample_device;
mod sample_mask;
mod staging;
mod step;
pub mod telemetry;
mod tensor;
mod w8a8;
pub mod workspace;

use qwen3_backend::logprobs::PromptLogprob;
use qwen3_backend::sampling::{SampleRow, Sampled};
use qwen3_backend::{
    AttnGeometry, Backend, BackendError, HostData, KvCacheShape, MoeWeights, QuantizedHost, Result,
    StepMeta, W8A8Host,
};

pub use attn_rules::AttentionPath;
pub use backend::AscendBackend;
pub use graph::{capture_sizes_within_budget, MAX_CAPTURED_GRAPHS};
pub use graph_full::GraphKind;
pub use kv_cache::AscendKvCache;
pub use mem::{MemByKind, MemKind, PoolStats};
pub use options::{AscendOptions, AttentionBackend};
pub use step::AscendStep;
pub use tensor::AscendTensor;

/// The KV block size vLLM-Ascend uses and fused attention wants for prefill.
pub const DEFAULT_BLOCK_SIZE: usize = 128;

fn shape_err(op: &'static str, detail: String) -> BackendError {
    BackendError::Shape { op, detail }
}

fn unsupported(what: &str) -> BackendError {
    BackendError::Unsupported(what.to_string())
}

impl Backend for AscendBackend {
    type Tensor = AscendTensor;
    type Step = AscendStep;
    type KvCache = AscendKvCache;

    fn name(&self) -> String {
        format!("ascend:{}", self.dev.id)
    }

    fn memory_info(&self) -> Result<(u64, u64)> {
        self.dev.mem_info()
    }

    fn upload(&self, data: HostData<'_>, shape: &[usize]) -> Result<AscendTensor> {
        self.upload_impl(data, shape)
    }

    fn shape<'t>(&self, t: &'t AscendTensor) -> &'t [usize] {
        &t.shape
    }

    fn to_host_f32(&self, t: &AscendTensor) -> Result<Vec<f32>> {
        self.to_host_f32_impl(t)
    }

    fn size_bytes(&self, t: &AscendTensor) -> u64 {
        match &t.quant {
            Some(q) => t.buf.bytes as u64 + q.param_bytes(),
            None => (t.numel() * t.dt.size()) as u64,
        }
    }

    fn upload_quantized(&self, w: &QuantizedHost<'_>) -> Result<AscendTensor> {
        self.upload_quantized_weight(w)
    }

    fn upload_w8a8(&self, w: &W8A8Host<'_>) -> Result<AscendTensor> {
        self.upload_w8a8_weight(w)
    }

    fn prepare_step(&self, m: &StepMeta<'_>) -> Result<AscendStep> {
        self.prepare_step_impl(m)
    }

    fn embedding(
        &self,
        table: &AscendTensor,
        step: &AscendStep,
        vocab_start: usize,
    ) -> Result<AscendTensor> {
        self.embedding_impl(table, step, vocab_start)
    }

    fn rms_norm(&self, x: &AscendTensor, w: &AscendTensor, eps: f32) -> Result<AscendTensor> {
        let (rows, dim) = x.matrix();
        self.rms_norm_rows(&x.view(), w, eps, rows, dim, &x.shape)
    }

    fn add_rms_norm(
        &self,
        x: &AscendTensor,
        residual: &mut AscendTensor,
        w: &AscendTensor,
        eps: f32,
    ) -> Result<AscendTensor> {
        self.add_rms_norm_impl(x, residual, w, eps)
    }

    fn head_rms_norm(
        &self,
        x: &mut AscendTensor,
        w: &AscendTensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        self.head_rms_norm_impl(x, w, head_dim, eps)
    }

    fn linear(&self, x: &AscendTensor, w: &AscendTensor) -> Result<AscendTensor> {
        self.linear_impl(x, w)
    }

    fn rope(&self, x: &mut AscendTensor, step: &AscendStep, head_dim: usize) -> Result<()> {
        self.rope_impl(x, step, head_dim)
    }

    fn rope_qk(
        &self,
        q: &mut AscendTensor,
        k: &mut AscendTensor,
        step: &AscendStep,
        head_dim: usize,
    ) -> Result<()> {
        self.rope_qk_impl(q, k, step, head_dim)
    }

    fn silu_mul(&self, gate: &AscendTensor, up: &AscendTensor) -> Result<AscendTensor> {
        self.silu_mul_impl(gate, up)
    }

    fn merges_gate_up(&self) -> bool {
        self.opts.merge_gate_up
    }

    fn silu_mul_merged(&self, gate_up: &AscendTensor) -> Result<AscendTensor> {
        self.silu_mul_merged_impl(gate_up)
    }

    fn add_inplace(&self, x: &mut AscendTensor, y: &AscendTensor) -> Result<()> {
        self.add_inplace_impl(x, y)
    }

    fn select_rows(&self, x: &AscendTensor, rows: &[u32]) -> Result<AscendTensor> {
        self.select_rows_impl(x, rows)
    }

    fn alloc_kv_cache(&self, s: KvCacheShape) -> Result<AscendKvCache> {
        self.alloc_kv_cache_impl(s)
    }

    fn kv_block_bytes(&self, s: KvCacheShape) -> u64 {
        (2 * s.num_layers * s.block_size * s.num_kv_heads * s.head_dim * self.kv_dt().size()) as u64
    }

    fn write_kv(
        &self,
        cache: &mut AscendKvCache,
        layer: usize,
        k: &AscendTensor,
        v: &AscendTensor,
        step: &AscendStep,
    ) -> Result<()> {
        self.write_kv_impl(cache, layer, k, v, step)
    }

    fn qk_norm_rope_write_kv(
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
        self.qk_norm_rope_write_kv_impl(q, k, v, norms, eps, cache, layer, step, head_dim)
    }

    fn attention(
        &self,
        q: &AscendTensor,
        cache: &AscendKvCache,
        layer: usize,
        step: &AscendStep,
        g: &AttnGeometry,
    ) -> Result<AscendTensor> {
        self.attention_impl(q, cache, layer, step, g)
    }

    fn moe(
        &self,
        x: &AscendTensor,
        router_logits: &AscendTensor,
        e: &MoeWeights<AscendTensor>,
    ) -> Result<AscendTensor> {
        self.moe_impl(x, router_logits, e)
    }

    fn sample(&self, logits: &AscendTensor, rows: &[SampleRow<'_>]) -> Result<Vec<Sampled>> {
        self.finish_graph_step()?;
        let r = self.sample_impl(logits, rows);
        self.end_step_timer();
        r
    }

    fn prompt_logprobs(
        &self,
        logits: &AscendTensor,
        targets: &[u32],
        top_n: usize,
    ) -> Result<Vec<PromptLogprob>> {
        self.prompt_logprobs_impl(logits, targets, top_n)
    }
}
