//! The op set every device implements, and the CPU implementation.
//!
//! The model's forward pass is written once over [`Backend`]; each device (the CPU here, the
//! NPU in `qwen3-backend-ascend`) implements the ops with its own tensors, step metadata and KV
//! cache. Ops are as coarse as the fastest device wants them (fused add + RMSNorm, one
//! attention call for mixed prefill and decode, one MoE call), so no device is forced into
//! extra launches.

pub mod comm;
pub mod cpu;
pub mod logprobs;
pub mod quant;
pub mod sampling;
pub mod w8a8;

use logprobs::PromptLogprob;
pub use quant::QuantizedHost;
use sampling::{SampleRow, Sampled};
pub use w8a8::{ActQuant, W8A8Host};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{0} is not supported by this backend")]
    Unsupported(String),
    #[error("device error: {0}")]
    Device(String),
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    #[error("collective failed: {0}")]
    Collective(String),
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// Host data handed to a backend to become a device weight.
#[derive(Clone, Copy, Debug)]
pub enum HostData<'a> {
    F32(&'a [f32]),
    BF16(&'a [half::bf16]),
}

impl HostData<'_> {
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(d) => d.len(),
            HostData::BF16(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Host data handed over for good (see [`Backend::upload_owned`]).
#[derive(Debug)]
pub enum HostVec {
    F32(Vec<f32>),
    BF16(Vec<half::bf16>),
}

impl HostVec {
    pub fn as_data(&self) -> HostData<'_> {
        match self {
            HostVec::F32(d) => HostData::F32(d),
            HostVec::BF16(d) => HostData::BF16(d),
        }
    }
}

/// Rotary embedding parameters after any scaling (linear, dynamic, YaRN) has been folded in.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    /// `head_dim / 2` inverse frequencies (neox layout: rotate halves).
    pub inv_freq: Vec<f32>,
    /// Multiplies cos and sin (YaRN's attention factor; 1 otherwise).
    pub mscale: f32,
}

/// Shapes of the KV cache on one rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheShape {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// Per-step metadata every layer shares: built once per step by [`Backend::prepare_step`].
#[derive(Clone, Copy, Debug)]
pub struct StepMeta<'a> {
    pub token_ids: &'a [u32],
    pub positions: &'a [u32],
    pub slot_mapping: &'a [u32],
    /// Per sequence: first token index in the flattened batch, query length, context length.
    pub query_start: &'a [u32],
    pub query_len: &'a [u32],
    pub context_len: &'a [u32],
    /// Row-major `[num_seqs, max_blocks_per_seq]`.
    pub block_tables: &'a [u32],
    pub max_blocks_per_seq: usize,
    pub block_size: usize,
    pub rope: &'a RopeSpec,
}

/// Attention geometry of one rank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnGeometry {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Keys older than this many positions are not attended to.
    pub sliding_window: Option<usize>,
}

/// Stacked expert weights of one MoE layer (this rank's slice of each expert).
pub struct MoeWeights<T> {
    /// `[experts, inter, hidden]`
    pub gate: T,
    /// `[experts, inter, hidden]`
    pub up: T,
    /// `[experts, hidden, inter]`
    pub down: T,
    pub num_experts: usize,
    pub top_k: usize,
    pub renormalize: bool,
}

