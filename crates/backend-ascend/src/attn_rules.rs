//! What fused infer attention (FIA) in layout TND with a paged KV cache accepts on a 910B,
//! checked before the backend commits to it, and how the backend attends instead when it
//! cannot. Same rules and sources as the emulator's TND-* rules (crates/cann-emu).

use std::fmt;

use ascend_sys::AttentionApi;

/// Head dims FIA takes in layout TND: CANN 8.3's tiling check, quoted in vllm-ascend PR 9632
/// ("When layout is TND, queryD…must be same equal 192/128/64").
pub const TND_HEAD_DIMS: [usize; 3] = [64, 128, 192];

/// Paged block sizes FIA takes in layout TND (ops-transformer FIA docs).
pub const TND_BLOCK_SIZES: [usize; 3] = [128, 512, 1024];

/// The CANN release from which TND works with a paged KV cache: older releases refuse it
/// (vllm-ascend issues 4373 and 8045); vllm-ascend requires 8.3.RC1+.
pub const TND_PAGED_SINCE: (u32, u32) = (8, 3);

/// Whether the release `version` (e.g. `8.3.RC1`, `8.5.0`, `8.3.RC1.alpha001`) runs TND with a
/// paged KV cache; `None` (no `aclsysGetCANNVersion`, which releases before ~8.2 lack) does not.
pub fn release_has_tnd_paged(version: Option<&str>) -> bool {
    let Some(v) = version else { return false };
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= TND_PAGED_SINCE,
        _ => false,
    }
}

/// Why FIA in layout TND cannot run a paged KV cache of this head dim and block size, if
/// it cannot.
pub fn tnd_refusal(head_dim: usize, block_size: usize) -> Option<String> {
    if !TND_HEAD_DIMS.contains(&head_dim) {
        return Some(format!(
            "head_dim {head_dim}: fused attention in layout TND takes head_dim 64, 128 or 192 \
             (use --dtype float32 for the F32 KV cache, whose matmul + softmax attention takes any)"
        ));
    }
    if !TND_BLOCK_SIZES.contains(&block_size) {
        return Some(format!(
            "block size {block_size}: fused attention in layout TND takes paged blocks of 128, 512 or 1024"
        ));
    }
    None
}

/// How the backend attends, and why (logged at start-up and printed by `doctor`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttentionPath {
    /// BF16 KV cache through FIA in layout TND with paged blocks.
    Fused { api: AttentionApi, cann: String },
    /// F32 KV cache, attention as matmul + mask + softmax per sequence.
    EagerF32 { why: String },
    /// BF16 KV cache wanted, but no FIA is exported: attention fails.
    Unavailable,
    /// BF16 KV cache through qwen3-serve's own AscendC kernels (`--attention-backend custom`).
    Custom,
}

impl fmt::Display for AttentionPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fused { api, cann } => write!(
                f,
                "{api:?}, layout TND, paged BF16 KV (CANN {cann} >= 8.3: TND with paged KV; \
                 head_dim 64/128/192, blocks 128/512/1024)"
            ),
            Self::EagerF32 { why } => {
                write!(f, "matmul + softmax over an F32 KV cache ({why})")
            }
            Self::Custom => write!(
                f,
                "custom AscendC kernels (qwen3-serve kernels/: split-KV paged decode, chunked \
                 prefill), paged BF16 KV"
            ),
            Self::Unavailable => write!(
                f,
                "none (no aclnnFusedInferAttentionScore V2/V3/V4 exported; attention will fail)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_from_8_3_run_tnd_with_paged_kv() {
        for v in ["8.3.RC1", "8.3.RC1.alpha001", "8.5.0", "9.0.0", "10.0.RC1"] {
            assert!(release_has_tnd_paged(Some(v)), "{v}");
        }
        for v in ["8.2.RC1", "8.0.0", "7.0.RC1", "garbage", ""] {
            assert!(!release_has_tnd_paged(Some(v)), "{v}");
        }
        assert!(!release_has_tnd_paged(None));
    }

    #[test]
    fn tnd_takes_real_head_dims_and_block_sizes_only() {
        for d in TND_HEAD_DIMS {
            for bs in TND_BLOCK_SIZES {
                assert_eq!(tnd_refusal(d, bs), None, "{d}/{bs}");
            }
        }
        assert!(tnd_refusal(32, 128).unwrap().contains("head_dim 32"));
        assert!(tnd_refusal(256, 128).unwrap().contains("head_dim 256"));
        assert!(tnd_refusal(128, 64).unwrap().contains("block size 64"));
        assert!(tnd_refusal(128, 256).unwrap().contains("block size 256"));
    }
}
