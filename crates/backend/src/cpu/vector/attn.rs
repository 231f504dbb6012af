//! Attention's grouped scores and probability-weighted sums over paged K/V rows, generic over
//! the ISA ([`Simd`]) and over how the cache stores K/V ([`KvElem`]: F32, or BF16 widened on
//! load with F32 accumulation), with the scalar references every SIMD table is tested against.

use half::bf16;

use super::Simd;

/// `(q, k, rows, d, scale, scores)`: attention scores of the `g = q.len() / d` query heads in
/// `q` (`[g, d]`) against the K rows `k[r..r + d]` for `r` in `rows`:
/// `scores[h · rows.len() + j] = scale · q_h · k[rows[j]..]`.
pub type ScoresFn<E> = fn(&[f32], &[E], &[usize], usize, f32, &mut [f32]);
/// `(p, v, rows, d, out)`: `out[h] = Σ_j p[h · rows.len() + j] · v[rows[j]..][..d]` for the
/// `g = out.len() / d` heads of `out` (`[g, d]`, overwritten).
pub type WeightedSumFn<E> = fn(&[f32], &[E], &[usize], usize, &mut [f32]);

/// The two attention kernels of one ISA for K/V stored as `E`.
pub struct AttnKernels<E: 'static> {
    pub scores: ScoresFn<E>,
    pub weighted_sum: WeightedSumFn<E>,
}

/// Rows ahead that [`ScoresFn`] / [`WeightedSumFn`] prefetch. One KV head's rows of a sequence
/// are `num_kv_heads · head_dim` elements apart, a new 4 KiB page every key or two, where the
/// hardware prefetcher starts over; at batch 8 (352 MB of F32 K/V a step) the step's attention
/// took 25 ms without and 18.5 ms with 8 rows of prefetch (16: 22 ms).
const PREFETCH_ROWS: usize = 8;

/// An element type a KV cache can store: its kernels in a table.
pub trait KvElem: Copy + Into<f32> + Send + Sync + 'static {
    fn attn(k: &super::Kernels) -> &AttnKernels<Self>;
}

impl KvElem for f32 {
    fn attn(k: &super::Kernels) -> &AttnKernels<f32> {
        &k.attn_f32
    }
}

impl KvElem for bf16 {
    fn attn(k: &super::Kernels) -> &AttnKernels<bf16> {
        &k.attn_bf16
    }
}

/// How a K/V element becomes F32 lanes.
pub(super) trait KvLoad: Copy + Into<f32> {
    /// `S::LANES` elements at `p`, widened to F32.
    ///
    /// # Safety
    /// The ISA of `S` must be present and `p` valid for `S::LANES` elements.
    unsafe fn load<S: Simd>(p: *const Self) -> S::V;
}

impl KvLoad for f32 {
    #[inline(always)]
    unsafe fn load<S: Simd>(p: *const f32) -> S::V {
        S::load(p)
    }
}

impl KvLoad for bf16 {
    #[inline(always)]
    unsafe fn load<S: Simd>(p: *const bf16) -> S::V {
        S::load_bf16(p)
    }
}

/// The scalar reference of [`ScoresFn`].
pub(super) fn scores_scalar<E: KvLoad>(
    q: &[f32],
    k: &[E],
    rows: &[usize],
    d: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let n = rows.len();
    for (h, qh) in q.chunks_exact(d.max(1)).enumerate() {
        for (j, &r) in rows.iter().enumerate() {
            let kr = &k[r..r + d];
            scores[h * n + j] = scale * qh.iter().zip(kr).map(|(&a, &b)| a * b.into()).sum::<f32>();
        }
    }
}

/// The scalar reference of [`WeightedSumFn`].
pub(super) fn weighted_sum_scalar<E: KvLoad>(
    p: &[f32],
    v: &[E],
    rows: &[usize],
    d: usize,
    out: &mut [f32],
) {
    let n = rows.len();
    out.fill(0.0);
    for (h, oh) in out.chunks_exact_mut(d.max(1)).enumerate() {
        for (j, &r) in rows.iter().enumerate() {
            let w = p[h * n + j];
            oh.iter_mut()
                .zip(&v[r..r + d])
                .for_each(|(o, &x)| *o += w * x.into());
        }
    }
}