/// The op set. Activations are `[tokens, features]` row-major; linear weights are `[out, in]`
/// as Hugging Face stores them.
pub trait Backend: Send + Sync + 'static {
    type Tensor: Send + Sync;
    type Step: Send;
    type KvCache: Send;

    fn name(&self) -> String;

    /// Device memory as (free, total) bytes, for KV cache sizing.
    fn memory_info(&self) -> Result<(u64, u64)>;

    fn upload(&self, data: HostData<'_>, shape: &[usize]) -> Result<Self::Tensor>;
    /// As [`Self::upload`], from data the caller no longer needs: a backend that computes in
    /// host memory keeps the vector instead of copying it (a copy of every weight at load).
    fn upload_owned(&self, data: HostVec, shape: &[usize]) -> Result<Self::Tensor> {
        self.upload(data.as_data(), shape)
    }
    /// A weight-only quantized weight (shape [`QuantizedHost::shape`]) that [`Self::linear`]
    /// (and [`Self::moe`] for a stack of experts) accepts as it accepts a dense one. Backends
    /// without quantized kernels keep this default.
    fn upload_quantized(&self, w: &QuantizedHost<'_>) -> Result<Self::Tensor> {
        Err(BackendError::Unsupported(format!(
            "{}-bit weight-only quantization ({})",
            w.bits,
            self.name()
        )))
    }
    /// A W8A8 weight (int8 weights, activations quantized to int8 per its scheme; shape
    /// [`W8A8Host::shape`]) that [`Self::linear`] and [`Self::moe`] accept as a dense one.
    /// Backends without INT8 matmuls keep this default.
    fn upload_w8a8(&self, w: &W8A8Host<'_>) -> Result<Self::Tensor> {
        let _ = w;
        Err(BackendError::Unsupported(format!(
            "W8A8 (int8 weights and activations) on {}",
            self.name()
        )))
    }
    fn shape<'t>(&self, t: &'t Self::Tensor) -> &'t [usize];
    fn to_host_f32(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// Device bytes a tensor occupies.
    fn size_bytes(&self, t: &Self::Tensor) -> u64;

    fn prepare_step(&self, meta: &StepMeta<'_>) -> Result<Self::Step>;

    /// Runs a whole step's host side, `f`, where this backend's ops start cheapest. The CPU
    /// backend runs it on one of its pool's threads, so each parallel op is split among workers
    /// already there instead of being handed in from outside the pool and waited for.
    fn run_step<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// Rows of `table` for the step's token ids; with a vocab-parallel table holding ids
    /// `[vocab_start, vocab_start + rows)`, other ids give zero rows (summed across ranks).
    fn embedding(
        &self,
        table: &Self::Tensor,
        step: &Self::Step,
        vocab_start: usize,
    ) -> Result<Self::Tensor>;
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Tensor, eps: f32) -> Result<Self::Tensor>;
    /// `residual += x`, then returns `rms_norm(residual)`.
    fn add_rms_norm(
        &self,
        x: &Self::Tensor,
        residual: &mut Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor>;
    /// RMSNorm over each `head_dim` slice of `[tokens, heads * head_dim]`, in place.
    fn head_rms_norm(
        &self,
        x: &mut Self::Tensor,
        weight: &Self::Tensor,
        head_dim: usize,
        eps: f32,
    ) -> Result<()>;
    /// `x @ weight^T` with `weight` `[out, in]`.
    fn linear(&self, x: &Self::Tensor, weight: &Self::Tensor) -> Result<Self::Tensor>;
    /// Rotary embedding at the step's positions (neox layout), in place on `[tokens, heads * head_dim]`.
    fn rope(&self, x: &mut Self::Tensor, step: &Self::Step, head_dim: usize) -> Result<()>;
    /// Rotary embedding of a layer's queries and keys: one call where the device has one op
    /// for both (fewer launches per layer), else [`Backend::rope`] on each.
    fn rope_qk(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        step: &Self::Step,
        head_dim: usize,
    ) -> Result<()> {
        self.rope(q, step, head_dim)?;
        self.rope(k, step, head_dim)
    }
    /// `silu(gate) * up`.
    fn silu_mul(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;
    /// Whether the model should load each dense MLP's gate and up projections as one
    /// `[2 * intermediate, hidden]` weight (gate rows first) and call
    /// [`Backend::silu_mul_merged`]: one matmul and one activation instead of two matmuls,
    /// where launches are what a step costs (the NPU).
    fn merges_gate_up(&self) -> bool {
        false
    }
    /// `silu(x[:, :i]) * x[:, i:]` of `x` `[tokens, 2i]`, for backends that merge gate and up.
    fn silu_mul_merged(&self, gate_up: &Self::Tensor) -> Result<Self::Tensor> {
        let _ = gate_up;
        Err(BackendError::Unsupported(
            "merged gate/up projections on this backend".into(),
        ))
    }
    fn add_inplace(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// Selects rows (e.g. the last token of each sequence that samples).
    fn select_rows(&self, x: &Self::Tensor, rows: &[u32]) -> Result<Self::Tensor>;

    fn alloc_kv_cache(&self, shape: KvCacheShape) -> Result<Self::KvCache>;
    /// Bytes of one block across all layers, K and V.
    fn kv_block_bytes(&self, shape: KvCacheShape) -> u64;
    /// Writes the step's K and V (`[tokens, kv_heads * head_dim]`) at the slot mapping.
    fn write_kv(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        k: &Self::Tensor,
        v: &Self::Tensor,
        step: &Self::Step,
    ) -> Result<()>;
    /// A layer's per-head q/k RMSNorm ([`Backend::head_rms_norm`]), rotary embedding of both
    /// ([`Backend::rope_qk`]) and the K/V write ([`Backend::write_kv`]): one call where the
    /// device has one fused kernel for the three (the NPU's `qk_norm_rope_cache`), else the
    /// four ops. `q` is left ready for attention; `k` and `v` are only written to the cache.
    #[allow(clippy::too_many_arguments)]
    fn qk_norm_rope_write_kv(
        &self,
        q: &mut Self::Tensor,
        k: Self::Tensor,
        v: &Self::Tensor,
        norms: (&Self::Tensor, &Self::Tensor),
        eps: f32,
        cache: &mut Self::KvCache,
        layer: usize,
        step: &Self::Step,
        head_dim: usize,
    ) -> Result<()> {
        unfused_qk_norm_rope_write_kv(self, q, k, v, norms, eps, cache, layer, step, head_dim)
    }
    /// Causal attention of the step's queries over each sequence's paged context (which
    /// already holds this step's K/V): prefill chunks and decodes in one call.
    fn attention(
        &self,
        q: &Self::Tensor,
        cache: &Self::KvCache,
        layer: usize,
        step: &Self::Step,
        geometry: &AttnGeometry,
    ) -> Result<Self::Tensor>;

    /// Routes each token to its top-k experts by `router_logits` `[tokens, experts]` and returns
    /// the weighted sum of their SwiGLU outputs.
    fn moe(
        &self,
        x: &Self::Tensor,
        router_logits: &Self::Tensor,
        experts: &MoeWeights<Self::Tensor>,
    ) -> Result<Self::Tensor>;

    /// Samples one token per row of `logits` `[rows.len(), vocab]`.
    fn sample(&self, logits: &Self::Tensor, rows: &[SampleRow<'_>]) -> Result<Vec<Sampled>>;

    /// Prompt logprobs of each row of `logits` `[targets.len(), vocab]`: the log-softmax read at
    /// `targets[i]`, its rank, and the top `top_n`. Only these numbers need leave the device;
    /// this default reads the rows back and computes them on the host.
    fn prompt_logprobs(
        &self,
        logits: &Self::Tensor,
        targets: &[u32],
        top_n: usize,
    ) -> Result<Vec<PromptLogprob>> {
        let shape = self.shape(logits);
        let vocab = shape.last().copied().unwrap_or(0);
        if shape.len() != 2 || shape[0] != targets.len() {
            return Err(BackendError::Shape {
                op: "prompt_logprobs",
                detail: format!("logits {shape:?} for {} targets", targets.len()),
            });
        }
        let host = self.to_host_f32(logits)?;
        Ok(logprobs::host_prompt_logprobs(&host, vocab, targets, top_n))
    }
}

/// [`Backend::qk_norm_rope_write_kv`] as its four ops, for backends without a fused kernel
/// (or with one that does not fit the layer).
#[allow(clippy::too_many_arguments)]
pub fn unfused_qk_norm_rope_write_kv<B: Backend + ?Sized>(
    b: &B,
    q: &mut B::Tensor,
    mut k: B::Tensor,
    v: &B::Tensor,
    norms: (&B::Tensor, &B::Tensor),
    eps: f32,
    cache: &mut B::KvCache,
    layer: usize,
    step: &B::Step,
    head_dim: usize,
) -> Result<()> {
    b.head_rms_norm(q, norms.0, head_dim, eps)?;
    b.head_rms_norm(&mut k, norms.1, head_dim, eps)?;
    b.rope_qk(q, &mut k, step, head_dim)?;
    b.write_kv(cache, layer, &k, v, step)
}
