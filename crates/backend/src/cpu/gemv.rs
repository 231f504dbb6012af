//! Decode-time matrix-vector products with BF16 weights: `out[m, n] = x[m, k] · w[n, k]ᵀ` for a
//! few rows of `x` (batch 1–8). Memory-bound at batch 1, so each weight row is read once for
//! all rows of `x`, widened from BF16 in registers (a BF16 is the top half of an F32), and the
//! rows of `w` are spread over rayon's pool so every core streams weights.
//!
//! Kernels by [`Level`]: AVX2+FMA, AVX-512 (masked tails, no scalar remainder), AVX512_BF16
//! (`vdpbf16ps` on BF16 weights, with `x` split once per call into two BF16 halves `hi + lo`:
//! `x` rounded to one BF16 alone moves the fixture's logits by 4·10⁻², past the 10⁻³ parity
//! bound), NEON, and the portable scalar twin every SIMD path is tested against. At batch 1 the F32 kernels keep several independent
//! accumulators: one FMA chain is latency-bound at about half the memory bandwidth.

use std::cell::RefCell;

use half::bf16;
use rayon::prelude::*;

use super::with_scratch;

use super::simd::{self, Level};

/// Most rows of `x` handled per pass over the weights.
pub const MAX_ROWS: usize = 8;
/// How far ahead (in BF16 values, 6 KiB) the batched kernels prefetch each weight stream.
/// Past batch 1 the FMAs, not the loads, pace the loop, and the hardware prefetcher alone
/// then leaves DRAM idle between bursts: the 0.6B lm_head at batch 8 took 30 ms without it
/// and 20 ms with it, decode at batch 8 went from 49 to 61–72 tokens/s (distances of 3–6 Ki
/// values measured alike; 1–2 Ki less well). At batch 1 the loop is load-bound and streams
/// at the memory's speed already; prefetching there cost 10 %.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 3072;
/// Weight rows per rayon task.
const ROWS_PER_TASK: usize = 16;
/// Batches up to this size use `vdpbf16ps` where the CPU has it: it issues a quarter of the
/// F32 kernel's instructions per weight (no widening). With several lines of weights per pass
/// it measured, on Zen 4 (0.6B lm_head from DRAM), 8.5 against 9.4 ms at batch 1, 9.3 against
/// 12.3 at 2 and 11.3–12.3 against 12.5–12.8 at 4 (decode +13 % at batch 2); at batch 8 the
/// two-weight-row F32 kernel wins (19 against 24 ms: the split `x` doubles the activation
/// loads).
pub const BF16_DOT_MAX_ROWS: usize = 4;
// `avx512::dots_bf16` has kernels for 1–4 rows only.
const _: () = assert!(BF16_DOT_MAX_ROWS <= 4);

