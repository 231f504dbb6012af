//! `out[m, n] = x[m, k] · w[n, k]ᵀ` under the BF16 precision policy: `x` rounded to BF16
//! (nearest even), BF16 weights as loaded, F32 accumulation. The matmul of prefill and of
//! decode batches ≥ 2 where the CPU has AVX512_BF16.
//!
//! `vdpbf16ps` multiplies 32 BF16 pairs and adds them, two by two, into 16 F32 lanes: twice
//! the products per instruction of an F32 FMA, and no widening of the weights. The kernel is
//! the dot-product form on row-major weights (no repacking, so the mmap'd rows are read as
//! they are): a 4 × 4 register tile of `x` rows × weight rows keeps 16 accumulators, loads 8
//! vectors per 16 `vdpbf16ps`, and folds the 16 lanes of four accumulators at once at the end.
//!
//! Blocking: a task owns a panel of [`PANEL_ROWS`] weight rows (≤ 384 KiB at k = 3,072: it
//! stays in L2) and walks `x` in blocks of [`MR`] rows, each block staying in L1 while it meets
//! every weight group of the panel; so each weight is read from memory once per call and each
//! row of `x` once per panel. `x` is rounded once per call into a per-thread buffer, rows
//! zero-padded to whole vectors (and one vector more, off 4 KiB strides), so a step allocates
//! nothing once warm.

// Elsewhere only the scalar twin runs (NEON BF16 is not written yet).
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

use std::cell::RefCell;

use half::bf16;
use rayon::prelude::*;

use super::gemv::OutPtr;
use super::simd::Level;
use super::with_scratch;

/// Rows of `x` per register tile.
pub const MR: usize = 4;
/// Weight rows per register tile.
pub const NR: usize = 4;
/// Weight rows per task.
const PANEL_ROWS: usize = 64;

