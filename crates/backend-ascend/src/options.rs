//! The backend's options: fused RoPE and KV-scatter ops, the KV cache's dtype, graph capture
//! and the fused-attention version.

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
    /// Load each dense MLP's gate and up projections as one weight (one matmul and one
    /// SwiGlu per layer instead of two matmuls, two copies and a SwiGlu).
    pub merge_gate_up: bool,
    /// Forces one fused-attention version (when exported) instead of the newest.
    pub attention_api: Option<AttentionApi>,
}

impl Default for AscendOptions {
    fn default() -> Self {
        Self {
            fused_rope: true,
            scatter_pa_kv_cache: true,
            kv_cache_f32: false,
            graph_capture: false,
            capture_batch_sizes: vec![1, 2, 4, 8, 16, 32, 64],
            merge_gate_up: true,
            attention_api: None,
        }
    }
}
