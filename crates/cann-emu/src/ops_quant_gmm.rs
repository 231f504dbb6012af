//! aclnnGroupedMatmulV4's quantized INT8 mode (A8W8), from its doc (ops-transformer
//! `gmm/grouped_matmul/docs/aclnnGroupedMatmulV4.md`, Atlas A2 rows, as of 2026-12):
//! `y_i = (x_i × weight_i + bias_i) · scale_i · per_token_scale_i` (dynamic, per-token x and
//! per-channel weight) or without `per_token_scale` (static). The entry point in `ops_moe.rs`
//! hands INT8 `x` here after its shared checks (one x, one weight, one out; splitItem 2/3;
//! groupType 0; the group list; the workspace).
//!
//! Emulated: the A2 rows with a BFLOAT16 out (scale BFLOAT16) or a FLOAT16 out (scale
//! FLOAT32), bias null or INT32, per-token scale null or FLOAT32. What the doc allows but we
//! do not emulate (INT8 outs with UINT64 scales, INT32 outs, INT4 x/weight, activations,
//! FRACTAL_NZ weights) is refused with 161002 and says so.

use crate::nnop::{invalid, TensorDesc};
use crate::ops::need_shape;
use crate::state::{Fail, Res};
use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;

type Work = Box<dyn Fn() -> Res<()> + Send + Sync>;

/// The doc: "x和weight中每一组tensor的最后一维大小都应小于65536".
const MAX_LAST_DIM: i64 = 65536;

/// The optional inputs of an A8W8 call, as the caller passed them.
pub(crate) struct A8W8Inputs {
    pub x: TensorDesc,
    pub weight: Vec<TensorDesc>,
    pub bias: Option<Vec<TensorDesc>>,
    pub scale: Option<Vec<TensorDesc>>,
    pub offset: Option<Vec<TensorDesc>>,
    pub antiquant: bool,
    pub per_token: Option<Vec<TensorDesc>>,
    pub out: TensorDesc,
    /// Groups in the group list.
    pub groups: i64,
}

fn single(list: Option<Vec<TensorDesc>>, what: &str) -> Res<Option<TensorDesc>> {
    match list {
        None => Ok(None),
        Some(v) if v.len() == 1 => Ok(v.into_iter().next()),
        Some(v) => Err(invalid(format!(
            "{what}: one tensor with x, weight and out single tensors, got {}",
            v.len()
        ))),
    }
}

