//! Host tiling for the AscendC kernels: `#[repr(C)]` mirrors of `kernels/ascendc/tiling.h`
//! and the functions that pick block dims and tile sizes from the shapes and the core count.

use thiserror::Error;

/// What the tiling needs to know about the NPU it targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreSpec {
    /// Vector (AIV) cores: the block dim of a vector-only kernel is at most this.
    pub vector_cores: u32,
    /// Unified Buffer bytes per core.
    pub ub_bytes: u32,
}

impl CoreSpec {
    /// Atlas 800I A2 / 910B2: 24 AI cores of 1 cube + 2 vector units each, 192 KiB UB per
    /// core (CANN `platform_config/Ascend910B2.ini`: `vector_core_cnt=48`, `ub_size=196608`).
    pub const ASCEND_910B2: CoreSpec = CoreSpec {
        vector_cores: 48,
        ub_bytes: 196_608,
    };
    /// 910B3 / 910B4: 20 AI cores, 40 vector units (`Ascend910B3.ini`).
    pub const ASCEND_910B3: CoreSpec = CoreSpec {
        vector_cores: 40,
        ub_bytes: 196_608,
    };
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TilingError {
    #[error("{0} must be positive")]
    Zero(&'static str),
    #[error("head_dim {0} must be a multiple of 16 (32-byte BF16 rows) and at most 256")]
    HeadDim(u32),
    #[error("{q} query heads are not a multiple of {kv} KV heads")]
    Gqa { q: u32, kv: u32 },
    #[error("{0} query heads per KV head exceed the kernels' 32")]
    GroupTooLarge(u32),
    #[error("block size {0} is not a multiple of 16")]
    BlockSize(u32),
    #[error("no tile fits the {ub} bytes of Unified Buffer (needs {need})")]
    Ub { need: u32, ub: u32 },
    #[error("{0} overflows 32 bits")]
    Overflow(&'static str),
    #[error("rope table rows of {stride} floats: need a multiple of 8 (32 bytes) holding head_dim/2 = {half}")]
    RopeStride { stride: u32, half: u32 },
}

/// Mirrors `QkNormRopeCacheTiling`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QkNormRopeCacheTiling {
    pub num_tokens: u32,
    pub num_q_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub num_slots: u32,
    pub rope_rows: u32,
    pub tokens_per_block: u32,
    pub block_dim: u32,
    pub eps: f32,
    pub rope_stride: u32,
}

/// Mirrors `PagedDecodeTiling`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PagedDecodeTiling {
    pub num_seqs: u32,
    pub num_q_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub block_size: u32,
    pub max_blocks_per_seq: u32,
    pub num_cache_blocks: u32,
    pub num_splits: u32,
    pub split_blocks: u32,
    pub kv_tile: u32,
    pub num_tasks: u32,
    pub block_dim: u32,
    pub scale: f32,
    pub merge_block_dim: u32,
}

/// Mirrors `ChunkedPrefillTiling`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ChunkedPrefillTiling {
    pub num_seqs: u32,
    pub num_tokens: u32,
    pub num_q_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub block_size: u32,
    pub max_blocks_per_seq: u32,
    pub num_cache_blocks: u32,
    pub q_tile: u32,
    pub kv_tile: u32,
    pub num_tasks: u32,
    pub block_dim: u32,
    pub scale: f32,
    pub reserved: u32,
}

/// The attention geometry shared by both attention kernels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    pub num_q_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub block_size: u32,
    pub max_blocks_per_seq: u32,
    pub num_cache_blocks: u32,
    pub scale: f32,
}

/// How the decode kernel splits each sequence's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitKv {
    /// One task per (sequence, KV head); the kernel writes the output itself.
    Off,
    /// Split so that the tasks cover the cores (flash-decoding), when contexts allow.
    Auto,
    /// At most this many splits per sequence.
    Max(u32),
}

