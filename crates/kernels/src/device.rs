//! The kernels' global-memory arguments as byte extents derived from their tiling, for a
//! launcher that keeps them elsewhere (the emulated CANN's `aclrtlaunch_<kernel>` stubs): it
//! reads each argument into a host buffer, runs the kernel on the buffers and writes back the
//! ones the kernel writes. The extents repeat the kernels' `SetGlobalBuffer` sizes, so every
//! access the sim allows lies inside a buffer.

use crate::launch::{self, KernelError};
use crate::tiling::{ChunkedPrefillTiling, PagedDecodeTiling, QkNormRopeCacheTiling};

/// A kernel entry point of `kernels/ascendc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    QkNormRopeCache,
    PagedDecodeAttention,
    PagedDecodeMerge,
    ChunkedPrefillAttention,
}

/// One global-memory argument: its extent in bytes (0: unused by this tiling) and whether
/// the kernel writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arg {
    pub bytes: usize,
    pub written: bool,
}

/// A host buffer aligned for any element type the kernels use.
pub struct Buffer {
    words: Vec<u64>,
    bytes: usize,
}

impl Buffer {
    pub fn zeroed(bytes: usize) -> Buffer {
        Buffer {
            words: vec![0; bytes.div_ceil(8)],
            bytes,
        }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck_bytes(&self.words)[..self.bytes]
    }
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let n = self.bytes;
        &mut bytemuck_bytes_mut(&mut self.words)[..n]
    }
}

fn bytemuck_bytes(w: &[u64]) -> &[u8] {
    // SAFETY: u64 has no padding and u8 has alignment 1; the length covers the same memory.
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), w.len() * 8) }
}
fn bytemuck_bytes_mut(w: &mut [u64]) -> &mut [u8] {
    // SAFETY: as above, and the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast(), w.len() * 8) }
}

/// Reads a tiling struct out of its bytes.
fn tiling<T: Copy + Default>(bytes: &[u8]) -> Result<T, KernelError> {
    if bytes.len() < std::mem::size_of::<T>() {
        return Err(KernelError::Input(format!(
            "tiling of {} bytes, {} expected",
            bytes.len(),
            std::mem::size_of::<T>()
        )));
    }
    // SAFETY: T is one of the `#[repr(C)]` tiling structs of u32 and f32 fields, for which
    // every bit pattern is valid; the read is unaligned-safe and within `bytes`.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn arg(elems: u64, size: u64, written: bool) -> Arg {
    Arg {
        bytes: (elems * size) as usize,
        written,
    }
}