/// [`ScoresFn`] for `G` heads (`q` is `[G, d]`); each K row is loaded once for the group.
#[inline(always)]
unsafe fn scores_n<S: Simd, E: KvLoad, const G: usize>(
    q: &[f32],
    k: &[E],
    rows: &[usize],
    d: usize,
    scale: f32,
    scores: &mut [f32],
    n: usize,
) {
    let l = S::LANES;
    let full = d / l * l;
    for (j, &r) in rows.iter().enumerate() {
        if let Some(ahead) = rows.get(j + PREFETCH_ROWS).and_then(|&a| k.get(a..a + d)) {
            crate::cpu::simd::prefetch(ahead);
        }
        let kr = &k[r..r + d];
        let mut acc = [S::splat(0.0); G];
        let mut i = 0;
        while i < full {
            let x = E::load::<S>(kr.as_ptr().add(i));
            for (h, a) in acc.iter_mut().enumerate() {
                *a = S::fma(S::load(q.as_ptr().add(h * d + i)), x, *a);
            }
            i += l;
        }
        for (h, a) in acc.iter().enumerate() {
            let tail: f32 = (full..d).map(|t| q[h * d + t] * kr[t].into()).sum();
            scores[h * n + j] = scale * (S::hsum(*a) + tail);
        }
    }
}

#[inline(always)]
pub(super) unsafe fn scores_g<S: Simd, E: KvLoad>(
    q: &[f32],
    k: &[E],
    rows: &[usize],
    d: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let (n, g) = (rows.len(), q.len() / d.max(1));
    // Four heads at a time keep the accumulators in registers on every ISA.
    let mut h = 0;
    while h < g {
        let (qh, sh) = (&q[h * d..], &mut scores[h * n..]);
        match (g - h).min(4) {
            1 => scores_n::<S, E, 1>(qh, k, rows, d, scale, sh, n),
            2 => scores_n::<S, E, 2>(qh, k, rows, d, scale, sh, n),
            3 => scores_n::<S, E, 3>(qh, k, rows, d, scale, sh, n),
            _ => scores_n::<S, E, 4>(qh, k, rows, d, scale, sh, n),
        }
        h += 4;
    }
}

/// [`WeightedSumFn`] for `G` heads, `U` vectors of each output row at a time: the outputs stay
/// in registers across all rows of V (the per-row axpy loaded and stored them every row).
#[inline(always)]
unsafe fn weighted_sum_n<S: Simd, E: KvLoad, const G: usize, const U: usize>(
    p: &[f32],
    v: &[E],
    rows: &[usize],
    d: usize,
    out: &mut [f32],
    n: usize,
) {
    let l = S::LANES;
    let full = d / l * l;
    let mut c = 0;
    while c < full {
        let u_here = ((full - c) / l).min(U);
        let mut acc = [[S::splat(0.0); U]; G];
        for (j, &r) in rows.iter().enumerate() {
            if c == 0 {
                if let Some(ahead) = rows.get(j + PREFETCH_ROWS).and_then(|&a| v.get(a..a + d)) {
                    crate::cpu::simd::prefetch(ahead);
                }
            }
            let vr = &v[r + c..r + c + u_here * l];
            for u in 0..u_here {
                let x = E::load::<S>(vr.as_ptr().add(u * l));
                for (h, a) in acc.iter_mut().enumerate() {
                    a[u] = S::fma(S::splat(p[h * n + j]), x, a[u]);
                }
            }
        }
        for (h, a) in acc.iter().enumerate() {
            for (u, a) in a.iter().enumerate().take(u_here) {
                S::store(out[h * d + c + u * l..][..l].as_mut_ptr(), *a);
            }
        }
        c += u_here * l;
    }
    for h in 0..G {
        for t in full..d {
            out[h * d + t] = rows
                .iter()
                .enumerate()
                .map(|(j, &r)| p[h * n + j] * v[r + t].into())
                .sum();
        }
    }
}

