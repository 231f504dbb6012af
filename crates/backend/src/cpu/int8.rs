//! W8A8 weights on the CPU: INT8 × INT8 → INT32 matmuls with the activations quantized per
//! the layer's scheme (per token dynamic, or per tensor static) once per call.
//!
//! Activations are stored biased to unsigned (`x_q + 128`), the operand order of the x86 dot
//! instructions (`vpdpbusd`: unsigned × signed bytes, four products summed into each INT32
//! lane without saturation); each weight row's sum undoes the bias:
//! `Σ x_q·w = Σ (x_q + 128)·w − 128·Σ w`. Kernels work on tiles of four weight rows × four
//! activation rows (independent accumulator chains even for one decode token), over rows
//! padded with zero weights to a multiple of 64 bytes. The same code serves decode (one to a
//! few rows: the weight is read once) and prefill (a task keeps its weight rows hot while all
//! activation rows stream by). Kernels, chosen at run time: AVX512-VNNI, AVX-VNNI, the
//! portable twin compiled for AVX2, NEON `sdot` (AArch64 with the dot-product extension,
//! Kunpeng 920 and later), and the portable twin itself; all give the same integers.

use std::cell::RefCell;

use rayon::prelude::*;

use super::quant::OutPtr;
use super::with_scratch;
use crate::w8a8::{quantize_row, ActQuant, W8A8Host};
use crate::Result;

/// Stored row length unit: one 512-bit register of bytes.
const PAD: usize = 64;
/// Weight rows (outputs) per rayon task.
const ROWS_PER_TASK: usize = 32;
/// A kernel tile: weight rows × activation rows.
const T: usize = 4;

/// A W8A8 `[count, n, k]` weight as the CPU keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Matrix {
    count: usize,
    n: usize,
    k: usize,
    /// Bytes per stored row (`k` rounded up to [`PAD`]).
    kp: usize,
    /// `[count, n, kp]`, zero past `k`.
    weight: Vec<i8>,
    /// `[count, n]`: `128 · Σ_i w` minus the layer's bias, subtracted from each accumulator.
    correction: Vec<i32>,
    /// `[count, n]`
    scale: Vec<f32>,
    act: ActQuant,
}

/// `acc[w][x]` = Σ_j xs[x][j] · ws[w][j] over `kp` bytes, for four weight rows and four
/// activation rows (callers pass duplicates for missing rows and drop their results).
type TileFn = fn(&[&[i8]; T], &[&[u8]; T], &mut [[i32; T]; T]);

impl Int8Matrix {
    /// Packs a validated host weight.
    pub fn from_host(h: &W8A8Host<'_>) -> Result<Self> {
        h.validate()?;
        let (count, n, k) = (h.count, h.out_features, h.in_features);
        let kp = k.next_multiple_of(PAD);
        let mut weight = vec![0i8; count * n * kp];
        let mut correction = vec![0i32; count * n];
        for (r, (dst, c)) in weight.chunks_mut(kp).zip(&mut correction).enumerate() {
            let src = &h.weight[r * k..(r + 1) * k];
            dst[..k].copy_from_slice(src);
            let sum: i32 = src.iter().map(|&w| w as i32).sum();
            *c = 128 * sum - h.bias.map_or(0, |b| b[r]);
        }
        Ok(Self {
            count,
            n,
            k,
            kp,
            weight,
            correction,
            scale: h.scale.to_vec(),
            act: h.act,
        })
    }

    /// `[n, k]`, or `[count, n, k]` for a stack.
    pub fn shape(&self) -> Vec<usize> {
        if self.count == 1 {
            vec![self.n, self.k]
        } else {
            vec![self.count, self.n, self.k]
        }
    }

    /// Bytes held: the padded codes, and per output a scale and a correction.
    pub fn size_bytes(&self) -> u64 {
        (self.weight.len() + 8 * self.scale.len()) as u64
    }

