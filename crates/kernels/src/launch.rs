//! Safe launches of the kernels as compiled against the AscendC sim: each checks its buffers
//! and indices against the tiling, then runs the kernel one block index at a time on the
//! calling thread. A kernel that breaks a rule the sim enforces comes back as
//! [`KernelError::Refused`] with the rule.

use std::ffi::{c_char, c_int, CStr};

use half::bf16;
use thiserror::Error;

use crate::device::{Arg, Kernel};
use crate::tiling::{ChunkedPrefillTiling, PagedDecodeTiling, QkNormRopeCacheTiling, TilingError};

#[derive(Debug, Error)]
pub enum KernelError {
    #[error(transparent)]
    Tiling(#[from] TilingError),
    #[error("{what}: {got} bytes where the tiling needs {want}")]
    Buffer {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error("{0}")]
    Input(String),
    #[error("the sim refused the kernel: {0}")]
    Refused(String),
}

type Launch = unsafe extern "C" fn(u32, *const *mut u8, *mut c_char, usize) -> c_int;

extern "C" {
    fn sim_launch_qk_norm_rope_cache(
        bd: u32,
        args: *const *mut u8,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn sim_launch_paged_decode_attention(
        bd: u32,
        args: *const *mut u8,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn sim_launch_paged_decode_merge(
        bd: u32,
        args: *const *mut u8,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn sim_launch_chunked_prefill_attention(
        bd: u32,
        args: *const *mut u8,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn sim_rule_case(rule: u32, comply: bool, bd: u32, err: *mut c_char, len: usize) -> c_int;
}

fn status(rc: c_int, err: &[u8]) -> Result<(), KernelError> {
    if rc == 0 {
        return Ok(());
    }
    let msg = CStr::from_bytes_until_nul(err)
        .map(|m| m.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "(no message)".into());
    Err(KernelError::Refused(msg))
}

/// Runs `f` with `args` (the kernel's GM_ADDR arguments, `f`'s count of them).
fn launch(f: Launch, block_dim: u32, args: &[*mut u8]) -> Result<(), KernelError> {
    let mut err = [0u8; 1024];
    // SAFETY: every pointer in `args` comes from a buffer the caller checked against the
    // tiling the kernel reads its extents from (and the sim bounds-checks each access); the
    // kernel writes only through the pointers made from `&mut` slices; `err` is 1024 bytes.
    let rc = unsafe { f(block_dim, args.as_ptr(), err.as_mut_ptr().cast(), err.len()) };
    status(rc, &err)
}

/// Runs `kernel` with its GM_ADDR arguments `args` (the tiling last). The caller holds
/// buffers at least as large as `device::Kernel::args` says for that tiling.
pub(crate) fn launch_kernel(
    kernel: crate::device::Kernel,
    block_dim: u32,
    args: &[*mut u8],
) -> Result<(), KernelError> {
    use crate::device::Kernel;
    let f: Launch = match kernel {
        Kernel::QkNormRopeCache => sim_launch_qk_norm_rope_cache,
        Kernel::PagedDecodeAttention => sim_launch_paged_decode_attention,
        Kernel::PagedDecodeMerge => sim_launch_paged_decode_merge,
        Kernel::ChunkedPrefillAttention => sim_launch_chunked_prefill_attention,
    };
    launch(f, block_dim, args)
}

/// Runs one of the sim's rule cases (`kernels/sim/rule_kernels.cpp`): breaking `rule`, or
/// keeping it when `comply`.
pub fn rule_case(rule: Rule, comply: bool, block_dim: u32) -> Result<(), KernelError> {
    let mut err = [0u8; 1024];
    // SAFETY: plain values and a 1024-byte message buffer.
    let rc = unsafe {
        sim_rule_case(
            rule as u32,
            comply,
            block_dim,
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    status(rc, &err)
}

/// The rule cases of `rule_kernels.cpp`, in its order.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    UbCapacity = 0,
    L1Capacity,
    L0aCapacity,
    L0bCapacity,
    L0cCapacity,
    CopyLength,
    OperandAlign,
    FreeNeverAllocated,
    DoubleFree,
    EnqueOverDepth,
    DequeEmpty,
    AllocAllInUse,
    UseAfterFree,
    LiveAllocLimit,
    UnsyncedRead,
    WaitWithoutSet,
    GlobalBounds,
    EnqueuedUse,
}

fn ro<T>(s: &[T]) -> *mut u8 {
    s.as_ptr().cast_mut().cast()
}
fn rw<T>(s: &mut [T]) -> *mut u8 {
    s.as_mut_ptr().cast()
}
fn tiling_ptr<T>(t: &T) -> *mut u8 {
    (t as *const T).cast_mut().cast()
}

fn bytes<T>(s: &[T]) -> usize {
    std::mem::size_of_val(s)
}

/// Checks each buffer's size against the extent the kernel reads from the tiling
/// (`Kernel::args`, the one place those extents are written down).
fn check_sizes<T>(
    kernel: Kernel,
    t: &T,
    got: &[(&'static str, usize)],
) -> Result<Vec<Arg>, KernelError> {
    // SAFETY: `t` is a tiling struct (plain u32/f32 fields); viewing it as bytes is sound.
    let tb = unsafe {
        std::slice::from_raw_parts((t as *const T).cast::<u8>(), std::mem::size_of::<T>())
    };
    let args = kernel.args(tb)?;
    for (&(what, got), want) in got.iter().zip(&args) {
        if got != want.bytes {
            return Err(KernelError::Buffer {
                what,
                got,
                want: want.bytes,
            });
        }
    }
    Ok(args)
}

/// Inputs and outputs of the fused norm/rope/cache kernel (row-major, BF16 unless noted).
pub struct QkNormRopeCacheIo<'a> {
    /// `[tokens, q_heads, head_dim]`
    pub q: &'a [bf16],
    /// `[tokens, kv_heads, head_dim]`
    pub k: &'a [bf16],
    pub v: &'a [bf16],
    /// `[head_dim]` each: Qwen3's q_norm and k_norm weights.
    pub q_weight: &'a [bf16],
    pub k_weight: &'a [bf16],
    /// `[rope_rows, rope_stride]` F32: cos and sin of position x inverse frequency (the
    /// first `head_dim / 2` of each row).
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    /// Per token: its position, and its cache slot (negative: write nothing).
    pub positions: &'a [i32],
    pub slot_mapping: &'a [i32],
    /// `[tokens, q_heads, head_dim]`
    pub q_out: &'a mut [bf16],
    /// `[slots, kv_heads, head_dim]` (slots = blocks x block size)
    pub k_cache: &'a mut [bf16],
    pub v_cache: &'a mut [bf16],
}

pub fn qk_norm_rope_cache(
    t: &QkNormRopeCacheTiling,
    io: QkNormRopeCacheIo<'_>,
) -> Result<(), KernelError> {
    check_sizes(
        Kernel::QkNormRopeCache,
        t,
        &[
            ("q", bytes(io.q)),
            ("k", bytes(io.k)),
            ("v", bytes(io.v)),
            ("q_weight", bytes(io.q_weight)),
            ("k_weight", bytes(io.k_weight)),
            ("cos", bytes(io.cos)),
            ("sin", bytes(io.sin)),
            ("positions", bytes(io.positions)),
            ("slot_mapping", bytes(io.slot_mapping)),
            ("q_out", bytes(io.q_out)),
            ("k_cache", bytes(io.k_cache)),
            ("v_cache", bytes(io.v_cache)),
        ],
    )?;
    if let Some(p) = io
        .positions
        .iter()
        .find(|&&p| p < 0 || p as u32 >= t.rope_rows)
    {
        return Err(KernelError::Input(format!(
            "position {p} outside the {} rows of the rope tables",
            t.rope_rows
        )));
    }
    if let Some(s) = io
        .slot_mapping
        .iter()
        .find(|&&s| s >= 0 && s as u32 >= t.num_slots)
    {
        return Err(KernelError::Input(format!(
            "slot {s} past the cache's {} slots",
            t.num_slots
        )));
    }
    let mut seen = vec![false; t.num_slots as usize];
    for &s in io.slot_mapping.iter().filter(|&&s| s >= 0) {
        if std::mem::replace(&mut seen[s as usize], true) {
            return Err(KernelError::Input(format!(
                "slot {s} written twice in one launch"
            )));
        }
    }
    let args = [
        ro(io.q),
        ro(io.k),
        ro(io.v),
        ro(io.q_weight),
        ro(io.k_weight),
        ro(io.cos),
        ro(io.sin),
        ro(io.positions),
        ro(io.slot_mapping),
        rw(io.q_out),
        rw(io.k_cache),
        rw(io.v_cache),
        tiling_ptr(t),
    ];
    launch(sim_launch_qk_norm_rope_cache, t.block_dim, &args)
}

/// The paged cache and where each sequence's keys are in it.
pub struct PagedKv<'a> {
    /// `[blocks, block_size, kv_heads, head_dim]` BF16 each.
    pub k_cache: &'a [bf16],
    pub v_cache: &'a [bf16],
    /// `[seqs, max_blocks_per_seq]`
    pub block_table: &'a [i32],
    /// Per sequence: keys in the cache (its new tokens included).
    pub context_lens: &'a [i32],
}

/// Each sequence's context within `[min_ctx[i], max_blocks * bs]` and its block-table
/// entries inside the cache.
fn check_kv(
    kv: &PagedKv<'_>,
    bs: u32,
    max_blocks: u32,
    cache_blocks: u32,
    min_ctx: &[u32],
) -> Result<(), KernelError> {
    for (i, (&c, &lo)) in kv.context_lens.iter().zip(min_ctx).enumerate() {
        if c < 1 || (c as u32) < lo || c as u64 > u64::from(max_blocks) * u64::from(bs) {
            return Err(KernelError::Input(format!(
                "sequence {i}: context length {c} out of range"
            )));
        }
        let row = &kv.block_table[i * max_blocks as usize..][..(c as u32).div_ceil(bs) as usize];
        if let Some(b) = row.iter().find(|&&b| b < 0 || b as u32 >= cache_blocks) {
            return Err(KernelError::Input(format!(
                "sequence {i}: block {b} outside the cache's {cache_blocks}"
            )));
        }
    }
    Ok(())
}

/// Decode attention: `q` `[seqs, q_heads, head_dim]` (one token per sequence, at position
/// context - 1) into `out`, same shape.
pub fn paged_decode_attention(
    t: &PagedDecodeTiling,
    q: &[bf16],
    kv: &PagedKv<'_>,
    out: &mut [bf16],
) -> Result<(), KernelError> {
    let args = check_sizes(
        Kernel::PagedDecodeAttention,
        t,
        &[
            ("q", bytes(q)),
            ("k_cache", bytes(kv.k_cache)),
            ("v_cache", bytes(kv.v_cache)),
            ("block_table", bytes(kv.block_table)),
            ("context_lens", bytes(kv.context_lens)),
            ("out", bytes(out)),
        ],
    )?;
    check_kv(
        kv,
        t.block_size,
        t.max_blocks_per_seq,
        t.num_cache_blocks,
        &vec![1; t.num_seqs as usize],
    )?;
    let covered = u64::from(t.num_splits) * u64::from(t.split_blocks) * u64::from(t.block_size);
    if let Some(c) = kv.context_lens.iter().find(|&&c| c as u64 > covered) {
        return Err(KernelError::Input(format!(
            "context {c} longer than the tiling's splits cover"
        )));
    }
    // Workspaces for the splits' partial outputs and (max, sum) pairs (empty without splits).
    let mut po = vec![0f32; args[6].bytes / 4];
    let mut ps = vec![0f32; args[7].bytes / 4];
    let ptrs = [
        ro(q),
        ro(kv.k_cache),
        ro(kv.v_cache),
        ro(kv.block_table),
        ro(kv.context_lens),
        rw(out),
        rw(po.as_mut_slice()),
        rw(ps.as_mut_slice()),
        tiling_ptr(t),
    ];
    launch(sim_launch_paged_decode_attention, t.block_dim, &ptrs)?;
    if t.num_splits > 1 {
        let merge = [ptrs[6], ptrs[7], ptrs[5], tiling_ptr(t)];
        launch(sim_launch_paged_decode_merge, t.merge_block_dim, &merge)?;
    }
    Ok(())
}

/// Chunked-prefill attention: sequence i's new tokens are `q[query_start[i]..query_start[i+1]]`
/// (`[tokens, q_heads, head_dim]`), at the last positions of its context.
pub fn chunked_prefill_attention(
    t: &ChunkedPrefillTiling,
    q: &[bf16],
    query_start: &[i32],
    kv: &PagedKv<'_>,
    out: &mut [bf16],
) -> Result<(), KernelError> {
    check_sizes(
        Kernel::ChunkedPrefillAttention,
        t,
        &[
            ("q", bytes(q)),
            ("k_cache", bytes(kv.k_cache)),
            ("v_cache", bytes(kv.v_cache)),
            ("block_table", bytes(kv.block_table)),
            ("query_start", bytes(query_start)),
            ("context_lens", bytes(kv.context_lens)),
            ("out", bytes(out)),
        ],
    )?;
    if query_start[0] != 0
        || query_start.windows(2).any(|w| w[1] <= w[0])
        || query_start[t.num_seqs as usize] as u32 != t.num_tokens
    {
        return Err(KernelError::Input(
            "query_start must rise from 0 to the token count, every sequence at least one token"
                .into(),
        ));
    }
    let qlens: Vec<u32> = query_start
        .windows(2)
        .map(|w| (w[1] - w[0]) as u32)
        .collect();
    let tasks: u64 = qlens
        .iter()
        .map(|&l| u64::from(l.div_ceil(t.q_tile)) * u64::from(t.num_kv_heads))
        .sum();
    if tasks != u64::from(t.num_tasks) {
        return Err(KernelError::Input(format!(
            "the tiling counts {} tasks; these query lengths make {tasks}",
            t.num_tasks
        )));
    }
    check_kv(
        kv,
        t.block_size,
        t.max_blocks_per_seq,
        t.num_cache_blocks,
        &qlens,
    )?;
    let args = [
        ro(q),
        ro(kv.k_cache),
        ro(kv.v_cache),
        ro(kv.block_table),
        ro(query_start),
        ro(kv.context_lens),
        rw(out),
        tiling_ptr(t),
    ];
    launch(sim_launch_chunked_prefill_attention, t.block_dim, &args)
}
