//! Paged causal attention on the CPU: each query token reads its sequence's K/V (F32 or BF16,
//! accumulated in F32) through the block table, so prefill chunks and decodes share one call.

use std::cell::RefCell;

use rayon::prelude::*;

use super::vector::{Kernels, KvElem};
use super::with_scratch;
use crate::AttnGeometry;

/// Where one query token sits.
#[derive(Clone, Copy, Debug)]
pub struct TokenPlace {
    pub seq: u32,
    /// Absolute position of the token; it attends to positions `..=pos`.
    pub pos: u32,
}

/// One layer's K/V rows (`[blocks, block_size, kv_heads, head_dim]`, as `E`) and the step's
/// block tables.
pub struct PagedKv<'a, E = f32> {
    pub k: &'a [E],
    pub v: &'a [E],
    pub block_size: usize,
    pub block_tables: &'a [u32],
    pub max_blocks_per_seq: usize,
}

thread_local! {
    /// Scores of one (token, KV head) task, kept per thread so a step allocates nothing.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Where each key's K/V row starts in the cache, for the same task.
    static ROWS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Scratch grows in powers of two from this many floats, so contexts growing a token per
/// step reallocate it a handful of times per thread, not every step.
const MIN_SCORES: usize = 1 << 12;

/// Gives this thread's scratch its first size.
pub(crate) fn reserve_scratch() {
    with_scratch(&SCORES, |s| s.reserve(MIN_SCORES));
    with_scratch(&ROWS, |s| s.reserve(MIN_SCORES));
}

/// `q`: `[tokens, heads * head_dim]`; returns `[tokens, heads * head_dim]` through `out`.
/// Callers check that every block-table entry a token reaches is inside the cache.
///
/// Work is split over (token, KV head) pairs, so a single decode token still keeps every core
/// busy; the query heads sharing a KV head are done together so each K/V row is read once for
/// the group. Dot products, softmax and the V accumulation run on `kern`'s SIMD kernels.
pub fn paged_attention<E: KvElem>(
    q: &[f32],
    places: &[TokenPlace],
    kv: &PagedKv<'_, E>,
    g: &AttnGeometry,
    kern: &Kernels,
    out: &mut [f32],
) {
    let d = g.head_dim;
    let group = g.num_heads / g.num_kv_heads;
    let span = group * d;
    let attn = E::attn(kern);
    out.par_chunks_mut(span)
        .zip(q.par_chunks(span))
        .enumerate()
        .for_each(|(idx, (o, qg))| {
            with_scratch(&SCORES, |scores| {
                let (t, kvh) = (idx / g.num_kv_heads, idx % g.num_kv_heads);
                let place = places[t];
                let table = &kv.block_tables[place.seq as usize * kv.max_blocks_per_seq..]
                    [..kv.max_blocks_per_seq];
                let end = place.pos as usize + 1;
                let start = g.sliding_window.map_or(0, |w| end.saturating_sub(w));
                let len = end - start;
                // The group's scores `[group, len]`, then their 1 / Σ exp.
                let need = group * len + group;
                if scores.capacity() < need {
                    let want = need.max(MIN_SCORES).next_power_of_two();
                    scores.reserve_exact(want - scores.len());
                }
                scores.clear();
                scores.resize(need, 0.0);
                let (scores, inv) = scores.split_at_mut(group * len);
                with_scratch(&ROWS, |rows| {
                    rows.clear();
                    rows.extend(
                        (start..end)
                            .map(|j| kv_offset(table, kv.block_size, j, g.num_kv_heads, kvh, d)),
                    );
                    (attn.scores)(qg, kv.k, rows, d, g.scale, scores);
                    for (s, r) in scores.chunks_exact_mut(len).zip(inv.iter_mut()) {
                        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        *r = 1.0 / (kern.exp_sub_sum)(s, max);
                    }
                    (attn.weighted_sum)(scores, kv.v, rows, d, o);
                });
                for (oh, &r) in o.chunks_exact_mut(d).zip(inv.iter()) {
                    (kern.scale)(r, oh);
                }
            })
        });
}

#[inline]
fn kv_offset(
    table: &[u32],
    block_size: usize,
    pos: usize,
    kv_heads: usize,
    kvh: usize,
    d: usize,
) -> usize {
    let slot = table[pos / block_size] as usize * block_size + pos % block_size;
    (slot * kv_heads + kvh) * d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{supported_levels, Level};
    use crate::cpu::vector::kernels;

    /// The plain definition: per token and head, softmax(q·K) · V over positions `..=pos`.
    fn reference<E: KvElem>(
        q: &[f32],
        places: &[TokenPlace],
        kv: &PagedKv<'_, E>,
        g: &AttnGeometry,
    ) -> Vec<f32> {
        let d = g.head_dim;
        let row = g.num_heads * d;
        let group = g.num_heads / g.num_kv_heads;
        let mut out = vec![0.0; q.len()];
        for (t, p) in places.iter().enumerate() {
            let table =
                &kv.block_tables[p.seq as usize * kv.max_blocks_per_seq..][..kv.max_blocks_per_seq];
            let end = p.pos as usize + 1;
            let start = g.sliding_window.map_or(0, |w| end.saturating_sub(w));
            for h in 0..g.num_heads {
                let qh = &q[t * row + h * d..][..d];
                let offs: Vec<usize> = (start..end)
                    .map(|j| kv_offset(table, kv.block_size, j, g.num_kv_heads, h / group, d))
                    .collect();
                let s: Vec<f64> = offs
                    .iter()
                    .map(|&o| {
                        qh.iter()
                            .zip(&kv.k[o..o + d])
                            .map(|(&a, &b)| f64::from(a * b.into()))
                            .sum::<f64>()
                            * f64::from(g.scale)
                    })
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (i, o) in out[t * row + h * d..][..d].iter_mut().enumerate() {
                    *o = offs
                        .iter()
                        .zip(&e)
                        .map(|(&off, p)| p / sum * f64::from(kv.v[off + i].into()))
                        .sum::<f64>() as f32;
                }
            }
        }
        out
    }

    /// Every level against the f64 reference, K/V stored as `E` (`cast` rounds them), on odd
    /// geometry: head_dim 36 (not a multiple of 16), 3 query heads per KV head, blocks of 5,
    /// two sequences (a decode at position 40 and a 3-token chunk), with and without a sliding
    /// window. The reference reads the same stored values, so the bound (1e-5) is the F32
    /// summation's, whatever the storage.
    fn check<E: KvElem>(cast: fn(f32) -> E) {
        for window in [None, Some(7)] {
            let g = AttnGeometry {
                num_heads: 6,
                num_kv_heads: 2,
                head_dim: 36,
                scale: 0.17,
                sliding_window: window,
            };
            let (bs, blocks) = (5, 20);
            let n = blocks * bs * g.num_kv_heads * g.head_dim;
            let k: Vec<E> = (0..n)
                .map(|i| cast(((i * 31 % 97) as f32 - 48.0) / 20.0))
                .collect();
            let v: Vec<E> = (0..n)
                .map(|i| cast(((i * 17 % 89) as f32 - 44.0) / 30.0))
                .collect();
            let block_tables: Vec<u32> = (0..20).rev().collect();
            let kv = PagedKv {
                k: &k,
                v: &v,
                block_size: bs,
                block_tables: &block_tables,
                max_blocks_per_seq: 10,
            };
            let places = [
                TokenPlace { seq: 0, pos: 40 },
                TokenPlace { seq: 1, pos: 0 },
                TokenPlace { seq: 1, pos: 1 },
                TokenPlace { seq: 1, pos: 2 },
            ];
            let row = g.num_heads * g.head_dim;
            let q: Vec<f32> = (0..places.len() * row)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) / 5.0)
                .collect();
            let want = reference(&q, &places, &kv, &g);
            for level in supported_levels().into_iter().chain([Level::Scalar]) {
                let mut got = vec![0.0; q.len()];
                paged_attention(&q, &places, &kv, &g, kernels(level), &mut got);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "{} window {window:?} [{i}]: {a} vs {b}",
                        level.name()
                    );
                }
            }
        }
    }

    #[test]
    fn every_level_matches_the_reference_on_odd_geometry() {
        check::<f32>(|x| x);
    }

    #[test]
    fn every_level_matches_the_reference_over_a_bf16_cache() {
        check::<half::bf16>(half::bf16::from_f32);
    }
}