/// The output shared by tasks that write disjoint columns of it (here and in `gemm_bf16`).
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: tasks write disjoint output columns.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Scalar reference: dot products of `x`'s rows (`ks` floats apart) with one weight row.
fn dots_scalar(x: &[f32], m: usize, ks: usize, k: usize, w: &[bf16], acc: &mut [f32; MAX_ROWS]) {
    for (i, a) in acc.iter_mut().enumerate().take(m) {
        let xr = &x[i * ks..i * ks + k];
        *a = xr.iter().zip(w).map(|(a, b)| a * b.to_f32()).sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MAX_ROWS, PREFETCH_AHEAD};
    use half::bf16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    fn hsum(s: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(s, 1);
        let lo = _mm256_castps256_ps128(s);
        let q = _mm_add_ps(hi, lo);
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        _mm_cvtss_f32(q)
    }

    /// `M` rows of `x`, `U` independent accumulators per row (ILP for small `M`).
    ///
    /// # Safety
    /// AVX2 and FMA; `x` holds `M` rows of `k` floats `ks` apart, `w` holds `k` values.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots_n<const M: usize, const U: usize>(
        x: &[f32],
        ks: usize,
        k: usize,
        w: &[bf16],
        acc: &mut [f32; MAX_ROWS],
    ) {
        let mut sums = [[_mm256_setzero_ps(); U]; M];
        let wp = w.as_ptr() as *const u16;
        let xp = x.as_ptr();
        let step = 8 * U;
        let body = k / step * step;
        let mut j = 0;
        while j < body {
            if M > 1 {
                // Never dereferenced: a prefetch past the weights is dropped, not a fault.
                _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(j + PREFETCH_AHEAD) as *const i8);
            }
            for u in 0..U {
                // 8 BF16 → 8 F32: zero-extend to 32 bits and shift into the high half.
                let raw = _mm_loadu_si128(wp.add(j + 8 * u) as *const __m128i);
                let wv = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
                for (i, s) in sums.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(xp.add(i * ks + j + 8 * u));
                    s[u] = _mm256_fmadd_ps(xv, wv, s[u]);
                }
            }
            j += step;
        }
        for (i, s) in sums.iter().enumerate() {
            let mut v = s[0];
            for t in &s[1..] {
                v = _mm256_add_ps(v, *t);
            }
            let mut t = hsum(v);
            for jj in body..k {
                t += x[i * ks + jj] * w[jj].to_f32();
            }
            acc[i] = t;
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `x` holds `m` rows of `k` floats `ks` apart, `w` holds
    /// `k` values, `1 <= m <= MAX_ROWS`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots(
        x: &[f32],
        m: usize,
        ks: usize,
        k: usize,
        w: &[bf16],
        acc: &mut [f32; MAX_ROWS],
    ) {
        match m {
            1 => dots_n::<1, 4>(x, ks, k, w, acc),
            2 => dots_n::<2, 2>(x, ks, k, w, acc),
            3 => dots_n::<3, 1>(x, ks, k, w, acc),
            4 => dots_n::<4, 1>(x, ks, k, w, acc),
            5 => dots_n::<5, 1>(x, ks, k, w, acc),
            6 => dots_n::<6, 1>(x, ks, k, w, acc),
            7 => dots_n::<7, 1>(x, ks, k, w, acc),
            _ => dots_n::<8, 1>(x, ks, k, w, acc),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MAX_ROWS, PREFETCH_AHEAD};
    use half::bf16;
    use std::arch::x86_64::*;

    /// Lanes `0..n` set (n ≤ 16).
    #[inline(always)]
    fn mask16(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// `M` rows of `x`, `U` independent accumulators per row; the tail is a masked load, so
    /// there is no scalar remainder.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL; `x` holds `M` rows of `k` floats `ks` apart, `w` holds `k` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn dots_n<const M: usize, const U: usize>(
        x: &[f32],
        ks: usize,
        k: usize,
        w: &[bf16],
        acc: &mut [f32; MAX_ROWS],
    ) {
        let mut sums = [[_mm512_setzero_ps(); U]; M];
        let wp = w.as_ptr() as *const u16;
        let xp = x.as_ptr();
        let step = 16 * U;
        let body = k / step * step;
        let mut j = 0;
        while j < body {
            for u in 0..U {
                let raw = _mm256_loadu_si256(wp.add(j + 16 * u) as *const __m256i);
                let wv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
                for (i, s) in sums.iter_mut().enumerate() {
                    let xv = _mm512_loadu_ps(xp.add(i * ks + j + 16 * u));
                    s[u] = _mm512_fmadd_ps(xv, wv, s[u]);
                }
            }
            j += step;
        }
        while j < k {
            let mk = mask16((k - j).min(16));
            let raw = _mm256_maskz_loadu_epi16(mk, wp.add(j) as *const i16);
            let wv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
            for (i, s) in sums.iter_mut().enumerate() {
                let xv = _mm512_maskz_loadu_ps(mk, xp.add(i * ks + j));
                s[0] = _mm512_fmadd_ps(xv, wv, s[0]);
            }
            j += 16;
        }
        for (i, s) in sums.iter().enumerate() {
            let mut v = s[0];
            for t in &s[1..] {
                v = _mm512_add_ps(v, *t);
            }
            acc[i] = _mm512_reduce_add_ps(v);
        }
    }

    /// # Safety
    /// AVX-512 F/BW/VL; `x` holds `m` rows of `k` floats `ks` apart, `w` holds `k`
    /// values, `1 <= m <= MAX_ROWS`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dots(
        x: &[f32],
        m: usize,
        ks: usize,
        k: usize,
        w: &[bf16],
        acc: &mut [f32; MAX_ROWS],
    ) {
        match m {
            1 => dots_n::<1, 4>(x, ks, k, w, acc),
            2 => dots_n::<2, 2>(x, ks, k, w, acc),
            3 => dots_n::<3, 2>(x, ks, k, w, acc),
            4 => dots_n::<4, 1>(x, ks, k, w, acc),
            5 => dots_n::<5, 1>(x, ks, k, w, acc),
            6 => dots_n::<6, 1>(x, ks, k, w, acc),
            7 => dots_n::<7, 1>(x, ks, k, w, acc),
            _ => dots_n::<8, 1>(x, ks, k, w, acc),
        }
    }

    #[inline(always)]
    unsafe fn widen(raw: __m256i) -> __m512 {
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16))
    }

    /// Two weight rows per pass: each `x` load feeds two FMAs. Past batch 2 the loads of `x`,
    /// not the FMAs, bound the one-row kernel (Zen 4 loads one 512-bit vector a cycle).
    ///
    /// # Safety
    /// AVX-512 F/BW/VL; `x` holds `M` rows of `k` floats `ks` apart, `w0`, `w1` hold `k`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn dots_pair_n<const M: usize>(
        x: &[f32],
        ks: usize,
        k: usize,
        w: [&[bf16]; 2],
        acc: [&mut [f32; MAX_ROWS]; 2],
    ) {
        let mut s0 = [_mm512_setzero_ps(); M];
        let mut s1 = [_mm512_setzero_ps(); M];
        let (p0, p1) = (w[0].as_ptr() as *const u16, w[1].as_ptr() as *const u16);
        let xp = x.as_ptr();
        let body = k / 16 * 16;
        let mut j = 0;
        while j < body {
            // Never dereferenced: a prefetch past the weights is dropped, not a fault.
            _mm_prefetch::<_MM_HINT_T0>(p0.wrapping_add(j + PREFETCH_AHEAD) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(p1.wrapping_add(j + PREFETCH_AHEAD) as *const i8);
            let a = widen(_mm256_loadu_si256(p0.add(j) as *const __m256i));
            let b = widen(_mm256_loadu_si256(p1.add(j) as *const __m256i));
            for i in 0..M {
                let xv = _mm512_loadu_ps(xp.add(i * ks + j));
                s0[i] = _mm512_fmadd_ps(xv, a, s0[i]);
                s1[i] = _mm512_fmadd_ps(xv, b, s1[i]);
            }
            j += 16;
        }
        if j < k {
            let mk = mask16(k - j);
            let a = widen(_mm256_maskz_loadu_epi16(mk, p0.add(j) as *const i16));
            let b = widen(_mm256_maskz_loadu_epi16(mk, p1.add(j) as *const i16));
            for i in 0..M {
                let xv = _mm512_maskz_loadu_ps(mk, xp.add(i * ks + j));
                s0[i] = _mm512_fmadd_ps(xv, a, s0[i]);
                s1[i] = _mm512_fmadd_ps(xv, b, s1[i]);
            }
        }
        let [a0, a1] = acc;
        for i in 0..M {
            a0[i] = _mm512_reduce_add_ps(s0[i]);
            a1[i] = _mm512_reduce_add_ps(s1[i]);
        }
    }

    /// # Safety
    /// As [`dots_pair_n`], with `1 <= m <= MAX_ROWS`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn dots_pair(
        x: &[f32],
        m: usize,
        ks: usize,
        k: usize,
        w: [&[bf16]; 2],
        acc: [&mut [f32; MAX_ROWS]; 2],
    ) {
        match m {
            1 => dots_pair_n::<1>(x, ks, k, w, acc),
            2 => dots_pair_n::<2>(x, ks, k, w, acc),
            3 => dots_pair_n::<3>(x, ks, k, w, acc),
            4 => dots_pair_n::<4>(x, ks, k, w, acc),
            5 => dots_pair_n::<5>(x, ks, k, w, acc),
            6 => dots_pair_n::<6>(x, ks, k, w, acc),
            7 => dots_pair_n::<7>(x, ks, k, w, acc),
            _ => dots_pair_n::<8>(x, ks, k, w, acc),
        }
    }

    /// `x` rows split into BF16 pairs `hi + lo` (≈ 16 mantissa bits together, so the
    /// products keep F32-like accuracy): `out` is `[m, 2, kp]`, each row zero-padded to `kp`
    /// (a multiple of 32) values.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL + AVX512_BF16; `x` holds `m * k` floats, `out` holds `2 * m * kp` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn split_bf16(x: &[f32], m: usize, k: usize, kp: usize, out: &mut [u16]) {
        for i in 0..m {
            let mut j = 0;
            while j < kp {
                let n = k.saturating_sub(j).min(16);
                let v = _mm512_maskz_loadu_ps(mask16(n), x.as_ptr().add(i * k + j));
                let hi: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                let back = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
                let lo: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_sub_ps(v, back)));
                let p = out.as_mut_ptr().add(2 * i * kp + j);
                _mm256_storeu_si256(p as *mut __m256i, hi);
                _mm256_storeu_si256(p.add(kp) as *mut __m256i, lo);
                j += 16;
            }
        }
    }

    /// Dot products by `vdpbf16ps` (two BF16 products summed into each F32 lane) of the split
    /// rows `xb` (`[M, 2, kp]` from [`split_bf16`]) with one BF16 weight row, `U` cache lines
    /// of weights per pass.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL + AVX512_BF16; `xb` holds `2 * M * kp` values, `w` holds `k ≤ kp`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn dots_bf16_n<const M: usize, const U: usize>(
        xb: &[u16],
        kp: usize,
        k: usize,
        w: &[bf16],
        acc: &mut [f32; MAX_ROWS],
    ) {
        // At batch 1 the loop is bound by how many weight lines the core has in flight, and
        // that is the reorder window divided by the instructions per line: an unmasked body
        // over `U` lines, with separate chains for the two halves, issues about 6 per line
        // (one line a pass with its mask took about 12).
        let mut sums = [[_mm512_setzero_ps(); U]; M];
        let mut lows = [[_mm512_setzero_ps(); U]; M];
        let wp = w.as_ptr() as *const i16;
        let xp = xb.as_ptr();
        let step = 32 * U;
        let body = k / step * step;
        let mut j = 0;
        while j < body {
            for u in 0..U {
                if M > 1 {
                    // Never dereferenced: a prefetch past the weights is dropped, not a fault.
                    _mm_prefetch::<_MM_HINT_T0>(
                        wp.wrapping_add(j + 32 * u + PREFETCH_AHEAD) as *const i8
                    );
                }
                let wv: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(wp.add(j + 32 * u) as *const _));
                for i in 0..M {
                    let hi = xp.add(2 * i * kp + j + 32 * u);
                    let xh: __m512bh = std::mem::transmute(_mm512_loadu_si512(hi as *const _));
                    let xl: __m512bh =
                        std::mem::transmute(_mm512_loadu_si512(hi.add(kp) as *const _));
                    sums[i][u] = _mm512_dpbf16_ps(sums[i][u], xh, wv);
                    lows[i][u] = _mm512_dpbf16_ps(lows[i][u], xl, wv);
                }
            }
            j += step;
        }
        while j < k {
            let n = (k - j).min(32);
            let mk: __mmask32 = if n == 32 { !0 } else { (1u32 << n) - 1 };
            let wv: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi16(mk, wp.add(j)));
            for i in 0..M {
                // `xb` is zero-padded to kp, so whole lines of it are readable.
                let hi = xp.add(2 * i * kp + j);
                let xh: __m512bh = std::mem::transmute(_mm512_loadu_si512(hi as *const _));
                let xl: __m512bh = std::mem::transmute(_mm512_loadu_si512(hi.add(kp) as *const _));
                sums[i][0] = _mm512_dpbf16_ps(sums[i][0], xh, wv);
                lows[i][0] = _mm512_dpbf16_ps(lows[i][0], xl, wv);
            }
            j += 32;
        }
        for (i, a) in acc.iter_mut().enumerate().take(M) {
            let mut v = _mm512_add_ps(sums[i][0], lows[i][0]);
            for u in 1..U {
                v = _mm512_add_ps(v, _mm512_add_ps(sums[i][u], lows[i][u]));
            }
            *a = _mm512_reduce_add_ps(v);
        }
    }

    /// # Safety
    /// As [`dots_bf16_n`], with `1 <= m <= BF16_DOT_MAX_ROWS` (what [`super::kernel_for`]
    /// sends here).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn dots_bf16(
        xb: &[u16],
        m: usize,
        kp: usize,
        k: usize,
        w: &[bf16],
        acc: &mut [f32; MAX_ROWS],
    ) {
        match m {
            1 => dots_bf16_n::<1, 4>(xb, kp, k, w, acc),
            2 => dots_bf16_n::<2, 2>(xb, kp, k, w, acc),
            3 => dots_bf16_n::<3, 2>(xb, kp, k, w, acc),
            _ => dots_bf16_n::<4, 2>(xb, kp, k, w, acc),
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::MAX_ROWS;
    use half::bf16;
    use std::arch::aarch64::*;

    /// # Safety
    /// NEON; `x` holds `M` rows of `k` floats `ks` apart, `w` holds `k` values.
    #[target_feature(enable = "neon")]
    unsafe fn dots_n<const M: usize, const U: usize>(
        x: &[f32],
        ks: usize,
        k: usize,
        w: &[bf16],
        acc: &mut [f32; MAX_ROWS],
    ) {
        let mut sums = [[vdupq_n_f32(0.0); U]; M];
        let wp = w.as_ptr() as *const u16;
        let xp = x.as_ptr();
        let step = 4 * U;
        let body = k / step * step;
        let mut j = 0;
        while j < body {
            for u in 0..U {
                // 4 BF16 → 4 F32: widen to 32 bits shifted into the high half.
                let wv = vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(wp.add(j + 4 * u))));
                for (i, s) in sums.iter_mut().enumerate() {
                    let xv = vld1q_f32(xp.add(i * ks + j + 4 * u));
                    s[u] = vfmaq_f32(s[u], xv, wv);
                }
            }
            j += step;
        }
        for (i, s) in sums.iter().enumerate() {
            let mut v = s[0];
            for t in &s[1..] {
                v = vaddq_f32(v, *t);
            }
            let mut t = vaddvq_f32(v);
            for jj in body..k {
                t += x[i * ks + jj] * w[jj].to_f32();
            }
            acc[i] = t;
        }
    }

    /// # Safety
    /// NEON; `x` holds `m` rows of `k` floats `ks` apart, `w` holds `k`
    /// values, `1 <= m <= MAX_ROWS`.
    #[target_feature(enable = "neon")]
    pub unsafe fn dots(
        x: &[f32],
        m: usize,
        ks: usize,
        k: usize,
        w: &[bf16],
        acc: &mut [f32; MAX_ROWS],
    ) {
        match m {
            1 => dots_n::<1, 4>(x, ks, k, w, acc),
            2 => dots_n::<2, 2>(x, ks, k, w, acc),
            3 => dots_n::<3, 2>(x, ks, k, w, acc),
            4 => dots_n::<4, 1>(x, ks, k, w, acc),
            5 => dots_n::<5, 1>(x, ks, k, w, acc),
            6 => dots_n::<6, 1>(x, ks, k, w, acc),
            7 => dots_n::<7, 1>(x, ks, k, w, acc),
            _ => dots_n::<8, 1>(x, ks, k, w, acc),
        }
    }
}

