//! F32 vector kernels for the element-wise ops and attention: axpy, scale, softmax's
//! exp-and-sum, sum of squares (RMSNorm), scaled multiply, SiLU·mul, the rotary pair, and
//! (in [`attn`]) attention's grouped scores and weighted sum over paged F32 or BF16 K/V rows.
//!
//! Each kernel is written once, generic over a tiny [`Simd`] trait, and instantiated per ISA
//! inside a `#[target_feature]` function so the intrinsics inline; [`kernels`] hands out a
//! table of safe function pointers for a [`Level`], resolved once per op. The scalar table is
//! the reference every SIMD table is tested against on odd sizes. `exp` is Cephes' `expf`
//! polynomial (relative error ≈ 2·10⁻⁷ over the clamped range).

use half::bf16;

use super::simd::Level;

mod attn;
pub use attn::{AttnKernels, KvElem, ScoresFn, WeightedSumFn};

/// `(a, b, cos, sin)`: rotates the pairs `(a[i], b[i])` in place.
pub type RopeFn = fn(&mut [f32], &mut [f32], &[f32], &[f32]);

/// Safe entry points of one ISA.
pub struct Kernels {
    pub level: Level,
    /// y += alpha · x
    pub axpy: fn(f32, &[f32], &mut [f32]),
    /// x *= alpha
    pub scale: fn(f32, &mut [f32]),
    /// x = exp(x − max); returns Σ x.
    pub exp_sub_sum: fn(&mut [f32], f32) -> f32,
    /// Σ x²
    pub sum_sq: fn(&[f32]) -> f32,
    /// out = x · r · w
    pub mul_scale: fn(&[f32], f32, &[f32], &mut [f32]),
    /// out = silu(g) · u
    pub silu_mul: fn(&[f32], &[f32], &mut [f32]),
    /// (a, b) = (a·cos − b·sin, b·cos + a·sin)
    pub rope: RopeFn,
    /// Attention over an F32 KV cache.
    pub attn_f32: AttnKernels<f32>,
    /// Attention over a BF16 KV cache (rows widened on load, F32 accumulation).
    pub attn_bf16: AttnKernels<bf16>,
}

/// The kernel table for `level`; a level this CPU lacks gets the scalar table.
pub fn kernels(level: Level) -> &'static Kernels {
    if !level.supported() {
        return &scalar::KERNELS;
    }
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => &avx2::KERNELS,
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Avx512Bf16 => &avx512::KERNELS,
        #[cfg(target_arch = "aarch64")]
        Level::Neon => &neon::KERNELS,
        _ => &scalar::KERNELS,
    }
}

/// The scalar reference kernels.
mod scalar {
    use super::{AttnKernels, Kernels};
    use crate::cpu::simd::Level;
    use half::bf16;

    fn silu(x: f32) -> f32 {
        x / (1.0 + (-x).exp())
    }

    pub static KERNELS: Kernels = Kernels {
        level: Level::Scalar,
        axpy: |alpha, x, y| y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x),
        scale: |alpha, x| x.iter_mut().for_each(|v| *v *= alpha),
        exp_sub_sum: |x, max| {
            let mut sum = 0.0;
            for v in x.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            sum
        },
        sum_sq: |x| x.iter().map(|v| v * v).sum(),
        mul_scale: |x, r, w, out| {
            for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
                *o = v * r * w;
            }
        },
        silu_mul: |g, u, out| {
            for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
                *o = silu(*g) * u;
            }
        },
        rope: |a, b, cos, sin| {
            for (((a, b), c), s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
                let (x1, x2) = (*a, *b);
                *a = x1 * c - x2 * s;
                *b = x2 * c + x1 * s;
            }
        },
        attn_f32: AttnKernels {
            scores: super::attn::scores_scalar::<f32>,
            weighted_sum: super::attn::weighted_sum_scalar::<f32>,
        },
        attn_bf16: AttnKernels {
            scores: super::attn::scores_scalar::<bf16>,
            weighted_sum: super::attn::weighted_sum_scalar::<bf16>,
        },
    };
}