    /// One element of the flattened `[count, n, k]` weight, dequantized (weights as F32 for
    /// ops that never take W8A8 weights, and tests).
    pub fn get(&self, i: usize) -> f32 {
        let (r, c) = (i / self.k, i % self.k);
        let s = match self.act {
            ActQuant::Dynamic => self.scale[r],
            // deq_scale holds the activation scale too.
            ActQuant::Static { scale, .. } => self.scale[r] / scale,
        };
        self.weight[r * self.kp + c] as f32 * s
    }

    /// `out[m, n] = x[m, k] @ W_e^T` for matrix `e`, the fastest way this CPU has.
    pub fn matmul(&self, e: usize, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_with(e, x, m, out, pick())
    }

    /// The same through the portable kernel (what the SIMD kernels are tested against).
    pub fn matmul_portable(&self, e: usize, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_with(e, x, m, out, tile_portable)
    }

    fn matmul_with(&self, e: usize, x: &[f32], m: usize, out: &mut [f32], tile: TileFn) {
        let (n, k, kp) = (self.n, self.k, self.kp);
        assert!(e < self.count && x.len() == m * k && out.len() == m * n);
        if m == 0 {
            return;
        }
        with_scratch(&XQ, |xq| {
            with_scratch(&SX, |sx| {
                // Padding quantizes to 0, stored as 128.
                xq.clear();
                xq.resize(m * kp, 128);
                sx.clear();
                sx.resize(m, 0.0);
                with_scratch(&QROW, |q| {
                    q.clear();
                    q.resize(k, 0);
                    for r in 0..m {
                        sx[r] = quantize_row(self.act, &x[r * k..(r + 1) * k], q);
                        for (d, &v) in xq[r * kp..r * kp + k].iter_mut().zip(q.iter()) {
                            *d = (v as i16 + 128) as u8;
                        }
                    }
                });
                self.run(e, xq, sx, m, out, tile);
            })
        })
    }

    fn run(&self, e: usize, xq: &[u8], sx: &[f32], m: usize, out: &mut [f32], tile: TileFn) {
        let (n, kp) = (self.n, self.kp);
        let base = e * n;
        let dst = OutPtr(out.as_mut_ptr());
        (0..n.div_ceil(ROWS_PER_TASK))
            .into_par_iter()
            .for_each(|t| {
                let rows = t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n);
                let mut acc = [[0i32; T]; T];
                for x0 in (0..m).step_by(T) {
                    let xs: [&[u8]; T] = std::array::from_fn(|i| {
                        let r = (x0 + i).min(m - 1);
                        &xq[r * kp..(r + 1) * kp]
                    });
                    for o0 in rows.clone().step_by(T) {
                        let ws: [&[i8]; T] = std::array::from_fn(|i| {
                            let o = base + (o0 + i).min(rows.end - 1);
                            &self.weight[o * kp..(o + 1) * kp]
                        });
                        tile(&ws, &xs, &mut acc);
                        for (wi, a) in acc.iter().enumerate().take(rows.end - o0) {
                            let o = o0 + wi;
                            let (c, s) = (self.correction[base + o], self.scale[base + o]);
                            for (xi, &v) in a.iter().enumerate().take(m - x0) {
                                let r = x0 + xi;
                                let y = (v - c) as f32 * s * sx[r];
                                // SAFETY: output column o belongs to this task alone; r < m.
                                unsafe { *dst.get().add(r * n + o) = y };
                            }
                        }
                    }
                }
            });
    }
}

thread_local! {
    /// Per-thread scratch (kept so a decode step allocates nothing): the quantized, biased
    /// activations, their per-row scales, and one row of signed codes.
    static XQ: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static SX: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static QROW: RefCell<Vec<i8>> = const { RefCell::new(Vec::new()) };
}