/// Phase 1 of the A8W8 mode: the doc's checks, then the work, which reads the group list
/// through `ends` (the group ends, checked by the caller's reader at run time).
pub(crate) fn a8w8(
    a: A8W8Inputs,
    ends: impl Fn() -> Res<Vec<usize>> + Send + Sync + 'static,
) -> Res<Work> {
    let A8W8Inputs {
        x,
        weight,
        bias,
        scale,
        offset,
        antiquant,
        per_token,
        out,
        groups: e,
    } = a;
    // The doc's A2 quantized rows: offsetOptional and the antiquant pair are null.
    if offset.is_some() || antiquant {
        return Err(invalid(
            "INT8 GroupedMatmul: offsetOptional, antiquantScaleOptional and antiquantOffsetOptional must be null (A2 quantized rows)",
        ));
    }
    if weight.len() != 1 || weight[0].rank() != 3 {
        return Err(invalid(
            "INT8 GroupedMatmul: the emulator takes one [E, K, N] weight (x, weight and out single tensors, groupType 0)",
        ));
    }
    let w = weight.into_iter().next().expect("one weight");
    if w.dtype != D::ACL_INT8 {
        return Err(invalid(format!(
            "INT8 GroupedMatmul: weight dtype {:?} (INT8 with an INT8 x; INT4 is not emulated)",
            w.dtype
        )));
    }
    // The doc lists ND and FRACTAL_NZ weights; only ND is emulated.
    if w.format != aclFormat::ACL_FORMAT_ND {
        return Err(invalid(format!(
            "INT8 GroupedMatmul: weight format {:?} is not emulated (ND only)",
            w.format
        )));
    }
    // groupType 0, single x / weight / out: "x不支持转置", "支持weight转置".
    if x.rank() != 2 || x.strides.last() != Some(&1) {
        return Err(invalid(format!(
            "INT8 GroupedMatmul: x must be [M, K] and not transposed, got {:?} / strides {:?}",
            x.dims, x.strides
        )));
    }
    let (m, k) = (x.dims[0], x.dims[1]);
    let (we, wk, n) = (w.dims[0], w.dims[1], w.dims[2]);
    if we != e || wk != k {
        return Err(invalid(format!(
            "weight {:?} must be [E={e}, K={k}, N]",
            w.dims
        )));
    }
    let transposed = w.strides[1] == 1 && w.strides[2] != 1;
    let w_last = if transposed { k } else { n };
    if k >= MAX_LAST_DIM || w_last >= MAX_LAST_DIM {
        return Err(invalid(format!(
            "the last axis of x ({k}) and of weight ({w_last}) must be under {MAX_LAST_DIM}"
        )));
    }
    let scale = single(scale, "scaleOptional")?;
    let per_token = single(per_token, "perTokenScaleOptional")?;
    let bias = single(bias, "biasOptional")?;
    // The A2 dtype rows with a float out (INT8 x and weight, bias INT32 or null):
    //   scale BFLOAT16, perTokenScale null or FLOAT32 -> out BFLOAT16
    //   scale FLOAT32,  perTokenScale null or FLOAT32 -> out FLOAT16
    // The rows "scale UINT64 -> out INT8" and "no scale -> out INT32" are not emulated.
    let Some(scale) = scale else {
        return Err(invalid(
            "INT8 GroupedMatmul without scaleOptional (the INT32-out row) is not emulated",
        ));
    };
    let ok = matches!(
        (scale.dtype, out.dtype),
        (D::ACL_BF16, D::ACL_BF16) | (D::ACL_FLOAT, D::ACL_FLOAT16)
    );
    if !ok {
        return Err(invalid(format!(
            "INT8 GroupedMatmul: scale {:?} with out {:?} is not an A2 row (BFLOAT16 -> BFLOAT16, FLOAT32 -> FLOAT16; UINT64 -> INT8 is not emulated)",
            scale.dtype, out.dtype
        )));
    }
    // Per channel only: the weight's quantization is "perchannel" in the A2 rows.
    need_shape(&scale, &[e, n], "scaleOptional (per channel, [E, N])")?;
    if let Some(p) = &per_token {
        if p.dtype != D::ACL_FLOAT {
            return Err(invalid(format!(
                "perTokenScaleOptional dtype {:?} (FLOAT32)",
                p.dtype
            )));
        }
        // One scale per row of the single x ("pertoken场景：每个tensor 1维，shape为（M,）").
        need_shape(p, &[m], "perTokenScaleOptional")?;
    }
    if let Some(b) = &bias {
        if b.dtype != D::ACL_INT32 {
            return Err(invalid(format!(
                "biasOptional dtype {:?}: INT32 with an INT8 x (A2 quantized rows)",
                b.dtype
            )));
        }
        need_shape(b, &[e, n], "biasOptional ([E, N])")?;
    }
    need_shape(&out, &[m, n], "out")?;
    Ok(Box::new(move || {
        let ends = ends()?;
        let (m, k, n) = (m as usize, k as usize, n as usize);
        // The doc: with groupListType 0 the last value equals x's first dimension (1: the
        // sum does), so every row belongs to a group.
        if ends.last().copied().unwrap_or(0) != m {
            return Err(Fail::new(
                ACL_ERROR_RT_AICORE_EXCEPTION,
                format!("the group list covers {ends:?} of x's {m} rows (it must cover all)"),
            ));
        }
        let xv = x.read_i64("x")?;
        let s = scale.read_f32("scaleOptional")?;
        let p = match &per_token {
            Some(p) => p.read_f32("perTokenScaleOptional")?,
            None => vec![1.0; m],
        };
        let bv = match &bias {
            Some(b) => b.read_i64("biasOptional")?,
            None => vec![0; e as usize * n],
        };
        let mut y = vec![0f32; m * n];
        let mut start = 0usize;
        for (i, &end) in ends.iter().enumerate() {
            if end > start {
                let wv = w.index0(i as i64).read_i64("weight")?;
                for r in start..end {
                    for c in 0..n {
                        let acc: i64 = (0..k).map(|j| xv[r * k + j] * wv[j * n + c]).sum();
                        let acc = acc + bv[i * n + c];
                        y[r * n + c] = acc as f32 * s[i * n + c] * p[r];
                    }
                }
            }
            start = end;
        }
        out.write_f32(&y, "out")
    }))
}