#[inline(always)]
pub(super) unsafe fn weighted_sum_g<S: Simd, E: KvLoad>(
    p: &[f32],
    v: &[E],
    rows: &[usize],
    d: usize,
    out: &mut [f32],
) {
    let (n, g) = (rows.len(), out.len() / d.max(1));
    // Accumulators: G·U vectors, within AVX2's 16 registers (8 lanes) and AVX-512's and NEON's
    // 32.
    let narrow = S::LANES == 8;
    let mut h = 0;
    while h < g {
        let (ph, oh) = (&p[h * n..], &mut out[h * d..]);
        match ((g - h).min(4), narrow) {
            (1, _) => weighted_sum_n::<S, E, 1, 8>(ph, v, rows, d, oh, n),
            (2, false) => weighted_sum_n::<S, E, 2, 8>(ph, v, rows, d, oh, n),
            (3, false) => weighted_sum_n::<S, E, 3, 4>(ph, v, rows, d, oh, n),
            (_, false) => weighted_sum_n::<S, E, 4, 4>(ph, v, rows, d, oh, n),
            (2, true) => weighted_sum_n::<S, E, 2, 4>(ph, v, rows, d, oh, n),
            (3, true) => weighted_sum_n::<S, E, 3, 2>(ph, v, rows, d, oh, n),
            (_, true) => weighted_sum_n::<S, E, 4, 2>(ph, v, rows, d, oh, n),
        }
        h += 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{supported_levels, Level};
    use crate::cpu::vector::kernels;

    fn data(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) / 17.0)
            .collect()
    }

    /// Every level's kernels for `E` against the scalar ones, on rows out of order and gapped
    /// (as a block table scatters them) and head sizes that are not multiples of any vector.
    /// The bound: 1e-5 relative to the sum of |products| (summation order differs by ISA).
    fn check<E: KvElem>(cast: fn(f32) -> E) {
        let s = E::attn(kernels(Level::Scalar));
        for level in supported_levels() {
            let k = E::attn(kernels(level));
            for &d in &[1usize, 7, 16, 33, 100, 128, 129] {
                for group in 1..=6 {
                    for &n in &[1usize, 5, 19] {
                        let what = format!("{} d={d} group={group} rows={n}", level.name());
                        let stride = d + 3;
                        let rows: Vec<usize> = (0..n).map(|j| ((j * 7) % n) * stride + 1).collect();
                        let kv: Vec<E> = data(n * stride + 1, 2).into_iter().map(cast).collect();
                        let kv_max = kv.iter().fold(0.0f32, |m, &x| m.max(x.into().abs()));
                        let q = data(group * d, 3);
                        let (mut a, mut b) = (vec![0.0; group * n], vec![0.0; group * n]);
                        (k.scores)(&q, &kv, &rows, d, 0.3, &mut a);
                        (s.scores)(&q, &kv, &rows, d, 0.3, &mut b);
                        let mag: f32 = q.iter().map(|x| x.abs()).sum::<f32>() * kv_max;
                        for (x, y) in a.iter().zip(&b) {
                            assert!(
                                (x - y).abs() <= 1e-5 * (1.0 + mag),
                                "scores {what}: {x} vs {y}"
                            );
                        }
                        let p = data(group * n, 4);
                        let (mut a, mut b) = (vec![9.0; group * d], vec![-9.0; group * d]);
                        (k.weighted_sum)(&p, &kv, &rows, d, &mut a);
                        (s.weighted_sum)(&p, &kv, &rows, d, &mut b);
                        let mag: f32 = p.iter().map(|x| x.abs()).sum::<f32>() * kv_max;
                        for (x, y) in a.iter().zip(&b) {
                            assert!(
                                (x - y).abs() <= 1e-5 * (1.0 + mag),
                                "weighted_sum {what}: {x} vs {y}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn f32_kv_kernels_match_scalar_on_odd_sizes() {
        check::<f32>(|x| x);
    }

    #[test]
    fn bf16_kv_kernels_match_scalar_on_odd_sizes() {
        check::<bf16>(bf16::from_f32);
    }

    #[test]
    fn bf16_rows_widen_exactly() {
        // Widening is exact: scores over BF16 rows equal scores over those rows widened to F32.
        let (d, n) = (37, 4);
        let rows: Vec<usize> = (0..n).map(|j| j * d).collect();
        let kb: Vec<bf16> = data(n * d, 7).into_iter().map(bf16::from_f32).collect();
        let kf: Vec<f32> = kb.iter().map(|x| x.to_f32()).collect();
        let q = data(2 * d, 1);
        for level in supported_levels() {
            let k = kernels(level);
            let (mut a, mut b) = (vec![0.0; 2 * n], vec![0.0; 2 * n]);
            (k.attn_bf16.scores)(&q, &kb, &rows, d, 1.0, &mut a);
            (k.attn_f32.scores)(&q, &kf, &rows, d, 1.0, &mut b);
            assert_eq!(a, b, "{}", level.name());
        }
    }
}