/// The portable kernel, and the twin the SIMD ones are tested against.
fn tile_portable(ws: &[&[i8]; T], xs: &[&[u8]; T], acc: &mut [[i32; T]; T]) {
    for (w, a) in ws.iter().zip(acc.iter_mut()) {
        for (x, v) in xs.iter().zip(a.iter_mut()) {
            *v = w
                .iter()
                .zip(x.iter())
                .map(|(&w, &x)| w as i32 * x as i32)
                .sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// The portable kernel compiled for AVX2 (the compiler widens and multiplies 16 bytes at
    /// a time): for x86 CPUs without VNNI.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn tile_avx2(ws: &[&[i8]; T], xs: &[&[u8]; T], acc: &mut [[i32; T]; T]) {
        tile_portable(ws, xs, acc)
    }

    /// 64 bytes per `vpdpbusd`, sixteen independent accumulators.
    ///
    /// # Safety
    /// The CPU must support AVX512F and AVX512-VNNI; every row holds the same multiple of 64
    /// bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile_vnni512(ws: &[&[i8]; T], xs: &[&[u8]; T], acc: &mut [[i32; T]; T]) {
        let kp = ws[0].len();
        let mut s = [[_mm512_setzero_si512(); T]; T];
        let mut j = 0;
        while j < kp {
            // SAFETY: j + 64 <= kp, the length of every row.
            let xv: [__m512i; T] = std::array::from_fn(|i| unsafe {
                _mm512_loadu_si512(xs[i].as_ptr().add(j) as *const __m512i)
            });
            for (w, sw) in ws.iter().zip(s.iter_mut()) {
                let wv = unsafe { _mm512_loadu_si512(w.as_ptr().add(j) as *const __m512i) };
                for (sx, x) in sw.iter_mut().zip(&xv) {
                    *sx = _mm512_dpbusd_epi32(*sx, *x, wv);
                }
            }
            j += 64;
        }
        for (a, sw) in acc.iter_mut().zip(&s) {
            for (v, sx) in a.iter_mut().zip(sw) {
                *v = _mm512_reduce_add_epi32(*sx);
            }
        }
    }

    /// 32 bytes per `vpdpbusd` (the VEX form of Alder Lake and later).
    ///
    /// # Safety
    /// The CPU must support AVX2 and AVX-VNNI; every row holds the same multiple of 32 bytes.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn tile_vnni256(ws: &[&[i8]; T], xs: &[&[u8]; T], acc: &mut [[i32; T]; T]) {
        let kp = ws[0].len();
        let mut s = [[_mm256_setzero_si256(); T]; T];
        let mut j = 0;
        while j < kp {
            // SAFETY: j + 32 <= kp, the length of every row.
            let xv: [__m256i; T] = std::array::from_fn(|i| unsafe {
                _mm256_loadu_si256(xs[i].as_ptr().add(j) as *const __m256i)
            });
            for (w, sw) in ws.iter().zip(s.iter_mut()) {
                let wv = unsafe { _mm256_loadu_si256(w.as_ptr().add(j) as *const __m256i) };
                for (sx, x) in sw.iter_mut().zip(&xv) {
                    *sx = _mm256_dpbusd_avx_epi32(*sx, *x, wv);
                }
            }
            j += 32;
        }
        for (a, sw) in acc.iter_mut().zip(&s) {
            for (v, sx) in a.iter_mut().zip(sw) {
                let q = _mm_add_epi32(
                    _mm256_castsi256_si128(*sx),
                    _mm256_extracti128_si256(*sx, 1),
                );
                let q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0b01_00_11_10));
                let q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0b10_11_00_01));
                *v = _mm_cvtsi128_si32(q);
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::*;
    use std::arch::aarch64::*;

    /// `acc += a · b`: four INT32 lanes, each the sum of four signed byte products (`sdot`,
    /// FEAT_DotProd). Its intrinsic (`vdotq_s32`) is not stable Rust yet, the instruction is.
    ///
    /// # Safety
    /// The CPU must support the dot-product extension.
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn sdot(acc: &mut int32x4_t, a: int8x16_t, b: int8x16_t) {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) *acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }

    /// 16 bytes per `sdot`, sixteen independent accumulators. `sdot` multiplies signed by
    /// signed bytes (the mixed-sign `usdot` needs FEAT_I8MM, which Kunpeng 920 lacks), so the
    /// biased activations get their top bit flipped back to the signed codes (`x_q + 128`
    /// XOR 0x80 = `x_q`), and one more `sdot` per weight row against −128 gives the
    /// `128 · Σ w` that the tile's contract (biased activations) includes:
    /// `Σ (x_q + 128)·w = Σ x_q·w − Σ (−128)·w`.
    ///
    /// # Safety
    /// The CPU must support the dot-product extension; every row holds the same multiple of
    /// 16 bytes.
    #[target_feature(enable = "neon,dotprod")]
    pub unsafe fn tile_sdot(ws: &[&[i8]; T], xs: &[&[u8]; T], acc: &mut [[i32; T]; T]) {
        let kp = ws[0].len();
        let flip = vdupq_n_u8(0x80);
        let minus128 = vdupq_n_s8(i8::MIN);
        let mut s = [[vdupq_n_s32(0); T]; T];
        let mut wsum = [vdupq_n_s32(0); T];
        let mut j = 0;
        while j < kp {
            // SAFETY: j + 16 <= kp, the length of every row.
            let xv: [int8x16_t; T] = std::array::from_fn(|i| unsafe {
                vreinterpretq_s8_u8(veorq_u8(vld1q_u8(xs[i].as_ptr().add(j)), flip))
            });
            for ((w, sw), ws) in ws.iter().zip(s.iter_mut()).zip(wsum.iter_mut()) {
                let wv = unsafe { vld1q_s8(w.as_ptr().add(j)) };
                for (sx, x) in sw.iter_mut().zip(&xv) {
                    unsafe { sdot(sx, *x, wv) };
                }
                unsafe { sdot(ws, minus128, wv) };
            }
            j += 16;
        }
        for ((a, sw), ws) in acc.iter_mut().zip(&s).zip(&wsum) {
            let neg_bias = vaddvq_s32(*ws);
            for (v, sx) in a.iter_mut().zip(sw) {
                *v = vaddvq_s32(*sx).wrapping_sub(neg_bias);
            }
        }
    }
}