/// The operations the generic kernels need. Every method is unsafe: the ISA must be present
/// and pointers must be valid for `LANES` floats.
pub(crate) trait Simd {
    type V: Copy;
    const LANES: usize;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    /// `LANES` BF16 values widened to F32 (exact: a BF16 is the top half of an F32).
    unsafe fn load_bf16(p: *const bf16) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// a·b + c
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn hsum(v: Self::V) -> f32;
    /// Round to nearest integer (as a float).
    unsafe fn round(v: Self::V) -> Self::V;
    /// 2ⁿ for integral `n` in [−126, 127].
    unsafe fn pow2(n: Self::V) -> Self::V;
}

/// Up to `LANES` floats of a tail, padded with `fill`, as one full vector's worth.
#[inline(always)]
fn tail_buf(src: &[f32], fill: f32) -> [f32; 16] {
    let mut b = [fill; 16];
    b[..src.len()].copy_from_slice(src);
    b
}

#[inline(always)]
unsafe fn exp_v<S: Simd>(x: S::V) -> S::V {
    let x = S::min(S::max(x, S::splat(-87.0)), S::splat(88.0));
    let n = S::round(S::mul(x, S::splat(std::f32::consts::LOG2_E)));
    let r = S::sub(x, S::mul(n, S::splat(0.693_359_4)));
    let r = S::sub(r, S::mul(n, S::splat(-2.121_944_4e-4)));
    let mut p = S::splat(1.987_569_1e-4);
    p = S::fma(p, r, S::splat(1.398_2e-3));
    p = S::fma(p, r, S::splat(8.333_452e-3));
    p = S::fma(p, r, S::splat(4.166_579_6e-2));
    p = S::fma(p, r, S::splat(1.666_666_5e-1));
    p = S::fma(p, r, S::splat(0.5));
    let p = S::add(S::fma(p, S::mul(r, r), r), S::splat(1.0));
    S::mul(p, S::pow2(n))
}

#[inline(always)]
unsafe fn dot_g<S: Simd>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let l = S::LANES;
    let (mut s0, mut s1) = (S::splat(0.0), S::splat(0.0));
    let mut i = 0;
    while i + 2 * l <= n {
        s0 = S::fma(S::load(a.as_ptr().add(i)), S::load(b.as_ptr().add(i)), s0);
        s1 = S::fma(
            S::load(a.as_ptr().add(i + l)),
            S::load(b.as_ptr().add(i + l)),
            s1,
        );
        i += 2 * l;
    }
    while i + l <= n {
        s0 = S::fma(S::load(a.as_ptr().add(i)), S::load(b.as_ptr().add(i)), s0);
        i += l;
    }
    if i < n {
        let (ta, tb) = (tail_buf(&a[i..n], 0.0), tail_buf(&b[i..n], 0.0));
        s1 = S::fma(S::load(ta.as_ptr()), S::load(tb.as_ptr()), s1);
    }
    S::hsum(S::add(s0, s1))
}

/// `out = f(a, b)` element-wise over full vectors and a zero-padded tail. A macro, not a
/// closure: a closure's body would be compiled without the caller's target features, and its
/// intrinsics would not inline.
macro_rules! zip_map {
    ($S:ty, $a:expr, $b:expr, $out:expr, |$va:ident, $vb:ident| $body:expr) => {{
        let (a, b, out): (&[f32], &[f32], &mut [f32]) = ($a, $b, $out);
        let n = out.len().min(a.len()).min(b.len());
        let l = <$S>::LANES;
        let mut i = 0;
        while i + l <= n {
            let $va = <$S>::load(a.as_ptr().add(i));
            let $vb = <$S>::load(b.as_ptr().add(i));
            <$S>::store(out.as_mut_ptr().add(i), $body);
            i += l;
        }
        if i < n {
            let (ta, tb) = (tail_buf(&a[i..n], 0.0), tail_buf(&b[i..n], 0.0));
            let $va = <$S>::load(ta.as_ptr());
            let $vb = <$S>::load(tb.as_ptr());
            let mut t = [0.0f32; 16];
            <$S>::store(t.as_mut_ptr(), $body);
            out[i..n].copy_from_slice(&t[..n - i]);
        }
    }};
}