const KV_TILES: [u32; 4] = [128, 64, 32, 16];
/// `kMaxRows` in attention_core.h.
const MAX_ROWS: u32 = 64;
const RED_STRIDE: u32 = 8;
const WORK_BYTES: u32 = 1024;

fn align32(bytes: u32) -> u32 {
    bytes.div_ceil(32) * 32
}

/// UB bytes `AttnCore::Init` asks for (`AttnUbBytes` in attention_core.h, term for term).
pub fn attn_ub_bytes(rows: u32, group: u32, d: u32, kv_tile: u32) -> u32 {
    2 * 2 * align32(kv_tile * d * 2)
        + align32(group * d * 2)
        + 2 * align32(d * 4)
        + 3 * align32(kv_tile * d * 4)
        + 2 * align32(rows * d * 4)
        + align32(kv_tile * RED_STRIDE * 4)
        + align32((kv_tile + RED_STRIDE) * 4)
        + align32(4 * RED_STRIDE * 4)
        + WORK_BYTES
}

/// UB bytes `QkNormRopeCache::Init` asks for.
pub fn qk_norm_rope_cache_ub_bytes(kv_heads: u32, d: u32) -> u32 {
    2 * align32(d * 2)
        + 2 * align32(d / 2 * 4)
        + align32(kv_heads * d * 2)
        + 2 * align32(d * 2)
        + 5 * align32(d * 4)
        + 2 * align32(d / 2 * 4)
        + align32(RED_STRIDE * 4)
        + WORK_BYTES
}

fn check_heads(q: u32, kv: u32, d: u32) -> Result<u32, TilingError> {
    for (v, name) in [(q, "query heads"), (kv, "KV heads"), (d, "head_dim")] {
        if v == 0 {
            return Err(TilingError::Zero(name));
        }
    }
    if !d.is_multiple_of(16) || d > 256 {
        return Err(TilingError::HeadDim(d));
    }
    if !q.is_multiple_of(kv) {
        return Err(TilingError::Gqa { q, kv });
    }
    let group = q / kv;
    if group > MAX_ROWS / 2 {
        return Err(TilingError::GroupTooLarge(group));
    }
    Ok(group)
}

fn check_attn(s: &AttnShape) -> Result<u32, TilingError> {
    let group = check_heads(s.num_q_heads, s.num_kv_heads, s.head_dim)?;
    for (v, name) in [
        (s.block_size, "block size"),
        (s.max_blocks_per_seq, "blocks per sequence"),
        (s.num_cache_blocks, "cache blocks"),
    ] {
        if v == 0 {
            return Err(TilingError::Zero(name));
        }
    }
    if !s.block_size.is_multiple_of(16) {
        return Err(TilingError::BlockSize(s.block_size));
    }
    Ok(group)
}

/// The largest key tile dividing the block size whose buffers fit the UB with `rows` rows.
fn pick_kv_tile(
    s: &AttnShape,
    rows: u32,
    group: u32,
    cores: &CoreSpec,
) -> Result<u32, TilingError> {
    let mut need = u32::MAX;
    for kv in KV_TILES
        .into_iter()
        .filter(|kv| s.block_size.is_multiple_of(*kv))
    {
        need = attn_ub_bytes(rows, group, s.head_dim, kv);
        if need <= cores.ub_bytes {
            return Ok(kv);
        }
    }
    Err(TilingError::Ub {
        need,
        ub: cores.ub_bytes,
    })
}

fn block_dim(tasks: u32, cores: &CoreSpec) -> u32 {
    tasks.clamp(1, cores.vector_cores.max(1))
}

/// What the fused norm/rope/cache kernel needs besides the token count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormRopeShape {
    pub num_q_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    /// Cache slots (blocks x block size).
    pub num_slots: u32,
    /// Rows of the cos/sin tables.
    pub rope_rows: u32,
    /// Floats from one table row to the next: `head_dim / 2` for tables of the first halves
    /// only, `head_dim` for a backend's full-width tables (whose first half is read).
    pub rope_stride: u32,
    pub eps: f32,
}

