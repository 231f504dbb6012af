//! Decode-time matrix-vector products with BF16 weights: `out[m, n] = x[m, k] · w[n, k]ᵀ` for a
//! few rows of `x` (batch 1–8). Memory-bound, so each weight row is read once for all rows of
//! `x`, widened from BF16 in registers (a BF16 is the top half of an F32), and the rows of `w`
//! are spread over rayon's pool. AVX2 + FMA is picked at run time; the portable path is the
//! scalar twin every SIMD path is tested against.

use half::bf16;
use rayon::prelude::*;

/// Most rows of `x` handled per pass over the weights.
pub const MAX_ROWS: usize = 8;
/// Weight rows per rayon task.
const ROWS_PER_TASK: usize = 16;

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint output columns.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Scalar reference: dot products of `x`'s rows with one weight row.
fn dots_scalar(x: &[f32], m: usize, k: usize, w: &[bf16], acc: &mut [f32; MAX_ROWS]) {
    for (i, a) in acc.iter_mut().enumerate().take(m) {
        let xr = &x[i * k..(i + 1) * k];
        *a = xr.iter().zip(w).map(|(a, b)| a * b.to_f32()).sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::MAX_ROWS;
    use half::bf16;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA; `x` holds `m * k` floats, `w` holds `k` values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots(x: &[f32], m: usize, k: usize, w: &[bf16], acc: &mut [f32; MAX_ROWS]) {
        let mut sums = [_mm256_setzero_ps(); MAX_ROWS];
        let wp = w.as_ptr() as *const u16;
        let body = k / 8 * 8;
        let mut j = 0;
        while j < body {
            // 8 BF16 → 8 F32: zero-extend to 32 bits and shift into the high half.
            let raw = _mm_loadu_si128(wp.add(j) as *const __m128i);
            let wv = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
            for (i, s) in sums.iter_mut().enumerate().take(m) {
                let xv = _mm256_loadu_ps(x.as_ptr().add(i * k + j));
                *s = _mm256_fmadd_ps(xv, wv, *s);
            }
            j += 8;
        }
        for (i, a) in acc.iter_mut().enumerate().take(m) {
            let s = sums[i];
            let hi = _mm256_extractf128_ps(s, 1);
            let lo = _mm256_castps256_ps128(s);
            let q = _mm_add_ps(hi, lo);
            let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
            let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
            let mut t = _mm_cvtss_f32(q);
            for jj in body..k {
                t += x[i * k + jj] * w[jj].to_f32();
            }
            *a = t;
        }
    }
}

type DotsFn = fn(&[f32], usize, usize, &[bf16], &mut [f32; MAX_ROWS]);

fn pick() -> DotsFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return |x, m, k, w, acc| unsafe { avx2::dots(x, m, k, w, acc) };
        }
    }
    dots_scalar
}

/// Which kernel [`gemv_bf16`] uses on this CPU.
pub fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
    }
    "scalar"
}

fn run(dots: DotsFn, x: &[f32], m: usize, k: usize, w: &[bf16], n: usize, out: &mut [f32]) {
    assert!(m <= MAX_ROWS && x.len() == m * k && w.len() == n * k && out.len() == m * n);
    let dst = OutPtr(out.as_mut_ptr());
    (0..n.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .for_each(|t| {
            let mut acc = [0.0f32; MAX_ROWS];
            for j in t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n) {
                dots(x, m, k, &w[j * k..(j + 1) * k], &mut acc);
                for (i, a) in acc.iter().enumerate().take(m) {
                    // SAFETY: column j belongs to this task alone; i < m and j < n.
                    unsafe { *dst.get().add(i * n + j) = *a };
                }
            }
        });
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` with the fastest kernel this CPU has (m ≤ [`MAX_ROWS`]).
pub fn gemv_bf16(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize, out: &mut [f32]) {
    run(pick(), x, m, k, w, n, out)
}

/// The same through the scalar path (the reference the SIMD paths are tested against).
pub fn gemv_bf16_scalar(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize, out: &mut [f32]) {
    run(dots_scalar, x, m, k, w, n, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_matches_scalar_on_odd_sizes() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 7, 3),
            (2, 9, 17),
            (3, 33, 31),
            (8, 65, 40),
            (5, 1023, 129),
            (1, 8, 8),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let w: Vec<bf16> = (0..n * k)
                .map(|i| bf16::from_f32(((i * 13 % 97) as f32 - 48.0) / 31.0))
                .collect();
            let mut a = vec![0.0; m * n];
            let mut b = vec![0.0; m * n];
            gemv_bf16(&x, m, k, &w, n, &mut a);
            gemv_bf16_scalar(&x, m, k, &w, n, &mut b);
            for (p, q) in a.iter().zip(&b) {
                assert!(
                    (p - q).abs() <= 1e-4 * (1.0 + q.abs()),
                    "{m}x{k}x{n}: {p} vs {q} ({})",
                    kernel_name()
                );
            }
        }
    }
}
