//! The backend's options: fused RoPE and KV-scatter ops, the KV cache's dtype, graph
//! capture, the fused-attention version and the custom kernels.

use ascend_sys::AttentionApi;

/// Backend options.
#[derive(Clone, Debug)]
pub struct AscendOptions {
    /// Use `aclnnRotaryPositionEmbedding` when exported (else RoPE is decomposed into
    /// copies, multiplies and an add).
    pub fused_rope: bool,
    /// Use `aclnnScatterPaKvCache` when exported (else `aclnnScatterNdUpdate`).
    pub scatter_pa_kv_cache: bool,
    /// Element type of the KV cache. BF16 (the default) runs attention through fused infer
    /// attention; F32, for F32 models where precision matters more than speed, keeps K/V
    /// exact and runs attention as matmul + softmax per sequence (FIA takes no F32).
    pub kv_cache_f32: bool,
    /// Capture pure-decode steps of these token counts as graphs (segments between
    /// attention calls, keyed by padded size) and replay them; other steps run eagerly.
    /// Needs the aclmdlRI capture API; not used with tensor parallelism.
    pub graph_capture: bool,
    pub capture_batch_sizes: Vec<usize>,
    /// With `graph_capture`: capture the whole decode step, attention and collectives
    /// included, where CANN exports the task-update API (`graph_full.rs`); false, or
    /// without it, decode graphs are piecewise (and off under tensor parallelism).
    pub full_graph: bool,
    /// Load each dense MLP's gate and up projections as one weight (one matmul and one
    /// SwiGlu per layer instead of two matmuls, two copies and a SwiGlu).
    pub merge_gate_up: bool,
    /// Forces one fused-attention version (when exported) instead of the newest.
    pub attention_api: Option<AttentionApi>,
    /// Which kernels attend over the BF16 paged cache.
    pub attention_backend: AttentionBackend,
    /// Run each layer's q/k norm, RoPE and K/V write as one launch of qwen3-serve's fused
    /// AscendC kernel where its library loads (BF16 layers and cache), under either
    /// attention backend.
    pub fused_qk_norm_rope_cache: bool,
}

/// Attention kernels for the BF16 paged cache (`--attention-backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionBackend {
    /// CANN's fused infer attention: the default until `doctor` has validated the custom
    /// kernels on hardware.
    #[default]
    Fia,
    /// qwen3-serve's own AscendC kernels (`kernels/`), from `libqwen3_ascendc_kernels.so`.
    Custom,
}

impl std::str::FromStr for AttentionBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fia" => Ok(Self::Fia),
            "custom" => Ok(Self::Custom),
            other => Err(format!(
                "attention backend {other:?}: expected fia or custom"
            )),
        }
    }
}

impl Default for AscendOptions {
    fn default() -> Self {
        Self {
            fused_rope: true,
            scatter_pa_kv_cache: true,
            kv_cache_f32: false,
            graph_capture: false,
            capture_batch_sizes: vec![1, 2, 4, 8, 16, 32, 64],
            full_graph: true,
            merge_gate_up: true,
            attention_api: None,
            attention_backend: AttentionBackend::Fia,
            fused_qk_norm_rope_cache: true,
        }
    }
}
