//! W8A8 operators, from the ops-nn docs (Atlas A2 rows; hicann/ops-nn as of 2026-12):
//! aclnnDynamicQuant (`quant/dynamic_quant/docs/aclnnDynamicQuant.md`: per-token symmetric
//! INT8), aclnnAscendQuantV3 (`quant/ascend_quant_v2/docs/aclnnAscendQuantV3.md`:
//! `round(x · scale + offset)`) and aclnnQuantMatmulV4
//! (`matmul/quant_batch_matmul_v3/docs/aclnnQuantMatmulV4.md`: INT8 × INT8 with the
//! dequantisation in the epilogue). What the docs allow but we do not emulate (smooth scales,
//! INT4/INT32/FP8 outputs, NZ formats, batched or transposed-x1 matmuls, INT64 scales from
//! TransQuantParam, INT8 matmul outputs) is refused with 161002 and says so.

use std::ffi::{c_char, CStr};

use crate::nnop::{invalid, opt_tensor, phase1, tensor, TensorDesc};
use crate::ops::{need_shape, same_dtype};
use crate::state::Res;
use ascend_sys::fns;
use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;

type Work = Box<dyn Fn() -> Res<()> + Send + Sync>;
type T = *const aclTensor;

/// The docs say "round" without more; we read it as round half to even (what torch.round,
/// the reference vllm-ascend's tests compare npu_dynamic_quant with, does).
fn round(v: f32) -> f32 {
    v.round_ties_even()
}

fn need_nd(t: &TensorDesc, what: &str) -> Res<()> {
    if t.format != aclFormat::ACL_FORMAT_ND {
        return Err(invalid(format!(
            "{what}: format {:?} is not emulated (ND only)",
            t.format
        )));
    }
    Ok(())
}

// ----------------------------------------------------------------------------- DynamicQuant

#[no_mangle]
pub unsafe extern "C" fn aclnnDynamicQuantGetWorkspaceSize(
    x: T,
    smooth_scales: T,
    y_out: T,
    scale_out: T,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnDynamicQuant", ws, ex, || {
        let xt = tensor(x, "x")?;
        let yt = tensor(y_out, "yOut")?;
        let st = tensor(scale_out, "scaleOut")?;
        if !smooth_scales.is_null() {
            return Err(invalid("smoothScalesOptional is not emulated"));
        }
        // Docs: x FLOAT16/BFLOAT16, ND, 2-8 dims.
        if !matches!(xt.dtype, D::ACL_FLOAT16 | D::ACL_BF16) {
            return Err(invalid(format!(
                "x dtype {:?} (FLOAT16, BFLOAT16)",
                xt.dtype
            )));
        }
        if !(2..=8).contains(&xt.rank()) {
            return Err(invalid(format!("x has {} dims (2-8)", xt.rank())));
        }
        need_nd(&xt, "x")?;
        // Docs (A2): yOut INT8, INT4 or INT32; only INT8 is emulated. Same shape as x.
        if yt.dtype != D::ACL_INT8 {
            return Err(invalid(format!(
                "yOut dtype {:?}: INT8 only is emulated (the docs also allow INT4, INT32)",
                yt.dtype
            )));
        }
        need_shape(&yt, &xt.dims, "yOut")?;
        // Docs: scaleOut FLOAT32, x's shape without its last dimension.
        if st.dtype != D::ACL_FLOAT {
            return Err(invalid(format!("scaleOut dtype {:?} (FLOAT32)", st.dtype)));
        }
        need_shape(&st, &xt.dims[..xt.rank() - 1], "scaleOut")?;
        Ok(Box::new(move || {
            let h = *xt.dims.last().unwrap_or(&1) as usize;
            let xv = xt.read_f32("x")?;
            let mut q = vec![0f32; xv.len()];
            let mut scales = Vec::with_capacity(xv.len() / h.max(1));
            for (row, out) in xv.chunks(h.max(1)).zip(q.chunks_mut(h.max(1))) {
                // Docs: scaleOut = row_max(abs(x)) / 127, yOut = round(x / scaleOut). An
                // all-zero row (scale 0) is not documented: we write zeros.
                let s = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                if s > 0.0 {
                    for (o, v) in out.iter_mut().zip(row) {
                        *o = round(v / s);
                    }
                }
                scales.push(s);
            }
            yt.write_f32(&q, "yOut")?;
            st.write_f32(&scales, "scaleOut")
        }) as Work)
    })
}

