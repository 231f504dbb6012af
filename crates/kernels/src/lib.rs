//! qwen3-serve's custom AscendC kernels (`kernels/ascendc`): the host tiling that sizes their
//! launches, and the kernels themselves compiled for the CPU against our implementation of
//! the AscendC API (`kernels/sim`), so their indexing, tiling and numerics are tested in CI.
//! On an Atlas machine the same sources build with CANN's toolchain (`kernels/README.md`).

/// Where `--features atlas` installed the NPU build of the kernels (with the
/// `aclrtlaunch_<kernel>` stubs), for the Ascend backend to load at run time.
#[cfg(feature = "atlas")]
pub const ATLAS_LIBRARY: &str = env!("QWEN3_ASCENDC_KERNELS_LIB");

pub mod device;
pub mod launch;
pub mod tiling;

pub use launch::{
    chunked_prefill_attention, paged_decode_attention, qk_norm_rope_cache, rule_case, KernelError,
    PagedKv, QkNormRopeCacheIo, Rule,
};
pub use tiling::{
    chunked_prefill_tiling, paged_decode_tiling, qk_norm_rope_cache_tiling, AttnShape,
    ChunkedPrefillTiling, CoreSpec, NormRopeShape, PagedDecodeTiling, QkNormRopeCacheTiling,
    SplitKv, TilingError,
};