/// Tokens in contiguous runs over at most `cores.vector_cores` blocks.
pub fn qk_norm_rope_cache_tiling(
    num_tokens: u32,
    s: &NormRopeShape,
    cores: &CoreSpec,
) -> Result<QkNormRopeCacheTiling, TilingError> {
    check_heads(s.num_q_heads, s.num_kv_heads, s.head_dim)?;
    for (v, name) in [
        (num_tokens, "tokens"),
        (s.num_slots, "cache slots"),
        (s.rope_rows, "rope table rows"),
    ] {
        if v == 0 {
            return Err(TilingError::Zero(name));
        }
    }
    if s.rope_stride < s.head_dim / 2 || !s.rope_stride.is_multiple_of(8) {
        return Err(TilingError::RopeStride {
            stride: s.rope_stride,
            half: s.head_dim / 2,
        });
    }
    let need = qk_norm_rope_cache_ub_bytes(s.num_kv_heads, s.head_dim);
    if need > cores.ub_bytes {
        return Err(TilingError::Ub {
            need,
            ub: cores.ub_bytes,
        });
    }
    let per = num_tokens.div_ceil(block_dim(num_tokens, cores));
    Ok(QkNormRopeCacheTiling {
        num_tokens,
        num_q_heads: s.num_q_heads,
        num_kv_heads: s.num_kv_heads,
        head_dim: s.head_dim,
        num_slots: s.num_slots,
        rope_rows: s.rope_rows,
        tokens_per_block: per,
        block_dim: num_tokens.div_ceil(per),
        eps: s.eps,
        rope_stride: s.rope_stride,
    })
}

/// One task per (sequence, KV head, split). With splitting, each sequence's blocks are cut
/// into equal runs so that the tasks reach the core count where the longest context allows.
pub fn paged_decode_tiling(
    s: &AttnShape,
    num_seqs: u32,
    max_context: u32,
    split: SplitKv,
    cores: &CoreSpec,
) -> Result<PagedDecodeTiling, TilingError> {
    let group = check_attn(s)?;
    if num_seqs == 0 {
        return Err(TilingError::Zero("sequences"));
    }
    let blocks = max_context
        .max(1)
        .div_ceil(s.block_size)
        .min(s.max_blocks_per_seq);
    let base = num_seqs
        .checked_mul(s.num_kv_heads)
        .ok_or(TilingError::Overflow("tasks"))?;
    let want = match split {
        SplitKv::Off => 1,
        SplitKv::Auto => cores.vector_cores.div_ceil(base).max(1),
        SplitKv::Max(n) => n.max(1),
    };
    let split_blocks = blocks.div_ceil(want.min(blocks));
    let num_splits = blocks.div_ceil(split_blocks);
    let num_tasks = base
        .checked_mul(num_splits)
        .ok_or(TilingError::Overflow("tasks"))?;
    let rows = num_seqs
        .checked_mul(s.num_q_heads)
        .ok_or(TilingError::Overflow("rows"))?;
    Ok(PagedDecodeTiling {
        num_seqs,
        num_q_heads: s.num_q_heads,
        num_kv_heads: s.num_kv_heads,
        head_dim: s.head_dim,
        block_size: s.block_size,
        max_blocks_per_seq: s.max_blocks_per_seq,
        num_cache_blocks: s.num_cache_blocks,
        num_splits,
        split_blocks,
        kv_tile: pick_kv_tile(s, group, group, cores)?,
        num_tasks,
        block_dim: block_dim(num_tasks, cores),
        scale: s.scale,
        merge_block_dim: block_dim(rows, cores),
    })
}