// ----------------------------------------------------------------------------- AscendQuantV3

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclnnAscendQuantV3GetWorkspaceSize(
    x: T,
    scale: T,
    offset: T,
    sqrt_mode: bool,
    round_mode: *const c_char,
    dst_type: i32,
    axis: i32,
    y: T,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnAscendQuantV3", ws, ex, || {
        let xt = tensor(x, "x")?;
        let st = tensor(scale, "scale")?;
        let ot = opt_tensor(offset, "offset")?;
        let yt = tensor(y, "y")?;
        // Docs: x FLOAT32/FLOAT16/BFLOAT16, 1-8 dims; scale and offset of x's dtype.
        if !matches!(xt.dtype, D::ACL_FLOAT | D::ACL_FLOAT16 | D::ACL_BF16) {
            return Err(invalid(format!(
                "x dtype {:?} (FLOAT32, FLOAT16, BFLOAT16)",
                xt.dtype
            )));
        }
        if !(1..=8).contains(&xt.rank()) {
            return Err(invalid(format!("x has {} dims (1-8)", xt.rank())));
        }
        for (t, w) in [(&xt, "x"), (&st, "scale"), (&yt, "y")] {
            need_nd(t, w)?;
        }
        same_dtype(&xt, &st, "x/scale")?;
        // Docs (A2): roundMode round, ceil, trunc or floor ("hybrid" is 950 only).
        let mode = if round_mode.is_null() {
            return Err(invalid("roundMode is null"));
        } else {
            CStr::from_ptr(round_mode).to_string_lossy().into_owned()
        };
        let rounding: fn(f32) -> f32 = match mode.as_str() {
            "round" => round,
            "ceil" => f32::ceil,
            "trunc" => f32::trunc,
            "floor" => f32::floor,
            other => {
                return Err(invalid(format!(
                    "roundMode {other:?} (round, ceil, trunc, floor)"
                )))
            }
        };
        // Docs (A2): dstType 2 (INT8), 3 (INT32), 29 (INT4); INT8 only is emulated.
        if dst_type != D::ACL_INT8.0 {
            return Err(invalid(format!(
                "dstType {dst_type}: INT8 (2) only is emulated (the docs also allow 3 and 29)"
            )));
        }
        if yt.dtype != D::ACL_INT8 {
            return Err(invalid(format!(
                "y dtype {:?} must be dstType INT8",
                yt.dtype
            )));
        }
        need_shape(&yt, &xt.dims, "y")?;
        // Docs (A2): axis is one of the last two dimensions of x.
        let rank = xt.rank() as i32;
        let ax = if axis < 0 { axis + rank } else { axis };
        if !(rank - 2..rank).contains(&ax) || ax < 0 {
            return Err(invalid(format!(
                "axis {axis}: one of the last two dims of x"
            )));
        }
        let along = xt.dims[ax as usize];
        // Docs: a 1-D scale has 1 or x.dim(axis) elements (multi-dimensional scales: not
        // emulated); offset has scale's dtype and shape.
        if st.rank() != 1 || !(st.dims[0] == 1 || st.dims[0] == along) {
            return Err(invalid(format!(
                "scale {:?}: 1-D of 1 or {along} elements (multi-dimensional: not emulated)",
                st.dims
            )));
        }
        if let Some(o) = &ot {
            same_dtype(&st, o, "scale/offset")?;
            need_shape(o, &st.dims, "offset")?;
        }
        Ok(Box::new(move || {
            let xv = xt.read_f32("x")?;
            let sv = st.read_f32("scale")?;
            let ov = match &ot {
                Some(o) => o.read_f32("offset")?,
                None => vec![0.0; sv.len()],
            };
            let dims: Vec<usize> = xt.dims.iter().map(|&d| d as usize).collect();
            let inner: usize = dims[ax as usize + 1..].iter().product();
            let n = dims[ax as usize];
            let q: Vec<f32> = xv
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let c = if sv.len() == 1 { 0 } else { i / inner % n };
                    let s = if sqrt_mode { sv[c] * sv[c] } else { sv[c] };
                    // Saturated to INT8's range by the conversion.
                    rounding(v * s + ov[c]).clamp(-128.0, 127.0)
                })
                .collect();
            yt.write_f32(&q, "y")
        }) as Work)
    })
}