#[inline(always)]
unsafe fn axpy_g<S: Simd>(alpha: f32, x: &[f32], y: &mut [f32]) {
    let a = S::splat(alpha);
    let n = x.len().min(y.len());
    let l = S::LANES;
    let mut i = 0;
    while i + l <= n {
        let p = y.as_mut_ptr().add(i);
        S::store(p, S::fma(a, S::load(x.as_ptr().add(i)), S::load(p)));
        i += l;
    }
    for j in i..n {
        y[j] += alpha * x[j];
    }
}

#[inline(always)]
unsafe fn scale_g<S: Simd>(alpha: f32, x: &mut [f32]) {
    let a = S::splat(alpha);
    let (n, l) = (x.len(), S::LANES);
    let mut i = 0;
    while i + l <= n {
        let p = x.as_mut_ptr().add(i);
        S::store(p, S::mul(S::load(p), a));
        i += l;
    }
    for v in &mut x[i..] {
        *v *= alpha;
    }
}

#[inline(always)]
unsafe fn exp_sub_sum_g<S: Simd>(x: &mut [f32], max: f32) -> f32 {
    let m = S::splat(max);
    let (n, l) = (x.len(), S::LANES);
    let mut sum = S::splat(0.0);
    let mut i = 0;
    while i + l <= n {
        let p = x.as_mut_ptr().add(i);
        let e = exp_v::<S>(S::sub(S::load(p), m));
        S::store(p, e);
        sum = S::add(sum, e);
        i += l;
    }
    let mut total = S::hsum(sum);
    if i < n {
        // Padding with `max` would add exp(0) = 1 per pad lane: sum only the real ones.
        let mut t = tail_buf(&x[i..], max);
        S::store(t.as_mut_ptr(), exp_v::<S>(S::sub(S::load(t.as_ptr()), m)));
        x[i..].copy_from_slice(&t[..n - i]);
        total += t[..n - i].iter().sum::<f32>();
    }
    total
}

#[inline(always)]
unsafe fn sum_sq_g<S: Simd>(x: &[f32]) -> f32 {
    dot_g::<S>(x, x)
}

#[inline(always)]
unsafe fn mul_scale_g<S: Simd>(x: &[f32], r: f32, w: &[f32], out: &mut [f32]) {
    let rv = S::splat(r);
    zip_map!(S, x, w, out, |a, b| S::mul(S::mul(a, rv), b));
}

#[inline(always)]
unsafe fn silu_mul_g<S: Simd>(g: &[f32], u: &[f32], out: &mut [f32]) {
    let one = S::splat(1.0);
    let zero = S::splat(0.0);
    zip_map!(S, g, u, out, |g, u| S::mul(
        S::div(g, S::add(one, exp_v::<S>(S::sub(zero, g)))),
        u
    ));
}

#[inline(always)]
unsafe fn rope_g<S: Simd>(a: &mut [f32], b: &mut [f32], cos: &[f32], sin: &[f32]) {
    let n = a.len().min(b.len()).min(cos.len()).min(sin.len());
    let l = S::LANES;
    let mut i = 0;
    while i + l <= n {
        let (pa, pb) = (a.as_mut_ptr().add(i), b.as_mut_ptr().add(i));
        let (x1, x2) = (S::load(pa), S::load(pb));
        let (c, s) = (S::load(cos.as_ptr().add(i)), S::load(sin.as_ptr().add(i)));
        S::store(pa, S::sub(S::mul(x1, c), S::mul(x2, s)));
        S::store(pb, S::add(S::mul(x2, c), S::mul(x1, s)));
        i += l;
    }
    for j in i..n {
        let (x1, x2) = (a[j], b[j]);
        a[j] = x1 * cos[j] - x2 * sin[j];
        b[j] = x2 * cos[j] + x1 * sin[j];
    }
}