/// Which kernel [`pick`] chooses on this CPU at the level in force (for benches and logs).
pub fn kernel_name() -> &'static str {
    kernels().0
}

fn kernels() -> (&'static str, TileFn) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::simd::{level, Level};
        let l = level() as u8;
        if l >= Level::Avx512 as u8 && std::is_x86_feature_detected!("avx512vnni") {
            // SAFETY: the features were just detected.
            return ("avx512-vnni", |w, x, a| unsafe {
                x86::tile_vnni512(w, x, a)
            });
        }
        if l >= Level::Avx2 as u8 && std::is_x86_feature_detected!("avxvnni") {
            // SAFETY: the features were just detected (AVX2 by the level).
            return ("avx-vnni", |w, x, a| unsafe { x86::tile_vnni256(w, x, a) });
        }
        if l >= Level::Avx2 as u8 {
            // SAFETY: the level is only in force when AVX2 is detected.
            return ("avx2", |w, x, a| unsafe { x86::tile_avx2(w, x, a) });
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        use super::simd::{level, Level};
        if level() == Level::Neon && std::arch::is_aarch64_feature_detected!("dotprod") {
            // SAFETY: the extension was just detected.
            return ("neon-sdot", |w, x, a| unsafe { arm::tile_sdot(w, x, a) });
        }
    }
    ("portable", tile_portable)
}

