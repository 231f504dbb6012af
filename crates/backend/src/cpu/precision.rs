//! The CPU's precision policy: what `--dtype` and `--kv-cache-dtype` choose for activations at
//! matmul inputs and for the KV cache (weights stay as loaded).
//!
//! - F32 activations and KV: the exact path, held to 1e-3 against transformers' F32 fixtures.
//! - BF16 (the default for BF16 checkpoints, as vLLM's CPU backend computes them): matmul
//!   inputs rounded to BF16 (round to nearest even) with F32 accumulation, K/V stored as BF16
//!   and widened on load; everything else (norms, rope, softmax, residuals) stays F32. Held to
//!   transformers' own BF16 error envelope (see ARCHITECTURE.md).

/// A storage precision the CPU backend offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CpuDType {
    #[default]
    F32,
    BF16,
}

impl CpuDType {
    pub fn bytes(self) -> usize {
        match self {
            CpuDType::F32 => 4,
            CpuDType::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CpuDType::F32 => "float32",
            CpuDType::BF16 => "bfloat16",
        }
    }
}

/// What the backend rounds matmul inputs to and stores K/V as. The default is the exact path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuPrecision {
    pub activations: CpuDType,
    pub kv_cache: CpuDType,
}

impl CpuPrecision {
    /// Both in `d`.
    pub fn all(d: CpuDType) -> Self {
        Self {
            activations: d,
            kv_cache: d,
        }
    }
}