thread_local! {
    /// `x` rounded to BF16, rows `kp` apart, kept per thread.
    static XB: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Whether [`gemm_bf16`] runs its `vdpbf16ps` kernel at `level` (else the scalar twin).
pub fn has_kernel(level: Level) -> bool {
    level == Level::Avx512Bf16 && level.supported()
}

/// Row stride of the rounded `x`: whole 32-value vectors, plus one so rows a multiple of
/// 4 KiB apart do not all land in the same L1 sets.
fn padded_k(k: usize) -> usize {
    k.div_ceil(32) * 32 + 32
}

/// `x` rounded to BF16 (nearest even, as `torch.Tensor.to(torch.bfloat16)`), the policy's
/// matmul input.
pub fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// `out[m, n] = bf16(x)[m, k] · w[n, k]ᵀ` with `level`'s kernel (the scalar twin where the
/// level has none, or the CPU lacks it).
pub fn gemm_bf16_at(
    level: Level,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    out: &mut [f32],
) {
    assert!(
        x.len() == m * k && w.len() == n * k && out.len() == m * n,
        "gemm_bf16: sizes"
    );
    if m == 0 || n == 0 {
        return;
    }
    // Only x86-64 has a kernel yet; elsewhere every level runs the scalar twin.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    #[cfg(target_arch = "x86_64")]
    if has_kernel(level) {
        // Prefill-sized batches on AMX tiles where the CPU has them.
        if super::gemm_amx::gemm_amx(x, m, k, w, n, out) {
            return;
        }
        let kp = padded_k(k);
        with_scratch(&XB, |xb| {
            xb.clear();
            xb.resize(m * kp, 0);
            for (d, s) in xb.chunks_exact_mut(kp).zip(x.chunks_exact(k)) {
                for (d, &v) in d.iter_mut().zip(s) {
                    *d = bf16::from_f32(v).to_bits();
                }
            }
            let xb: &[u16] = xb;
            let dst = OutPtr(out.as_mut_ptr());
            (0..n.div_ceil(PANEL_ROWS)).into_par_iter().for_each(|p| {
                let (r0, r1) = (p * PANEL_ROWS, ((p + 1) * PANEL_ROWS).min(n));
                // SAFETY: AVX512_BF16 is supported (`has_kernel`); `xb` is `[m, kp]` zero-padded,
                // `w` `[n, k]`; this task writes only columns r0..r1 of the `[m, n]` output.
                unsafe { avx512::panel(xb, m, kp, k, w, r0, r1, n, dst.get()) }
            });
        });
        return;
    }
    gemm_bf16_scalar(x, m, k, w, n, out);
}

/// The scalar twin: the same rounding, F32 accumulation in order.
pub fn gemm_bf16_scalar(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize, out: &mut [f32]) {
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            out[i * n + j] = xr
                .iter()
                .zip(&w[j * k..(j + 1) * k])
                .map(|(&a, b)| round_bf16(a) * b.to_f32())
                .sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use half::bf16;
    use std::arch::x86_64::*;

    /// Weight rows `r0..r1` against every row of `xb`, into columns `r0..r1` of `out`.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL + AVX512_BF16; `xb` holds `m * kp` values (rows zero-padded to `kp`, a
    /// multiple of 32 ≥ k), `w` holds `n * k`, `out` `m * n`, and no other thread writes
    /// columns `r0..r1`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn panel(
        xb: &[u16],
        m: usize,
        kp: usize,
        k: usize,
        w: &[bf16],
        r0: usize,
        r1: usize,
        n: usize,
        out: *mut f32,
    ) {
        let wp = w.as_ptr() as *const u16;
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(MR);
            let mut j = r0;
            while j < r1 {
                let nr = (r1 - j).min(NR);
                let x = xb.as_ptr().add(i * kp);
                let wj = wp.add(j * k);
                let o = out.add(i * n + j);
                match (mr, nr) {
                    (4, 4) => tile::<4, 4>(x, kp, wj, k, o, n),
                    (4, 3) => tile::<4, 3>(x, kp, wj, k, o, n),
                    (4, 2) => tile::<4, 2>(x, kp, wj, k, o, n),
                    (4, 1) => tile::<4, 1>(x, kp, wj, k, o, n),
                    (3, 4) => tile::<3, 4>(x, kp, wj, k, o, n),
                    (3, 3) => tile::<3, 3>(x, kp, wj, k, o, n),
                    (3, 2) => tile::<3, 2>(x, kp, wj, k, o, n),
                    (3, 1) => tile::<3, 1>(x, kp, wj, k, o, n),
                    (2, 4) => tile::<2, 4>(x, kp, wj, k, o, n),
                    (2, 3) => tile::<2, 3>(x, kp, wj, k, o, n),
                    (2, 2) => tile::<2, 2>(x, kp, wj, k, o, n),
                    (2, 1) => tile::<2, 1>(x, kp, wj, k, o, n),
                    (1, 4) => tile::<1, 4>(x, kp, wj, k, o, n),
                    (1, 3) => tile::<1, 3>(x, kp, wj, k, o, n),
                    (1, 2) => tile::<1, 2>(x, kp, wj, k, o, n),
                    _ => tile::<1, 1>(x, kp, wj, k, o, n),
                }
                j += nr;
            }
            i += mr;
        }
    }

    /// One `M × N` tile: `out[a·n + b] = Σ x[a·kp + ·] · w[b·k + ·]`.
    ///
    /// # Safety
    /// As [`panel`]: `x` readable for `M * kp` values, `w` for `N * k`, `out` writable at
    /// `a * n + b` for `a < M`, `b < N`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn tile<const M: usize, const N: usize>(
        x: *const u16,
        kp: usize,
        w: *const u16,
        k: usize,
        out: *mut f32,
        n: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); N]; M];
        let body = k / 32 * 32;
        let mut c = 0;
        while c < body {
            let mut wv = [_mm512_setzero_si512(); N];
            for (b, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(w.add(b * k + c) as *const _);
            }
            accumulate(&mut acc, x.add(c), kp, &wv);
            c += 32;
        }
        if c < k {
            // The weights' tail is masked; `x` is zero-padded past k, so its lines are whole.
            let mk: __mmask32 = (1u32 << (k - c)) - 1;
            let mut wv = [_mm512_setzero_si512(); N];
            for (b, v) in wv.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_epi16(mk, w.add(b * k + c) as *const i16);
            }
            accumulate(&mut acc, x.add(c), kp, &wv);
        }
        for (a, acc) in acc.iter().enumerate() {
            let o = out.add(a * n);
            if N == 4 {
                let s = fold4(acc[0], acc[1], acc[2], acc[3]);
                _mm_storeu_ps(o, s);
            } else {
                for (b, s) in acc.iter().enumerate() {
                    *o.add(b) = _mm512_reduce_add_ps(*s);
                }
            }
        }
    }

    /// `acc[a][b] += x[a·kp..][..32] · wv[b]` by `vdpbf16ps`.
    #[inline(always)]
    unsafe fn accumulate<const M: usize, const N: usize>(
        acc: &mut [[__m512; N]; M],
        x: *const u16,
        kp: usize,
        wv: &[__m512i; N],
    ) {
        for (a, acc) in acc.iter_mut().enumerate() {
            let xv: __m512bh = std::mem::transmute(_mm512_loadu_si512(x.add(a * kp) as *const _));
            for (s, &w) in acc.iter_mut().zip(wv) {
                *s = _mm512_dpbf16_ps(*s, xv, std::mem::transmute::<__m512i, __m512bh>(w));
            }
        }
    }

    /// The lane sums of four vectors, as one 4-float vector (12 instructions for four sums,
    /// against about 8 for each on its own).
    #[inline(always)]
    unsafe fn fold4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
        // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], and the same for c, d.
        let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        // Per 128-bit lane: [Σa, Σb, Σc, Σd] of that lane.
        let s = _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(ab, cd),
            _mm512_shuffle_ps::<0b11_10_11_10>(ab, cd),
        );
        let h = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps::<1>(s));
        _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h))
    }
}