/// The per-weight-row kernel of one level, with its prepared inputs.
type DotsFn = fn(&[f32], usize, usize, usize, &[bf16], &mut [f32; MAX_ROWS]);

type PairFn = fn(&[f32], usize, usize, usize, [&[bf16]; 2], [&mut [f32; MAX_ROWS]; 2]);

enum Kernel<'a> {
    /// With `x`'s row stride.
    F32(DotsFn, usize),
    /// Two weight rows per call (and the one-row kernel for an odd last row), with `x`'s
    /// row stride.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Pair(PairFn, DotsFn, usize),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Bf16 { xb: &'a [u16], kp: usize },
}

/// Which kernel [`gemv_bf16_at`] runs for `level` and `m` rows (the level itself, or the
/// AVX-512 F32 kernel where AVX512_BF16 is not worth it).
pub fn kernel_for(level: Level, m: usize) -> Level {
    match level {
        Level::Avx512Bf16 if m > BF16_DOT_MAX_ROWS => Level::Avx512,
        l => l,
    }
}

/// Which kernel [`gemv_bf16`] uses on this CPU at batch 1.
pub fn kernel_name() -> &'static str {
    kernel_for(simd::level(), 1).name()
}

fn f32_kernel(level: Level) -> DotsFn {
    match level {
        // SAFETY (each arm): the level is only ever `supported()` ones (checked by the caller),
        // and `run` passes slices of the documented sizes with 1 <= m <= MAX_ROWS.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => |x, m, ks, k, w, acc| unsafe { avx2::dots(x, m, ks, k, w, acc) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Avx512Bf16 => {
            |x, m, ks, k, w, acc| unsafe { avx512::dots(x, m, ks, k, w, acc) }
        }
        #[cfg(target_arch = "aarch64")]
        Level::Neon => |x, m, ks, k, w, acc| unsafe { neon::dots(x, m, ks, k, w, acc) },
        _ => dots_scalar,
    }
}

