//! The operators the device's structured-output mask uses: aclnnBitwiseAndTensor,
//! aclnnEqScalar and aclnnInplaceMaskedFillScalar, each written from its CANN operator page
//! (hicann/ops-math docs, cited at the function) and refusing what that page refuses.

use crate::nnop::{invalid, phase1, scalar, tensor, TensorDesc};
use crate::ops::{broadcast_map, broadcast_shape, need_shape};
use crate::state::Res;
use ascend_sys::fns;
use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;

type Work = Box<dyn Fn() -> Res<()> + Send + Sync>;

/// "数据维度不支持8维以上" / "shape维度不高于8维" on the BitwiseAnd and EqScalar pages.
fn at_most_8(t: &TensorDesc, what: &str) -> Res<()> {
    if t.rank() > 8 {
        return Err(invalid(format!(
            "{what}: {} dimensions (the op takes at most 8)",
            t.rank()
        )));
    }
    Ok(())
}

/// BitwiseAnd's input types (BOOL, INT8, INT16, INT32, INT64, UINT8, UINT16).
fn bitwise_input(d: D) -> bool {
    matches!(
        d,
        D::ACL_BOOL
            | D::ACL_INT8
            | D::ACL_INT16
            | D::ACL_INT32
            | D::ACL_INT64
            | D::ACL_UINT8
            | D::ACL_UINT16
    )
}

/// The type two BitwiseAnd inputs deduce to ("互推导关系"): a type with itself, and the
/// signed integers to the wider one. Other pairs (BOOL with an integer, unsigned with
/// signed) are not emulated.
fn bitwise_deduce(a: D, b: D) -> Option<D> {
    let rank = |d| match d {
        D::ACL_INT8 => Some(1),
        D::ACL_INT16 => Some(2),
        D::ACL_INT32 => Some(3),
        D::ACL_INT64 => Some(4),
        _ => None,
    };
    if a == b {
        return Some(a);
    }
    match (rank(a), rank(b)) {
        (Some(x), Some(y)) => Some(if x >= y { a } else { b }),
        _ => None,
    }
}

/// aclnnBitwiseAndTensor (ops-math `math/bitwise_and/docs/aclnnBitwiseAndTensor.md`; the
/// same page in the CANN 8.0.0 "aolapi" reference): `out = self & other` element-wise (for
/// BOOL, logical and). self and other: BOOL, INT8, INT16, INT32, INT64, UINT8, UINT16, ND,
/// at most 8 dimensions, shapes that broadcast, types that deduce; out: the broadcast shape,
/// on Atlas A2 BOOL, INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64 (a type the
/// deduced one converts to). Null → 161001; anything else the page lists → 161002.
#[no_mangle]
pub unsafe extern "C" fn aclnnBitwiseAndTensorGetWorkspaceSize(
    self_: *const aclTensor,
    other: *const aclTensor,
    out: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnBitwiseAndTensor", ws, ex, || {
        let s = tensor(self_, "self")?;
        let b = tensor(other, "other")?;
        let o = tensor(out, "out")?;
        for (t, what) in [(&s, "self"), (&b, "other"), (&o, "out")] {
            at_most_8(t, what)?;
        }
        for (t, what) in [(&s, "self"), (&b, "other")] {
            if !bitwise_input(t.dtype) {
                return Err(invalid(format!(
                    "aclnnBitwiseAndTensor {what}: dtype {:?} not supported (BOOL, INT8, INT16, INT32, INT64, UINT8, UINT16)",
                    t.dtype
                )));
            }
        }
        let deduced = bitwise_deduce(s.dtype, b.dtype).ok_or_else(|| {
            invalid(format!(
                "aclnnBitwiseAndTensor: self {:?} and other {:?} do not deduce to a common type (emulated: equal types, signed integer pairs)",
                s.dtype, b.dtype
            ))
        })?;
        let out_ok = matches!(
            o.dtype,
            D::ACL_BOOL
                | D::ACL_INT8
                | D::ACL_INT16
                | D::ACL_INT32
                | D::ACL_INT64
                | D::ACL_UINT8
                | D::ACL_UINT16
                | D::ACL_UINT32
                | D::ACL_UINT64
        );
        // BOOL converts to every integer type; an integer does not narrow into BOOL here
        // (not emulated).
        if !out_ok || (o.dtype == D::ACL_BOOL && deduced != D::ACL_BOOL) {
            return Err(invalid(format!(
                "aclnnBitwiseAndTensor out: dtype {:?} not supported for {deduced:?} inputs (or not emulated)",
                o.dtype
            )));
        }
        let od = broadcast_shape(&s.dims, &b.dims, "self/other")?;
        need_shape(&o, &od, "out")?;
        Ok(Box::new(move || {
            let (x, y) = (s.read_i64("self")?, b.read_i64("other")?);
            let am = broadcast_map(&o.dims, &s.dims);
            let bm = broadcast_map(&o.dims, &b.dims);
            let r: Vec<i64> = am.iter().zip(&bm).map(|(&i, &j)| x[i] & y[j]).collect();
            o.write_i64(&r, "out")
        }) as Work)
    })
}