// ----------------------------------------------------------------------------- QuantMatmulV4

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn aclnnQuantMatmulV4GetWorkspaceSize(
    x1: T,
    x2: T,
    scale: T,
    offset: T,
    pertoken_scale: T,
    bias: T,
    transpose_x1: bool,
    transpose_x2: bool,
    out: T,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnQuantMatmulV4", ws, ex, || {
        let at = tensor(x1, "x1")?;
        let bt = tensor(x2, "x2")?;
        let st = tensor(scale, "scale")?;
        let ot = opt_tensor(offset, "offset")?;
        let pt = opt_tensor(pertoken_scale, "pertokenScaleOptional")?;
        let biast = opt_tensor(bias, "bias")?;
        let yt = tensor(out, "out")?;
        // Docs: x1, x2 INT8 (INT4/INT32: the A4W4 mode, not emulated), 2-6 dims; batches and
        // a transposed x1 are not emulated; x2 ND (NZ: not emulated).
        if at.dtype != D::ACL_INT8 || bt.dtype != D::ACL_INT8 {
            return Err(invalid(format!(
                "x1 {:?} / x2 {:?}: INT8 only is emulated",
                at.dtype, bt.dtype
            )));
        }
        if at.rank() != 2 || bt.rank() != 2 || transpose_x1 {
            return Err(invalid(
                "batched matmuls and a transposed x1 are not emulated (2-D x1 [m, k])",
            ));
        }
        need_nd(&bt, "x2")?;
        let (m, k) = (at.dims[0], at.dims[1]);
        let (k2, n) = if transpose_x2 {
            (bt.dims[1], bt.dims[0])
        } else {
            (bt.dims[0], bt.dims[1])
        };
        if k2 != k {
            return Err(invalid(format!(
                "x1 [{m}, {k}] and x2 {:?} (transposeX2 {transpose_x2}) disagree on k",
                bt.dims
            )));
        }
        // Docs: scale 1-D, 1 or n elements; UINT64/INT64 (TransQuantParam) not emulated.
        if st.rank() != 1 || !(st.dims[0] == 1 || st.dims[0] == n) {
            return Err(invalid(format!("scale {:?}: 1-D of 1 or n = {n}", st.dims)));
        }
        if !matches!(st.dtype, D::ACL_FLOAT | D::ACL_BF16) {
            return Err(invalid(format!(
                "scale dtype {:?}: FLOAT32/BFLOAT16 (INT64/UINT64 scales are not emulated)",
                st.dtype
            )));
        }
        // Docs: offset only with an INT8 out (not emulated), else null.
        if ot.is_some() {
            return Err(invalid(
                "offset is only taken with an INT8 out, which is not emulated",
            ));
        }
        // Docs: pertokenScaleOptional FLOAT32, 1-D of m.
        if let Some(p) = &pt {
            if p.dtype != D::ACL_FLOAT {
                return Err(invalid(format!(
                    "pertokenScaleOptional dtype {:?} (FLOAT32)",
                    p.dtype
                )));
            }
            need_shape(p, &[m], "pertokenScaleOptional")?;
        }
        // Docs: bias 1-D [n] (3-D only for batched outs).
        if let Some(b) = &biast {
            need_shape(b, &[n], "bias")?;
        }
        need_shape(&yt, &[m, n], "out")?;
        // Docs, A2 dtype combinations (out INT8/INT32 rows not emulated):
        //   scale FLOAT32/BFLOAT16, bias null/INT32/BFLOAT16/FLOAT32, pertoken null/FLOAT32 -> BFLOAT16
        //   scale FLOAT32, bias null/INT32/FLOAT16/FLOAT32, pertoken FLOAT32 -> FLOAT16
        let bias_dt = biast.as_ref().map(|b| b.dtype);
        let ok = match yt.dtype {
            D::ACL_BF16 => matches!(
                bias_dt,
                None | Some(D::ACL_INT32) | Some(D::ACL_BF16) | Some(D::ACL_FLOAT)
            ),
            D::ACL_FLOAT16 => {
                st.dtype == D::ACL_FLOAT
                    && pt.is_some()
                    && matches!(
                        bias_dt,
                        None | Some(D::ACL_INT32) | Some(D::ACL_FLOAT16) | Some(D::ACL_FLOAT)
                    )
            }
            _ => false,
        };
        if !ok {
            return Err(invalid(format!(
                "scale {:?}, bias {bias_dt:?}, pertoken {:?}, out {:?} is not a documented \
                 combination (out BFLOAT16 or FLOAT16; INT8/INT32 outs are not emulated)",
                st.dtype,
                pt.as_ref().map(|p| p.dtype),
                yt.dtype
            )));
        }
        Ok(Box::new(move || {
            let (m, k, n) = (m as usize, k as usize, n as usize);
            let a = at.read_i64("x1")?;
            let b = bt.read_i64("x2")?;
            let s = st.read_f32("scale")?;
            let p = match &pt {
                Some(p) => p.read_f32("pertokenScaleOptional")?,
                None => vec![1.0; m],
            };
            let (bias_i, bias_f) = match &biast {
                Some(bb) if bb.dtype == D::ACL_INT32 => (Some(bb.read_i64("bias")?), None),
                Some(bb) => (None, Some(bb.read_f32("bias")?)),
                None => (None, None),
            };
            let mut y = vec![0f32; m * n];
            for r in 0..m {
                for c in 0..n {
                    let mut acc: i64 = 0;
                    for j in 0..k {
                        let w = if transpose_x2 {
                            b[c * k + j]
                        } else {
                            b[j * n + c]
                        };
                        acc += a[r * k + j] * w;
                    }
                    // Docs: (x1@x2 + bias) · scale · pertoken for INT32 bias;
                    // x1@x2 · scale · pertoken + bias for float bias.
                    acc += bias_i.as_ref().map_or(0, |bi| bi[c]);
                    let sc = if s.len() == 1 { s[0] } else { s[c] };
                    let mut v = acc as f32 * sc * p[r];
                    if let Some(bf) = &bias_f {
                        v += bf[c];
                    }
                    y[r * n + c] = v;
                }
            }
            yt.write_f32(&y, "out")
        }) as Work)
    })
}

phase2_exports!(aclnnDynamicQuant, aclnnAscendQuantV3, aclnnQuantMatmulV4);

const _: fns::aclnnDynamicQuantGetWorkspaceSize = aclnnDynamicQuantGetWorkspaceSize;
const _: fns::aclnnAscendQuantV3GetWorkspaceSize = aclnnAscendQuantV3GetWorkspaceSize;
const _: fns::aclnnQuantMatmulV4GetWorkspaceSize = aclnnQuantMatmulV4GetWorkspaceSize;