fn run(kernel: Kernel<'_>, x: &[f32], m: usize, k: usize, w: &[bf16], n: usize, out: &mut [f32]) {
    let dst = OutPtr(out.as_mut_ptr());
    (0..n.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .for_each(|t| {
            let mut acc = [0.0f32; MAX_ROWS];
            let mut acc2 = [0.0f32; MAX_ROWS];
            let end = ((t + 1) * ROWS_PER_TASK).min(n);
            let mut j = t * ROWS_PER_TASK;
            while j < end {
                let wr = &w[j * k..(j + 1) * k];
                let rows = match kernel {
                    Kernel::Pair(f, _, ks) if j + 1 < end => {
                        let wr2 = &w[(j + 1) * k..(j + 2) * k];
                        f(x, m, ks, k, [wr, wr2], [&mut acc, &mut acc2]);
                        2
                    }
                    _ => 1,
                };
                match kernel {
                    _ if rows == 2 => {}
                    Kernel::Pair(_, f, ks) => f(x, m, ks, k, wr, &mut acc),
                    Kernel::F32(f, ks) => f(x, m, ks, k, wr, &mut acc),
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: built only when AVX512_BF16 is supported and m ≤
                    // BF16_DOT_MAX_ROWS (`kernel_for`); `xb` is `[m, kp]` with kp ≥ k, and
                    // `wr` holds k values.
                    Kernel::Bf16 { xb, kp } => unsafe {
                        avx512::dots_bf16(xb, m, kp, k, wr, &mut acc)
                    },
                    #[cfg(not(target_arch = "x86_64"))]
                    Kernel::Bf16 { .. } => dots_scalar(x, m, k, k, wr, &mut acc),
                }
                for (r, a) in [&acc, &acc2].into_iter().enumerate().take(rows) {
                    for (i, a) in a.iter().enumerate().take(m) {
                        // SAFETY: column j + r belongs to this task alone; i < m, j + r < n.
                        unsafe { *dst.get().add(i * n + j + r) = *a };
                    }
                }
                j += rows;
            }
        });
}

thread_local! {
    /// `x` re-laid out for the kernels (split to BF16 halves, or padded rows), kept per thread
    /// so a decode step allocates nothing.
    static XB: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    static XS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` with the kernels of `level` (m ≤ [`MAX_ROWS`]); a level
/// this CPU lacks falls back to scalar.
pub fn gemv_bf16_at(
    level: Level,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    out: &mut [f32],
) {
    assert!(
        m <= MAX_ROWS && x.len() == m * k && w.len() == n * k && out.len() == m * n,
        "gemv_bf16: sizes"
    );
    // No rows (a step where nothing samples) or no columns: nothing to compute.
    if m == 0 || n == 0 {
        return;
    }
    let level = if level.supported() {
        kernel_for(level, m)
    } else {
        Level::Scalar
    };
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512Bf16 {
        // The extra 32 values keep the 2·m rows off one cache set (see `padded_stride`).
        let kp = k.div_ceil(32) * 32 + 32;
        return with_scratch(&XB, |xb| {
            xb.clear();
            xb.resize(2 * m * kp, 0);
            // SAFETY: AVX512_BF16 is supported (checked above); `x` is `[m, k]`, `xb`
            // `[m, 2, kp]`.
            unsafe { avx512::split_bf16(x, m, k, kp, xb) };
            run(Kernel::Bf16 { xb, kp }, x, m, k, w, n, out)
        });
    }
    if m == 1 {
        return run(Kernel::F32(f32_kernel(level), k), x, m, k, w, n, out);
    }
    let ks = padded_stride(k);
    with_scratch(&XS, |xs| {
        xs.clear();
        xs.resize(m * ks, 0.0);
        for (d, s) in xs.chunks_exact_mut(ks).zip(x.chunks_exact(k)) {
            d[..k].copy_from_slice(s);
        }
        #[cfg(target_arch = "x86_64")]
        if matches!(level, Level::Avx512 | Level::Avx512Bf16) {
            // SAFETY: the level is supported (checked above); `run` passes `x` as `[m, ks]`
            // and two weight rows of k values.
            let pair: PairFn =
                |x, m, ks, k, w, acc| unsafe { avx512::dots_pair(x, m, ks, k, w, acc) };
            return run(
                Kernel::Pair(pair, f32_kernel(level), ks),
                xs,
                m,
                k,
                w,
                n,
                out,
            );
        }
        run(Kernel::F32(f32_kernel(level), ks), xs, m, k, w, n, out)
    })
}

/// Row stride for a copy of `x`: rows a multiple of 4 KiB apart (k = 1024, 2048, …) all map
/// to the same L1 sets, and with the weight stream that is more lines than the cache's ways,
/// so batch 8 ran 3–4× slower than batch 1. One extra cache line per row spreads them.
fn padded_stride(k: usize) -> usize {
    k.div_ceil(16) * 16 + 16
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` with the level in force ([`simd::level`]).
pub fn gemv_bf16(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize, out: &mut [f32]) {
    gemv_bf16_at(simd::level(), x, m, k, w, n, out)
}

/// The same through the scalar path (the reference the SIMD paths are tested against).
pub fn gemv_bf16_scalar(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize, out: &mut [f32]) {
    gemv_bf16_at(Level::Scalar, x, m, k, w, n, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(level: Level, tol_rel: f32) {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 7, 3),
            (2, 9, 17),
            (3, 33, 31),
            (8, 65, 40),
            (5, 1023, 129),
            (1, 8, 8),
            (1, 129, 33),
            (1, 1000, 9),
            (1, 256, 5),
            (2, 200, 7),
            (3, 130, 11),
            (2, 31, 5),
            (4, 97, 19),
            (7, 1000, 23),
            (8, 1024, 16),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let w: Vec<bf16> = (0..n * k)
                .map(|i| bf16::from_f32(((i * 13 % 97) as f32 - 48.0) / 31.0))
                .collect();
            let mut a = vec![0.0; m * n];
            let mut b = vec![0.0; m * n];
            gemv_bf16_at(level, &x, m, k, &w, n, &mut a);
            gemv_bf16_scalar(&x, m, k, &w, n, &mut b);
            // Relative to the sum of |products|, the scale of the rounding error.
            for i in 0..m {
                for j in 0..n {
                    let mag: f32 = (0..k)
                        .map(|l| (x[i * k + l] * w[j * k + l].to_f32()).abs())
                        .sum();
                    let (p, q) = (a[i * n + j], b[i * n + j]);
                    assert!(
                        (p - q).abs() <= tol_rel * (1.0 + mag),
                        "{}: {m}x{k}x{n} [{i},{j}]: {p} vs {q}",
                        level.name()
                    );
                }
            }
        }
    }

    #[test]
    fn every_supported_level_matches_scalar_on_odd_sizes() {
        for level in simd::supported_levels() {
            // AVX512_BF16's hi + lo split keeps about 16 bits of each x.
            let tol = if level == Level::Avx512Bf16 {
                2e-5
            } else {
                1e-5
            };
            check(level, tol);
        }
    }

    #[test]
    fn empty_batches_are_a_no_op() {
        let w = [bf16::ONE; 6];
        let mut out: [f32; 0] = [];
        for level in Level::ALL {
            gemv_bf16_at(level, &[], 0, 3, &w, 2, &mut out);
            gemv_bf16_at(level, &[1.0; 3], 1, 3, &[], 0, &mut out);
        }
    }

    #[test]
    fn unsupported_level_falls_back_to_scalar() {
        let x = [1.0f32, 2.0, 3.0];
        let w = [bf16::from_f32(0.5); 3];
        for level in Level::ALL {
            let mut out = [0.0f32];
            gemv_bf16_at(level, &x, 1, 3, &w, 1, &mut out);
            assert_eq!(out[0], 3.0, "{}", level.name());
        }
    }
}
