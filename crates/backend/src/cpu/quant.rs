//! Weight-only quantized weights on the CPU: codes stay packed (two 4-bit codes per byte, or one
//! 8-bit code per byte) and are unpacked on the fly; a full dequantized copy is never made.
//!
//! Inputs are stored sorted by group (act-order weights come with a permutation applied to the
//! activations once per call), so each group is a contiguous run of columns. Then
//! `y[o] = Σ_g scale[o,g] · (Σ_{j∈g} code[o,j]·x[j] − zero[o,g] · Σ_{j∈g} x[j])`:
//! decode-sized batches read each weight row once for all rows of `x`, widening eight packed
//! codes at a time in registers (AVX2 + FMA, chosen at run time; a portable twin unpacks the
//! row to F32 first); larger batches dequantise a panel of rows at a time and hand it to `gemm`.

use std::cell::RefCell;

use half::f16;
use rayon::prelude::*;

use super::matmul::{matmul_t, WeightRows};
use super::with_scratch;
use crate::quant::QuantizedHost;
use crate::Result;

/// Most rows of `x` taken by the GEMV path.
pub const GEMV_ROWS: usize = 8;
/// Weight rows per rayon task in the GEMV path.
const ROWS_PER_TASK: usize = 16;
/// Weight rows dequantised at a time in the batched path (64 × k floats stay in L2).
const PANEL_ROWS: usize = 64;

/// A quantized `[count, n, k]` weight as the CPU keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantMatrix {
    count: usize,
    n: usize,
    k: usize,
    bits: u32,
    groups: usize,
    /// Bytes of codes per weight row.
    row_bytes: usize,
    /// `[count, n, row_bytes]`; with 4 bits, column `2j` is the low nibble of byte `j`.
    codes: Vec<u8>,
    /// `[count, k]`: stored column `j` multiplies input `perm[j]` (None: identity).
    perm: Option<Vec<u32>>,
    /// `[count, groups + 1]`: stored columns of group `g` are `bounds[g]..bounds[g + 1]`.
    bounds: Vec<u32>,
    /// `[count, n, groups]`
    scales: GroupValues,
    /// `[count, n, groups]`
    zeros: GroupValues,
}