/// Test support shared with the AMX twin: one odd-sized case against the scalar twin.
#[cfg(test)]
pub(crate) mod twin_check {
    use super::*;

    /// Runs `kernel` on a deterministic `m × k` input and `n × k` weights and checks every
    /// output against [`gemm_bf16_scalar`], within the F32 reordering error (1e-5 of the sum
    /// of |products|, since the kernels add in another order).
    pub(crate) fn check(
        what: &str,
        (m, k, n): (usize, usize, usize),
        kernel: impl Fn(&[f32], &[bf16], &mut [f32]),
    ) {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let w: Vec<bf16> = (0..n * k)
            .map(|i| bf16::from_f32(((i * 29 % 89) as f32 - 44.0) / 31.0))
            .collect();
        let mut want = vec![0.0; m * n];
        gemm_bf16_scalar(&x, m, k, &w, n, &mut want);
        let mut got = vec![f32::NAN; m * n];
        kernel(&x, &w, &mut got);
        for i in 0..m {
            for j in 0..n {
                let mag: f32 = (0..k)
                    .map(|l| (round_bf16(x[i * k + l]) * w[j * k + l].to_f32()).abs())
                    .sum();
                let (a, b) = (got[i * n + j], want[i * n + j]);
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + mag),
                    "{what} {m}x{k}x{n} [{i},{j}]: {a} vs {b}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::supported_levels;

    #[test]
    fn kernel_matches_scalar_twin_on_odd_sizes() {
        // Tiles of every shape (m, n not multiples of 4), k with and without a tail, panels cut
        // short, and rows 4 KiB apart.
        for &(m, k, n) in &[
            (1, 1, 1),
            (2, 7, 3),
            (3, 33, 5),
            (4, 32, 4),
            (5, 64, 9),
            (7, 65, 67),
            (9, 100, 130),
            (17, 1024, 70),
            (6, 2048, 13),
            (33, 31, 129),
        ] {
            for level in supported_levels() {
                twin_check::check(level.name(), (m, k, n), |x, w, out| {
                    gemm_bf16_at(level, x, m, k, w, n, out)
                });
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2⁻⁸ is halfway between two BF16 values: ties go to the even one (1.0).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(round_bf16(-2.5), -2.5);
    }
}