impl Kernel {
    /// The entry point's name (`aclrtlaunch_<name>` on the NPU).
    pub fn name(self) -> &'static str {
        match self {
            Kernel::QkNormRopeCache => "qk_norm_rope_cache",
            Kernel::PagedDecodeAttention => "paged_decode_attention",
            Kernel::PagedDecodeMerge => "paged_decode_merge",
            Kernel::ChunkedPrefillAttention => "chunked_prefill_attention",
        }
    }

    /// Bytes of the tiling struct, the last argument.
    pub fn tiling_bytes(self) -> usize {
        match self {
            Kernel::QkNormRopeCache => std::mem::size_of::<QkNormRopeCacheTiling>(),
            Kernel::PagedDecodeAttention | Kernel::PagedDecodeMerge => {
                std::mem::size_of::<PagedDecodeTiling>()
            }
            Kernel::ChunkedPrefillAttention => std::mem::size_of::<ChunkedPrefillTiling>(),
        }
    }

    /// Extents of the arguments before the tiling, in order.
    pub fn args(self, tiling_bytes: &[u8]) -> Result<Vec<Arg>, KernelError> {
        const BF16: u64 = 2;
        const F32: u64 = 4;
        const I32: u64 = 4;
        Ok(match self {
            Kernel::QkNormRopeCache => {
                let t: QkNormRopeCacheTiling = tiling(tiling_bytes)?;
                let (n, d) = (u64::from(t.num_tokens), u64::from(t.head_dim));
                let (hq, hk) = (u64::from(t.num_q_heads), u64::from(t.num_kv_heads));
                let cache = u64::from(t.num_slots) * hk * d;
                let table = u64::from(t.rope_rows) * u64::from(t.rope_stride);
                vec![
                    arg(n * hq * d, BF16, false),
                    arg(n * hk * d, BF16, false),
                    arg(n * hk * d, BF16, false),
                    arg(d, BF16, false),
                    arg(d, BF16, false),
                    arg(table, F32, false),
                    arg(table, F32, false),
                    arg(n, I32, false),
                    arg(n, I32, false),
                    arg(n * hq * d, BF16, true),
                    arg(cache, BF16, true),
                    arg(cache, BF16, true),
                ]
            }
            Kernel::PagedDecodeAttention | Kernel::PagedDecodeMerge => {
                let t: PagedDecodeTiling = tiling(tiling_bytes)?;
                let d = u64::from(t.head_dim);
                let rows = u64::from(t.num_seqs) * u64::from(t.num_q_heads);
                let split_rows = if t.num_splits > 1 {
                    rows * u64::from(t.num_splits)
                } else {
                    0
                };
                let out = arg(rows * d, BF16, true);
                let partial = |written| {
                    [
                        arg(split_rows * d, F32, written),
                        arg(split_rows * 2, F32, written),
                    ]
                };
                if self == Kernel::PagedDecodeMerge {
                    let [po, ps] = partial(false);
                    vec![po, ps, out]
                } else {
                    let cache = u64::from(t.num_cache_blocks)
                        * u64::from(t.block_size)
                        * u64::from(t.num_kv_heads)
                        * d;
                    let [po, ps] = partial(true);
                    vec![
                        arg(rows * d, BF16, false),
                        arg(cache, BF16, false),
                        arg(cache, BF16, false),
                        arg(
                            u64::from(t.num_seqs) * u64::from(t.max_blocks_per_seq),
                            I32,
                            false,
                        ),
                        arg(u64::from(t.num_seqs), I32, false),
                        out,
                        po,
                        ps,
                    ]
                }
            }
            Kernel::ChunkedPrefillAttention => {
                let t: ChunkedPrefillTiling = tiling(tiling_bytes)?;
                let d = u64::from(t.head_dim);
                let q = u64::from(t.num_tokens) * u64::from(t.num_q_heads) * d;
                let cache = u64::from(t.num_cache_blocks)
                    * u64::from(t.block_size)
                    * u64::from(t.num_kv_heads)
                    * d;
                let seqs = u64::from(t.num_seqs);
                vec![
                    arg(q, BF16, false),
                    arg(cache, BF16, false),
                    arg(cache, BF16, false),
                    arg(seqs * u64::from(t.max_blocks_per_seq), I32, false),
                    arg(seqs + 1, I32, false),
                    arg(seqs, I32, false),
                    arg(q, BF16, true),
                ]
            }
        })
    }

    /// Runs the kernel on `bufs` (one per argument before the tiling, each at least its
    /// extent from [`Kernel::args`] for this tiling), one block index at a time.
    pub fn run(
        self,
        block_dim: u32,
        tiling_bytes: &[u8],
        bufs: &mut [Buffer],
    ) -> Result<(), KernelError> {
        let args = self.args(tiling_bytes)?;
        if bufs.len() != args.len() {
            return Err(KernelError::Input(format!(
                "{}: {} arguments, {} expected",
                self.name(),
                bufs.len(),
                args.len()
            )));
        }
        for (i, (b, a)) in bufs.iter().zip(&args).enumerate() {
            if b.bytes < a.bytes {
                return Err(KernelError::Input(format!(
                    "{} argument {i}: {} bytes where the tiling needs {}",
                    self.name(),
                    b.bytes,
                    a.bytes
                )));
            }
        }
        let mut tiling = Buffer::zeroed(self.tiling_bytes());
        tiling
            .as_bytes_mut()
            .copy_from_slice(&tiling_bytes[..self.tiling_bytes()]);
        let mut ptrs: Vec<*mut u8> = bufs
            .iter_mut()
            .map(|b| b.as_bytes_mut().as_mut_ptr())
            .collect();
        ptrs.push(tiling.as_bytes_mut().as_mut_ptr());
        launch::launch_kernel(self, block_dim, &ptrs)
    }
}