/// The kernel of the level in force (`QWEN3_CPU_KERNELS=scalar` forces the portable one).
fn pick() -> TileFn {
    kernels().1
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Owned {
        count: usize,
        n: usize,
        k: usize,
        weight: Vec<i8>,
        scale: Vec<f32>,
        bias: Option<Vec<i32>>,
        act: ActQuant,
    }

    impl Owned {
        fn host(&self) -> W8A8Host<'_> {
            W8A8Host {
                count: self.count,
                out_features: self.n,
                in_features: self.k,
                weight: &self.weight,
                act: self.act,
                scale: &self.scale,
                bias: self.bias.as_deref(),
            }
        }
    }

    fn make(count: usize, n: usize, k: usize, act: ActQuant) -> Owned {
        let mut s = 0x2545_f491_u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        // The full int8 range, -128 included.
        let weight = (0..count * n * k).map(|_| next() as u8 as i8).collect();
        let scale = (0..count * n)
            .map(|_| (next() % 1000) as f32 / 1e5 + 1e-4)
            .collect();
        let bias = matches!(act, ActQuant::Static { .. }).then(|| {
            (0..count * n)
                .map(|_| (next() % 20001) as i32 - 10000)
                .collect()
        });
        Owned {
            count,
            n,
            k,
            weight,
            scale,
            bias,
            act,
        }
    }

    #[test]
    fn kernels_match_the_reference_on_odd_sizes() {
        let stat = ActQuant::Static {
            scale: 0.02,
            offset: -7.0,
        };
        for &(count, n, k) in &[
            (1, 1, 1),
            (1, 3, 7),
            (2, 17, 65),
            (1, 33, 130),
            (3, 70, 200),
        ] {
            for act in [ActQuant::Dynamic, stat] {
                let w = make(count, n, k, act);
                let h = w.host();
                let q = Int8Matrix::from_host(&h).expect("packs");
                for m in [1, 2, 3, 4, 5, 8, 9, 21] {
                    // Values past the static range too, so saturation is exercised.
                    let x: Vec<f32> = (0..m * k)
                        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 15.0)
                        .collect();
                    for e in 0..count {
                        let want = h.matmul_reference(e, &x, m);
                        let mut fast = vec![0.0; m * n];
                        let mut port = vec![0.0; m * n];
                        q.matmul(e, &x, m, &mut fast);
                        q.matmul_portable(e, &x, m, &mut port);
                        // Integer sums are exact; only the scaling's F32 rounding differs.
                        assert_eq!(fast, port, "{count}x{n}x{k} m {m} {act:?}");
                        for (a, b) in port.iter().zip(&want) {
                            assert!(
                                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                                "{count}x{n}x{k} m {m} {act:?}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_kernel_this_cpu_has_gives_the_same_integers() {
        let w = make(1, 9, 300, ActQuant::Dynamic);
        let q = Int8Matrix::from_host(&w.host()).expect("packs");
        let xs: Vec<u8> = (0..4 * q.kp).map(|i| (i * 91 % 256) as u8).collect();
        let xr: [&[u8]; T] = std::array::from_fn(|i| &xs[i * q.kp..(i + 1) * q.kp]);
        let wr: [&[i8]; T] = std::array::from_fn(|i| &q.weight[i * q.kp..(i + 1) * q.kp]);
        let mut want = [[0; T]; T];
        tile_portable(&wr, &xr, &mut want);
        #[allow(unused_mut)] // only x86 and aarch64 add kernels
        let mut tiles: Vec<TileFn> = vec![pick()];
        // SAFETY (each closure below): pushed only when its features were just detected.
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                tiles.push(|w, x, a| unsafe { x86::tile_avx2(w, x, a) });
            }
            if std::is_x86_feature_detected!("avxvnni") && std::is_x86_feature_detected!("avx2") {
                tiles.push(|w, x, a| unsafe { x86::tile_vnni256(w, x, a) });
            }
            if std::is_x86_feature_detected!("avx512vnni") {
                tiles.push(|w, x, a| unsafe { x86::tile_vnni512(w, x, a) });
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                tiles.push(|w, x, a| unsafe { arm::tile_sdot(w, x, a) });
            } else {
                eprintln!("no dot-product extension: the sdot kernel is not checked");
            }
        }
        for t in tiles {
            let mut got = [[0; T]; T];
            t(&wr, &xr, &mut got);
            assert_eq!(got, want);
        }
    }

    #[test]
    fn int8_weights_take_half_of_bf16() {
        let w = make(1, 64, 256, ActQuant::Dynamic);
        let q = Int8Matrix::from_host(&w.host()).expect("packs");
        // One byte a weight, plus an F32 scale and an INT32 correction per output.
        assert_eq!(q.size_bytes(), (64 * 256 + 64 * 8) as u64);
        assert_eq!(q.shape(), vec![64, 256]);
        assert_eq!(q.get(257), w.weight[257] as f32 * w.scale[1]);
    }
}