/// Per-group values, in the narrowest type that holds them exactly: checkpoints store scales
/// as F16 and zero points as small integers, which keeps them a few percent of the codes.
#[derive(Clone, Debug, PartialEq)]
enum GroupValues {
    U8(Vec<u8>),
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl GroupValues {
    fn narrowest(v: Vec<f32>) -> Self {
        if v.iter()
            .all(|&x| x.fract() == 0.0 && (0.0..=255.0).contains(&x))
        {
            GroupValues::U8(v.iter().map(|&x| x as u8).collect())
        } else if v.iter().all(|&x| f16::from_f32(x).to_f32() == x) {
            GroupValues::F16(v.iter().map(|&x| f16::from_f32(x)).collect())
        } else {
            GroupValues::F32(v)
        }
    }

    #[inline(always)]
    fn get(&self, i: usize) -> f32 {
        match self {
            GroupValues::U8(v) => v[i] as f32,
            GroupValues::F16(v) => v[i].to_f32(),
            GroupValues::F32(v) => v[i],
        }
    }

    fn size_bytes(&self) -> usize {
        match self {
            GroupValues::U8(v) => v.len(),
            GroupValues::F16(v) => 2 * v.len(),
            GroupValues::F32(v) => 4 * v.len(),
        }
    }
}

/// An output matrix that parallel tasks write in disjoint columns.
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

impl QuantMatrix {
    /// Packs a validated host weight.
    pub fn from_host(h: &QuantizedHost<'_>) -> Result<Self> {
        h.validate()?;
        let (count, n, k, groups) = (h.count, h.out_features, h.in_features, h.groups);
        let row_bytes = if h.bits == 4 { k.div_ceil(2) } else { k };
        let mut perm = h.g_idx.map(|_| Vec::with_capacity(count * k));
        let mut bounds = Vec::with_capacity(count * (groups + 1));
        for e in 0..count {
            match (&mut perm, h.g_idx) {
                (Some(perm), Some(g)) => {
                    let g = &g[e * k..(e + 1) * k];
                    let mut order: Vec<u32> = (0..k as u32).collect();
                    order.sort_by_key(|&i| g[i as usize]);
                    let mut sizes = vec![0u32; groups];
                    for &x in g {
                        sizes[x as usize] += 1;
                    }
                    let mut at = 0u32;
                    bounds.push(0);
                    for s in sizes {
                        at += s;
                        bounds.push(at);
                    }
                    perm.extend(order);
                }
                _ => bounds.extend((0..=groups).map(|g| (g * h.group_size).min(k) as u32)),
            }
        }
        let mut codes = vec![0u8; count * n * row_bytes];
        codes
            .par_chunks_mut(row_bytes)
            .enumerate()
            .for_each(|(r, dst)| {
                let e = r / n;
                let src = &h.codes[r * k..(r + 1) * k];
                let col = |j: usize| match &perm {
                    Some(p) => src[p[e * k + j] as usize],
                    None => src[j],
                };
                if h.bits == 4 {
                    for (b, d) in dst.iter_mut().enumerate() {
                        let lo = col(2 * b);
                        let hi = if 2 * b + 1 < k { col(2 * b + 1) } else { 0 };
                        *d = lo | (hi << 4);
                    }
                } else {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = col(j);
                    }
                }
            });
        let mut scales = vec![0.0; count * n * groups];
        let mut zeros = vec![0.0; count * n * groups];
        for e in 0..count {
            for g in 0..groups {
                for o in 0..n {
                    let src = (e * groups + g) * n + o;
                    let dst = (e * n + o) * groups + g;
                    scales[dst] = h.scales[src];
                    zeros[dst] = h.zeros[src];
                }
            }
        }
        let (scales, zeros) = (
            GroupValues::narrowest(scales),
            GroupValues::narrowest(zeros),
        );
        Ok(Self {
            count,
            n,
            k,
            bits: h.bits,
            groups,
            row_bytes,
            codes,
            perm,
            bounds,
            scales,
            zeros,
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

    /// Bytes held: packed codes plus scales, zero points and the group layout.
    pub fn size_bytes(&self) -> u64 {
        let words = self.perm.as_ref().map_or(0, Vec::len) + self.bounds.len();
        (self.codes.len() + 4 * words + self.scales.size_bytes() + self.zeros.size_bytes()) as u64
    }

    fn bounds(&self, e: usize) -> &[u32] {
        &self.bounds[e * (self.groups + 1)..(e + 1) * (self.groups + 1)]
    }

    /// Codes of weight row `o` of matrix `e` as floats, in stored (group-sorted) order.
    #[inline(always)]
    fn unpack_row(&self, e: usize, o: usize, dst: &mut [f32]) {
        let r = e * self.n + o;
        let src = &self.codes[r * self.row_bytes..(r + 1) * self.row_bytes];
        if self.bits == 4 {
            let pairs = self.k / 2;
            for (d, &b) in dst[..2 * pairs].chunks_exact_mut(2).zip(src) {
                d[0] = (b & 0x0f) as f32;
                d[1] = (b >> 4) as f32;
            }
            if self.k % 2 == 1 {
                dst[self.k - 1] = (src[pairs] & 0x0f) as f32;
            }
        } else {
            for (d, &b) in dst.iter_mut().zip(src) {
                *d = b as f32;
            }
        }
    }

    /// Dequantised weight row `o` of matrix `e`, in stored order.
    fn dequant_row(&self, e: usize, o: usize, dst: &mut [f32]) {
        self.unpack_row(e, o, dst);
        let b = self.bounds(e);
        let at = (e * self.n + o) * self.groups;
        for g in 0..self.groups {
            let (s, z) = (self.scales.get(at + g), self.zeros.get(at + g));
            for v in &mut dst[b[g] as usize..b[g + 1] as usize] {
                *v = (*v - z) * s;
            }
        }
    }

    /// The whole dequantised `[count, n, k]` weight in input order (tests, debugging).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.count * self.n * self.k];
        let mut row = vec![0.0; self.k];
        for e in 0..self.count {
            for o in 0..self.n {
                self.dequant_row(e, o, &mut row);
                let dst = &mut out[(e * self.n + o) * self.k..(e * self.n + o + 1) * self.k];
                match &self.perm {
                    Some(p) => {
                        for (j, &v) in row.iter().enumerate() {
                            dst[p[e * self.k + j] as usize] = v;
                        }
                    }
                    None => dst.copy_from_slice(&row),
                }
            }
        }
        out
    }

    /// One element of the flattened `[count, n, k]` weight in input order.
    pub fn get(&self, i: usize) -> f32 {
        let (e, o, c) = (i / (self.n * self.k), i / self.k % self.n, i % self.k);
        let mut row = vec![0.0; self.k];
        self.dequant_row(e, o, &mut row);
        let j = match &self.perm {
            Some(p) => p[e * self.k..(e + 1) * self.k]
                .iter()
                .position(|&x| x as usize == c)
                .unwrap_or(c),
            None => c,
        };
        row[j]
    }

    /// Runs `f` on `x` `[m, k]` with its columns in stored order (permuted into this thread's
    /// scratch under act-order).
    fn with_permuted<R>(&self, e: usize, x: &[f32], f: impl FnOnce(&[f32]) -> R) -> R {
        match &self.perm {
            None => f(x),
            Some(p) => with_scratch(&XP, |out| {
                let p = &p[e * self.k..(e + 1) * self.k];
                out.clear();
                for r in x.chunks_exact(self.k) {
                    out.extend(p.iter().map(|&i| r[i as usize]));
                }
                f(out)
            }),
        }
    }

    /// `out[m, n] = x[m, k] @ W_e^T` for matrix `e`, the fastest way this CPU has.
    pub fn matmul(&self, e: usize, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_with(e, x, m, out, pick())
    }

    /// The same through the portable kernel (what the SIMD kernel is tested against).
    pub fn matmul_portable(&self, e: usize, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_with(e, x, m, out, rows_portable)
    }

    fn matmul_with(&self, e: usize, x: &[f32], m: usize, out: &mut [f32], rows: RowsFn) {
        let (n, k) = (self.n, self.k);
        assert!(e < self.count && x.len() == m * k && out.len() == m * n);
        if m == 0 {
            return;
        }
        self.with_permuted(e, x, |xp| {
            if m <= GEMV_ROWS {
                self.gemv(e, xp, m, out, rows)
            } else {
                self.panels(e, xp, m, out)
            }
        })
    }

    fn gemv(&self, e: usize, xp: &[f32], m: usize, out: &mut [f32], rows: RowsFn) {
        let (n, k, groups) = (self.n, self.k, self.groups);
        let b = self.bounds(e);
        // Σ x over each group, once per call: the zero point's share of every output.
        with_scratch(&XSUM, |xsum| {
            xsum.clear();
            xsum.resize(m * groups, 0.0);
            for i in 0..m {
                for g in 0..groups {
                    xsum[i * groups + g] = xp[i * k + b[g] as usize..i * k + b[g + 1] as usize]
                        .iter()
                        .sum();
                }
            }
            let xsum: &[f32] = xsum;
            let dst = OutPtr(out.as_mut_ptr());
            (0..n.div_ceil(ROWS_PER_TASK))
                .into_par_iter()
                .for_each(|t| {
                    with_scratch(&WROW, |wrow| {
                        // Each row is unpacked over the whole of it: stale values are fine.
                        wrow.resize(k, 0.0);
                        let mut acc = [0.0f32; GEMV_ROWS];
                        for o in t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n) {
                            rows(self, e, o, xp, m, xsum, wrow, &mut acc);
                            for (i, a) in acc.iter().enumerate().take(m) {
                                // SAFETY: column o belongs to this task alone; i < m, o < n.
                                unsafe { *dst.get().add(i * n + o) = *a };
                            }
                        }
                    })
                });
        })
    }

