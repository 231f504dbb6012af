//! The operators the device's prompt-logprob path adds to the dense set in `ops.rs`:
//! aclnnLogSoftmax and aclnnGtTensor, each written from its CANN operator page (cited at the
//! function) and refusing what that page refuses.

use crate::nnop::{invalid, phase1, tensor, TensorDesc};
use crate::ops::{around, axis, broadcast_map, broadcast_shape, is_float16ish, need_shape};
use crate::state::Res;
use ascend_sys::fns;
use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;

type Work = Box<dyn Fn() -> Res<()> + Send + Sync>;

/// Both pages give tensors of 0 to 8 (GtTensor) or 1 to 8 (LogSoftmax) dimensions.
fn need_rank(t: &TensorDesc, lo: usize, what: &str) -> Res<()> {
    if t.rank() < lo || t.rank() > 8 {
        return Err(invalid(format!(
            "{what}: {} dimensions (the op takes {lo} to 8)",
            t.rank()
        )));
    }
    Ok(())
}

/// aclnnLogSoftmax (ops-nn `activation/log_softmax_v2/docs/aclnnLogSoftmax.md`; the same
/// page in the CANN 8.0.0 and 8.1.RC1 "aolapi" references): `out = x - log(sum(exp(x)))`
/// along `dim`, computed after subtracting the maximum. self: FLOAT16, FLOAT32, DOUBLE,
/// BFLOAT16 (BFLOAT16 on Atlas A2/A3), ND, 1 to 8 dimensions, empty allowed; `dim` within
/// self's dimensions; out: a type self converts to, self's shape. Null self/out → 161001;
/// a dim out of range or an unsupported type → 161002. DOUBLE is not emulated (161002).
/// Computed in f32 (the float types' common compute type), the sum of exponentials as a tree
/// of 64-element blocks (as a vector unit reduces: a sequential f32 sum over a 151,936-token
/// row would err ten times more than the hardware), and rounded once to out's type.
#[no_mangle]
pub unsafe extern "C" fn aclnnLogSoftmaxGetWorkspaceSize(
    self_: *const aclTensor,
    dim: i64,
    out: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnLogSoftmax", ws, ex, || {
        let s = tensor(self_, "self")?;
        let o = tensor(out, "out")?;
        for (t, what) in [(&s, "self"), (&o, "out")] {
            if !is_float16ish(t.dtype) {
                return Err(invalid(format!(
                    "aclnnLogSoftmax {what}: dtype {:?} not supported (FLOAT16, FLOAT, BFLOAT16; DOUBLE not emulated)",
                    t.dtype
                )));
            }
            need_rank(t, 1, what)?;
        }
        let ax = axis(dim, s.rank(), "dim")?;
        need_shape(&o, &s.dims, "out")?;
        Ok(Box::new(move || {
            if s.numel() == 0 {
                return Ok(());
            }
            let x = s.read_f32("self")?;
            let (outer, n, inner) = around(&s.dims, ax);
            let mut r = vec![0f32; x.len()];
            for ou in 0..outer {
                for i in 0..inner {
                    let at = |j: usize| (ou * n + j) * inner + i;
                    let m = (0..n).map(|j| x[at(j)]).fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = (0..n).map(|j| (x[at(j)] - m).exp()).collect();
                    let sum = tree_sum(&e);
                    let log_sum = sum.ln();
                    for j in 0..n {
                        r[at(j)] = x[at(j)] - m - log_sum;
                    }
                }
            }
            o.write_f32(&r, "out")
        }) as Work)
    })
}

/// Sum of `v` in f32: 64-element blocks summed in order, then halves added pairwise.
fn tree_sum(v: &[f32]) -> f32 {
    if v.len() <= 64 {
        return v.iter().sum();
    }
    let half = v.len().div_ceil(128) * 64;
    tree_sum(&v[..half]) + tree_sum(&v[half..])
}

/// The kind of comparison two input types allow under CANN's type deduction
/// ("deduction_relationship", linked from the GtTensor page): floats promote to the wider
/// float, INT32/INT64 to INT64. Other pairs (BOOL, unsigned, DOUBLE, int with float) are
/// not emulated.
fn comparable(a: D, b: D) -> Option<bool> {
    let int = |d| matches!(d, D::ACL_INT32 | D::ACL_INT64);
    if is_float16ish(a) && is_float16ish(b) {
        Some(true)
    } else if int(a) && int(b) {
        Some(false)
    } else {
        None
    }
}

/// aclnnGtTensor (ops-math `math/greater/docs/aclnnGtTensor&aclnnInplaceGtTensor.md`; the
/// same page in the CANN 8.0.0 "aolapi" reference): `out = self > other` element-wise, 1 or 0.
/// self and other: ND, 0 to 8 dimensions, shapes that broadcast, types that deduce to a
/// common type; out: the broadcast shape, any type BOOL converts to. Null → 161001; a type
/// not supported, more than 8 dimensions, types that do not deduce, shapes that do not
/// broadcast, or out's shape not the broadcast one → 161002. Emulated types: FLOAT16, FLOAT,
/// BFLOAT16, INT32, INT64 inputs; BOOL, FLOAT, FLOAT16, BFLOAT16, INT8, UINT8, INT32, INT64 out.
#[no_mangle]
pub unsafe extern "C" fn aclnnGtTensorGetWorkspaceSize(
    self_: *const aclTensor,
    other: *const aclTensor,
    out: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnGtTensor", ws, ex, || {
        let s = tensor(self_, "self")?;
        let b = tensor(other, "other")?;
        let o = tensor(out, "out")?;
        for (t, what) in [(&s, "self"), (&b, "other"), (&o, "out")] {
            need_rank(t, 0, what)?;
        }
        let float = comparable(s.dtype, b.dtype).ok_or_else(|| {
            invalid(format!(
                "aclnnGtTensor: self {:?} and other {:?} do not deduce to a common type (emulated: FLOAT16/FLOAT/BFLOAT16 pairs, INT32/INT64 pairs)",
                s.dtype, b.dtype
            ))
        })?;
        if !matches!(
            o.dtype,
            D::ACL_BOOL
                | D::ACL_FLOAT
                | D::ACL_FLOAT16
                | D::ACL_BF16
                | D::ACL_INT8
                | D::ACL_UINT8
                | D::ACL_INT32
                | D::ACL_INT64
        ) {
            return Err(invalid(format!(
                "aclnnGtTensor out: dtype {:?} not supported or not emulated",
                o.dtype
            )));
        }
        let od = broadcast_shape(&s.dims, &b.dims, "self/other")?;
        need_shape(&o, &od, "out")?;
        Ok(Box::new(move || {
            let am = broadcast_map(&o.dims, &s.dims);
            let bm = broadcast_map(&o.dims, &b.dims);
            let r: Vec<i64> = if float {
                let (x, y) = (s.read_f64("self")?, b.read_f64("other")?);
                am.iter()
                    .zip(&bm)
                    .map(|(&i, &j)| (x[i] > y[j]) as i64)
                    .collect()
            } else {
                let (x, y) = (s.read_i64("self")?, b.read_i64("other")?);
                am.iter()
                    .zip(&bm)
                    .map(|(&i, &j)| (x[i] > y[j]) as i64)
                    .collect()
            };
            o.write_i64(&r, "out")
        }) as Work)
    })
}

phase2_exports!(aclnnLogSoftmax, aclnnGtTensor);

const _: fns::aclnnLogSoftmaxGetWorkspaceSize = aclnnLogSoftmaxGetWorkspaceSize;
const _: fns::aclnnGtTensorGetWorkspaceSize = aclnnGtTensorGetWorkspaceSize;
