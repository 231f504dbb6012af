//! The CPU KV cache: per layer K and V rows (`[blocks, block_size, kv_heads, head_dim]`) in
//! F32 or BF16, on zeroed pages that cost nothing until used, written a token row at a time.

use half::bf16;

use super::precision::CpuDType;
use super::shape_err;
use crate::{BackendError, KvCacheShape, Result};

/// Per-layer K and V rows of one element type.
pub struct Layers<E> {
    pub k: Vec<Vec<E>>,
    pub v: Vec<Vec<E>>,
}

/// The rows, in the precision the cache was made with.
pub enum KvRows {
    F32(Layers<f32>),
    BF16(Layers<bf16>),
}

pub struct CpuKvCache {
    pub(super) shape: KvCacheShape,
    pub(super) rows: KvRows,
}

impl CpuKvCache {
    pub fn shape(&self) -> KvCacheShape {
        self.shape
    }

    pub fn dtype(&self) -> CpuDType {
        match self.rows {
            KvRows::F32(_) => CpuDType::F32,
            KvRows::BF16(_) => CpuDType::BF16,
        }
    }

    /// A cache of `s` in `dtype`, all zeros.
    pub(super) fn zeroed(s: KvCacheShape, dtype: CpuDType) -> Result<Self> {
        let per_layer = s.num_blocks * s.block_size * s.num_kv_heads * s.head_dim;
        fn layers<E: ZeroBits>(n: usize, per_layer: usize) -> Result<Layers<E>> {
            let (mut k, mut v) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for _ in 0..n {
                k.push(zeroed(per_layer)?);
                v.push(zeroed(per_layer)?);
            }
            Ok(Layers { k, v })
        }
        let rows = match dtype {
            CpuDType::F32 => KvRows::F32(layers(s.num_layers, per_layer)?),
            CpuDType::BF16 => KvRows::BF16(layers(s.num_layers, per_layer)?),
        };
        Ok(Self { shape: s, rows })
    }

    /// Bytes of one block over all layers, K and V.
    pub(super) fn block_bytes(s: KvCacheShape, dtype: CpuDType) -> u64 {
        (2 * s.num_layers * s.block_size * s.num_kv_heads * s.head_dim * dtype.bytes()) as u64
    }

    /// Stores token `t`'s rows of `k` and `v` (`[tokens, row]`) at `slot_mapping[t]`.
    pub(super) fn write(
        &mut self,
        layer: usize,
        k: &[f32],
        v: &[f32],
        slot_mapping: &[u32],
    ) -> Result<()> {
        let s = self.shape;
        let row = s.num_kv_heads * s.head_dim;
        let slots = s.num_blocks * s.block_size;
        if let Some(&slot) = slot_mapping.iter().find(|&&x| x as usize >= slots) {
            return Err(shape_err("write_kv", format!("slot {slot} of {slots}")));
        }
        fn put<E>(
            l: &mut Layers<E>,
            layer: usize,
            k: &[f32],
            v: &[f32],
            slots: &[u32],
            row: usize,
            cvt: fn(f32) -> E,
        ) {
            let (kc, vc) = (&mut l.k[layer], &mut l.v[layer]);
            for (t, &slot) in slots.iter().enumerate() {
                let at = slot as usize * row;
                for (dst, src) in [(&mut *kc, k), (&mut *vc, v)] {
                    for (d, &x) in dst[at..at + row]
                        .iter_mut()
                        .zip(&src[t * row..(t + 1) * row])
                    {
                        *d = cvt(x);
                    }
                }
            }
        }
        match &mut self.rows {
            KvRows::F32(l) => put(l, layer, k, v, slot_mapping, row, |x| x),
            // Round to nearest even, as torch's `.to(torch.bfloat16)`.
            KvRows::BF16(l) => put(l, layer, k, v, slot_mapping, row, bf16::from_f32),
        }
        Ok(())
    }
}

/// Element types whose all-zero bytes are the value zero.
trait ZeroBits: Copy {}
impl ZeroBits for f32 {}
impl ZeroBits for bf16 {}

/// A zero-filled buffer from the allocator's zeroed pages, so a large KV cache costs no
/// start-up time and no resident memory until used; an allocation failure is an error.
fn zeroed<E: ZeroBits>(n: usize) -> Result<Vec<E>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<E>(n)
        .map_err(|e| BackendError::OutOfMemory(format!("KV cache layer of {n} elements: {e}")))?;
    // SAFETY: `layout` has non-zero size; the pointer is checked for null; all-zero bytes are
    // a valid `E` (0.0, by `ZeroBits`); the Vec takes ownership with the same layout
    // (capacity n, align of E).
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut E;
        if p.is_null() {
            return Err(BackendError::OutOfMemory(format!(
                "KV cache layer of {} bytes",
                layout.size()
            )));
        }
        Ok(Vec::from_raw_parts(p, n, n))
    }
}
