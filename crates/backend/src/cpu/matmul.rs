//! `x @ w^T` for F32 activations and BF16 or F32 weights, through the `gemm` crate.
//!
//! BF16 weights stay BF16 in memory: each task widens a panel of weight rows into a
//! thread-local F32 buffer and multiplies it, so the F32 copy is never more than a panel.

use half::bf16;
use rayon::prelude::*;
use std::cell::RefCell;

/// Weight rows `[n, k]`.
#[derive(Clone, Copy, Debug)]
pub enum WeightRows<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
}

/// Rows of weights widened per task: small enough to stay in L2, big enough to amortise gemm.
const PANEL_ROWS: usize = 64;

thread_local! {
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Raw output pointer shared by tasks that write disjoint column ranges.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of columns of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    // A method (not field access) so closures capture the Send wrapper, not the raw pointer.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[m, n] = x[m, k] @ w[n, k]^T`. Slices must have exactly these sizes.
pub fn matmul_t(x: &[f32], m: usize, k: usize, w: WeightRows<'_>, n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), m * k, "matmul_t: x size");
    assert_eq!(out.len(), m * n, "matmul_t: out size");
    match w {
        WeightRows::F32(w) => assert_eq!(w.len(), n * k, "matmul_t: w size"),
        WeightRows::BF16(w) => assert_eq!(w.len(), n * k, "matmul_t: w size"),
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let dst = OutPtr(out.as_mut_ptr());
    let panels = n.div_ceil(PANEL_ROWS);
    (0..panels).into_par_iter().for_each(|p| {
        let r0 = p * PANEL_ROWS;
        let rows = PANEL_ROWS.min(n - r0);
        let run = |panel: &[f32]| {
            // SAFETY: `panel` is `[rows, k]`, `x` is `[m, k]`, and the destination columns
            // `r0..r0 + rows` of the `[m, n]` output belong to this task alone.
            unsafe {
                gemm::gemm(
                    m,
                    rows,
                    k,
                    dst.get().add(r0),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    panel.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        };
        match w {
            WeightRows::F32(w) => run(&w[r0 * k..(r0 + rows) * k]),
            WeightRows::BF16(w) => PANEL.with(|buf| {
                let mut buf = buf.borrow_mut();
                buf.clear();
                buf.extend(w[r0 * k..(r0 + rows) * k].iter().map(|v| v.to_f32()));
                run(&buf);
            }),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| x[i * k + l] * w[j * k + l]).sum();
            }
        }
        out
    }

    #[test]
    fn matches_reference_on_odd_sizes() {
        for &(m, k, n) in &[
            (1, 7, 5),
            (3, 65, 129),
            (17, 33, 64),
            (2, 1, 1),
            (5, 128, 200),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0)
                .collect();
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wr: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            let want = reference(&x, m, k, &wr, n);
            let mut got = vec![0.0; m * n];
            matmul_t(&x, m, k, WeightRows::BF16(&wb), n, &mut got);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{m}x{k}x{n}: {a} vs {b}");
            }
            let want = reference(&x, m, k, &w, n);
            matmul_t(&x, m, k, WeightRows::F32(&w), n, &mut got);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{m}x{k}x{n}: {a} vs {b}");
            }
        }
    }
}