    fn panels(&self, e: usize, xp: &[f32], m: usize, out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        let dst = OutPtr(out.as_mut_ptr());
        (0..n.div_ceil(PANEL_ROWS)).into_par_iter().for_each(|p| {
            let r0 = p * PANEL_ROWS;
            let rows = PANEL_ROWS.min(n - r0);
            let mut panel = vec![0.0f32; rows * k];
            for (r, row) in panel.chunks_exact_mut(k).enumerate() {
                self.dequant_row(e, r0 + r, row);
            }
            let mut y = vec![0.0f32; m * rows];
            matmul_t(xp, m, k, WeightRows::F32(&panel), rows, &mut y);
            for i in 0..m {
                for r in 0..rows {
                    // SAFETY: columns r0..r0 + rows belong to this task alone; i < m.
                    unsafe { *dst.get().add(i * n + r0 + r) = y[i * rows + r] };
                }
            }
        });
    }
}

thread_local! {
    /// Per-thread scratch of the decode GEMV (kept so a decode step allocates nothing): `x`
    /// permuted for act-order, its per-group sums, and one unpacked weight row.
    static XP: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static XSUM: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static WROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Gives this thread's weight-row scratch a size that covers the input width of every Qwen3
/// shape (32K floats), so a decode step landing on a fresh thread does not allocate.
pub(crate) fn reserve_scratch() {
    with_scratch(&WROW, |w| w.reserve(1 << 15));
}

/// Output `o` for every row of `x`: unpack the codes once, then per-group dot products.
type RowsFn = fn(&QuantMatrix, usize, usize, &[f32], usize, &[f32], &mut [f32], &mut [f32; 8]);

/// The portable kernel (and the twin the SIMD one is tested against): unpack one weight row
/// of codes to F32, then per-group dot products.
#[allow(clippy::too_many_arguments)]
fn rows_portable(
    w: &QuantMatrix,
    e: usize,
    o: usize,
    xp: &[f32],
    m: usize,
    xsum: &[f32],
    wrow: &mut [f32],
    acc: &mut [f32; GEMV_ROWS],
) {
    let (k, groups) = (w.k, w.groups);
    w.unpack_row(e, o, wrow);
    let b = w.bounds(e);
    let at = (e * w.n + o) * groups;
    for (i, a) in acc.iter_mut().enumerate().take(m) {
        let x = &xp[i * k..(i + 1) * k];
        let mut total = 0.0f32;
        for g in 0..groups {
            let (lo, hi) = (b[g] as usize, b[g + 1] as usize);
            let d = dot(&x[lo..hi], &wrow[lo..hi]);
            let (s, z) = (w.scales.get(at + g), w.zeros.get(at + g));
            total += s * (d - z * xsum[i * groups + g]);
        }
        *a = total;
    }
}

/// Eight independent lanes, so the compiler vectorises without reassociating a single sum.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// Output `o` for every row of `x`, straight from the packed codes: eight codes at a time
    /// are widened to F32 in registers (with 4 bits, stored columns `8w..8w + 8` are the eight
    /// nibbles of little-endian word `w`) and multiplied into each row's sum.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `xp` holds `m * k` floats, `m <= GEMV_ROWS`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rows(
        w: &QuantMatrix,
        e: usize,
        o: usize,
        xp: &[f32],
        m: usize,
        xsum: &[f32],
        _wrow: &mut [f32],
        acc: &mut [f32; GEMV_ROWS],
    ) {
        let (k, groups) = (w.k, w.groups);
        let r = e * w.n + o;
        let row = &w.codes[r * w.row_bytes..(r + 1) * w.row_bytes];
        let code = |j: usize| -> f32 {
            if w.bits == 4 {
                ((row[j / 2] >> (4 * (j & 1))) & 0x0f) as f32
            } else {
                row[j] as f32
            }
        };
        let b = w.bounds(e);
        let at = r * groups;
        let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
        let nibble = _mm256_set1_epi32(0x0f);
        let mut total = [0.0f32; GEMV_ROWS];
        for g in 0..groups {
            let (lo, hi) = (b[g] as usize, b[g + 1] as usize);
            let mut d = [0.0f32; GEMV_ROWS];
            // Scalar up to a multiple of 8 (act-order slices may start anywhere).
            let body = lo.next_multiple_of(8).min(hi);
            for j in lo..body {
                let c = code(j);
                for (i, di) in d.iter_mut().enumerate().take(m) {
                    *di += c * xp[i * k + j];
                }
            }
            let end = body + (hi - body) / 8 * 8;
            let mut sums = [_mm256_setzero_ps(); GEMV_ROWS];
            let mut j = body;
            while j < end {
                // SAFETY: j + 8 <= hi <= k, so the 4 (or 8) code bytes and each row's 8
                // floats at j are in bounds.
                let ints = if w.bits == 4 {
                    let word = (row.as_ptr().add(j / 2) as *const u32).read_unaligned();
                    _mm256_and_si256(
                        _mm256_srlv_epi32(_mm256_set1_epi32(word as i32), shifts),
                        nibble,
                    )
                } else {
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(row.as_ptr().add(j) as *const __m128i))
                };
                let cv = _mm256_cvtepi32_ps(ints);
                for (i, s) in sums.iter_mut().enumerate().take(m) {
                    let xv = _mm256_loadu_ps(xp.as_ptr().add(i * k + j));
                    *s = _mm256_fmadd_ps(xv, cv, *s);
                }
                j += 8;
            }
            for (i, di) in d.iter_mut().enumerate().take(m) {
                let v = sums[i];
                let q = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
                let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
                let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
                *di += _mm_cvtss_f32(q);
                for jj in end..hi {
                    *di += code(jj) * xp[i * k + jj];
                }
            }
            let (sc, z) = (w.scales.get(at + g), w.zeros.get(at + g));
            for i in 0..m {
                total[i] += sc * (d[i] - z * xsum[i * groups + g]);
            }
        }
        acc[..m].copy_from_slice(&total[..m]);
    }
}