/// One task per (sequence, KV head, tile of query tokens): the largest query tile (rows of
/// tokens x group heads up to 64) whose buffers fit the UB with some key tile.
pub fn chunked_prefill_tiling(
    s: &AttnShape,
    query_lens: &[u32],
    cores: &CoreSpec,
) -> Result<ChunkedPrefillTiling, TilingError> {
    let group = check_attn(s)?;
    if query_lens.is_empty() {
        return Err(TilingError::Zero("sequences"));
    }
    if query_lens.contains(&0) {
        return Err(TilingError::Zero("query length"));
    }
    let num_tokens = query_lens
        .iter()
        .try_fold(0u32, |a, &l| a.checked_add(l))
        .ok_or(TilingError::Overflow("tokens"))?;
    let longest = query_lens.iter().copied().max().unwrap_or(1);
    let mut q_tile = (MAX_ROWS / group).min(longest).max(1);
    let kv_tile = loop {
        match pick_kv_tile(s, q_tile * group, group, cores) {
            Ok(kv) => break kv,
            Err(e) if q_tile == 1 => return Err(e),
            Err(_) => q_tile /= 2,
        }
    };
    let num_tasks = query_lens
        .iter()
        .try_fold(0u32, |a, &l| {
            a.checked_add(l.div_ceil(q_tile) * s.num_kv_heads)
        })
        .ok_or(TilingError::Overflow("tasks"))?;
    Ok(ChunkedPrefillTiling {
        num_seqs: query_lens.len() as u32,
        num_tokens,
        num_q_heads: s.num_q_heads,
        num_kv_heads: s.num_kv_heads,
        head_dim: s.head_dim,
        block_size: s.block_size,
        max_blocks_per_seq: s.max_blocks_per_seq,
        num_cache_blocks: s.num_cache_blocks,
        q_tile,
        kv_tile,
        num_tasks,
        block_dim: block_dim(num_tasks, cores),
        scale: s.scale,
        reserved: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    extern "C" {
        fn qwen3_tiling_layout(which: u32, out: *mut u32, cap: u32) -> u32;
    }

    fn c_layout(which: u32) -> Vec<u32> {
        let mut v = [0u32; 20];
        // SAFETY: `v` holds `cap` u32s; the C side writes at most that many.
        let n = unsafe { qwen3_tiling_layout(which, v.as_mut_ptr(), v.len() as u32) };
        v[..n as usize].to_vec()
    }

    macro_rules! layout {
        ($t:ty; $($f:ident),*) => {
            vec![size_of::<$t>() as u32, $(offset_of!($t, $f) as u32),*]
        };
    }

    /// The Rust mirrors match tiling.h as the C++ compiler lays it out.
    #[test]
    fn tiling_structs_match_the_kernel_header() {
        assert_eq!(
            c_layout(0),
            layout!(QkNormRopeCacheTiling; num_tokens, num_q_heads, num_kv_heads, head_dim,
                num_slots, rope_rows, tokens_per_block, block_dim, eps, rope_stride)
        );
        assert_eq!(
            c_layout(1),
            layout!(PagedDecodeTiling; num_seqs, num_q_heads, num_kv_heads, head_dim, block_size,
                max_blocks_per_seq, num_cache_blocks, num_splits, split_blocks, kv_tile,
                num_tasks, block_dim, scale, merge_block_dim)
        );
        assert_eq!(
            c_layout(2),
            layout!(ChunkedPrefillTiling; num_seqs, num_tokens, num_q_heads, num_kv_heads,
                head_dim, block_size, max_blocks_per_seq, num_cache_blocks, q_tile, kv_tile,
                num_tasks, block_dim, scale, reserved)
        );
    }

    fn shape(q: u32, kv: u32) -> AttnShape {
        AttnShape {
            num_q_heads: q,
            num_kv_heads: kv,
            head_dim: 128,
            block_size: 128,
            max_blocks_per_seq: 64,
            num_cache_blocks: 512,
            scale: 128f32.powf(-0.5),
        }
    }

    #[test]
    fn decode_splits_to_fill_the_cores_at_small_batch() {
        let c = CoreSpec::ASCEND_910B2;
        // One sequence, 4 KV heads, 8K context (64 blocks): runs of 6 blocks give 11 splits, 44 tasks.
        let t = paged_decode_tiling(&shape(32, 4), 1, 8192, SplitKv::Auto, &c).unwrap();
        assert_eq!(
            (t.num_splits, t.split_blocks, t.num_tasks, t.block_dim),
            (11, 6, 44, 44)
        );
        assert!(t.num_splits * t.split_blocks * 128 >= 8192);
        // Large batch: no split needed.
        let t = paged_decode_tiling(&shape(32, 4), 64, 8192, SplitKv::Auto, &c).unwrap();
        assert_eq!((t.num_splits, t.block_dim), (1, 48));
        // Short context: never more splits than blocks.
        let t = paged_decode_tiling(&shape(32, 4), 1, 100, SplitKv::Auto, &c).unwrap();
        assert_eq!(t.num_splits, 1);
        let t = paged_decode_tiling(&shape(32, 4), 1, 8192, SplitKv::Off, &c).unwrap();
        assert_eq!((t.num_splits, t.split_blocks, t.num_tasks), (1, 64, 4));
    }

    #[test]
    fn tiles_fit_the_ub_and_shrink_for_large_groups() {
        let c = CoreSpec::ASCEND_910B2;
        for (q, kv) in [(32, 8), (32, 4), (64, 4), (16, 1)] {
            let g = q / kv;
            let t = paged_decode_tiling(&shape(q, kv), 2, 1000, SplitKv::Auto, &c).unwrap();
            assert!(attn_ub_bytes(g, g, 128, t.kv_tile) <= c.ub_bytes);
            assert_eq!(128 % t.kv_tile, 0);
            let p = chunked_prefill_tiling(&shape(q, kv), &[300, 1, 17], &c).unwrap();
            assert!(p.q_tile * g <= MAX_ROWS);
            assert!(attn_ub_bytes(p.q_tile * g, g, 128, p.kv_tile) <= c.ub_bytes);
            assert!(p.block_dim <= c.vector_cores);
        }
        // A tiny UB leaves no tile.
        let small = CoreSpec {
            vector_cores: 8,
            ub_bytes: 16 * 1024,
        };
        assert!(matches!(
            paged_decode_tiling(&shape(32, 4), 1, 100, SplitKv::Off, &small),
            Err(TilingError::Ub { .. })
        ));
    }

    #[test]
    fn refuses_bad_shapes() {
        let c = CoreSpec::ASCEND_910B2;
        let mut s = shape(30, 4);
        assert_eq!(
            paged_decode_tiling(&s, 1, 10, SplitKv::Off, &c),
            Err(TilingError::Gqa { q: 30, kv: 4 })
        );
        s = shape(32, 4);
        s.head_dim = 72;
        assert_eq!(
            chunked_prefill_tiling(&s, &[3], &c),
            Err(TilingError::HeadDim(72))
        );
        assert_eq!(
            chunked_prefill_tiling(&shape(32, 4), &[3, 0], &c),
            Err(TilingError::Zero("query length"))
        );
    }

    #[test]
    fn norm_rope_tiling_covers_every_token_once() {
        let c = CoreSpec::ASCEND_910B3;
        for tokens in [1, 7, 40, 41, 1000] {
            let s = NormRopeShape {
                num_q_heads: 32,
                num_kv_heads: 8,
                head_dim: 128,
                num_slots: 4096,
                rope_rows: 4096,
                rope_stride: 64,
                eps: 1e-6,
            };
            let t = qk_norm_rope_cache_tiling(tokens, &s, &c).unwrap();
            assert!(t.block_dim <= 40);
            assert!(t.block_dim * t.tokens_per_block >= tokens);
            assert!((t.block_dim - 1) * t.tokens_per_block < tokens);
            // Rows narrower than half a head, or not 32-byte multiples, are refused.
            for stride in [32, 68] {
                assert_eq!(
                    qk_norm_rope_cache_tiling(
                        tokens,
                        &NormRopeShape {
                            rope_stride: stride,
                            ..s
                        },
                        &c
                    ),
                    Err(TilingError::RopeStride { stride, half: 64 })
                );
            }
        }
    }
}