/// The per-ISA `#[target_feature]` entry points and their safe table.
macro_rules! isa_kernels {
    ($feat:literal, $S:ty, $level:expr) => {
        #[target_feature(enable = $feat)]
        unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
            super::axpy_g::<$S>(alpha, x, y)
        }
        #[target_feature(enable = $feat)]
        unsafe fn scale(alpha: f32, x: &mut [f32]) {
            super::scale_g::<$S>(alpha, x)
        }
        #[target_feature(enable = $feat)]
        unsafe fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
            super::exp_sub_sum_g::<$S>(x, max)
        }
        #[target_feature(enable = $feat)]
        unsafe fn sum_sq(x: &[f32]) -> f32 {
            super::sum_sq_g::<$S>(x)
        }
        #[target_feature(enable = $feat)]
        unsafe fn mul_scale(x: &[f32], r: f32, w: &[f32], out: &mut [f32]) {
            super::mul_scale_g::<$S>(x, r, w, out)
        }
        #[target_feature(enable = $feat)]
        unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
            super::silu_mul_g::<$S>(g, u, out)
        }
        #[target_feature(enable = $feat)]
        unsafe fn rope(a: &mut [f32], b: &mut [f32], cos: &[f32], sin: &[f32]) {
            super::rope_g::<$S>(a, b, cos, sin)
        }
        #[target_feature(enable = $feat)]
        unsafe fn scores<E: super::attn::KvLoad>(
            q: &[f32],
            k: &[E],
            rows: &[usize],
            d: usize,
            scale: f32,
            out: &mut [f32],
        ) {
            super::attn::scores_g::<$S, E>(q, k, rows, d, scale, out)
        }
        #[target_feature(enable = $feat)]
        unsafe fn weighted_sum<E: super::attn::KvLoad>(
            p: &[f32],
            v: &[E],
            rows: &[usize],
            d: usize,
            out: &mut [f32],
        ) {
            super::attn::weighted_sum_g::<$S, E>(p, v, rows, d, out)
        }

        // SAFETY (every entry): `kernels()` hands this table out only when the level is
        // supported by the CPU, and the kernels bound every access by the slices' lengths.
        pub static KERNELS: super::Kernels = super::Kernels {
            level: $level,
            axpy: |alpha, x, y| unsafe { axpy(alpha, x, y) },
            scale: |alpha, x| unsafe { scale(alpha, x) },
            exp_sub_sum: |x, max| unsafe { exp_sub_sum(x, max) },
            sum_sq: |x| unsafe { sum_sq(x) },
            mul_scale: |x, r, w, out| unsafe { mul_scale(x, r, w, out) },
            silu_mul: |g, u, out| unsafe { silu_mul(g, u, out) },
            rope: |a, b, c, s| unsafe { rope(a, b, c, s) },
            attn_f32: super::AttnKernels {
                scores: |q, k, rows, d, scale, out| unsafe { scores(q, k, rows, d, scale, out) },
                weighted_sum: |p, v, rows, d, out| unsafe { weighted_sum(p, v, rows, d, out) },
            },
            attn_bf16: super::AttnKernels {
                scores: |q, k, rows, d, scale, out| unsafe { scores(q, k, rows, d, scale, out) },
                weighted_sum: |p, v, rows, d, out| unsafe { weighted_sum(p, v, rows, d, out) },
            },
        };
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::cpu::simd::Level;
    use std::arch::x86_64::*;

    pub struct Avx2;

    impl super::Simd for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const half::bf16) -> __m256 {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            _mm256_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            _mm256_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m256, b: __m256) -> __m256 {
            _mm256_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            let q = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
            let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
            let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
            _mm_cvtss_f32(q)
        }
        #[inline(always)]
        unsafe fn round(v: __m256) -> __m256 {
            _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
        }
        #[inline(always)]
        unsafe fn pow2(n: __m256) -> __m256 {
            let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
            _mm256_castsi256_ps(_mm256_slli_epi32(e, 23))
        }
    }

    isa_kernels!("avx2,fma", Avx2, Level::Avx2);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::cpu::simd::Level;
    use std::arch::x86_64::*;

    pub struct Avx512;

    impl super::Simd for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const half::bf16) -> __m512 {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            _mm512_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            _mm512_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m512, b: __m512) -> __m512 {
            _mm512_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn hsum(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        #[inline(always)]
        unsafe fn round(v: __m512) -> __m512 {
            _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
        }
        #[inline(always)]
        unsafe fn pow2(n: __m512) -> __m512 {
            let e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e))
        }
    }

    isa_kernels!("avx512f,avx512bw,avx512vl", Avx512, Level::Avx512);
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use crate::cpu::simd::Level;
    use std::arch::aarch64::*;

    pub struct Neon;

    impl super::Simd for Neon {
        type V = float32x4_t;
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn splat(x: f32) -> float32x4_t {
            vdupq_n_f32(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> float32x4_t {
            vld1q_f32(p)
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const half::bf16) -> float32x4_t {
            vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p as *const u16)))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: float32x4_t) {
            vst1q_f32(p, v)
        }
        #[inline(always)]
        unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vaddq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vsubq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vmulq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vdivq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
            vfmaq_f32(c, a, b)
        }
        #[inline(always)]
        unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vmaxq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: float32x4_t, b: float32x4_t) -> float32x4_t {
            vminq_f32(a, b)
        }
        #[inline(always)]
        unsafe fn hsum(v: float32x4_t) -> f32 {
            vaddvq_f32(v)
        }
        #[inline(always)]
        unsafe fn round(v: float32x4_t) -> float32x4_t {
            vrndnq_f32(v)
        }
        #[inline(always)]
        unsafe fn pow2(n: float32x4_t) -> float32x4_t {
            let e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
            vreinterpretq_f32_s32(vshlq_n_s32::<23>(e))
        }
    }

    isa_kernels!("neon", Neon, Level::Neon);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::supported_levels;

    const SIZES: &[usize] = &[1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100, 127, 129, 1000];

    fn data(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) / 17.0)
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn every_supported_table_matches_scalar_on_odd_sizes() {
        let s = kernels(Level::Scalar);
        for level in supported_levels() {
            let k = kernels(level);
            assert_eq!(k.level, kernels_level(level));
            for &n in SIZES {
                let what = |op: &str| format!("{} {op} n={n}", level.name());
                let (a, b) = (data(n, 1), data(n, 5));
                let sq = (k.sum_sq)(&a) - (s.sum_sq)(&a);
                assert!(
                    sq.abs() <= 1e-5 * (1.0 + (s.sum_sq)(&a)),
                    "{}",
                    what("sum_sq")
                );

                let (mut y1, mut y2) = (b.clone(), b.clone());
                (k.axpy)(0.37, &a, &mut y1);
                (s.axpy)(0.37, &a, &mut y2);
                close(&y1, &y2, 1e-6, &what("axpy"));

                let (mut x1, mut x2) = (a.clone(), a.clone());
                (k.scale)(-1.5, &mut x1);
                (s.scale)(-1.5, &mut x2);
                close(&x1, &x2, 1e-6, &what("scale"));

                let max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let (mut e1, mut e2) = (a.clone(), a.clone());
                let (s1, s2) = ((k.exp_sub_sum)(&mut e1, max), (s.exp_sub_sum)(&mut e2, max));
                close(&e1, &e2, 1e-6, &what("exp"));
                close(&[s1], &[s2], 1e-5, &what("exp sum"));

                let (mut o1, mut o2) = (vec![0.0; n], vec![0.0; n]);
                (k.mul_scale)(&a, 0.3, &b, &mut o1);
                (s.mul_scale)(&a, 0.3, &b, &mut o2);
                close(&o1, &o2, 1e-6, &what("mul_scale"));

                // Gates far into both tails of the sigmoid too.
                let g: Vec<f32> = a.iter().map(|v| v * 9.0).collect();
                (k.silu_mul)(&g, &b, &mut o1);
                (s.silu_mul)(&g, &b, &mut o2);
                close(&o1, &o2, 2e-6, &what("silu_mul"));

                let (c, sn) = (data(n, 9), data(n, 13));
                let (mut a1, mut b1, mut a2, mut b2) = (a.clone(), b.clone(), a.clone(), b.clone());
                (k.rope)(&mut a1, &mut b1, &c, &sn);
                (s.rope)(&mut a2, &mut b2, &c, &sn);
                close(&a1, &a2, 1e-6, &what("rope a"));
                close(&b1, &b2, 1e-6, &what("rope b"));
            }
        }
    }

    fn kernels_level(l: Level) -> Level {
        match l {
            Level::Avx512Bf16 => Level::Avx512,
            l => l,
        }
    }

    #[test]
    fn exp_is_accurate_across_its_range() {
        for level in supported_levels() {
            let k = kernels(level);
            let mut x: Vec<f32> = (-870..=0).map(|i| i as f32 / 10.0).collect();
            let want: Vec<f32> = x.iter().map(|v| v.exp()).collect();
            (k.exp_sub_sum)(&mut x, 0.0);
            for (g, w) in x.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6 * w, "{}: {g} vs {w}", level.name());
            }
        }
    }
}