/// The kernel of the level in force (`QWEN3_CPU_KERNELS=scalar` forces the portable one).
fn pick() -> RowsFn {
    #[cfg(target_arch = "x86_64")]
    {
        let level = super::simd::level();
        if level as u8 >= super::simd::Level::Avx2 as u8
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features were just detected.
            return |w, e, o, xp, m, xsum, wrow, acc| unsafe {
                avx2::rows(w, e, o, xp, m, xsum, wrow, acc)
            };
        }
    }
    rows_portable
}

/// Straightforward reference: every weight dequantised from the host form, in input order.
pub fn matmul_reference(h: &QuantizedHost<'_>, e: usize, x: &[f32], m: usize) -> Vec<f32> {
    let (n, k) = (h.out_features, h.in_features);
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for o in 0..n {
            out[i * n + o] = (0..k).map(|c| x[i * k + c] * h.weight(e, o, c)).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Owned {
        count: usize,
        n: usize,
        k: usize,
        bits: u32,
        group_size: usize,
        groups: usize,
        codes: Vec<u8>,
        scales: Vec<f32>,
        zeros: Vec<f32>,
        g_idx: Option<Vec<u32>>,
    }

    impl Owned {
        fn host(&self) -> QuantizedHost<'_> {
            QuantizedHost {
                count: self.count,
                out_features: self.n,
                in_features: self.k,
                bits: self.bits,
                group_size: self.group_size,
                groups: self.groups,
                codes: &self.codes,
                scales: &self.scales,
                zeros: &self.zeros,
                g_idx: self.g_idx.as_deref(),
            }
        }
    }

    /// Deterministic pseudo-random weights; `act_order` scatters groups over the inputs.
    fn make(count: usize, n: usize, k: usize, bits: u32, gs: usize, act_order: bool) -> Owned {
        let mut s = 0x9e37_79b9_u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let groups = k.div_ceil(gs);
        let max = 1u64 << bits;
        let codes = (0..count * n * k).map(|_| (next() % max) as u8).collect();
        let scales = (0..count * groups * n)
            // F16-representable, as checkpoints store them, so dequantisation is exact.
            .map(|_| half::f16::from_f32((next() % 1000) as f32 / 20000.0 + 0.001).to_f32())
            .collect();
        let zeros = (0..count * groups * n)
            .map(|_| (next() % max) as f32)
            .collect();
        let g_idx = act_order.then(|| {
            let mut g = Vec::with_capacity(count * k);
            for _ in 0..count {
                let mut one: Vec<u32> = (0..k).map(|i| (i / gs) as u32).collect();
                for i in (1..k).rev() {
                    one.swap(i, (next() % (i as u64 + 1)) as usize);
                }
                g.extend(one);
            }
            g
        });
        Owned {
            count,
            n,
            k,
            bits,
            group_size: gs,
            groups,
            codes,
            scales,
            zeros,
            g_idx,
        }
    }

    #[test]
    fn kernels_match_the_reference_on_odd_sizes() {
        let shapes = [
            (1, 1, 1, 4, 1, false),
            (1, 3, 7, 4, 4, false),
            (2, 17, 9, 4, 3, true),
            (1, 31, 33, 8, 8, false),
            (3, 40, 65, 4, 16, true),
            (1, 129, 130, 4, 130, false),
            (1, 70, 64, 8, 32, true),
        ];
        for &(count, n, k, bits, gs, act) in &shapes {
            let w = make(count, n, k, bits, gs, act);
            let h = w.host();
            let q = QuantMatrix::from_host(&h).expect("packs");
            for m in [1, 3, GEMV_ROWS, GEMV_ROWS + 1, 20] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                    .collect();
                for e in 0..count {
                    let want = matmul_reference(&h, e, &x, m);
                    let mut fast = vec![0.0; m * n];
                    let mut port = vec![0.0; m * n];
                    q.matmul(e, &x, m, &mut fast);
                    q.matmul_portable(e, &x, m, &mut port);
                    for ((a, b), c) in fast.iter().zip(&port).zip(&want) {
                        let tol = 1e-4 * (1.0 + c.abs()) * (k as f32).sqrt();
                        assert!(
                            (a - c).abs() <= tol && (b - c).abs() <= tol,
                            "{count}x{n}x{k} {bits}-bit gs {gs} act {act} m {m}: {a} / {b} vs {c}"
                        );
                    }
                }
            }
            let dense = q.to_f32();
            for e in 0..count {
                for o in 0..n {
                    for c in 0..k {
                        assert_eq!(dense[(e * n + o) * k + c], h.weight(e, o, c));
                    }
                }
            }
            assert_eq!(q.get(dense.len() - 1), dense[dense.len() - 1]);
        }
    }

    #[test]
    fn scales_and_zeros_that_need_f32_stay_f32() {
        let mut w = make(2, 9, 20, 4, 8, true);
        w.scales.iter_mut().for_each(|s| *s *= 1.000_1);
        w.zeros.iter_mut().for_each(|z| *z += 0.1);
        let h = w.host();
        let q = QuantMatrix::from_host(&h).expect("packs");
        assert!(matches!(q.scales, GroupValues::F32(_)));
        assert!(matches!(q.zeros, GroupValues::F32(_)));
        let x: Vec<f32> = (0..3 * 20).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut y = vec![0.0; 3 * 9];
        q.matmul(1, &x, 3, &mut y);
        for (a, b) in y.iter().zip(matmul_reference(&h, 1, &x, 3)) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn four_bit_codes_take_half_a_byte() {
        let w = make(1, 64, 256, 4, 128, false);
        let q = QuantMatrix::from_host(&w.host()).expect("packs");
        // 64 × 256 / 2 bytes of codes, 2 groups × 64 rows × (F16 scale + U8 zero), 3 bounds.
        assert_eq!(q.size_bytes(), (64 * 128 + 2 * 64 * 3 + 4 * 3) as u64);
    }
}