/// aclnnEqScalar (ops-math `math/equal/docs/aclnnEqScalar&aclnnInplaceEqScalar.md`):
/// `out = (self == other)`, 1 or 0. self: on Atlas A2 FLOAT16, FLOAT, INT64, INT32, INT8,
/// UINT8, BOOL, BFLOAT16, DOUBLE, INT16 (COMPLEX64/128 also listed, not emulated), at most 8
/// dimensions; other: a host scalar; out: self's shape, DOUBLE, FLOAT16, FLOAT, BFLOAT16,
/// INT64, INT32, INT8, UINT8, BOOL, INT16 (COMPLEX not emulated). Null → 161001; a type not
/// supported, out's shape not self's, more than 8 dimensions → 161002. Integers compare
/// exactly with an integral scalar (and equal no fractional one).
#[no_mangle]
pub unsafe extern "C" fn aclnnEqScalarGetWorkspaceSize(
    self_: *const aclTensor,
    other: *const aclScalar,
    out: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnEqScalar", ws, ex, || {
        let s = tensor(self_, "self")?;
        let v = scalar(other, "other")?;
        let o = tensor(out, "out")?;
        let numeric = |d| {
            matches!(
                d,
                D::ACL_FLOAT16
                    | D::ACL_FLOAT
                    | D::ACL_BF16
                    | D::ACL_DOUBLE
                    | D::ACL_INT64
                    | D::ACL_INT32
                    | D::ACL_INT16
                    | D::ACL_INT8
                    | D::ACL_UINT8
                    | D::ACL_BOOL
            )
        };
        for (t, what) in [(&s, "self"), (&o, "out")] {
            at_most_8(t, what)?;
            if !numeric(t.dtype) {
                return Err(invalid(format!(
                    "aclnnEqScalar {what}: dtype {:?} not supported or not emulated",
                    t.dtype
                )));
            }
        }
        need_shape(&o, &s.dims, "out")?;
        let int = crate::dtype::is_int(s.dtype);
        Ok(Box::new(move || {
            let r: Vec<i64> = if int {
                let integral = v.f.fract() == 0.0 && v.f.abs() < 9.2e18;
                s.read_i64("self")?
                    .iter()
                    .map(|&x| (integral && x == v.f as i64) as i64)
                    .collect()
            } else {
                s.read_f64("self")?
                    .iter()
                    .map(|&x| (x == v.f) as i64)
                    .collect()
            };
            o.write_i64(&r, "out")
        }) as Work)
    })
}

/// aclnnInplaceMaskedFillScalar (ops-math `conversion/masked_fill/docs/
/// aclnnInplaceMaskedFillScalar.md`): `selfRef[i] = value` where `mask[i]` is true. selfRef:
/// BOOL, INT8, INT32, INT64, FLOAT, FLOAT16, BFLOAT16, ND, non-contiguous allowed; mask:
/// BOOL, ND, a shape that broadcasts to selfRef's, and (the page's non-contiguous column is
/// blank for it) contiguous; value: a host scalar. Null → 161001; a type not supported, or a
/// mask that does not broadcast to selfRef → 161002. The value is rounded to selfRef's type.
#[no_mangle]
pub unsafe extern "C" fn aclnnInplaceMaskedFillScalarGetWorkspaceSize(
    self_ref: *mut aclTensor,
    mask: *const aclTensor,
    value: *const aclScalar,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnInplaceMaskedFillScalar", ws, ex, || {
        let s = tensor(self_ref, "selfRef")?;
        let m = tensor(mask, "mask")?;
        let v = scalar(value, "value")?;
        if !matches!(
            s.dtype,
            D::ACL_BOOL
                | D::ACL_INT8
                | D::ACL_INT32
                | D::ACL_INT64
                | D::ACL_FLOAT
                | D::ACL_FLOAT16
                | D::ACL_BF16
        ) {
            return Err(invalid(format!(
                "aclnnInplaceMaskedFillScalar selfRef: dtype {:?} not supported (BOOL, INT8, INT32, INT64, FLOAT, FLOAT16, BFLOAT16)",
                s.dtype
            )));
        }
        if m.dtype != D::ACL_BOOL {
            return Err(invalid(format!(
                "aclnnInplaceMaskedFillScalar mask: dtype {:?} not supported (BOOL)",
                m.dtype
            )));
        }
        if !m.is_contiguous() {
            return Err(invalid(
                "aclnnInplaceMaskedFillScalar mask: non-contiguous (the page allows it for selfRef only)",
            ));
        }
        let bd = broadcast_shape(&s.dims, &m.dims, "selfRef/mask")?;
        if bd != s.dims {
            return Err(invalid(format!(
                "aclnnInplaceMaskedFillScalar: mask {:?} does not broadcast to selfRef {:?}",
                m.dims, s.dims
            )));
        }
        Ok(Box::new(move || {
            let fill = m.read_i64("mask")?;
            let mm = broadcast_map(&s.dims, &m.dims);
            if crate::dtype::is_int(s.dtype) {
                let mut x = s.read_i64("selfRef")?;
                for (xi, &j) in x.iter_mut().zip(&mm) {
                    if fill[j] != 0 {
                        *xi = v.f as i64;
                    }
                }
                s.write_i64(&x, "selfRef")
            } else {
                let mut x = s.read_f64("selfRef")?;
                for (xi, &j) in x.iter_mut().zip(&mm) {
                    if fill[j] != 0 {
                        *xi = v.f;
                    }
                }
                s.write_f64(&x, "selfRef")
            }
        }) as Work)
    })
}

phase2_exports!(
    aclnnBitwiseAndTensor,
    aclnnEqScalar,
    aclnnInplaceMaskedFillScalar
);

const _: fns::aclnnBitwiseAndTensorGetWorkspaceSize = aclnnBitwiseAndTensorGetWorkspaceSize;
const _: fns::aclnnEqScalarGetWorkspaceSize = aclnnEqScalarGetWorkspaceSize;
const _: fns::aclnnInplaceMaskedFillScalarGetWorkspaceSize =
    aclnnInplaceMaskedFillScalarGetWorkspaceSize;
