//! MoE operators and the weight-quantized matmul, from the ops-transformer / ops-nn docs:
//! aclnnMoeGatingTopKSoftmax, aclnnMoeInitRoutingV2 (dropless / active modes),
//! aclnnGroupedMatmulV4 (one x, one weight, split on M; float or A16W8 / A16W4 antiquant
//! weights), aclnnMoeFinalizeRoutingV2
//! (dropPadMode 0 and 2) and aclnnWeightQuantBatchMatmulV2 (INT8 / INT4 weights,
//! `(w + offset) * scale` per channel or per group).

use crate::nnop::{invalid, opt_tensor, opt_tensor_list, phase1, tensor, tensor_list, TensorDesc};
use crate::ops::{need_float, need_shape, same_dtype};
use crate::state::{bump, Fail, Res, STATS};
use ascend_sys::fns;
use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;
use std::ffi::c_int;

type Work = Box<dyn Fn() -> Res<()> + Send + Sync>;
type T = *const aclTensor;
type TL = *const aclTensorList;

fn exec_err(msg: String) -> Fail {
    Fail::new(ACL_ERROR_RT_AICORE_EXCEPTION, msg)
}

fn need_i32(t: &TensorDesc, what: &str) -> Res<()> {
    if t.dtype != D::ACL_INT32 {
        return Err(invalid(format!("{what} must be INT32, got {:?}", t.dtype)));
    }
    Ok(())
}

// ----------------------------------------------------------------------------- Gating

#[no_mangle]
pub unsafe extern "C" fn aclnnMoeGatingTopKSoftmaxGetWorkspaceSize(
    x: T,
    finished: T,
    k: i64,
    y: T,
    expert_idx: T,
    row_idx: T,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnMoeGatingTopKSoftmax", ws, ex, || {
        let x = tensor(x, "x")?;
        let fin = opt_tensor(finished, "finishedOptional")?;
        let y = tensor(y, "yOut")?;
        let ei = tensor(expert_idx, "expertIdxOut")?;
        let ri = tensor(row_idx, "rowIdxOut")?;
        need_float(&x, "x")?;
        same_dtype(&x, &y, "x/yOut")?;
        need_i32(&ei, "expertIdxOut")?;
        need_i32(&ri, "rowIdxOut")?;
        if x.rank() != 2 && x.rank() != 3 {
            return Err(invalid(format!("x must be 2-D or 3-D, got {:?}", x.dims)));
        }
        let e = x.dim(-1);
        // The docs list these as tiling errors (561002), not parameter errors.
        if k < 0 || k > e || k > 1024 {
            return Err(Fail::new(
                ACLNN_ERR_INNER_TILING_ERROR,
                format!("k {k} out of range [0, min({e}, 1024)]"),
            ));
        }
        let mut od = x.dims.clone();
        let r = od.len();
        od[r - 1] = k;
        need_shape(&y, &od, "yOut")?;
        need_shape(&ei, &od, "expertIdxOut")?;
        need_shape(&ri, &od, "rowIdxOut")?;
        if let Some(f) = &fin {
            if f.dtype != D::ACL_BOOL || f.dims[..] != x.dims[..r - 1] {
                return Err(invalid(
                    "finishedOptional must be BOOL with x's leading shape",
                ));
            }
        }
        Ok(Box::new(move || {
            let v = x.read_f32("x")?;
            let (e, k) = (e as usize, k as usize);
            let rows = v.len() / e;
            let done = match &fin {
                Some(f) => f.read_i64("finishedOptional")?,
                None => vec![0; rows],
            };
            let (mut yv, mut ev, mut rv) = (
                vec![0f32; rows * k],
                vec![0i64; rows * k],
                vec![0i64; rows * k],
            );
            for i in 0..rows {
                let row = &v[i * e..(i + 1) * e];
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|a| (a - m).exp()).sum();
                let p: Vec<f32> = row.iter().map(|a| (a - m).exp() / sum).collect();
                let mut order: Vec<usize> = (0..e).collect();
                order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
                for j in 0..k {
                    yv[i * k + j] = p[order[j]];
                    // A finished row routes to the out-of-range expert `E`.
                    ev[i * k + j] = if done[i] != 0 {
                        e as i64
                    } else {
                        order[j] as i64
                    };
                    rv[i * k + j] = (j * rows + i) as i64;
                }
            }
            y.write_f32(&yv, "yOut")?;
            ei.write_i64(&ev, "expertIdxOut")?;
            ri.write_i64(&rv, "rowIdxOut")
        }) as Work)
    })
}

// ----------------------------------------------------------------------------- Routing

#[no_mangle]
pub unsafe extern "C" fn aclnnMoeInitRoutingV2GetWorkspaceSize(
    x: T,
    expert_idx: T,
    active_num: i64,
    expert_capacity: i64,
    expert_num: i64,
    drop_pad_mode: i64,
    count_flag: i64,
    before_capacity_flag: bool,
    expanded_x: T,
    expanded_row_idx: T,
    count_out: T,
    before_capacity_out: T,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    let _ = (expert_capacity, before_capacity_out);
    phase1("aclnnMoeInitRoutingV2", ws, ex, || {
        let x = tensor(x, "x")?;
        let ei = tensor(expert_idx, "expertIdx")?;
        let xo = tensor(expanded_x, "expandedXOut")?;
        let ro = tensor(expanded_row_idx, "expandedRowIdxOut")?;
        need_float(&x, "x")?;
        same_dtype(&x, &xo, "x/expandedXOut")?;
        need_i32(&ei, "expertIdx")?;
        need_i32(&ro, "expandedRowIdxOut")?;
        if x.rank() != 2 || ei.rank() != 2 || x.dims[0] != ei.dims[0] {
            return Err(Fail::new(
                ACLNN_ERR_INNER_TILING_ERROR,
                format!(
                    "x {:?} and expertIdx {:?} must be 2-D with equal rows",
                    x.dims, ei.dims
                ),
            ));
        }
        if active_num < 0 || expert_num < 0 || expert_capacity < 0 {
            return Err(Fail::new(
                ACLNN_ERR_INNER_TILING_ERROR,
                "activeNum, expertNum and expertCapacity must be >= 0",
            ));
        }
        if drop_pad_mode != 0 {
            return Err(invalid(format!(
                "dropPadMode {drop_pad_mode}: the emulator implements the dropless mode (0) only"
            )));
        }
        if !(0..=2).contains(&count_flag) {
            return Err(Fail::new(
                ACLNN_ERR_INNER_TILING_ERROR,
                format!("expertTokensCountOrCumsumFlag {count_flag} not in 0..=2"),
            ));
        }
        if before_capacity_flag {
            return Err(invalid(
                "expertTokensBeforeCapacityFlag applies to the drop/pad mode only",
            ));
        }
        let (n, k, h) = (x.dims[0], ei.dims[1], x.dims[1]);
        let rows = if active_num > 0 {
            active_num.min(n * k)
        } else {
            n * k
        };
        need_shape(&xo, &[rows, h], "expandedXOut")?;
        need_shape(&ro, &[n * k], "expandedRowIdxOut")?;
        let co = if count_flag > 0 {
            if expert_num == 0 {
                return Err(Fail::new(
                    ACLNN_ERR_INNER_TILING_ERROR,
                    "expertNum must be > 0 to output expertTokensCountOrCumsumOut",
                ));
            }
            let c = tensor(count_out, "expertTokensCountOrCumsumOut")?;
            if !matches!(c.dtype, D::ACL_INT32 | D::ACL_INT64) {
                return Err(invalid(
                    "expertTokensCountOrCumsumOut must be INT32 or INT64",
                ));
            }
            need_shape(&c, &[expert_num], "expertTokensCountOrCumsumOut")?;
            Some(c)
        } else {
            None
        };
        Ok(Box::new(move || {
            let idx = ei.read_i64("expertIdx")?;
            if let Some(bad) = idx
                .iter()
                .find(|&&e| e < 0 || (co.is_some() && e >= expert_num))
            {
                return Err(exec_err(format!(
                    "expertIdx value {bad} out of range [0, {expert_num})"
                )));
            }
            let mut order: Vec<usize> = (0..idx.len()).collect();
            order.sort_by_key(|&j| (idx[j], j));
            let mut row_idx = vec![0i64; idx.len()];
            for (i, &j) in order.iter().enumerate() {
                row_idx[j] = i as i64;
            }
            let xv = x.read_f32("x")?;
            let h = h as usize;
            let mut out = Vec::with_capacity(rows as usize * h);
            for &j in order.iter().take(rows as usize) {
                let src = j / k as usize;
                out.extend_from_slice(&xv[src * h..(src + 1) * h]);
            }
            xo.write_f32(&out, "expandedXOut")?;
            ro.write_i64(&row_idx, "expandedRowIdxOut")?;
            if let Some(c) = &co {
                let mut counts = vec![0i64; expert_num as usize];
                for &e in &idx {
                    counts[e as usize] += 1;
                }
                if count_flag == 1 {
                    for i in 1..counts.len() {
                        counts[i] += counts[i - 1];
                    }
                }
                c.write_i64(&counts, "expertTokensCountOrCumsumOut")?;
            }
            Ok(())
        }) as Work)
    })
}

// ----------------------------------------------------------------------------- GMM

/// How the weights of a grouped matmul are read: float as they are, or weight-quantized
/// ("伪量化" A16W8 / A16W4) with per-expert antiquant parameters.
enum GmmWeights {
    Float(Vec<TensorDesc>),
    Quant(Box<QuantGmm>),
}

struct QuantGmm {
    /// One `[E, K, N]` INT8 / INT4 tensor, or INT32 `[E, K, N/8]` (eight INT4 a word).
    w: TensorDesc,
    packed: bool,
    /// `[E, N]` (per channel) or `[E, G, N]` (per group), FLOAT16 / BFLOAT16.
    scale: TensorDesc,
    offset: TensorDesc,
    /// Rows of K per group; K for per channel.
    group: usize,
}

/// The antiquant inputs' checks, from the aclnnGroupedMatmulV4 docs (A16W4 / A16W8
/// constraints; ops-transformer gmm/grouped_matmul): x FLOAT16/BFLOAT16 not transposed,
/// weight and x and y single tensors, scale and offset both given in x's dtype; INT4 takes
/// `[E, N]` or `[E, G, N]` with G dividing K (and an even group length when the weight is
/// transposed), INT8 `[E, N]` only; an INT4 weight's innermost axis is even. An INT32 weight
/// is eight INT4 a word along its last axis (what the V4 entry point converts INT32 to).
fn gmm_quant_weights(
    xt: &TensorDesc,
    wsl: &[TensorDesc],
    scale: Option<Vec<TensorDesc>>,
    offset: Option<Vec<TensorDesc>>,
) -> Res<GmmWeights> {
    if !matches!(xt.dtype, D::ACL_FLOAT16 | D::ACL_BF16) {
        return Err(invalid(format!(
            "weight-quantized GroupedMatmul: x dtype {:?} (FLOAT16, BFLOAT16)",
            xt.dtype
        )));
    }
    if xt.strides.last() != Some(&1) {
        return Err(invalid(
            "weight-quantized GroupedMatmul: x must not be transposed",
        ));
    }
    let (Some(scale), Some(offset)) = (scale, offset) else {
        return Err(invalid(
            "weight-quantized GroupedMatmul: antiquantScale and antiquantOffset are both required",
        ));
    };
    if wsl.len() != 1 || wsl[0].rank() != 3 || scale.len() != 1 || offset.len() != 1 {
        return Err(invalid(
            "weight-quantized GroupedMatmul: one [E, K, N] weight and one antiquant scale and offset (x, weight and y single tensors)",
        ));
    }
    let w = wsl[0].clone();
    let (sc, off) = (scale[0].clone(), offset[0].clone());
    same_dtype(xt, &sc, "x/antiquantScale")?;
    same_dtype(xt, &off, "x/antiquantOffset")?;
    need_shape(&off, &sc.dims, "antiquantOffset (as antiquantScale)")?;
    let packed = w.dtype == D::ACL_INT32;
    if packed && !w.is_contiguous() {
        return Err(invalid("an INT32-packed INT4 weight must be contiguous"));
    }
    let (e, k) = (w.dims[0], w.dims[1]);
    let n = if packed { w.dims[2] * 8 } else { w.dims[2] };
    let int4 = packed || w.dtype == D::ACL_INT4;
    // Transposed: the view's K axis is the innermost in memory.
    let transposed = !packed && w.strides[1] == 1 && w.strides[2] != 1;
    if int4 {
        let inner = if transposed { k } else { n };
        if inner % 2 != 0 {
            return Err(invalid(format!(
                "an INT4 weight's innermost axis must be even, got {inner}"
            )));
        }
    }
    let groups = match sc.dims.as_slice() {
        [se, sn] if *se == e && *sn == n => 1,
        [se, g, sn] if int4 && *se == e && *sn == n => {
            if *g <= 0 || k % g != 0 {
                return Err(invalid(format!(
                    "per-group antiquantScale [E, G, N]: G = {g} must divide K = {k}"
                )));
            }
            if transposed && (k / g) % 2 != 0 {
                return Err(invalid(format!(
                    "per-group with a transposed weight needs an even group length, got {}",
                    k / g
                )));
            }
            *g
        }
        other => {
            let want = if int4 {
                "[E, N] or [E, G, N]"
            } else {
                "[E, N] (INT8 is per channel only)"
            };
            return Err(invalid(format!(
                "antiquantScale {other:?} for a weight [E={e}, K={k}, N={n}]: expected {want}"
            )));
        }
    };
    Ok(GmmWeights::Quant(Box::new(QuantGmm {
        w,
        packed,
        scale: sc,
        offset: off,
        group: (k / groups) as usize,
    })))
}

/// Each group's end row from a group list: cumulative ends (groupListType 0) or counts (1);
/// the docs want them non-decreasing and non-negative, within x's `m` rows.
pub(crate) fn group_ends(g: &[i64], group_list_type: i64, m: i64) -> Res<Vec<usize>> {
    let mut ends = Vec::with_capacity(g.len());
    let mut acc = 0i64;
    for &v in g {
        let end = if group_list_type == 0 { v } else { acc + v };
        if end < acc || end > m {
            return Err(exec_err(format!(
                "groupList {g:?} is not a valid split of {m} rows"
            )));
        }
        ends.push(end as usize);
        acc = end;
    }
    Ok(ends)
}

#[no_mangle]
pub unsafe extern "C" fn aclnnGroupedMatmulV4GetWorkspaceSize(
    x: TL,
    weight: TL,
    bias: TL,
    scale: TL,
    offset: TL,
    antiquant_scale: TL,
    antiquant_offset: TL,
    per_token_scale: TL,
    group_list: T,
    activation_input: TL,
    activation_quant_scale: TL,
    activation_quant_offset: TL,
    split_item: i64,
    group_type: i64,
    group_list_type: i64,
    act_type: i64,
    out: *mut aclTensorList,
    activation_feature_out: *mut aclTensorList,
    dyn_quant_scale_out: *mut aclTensorList,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnGroupedMatmulV4", ws, ex, || {
        for (what, p) in [
            ("activationInputOptional", activation_input),
            ("activationQuantScaleOptional", activation_quant_scale),
            ("activationQuantOffsetOptional", activation_quant_offset),
            ("activationFeatureOutOptional", activation_feature_out as TL),
            ("dynQuantScaleOutOptional", dyn_quant_scale_out as TL),
        ] {
            if opt_tensor_list(p, what)?.is_some() {
                return Err(invalid(format!(
                    "{what}: not supported by the emulator (must be null)"
                )));
            }
        }
        let aq_scale = opt_tensor_list(antiquant_scale, "antiquantScaleOptional")?;
        let aq_offset = opt_tensor_list(antiquant_offset, "antiquantOffsetOptional")?;
        let bias = opt_tensor_list(bias, "biasOptional")?;
        let scale = opt_tensor_list(scale, "scaleOptional")?;
        let offset = opt_tensor_list(offset, "offsetOptional")?;
        let per_token = opt_tensor_list(per_token_scale, "perTokenScaleOptional")?;
        let xs = tensor_list(x, "x")?;
        let wsl = tensor_list(weight, "weight")?;
        let outs = tensor_list(out, "out")?;
        let gl = tensor(group_list, "groupListOptional")?;
        if xs.len() != 1 || outs.len() != 1 {
            return Err(invalid(
                "the emulator takes one x and one out tensor (splitItem 2/3, groupType 0)",
            ));
        }
        if !(split_item == 2 || split_item == 3) || group_type != 0 {
            return Err(invalid(format!(
                "splitItem {split_item} / groupType {group_type}: only 2|3 / 0 (split M) emulated"
            )));
        }
        if !(0..=1).contains(&group_list_type) {
            return Err(invalid(format!(
                "groupListType {group_list_type} not in 0..=1"
            )));
        }
        if act_type != 0 {
            return Err(invalid(format!(
                "actType {act_type}: only 0 (none) emulated"
            )));
        }
        let (xt, ot) = (xs[0].clone(), outs[0].clone());
        if xt.rank() != 2 {
            return Err(invalid(format!("x must be [M, K], got {:?}", xt.dims)));
        }
        if gl.dtype != D::ACL_INT64 || gl.rank() != 1 {
            return Err(invalid("groupListOptional must be a 1-D INT64 tensor"));
        }
        let e = gl.dims[0];
        // The docs (groupType 0, single tensors): at most 1024 groups.
        if e > 1024 {
            return Err(invalid(format!("{e} groups (at most 1024)")));
        }
        // Workspace (workspace.rs): the system part plus each group's offsets and a FLOAT
        // row of partial sums per token.
        crate::workspace::user(((e.max(1) * 64 + xt.dims[0].max(1) * 64 * 4) as u64).min(8 << 20));
        if xt.dtype == D::ACL_INT8 {
            let inputs = crate::ops_quant_gmm::A8W8Inputs {
                x: xt,
                weight: wsl,
                bias,
                scale,
                offset,
                antiquant: aq_scale.is_some() || aq_offset.is_some(),
                per_token,
                out: ot,
                groups: e,
            };
            let m = inputs.x.dims[0];
            return crate::ops_quant_gmm::a8w8(inputs, move || {
                group_ends(&gl.read_i64("groupListOptional")?, group_list_type, m)
            });
        }
        for (what, p) in [
            ("biasOptional", bias),
            ("scaleOptional", scale),
            ("offsetOptional", offset),
            ("perTokenScaleOptional", per_token),
        ] {
            if p.is_some() {
                return Err(invalid(format!(
                    "{what}: the quantized (INT8 x) mode only; not supported by the emulator for a float x (must be null)"
                )));
            }
        }
        need_float(&xt, "x")?;
        let quantized = wsl
            .first()
            .is_some_and(|w| matches!(w.dtype, D::ACL_INT8 | D::ACL_INT4 | D::ACL_INT32));
        let (weights, k, n) = if quantized {
            let q = gmm_quant_weights(&xt, &wsl, aq_scale, aq_offset)?;
            let GmmWeights::Quant(qg) = &q else {
                return Err(invalid("internal: quantized weights"));
            };
            let w = &qg.w;
            let n = if qg.packed { w.dims[2] * 8 } else { w.dims[2] };
            if w.dims[0] != e || w.dims[1] != xt.dims[1] {
                return Err(invalid(format!(
                    "weight {:?} must be [E={e}, K={}, N]",
                    w.dims, xt.dims[1]
                )));
            }
            (q, xt.dims[1], n)
        } else {
            if aq_scale.is_some() || aq_offset.is_some() {
                return Err(invalid(
                    "antiquantScale/antiquantOffset given, but the weight is not INT8/INT4",
                ));
            }
            // One [E, K, N] weight, or E weights of [K, N].
            let weights: Vec<TensorDesc> = if wsl.len() == 1 && wsl[0].rank() == 3 {
                (0..wsl[0].dims[0]).map(|i| wsl[0].index0(i)).collect()
            } else {
                wsl.clone()
            };
            if weights.len() as i64 != e {
                return Err(invalid(format!(
                    "{} weights for a group list of {e}",
                    weights.len()
                )));
            }
            let (k, n) = (xt.dims[1], weights[0].dim(-1));
            for w in &weights {
                same_dtype(&xt, w, "x/weight")?;
                if w.dims != [k, n] {
                    return Err(invalid(format!(
                        "weight {:?} must be [K={k}, N={n}]",
                        w.dims
                    )));
                }
            }
            (GmmWeights::Float(weights), k, n)
        };
        same_dtype(&xt, &ot, "x/out")?;
        need_shape(&ot, &[xt.dims[0], n], "out")?;
        Ok(Box::new(move || {
            let ends = group_ends(
                &gl.read_i64("groupListOptional")?,
                group_list_type,
                xt.dims[0],
            )?;
            let (k, n) = (k as usize, n as usize);
            // Expert `i`'s weight [K, N] as floats: (w + offset) * scale when quantized.
            let expert_weight: Box<dyn Fn(usize) -> Res<Vec<f32>> + '_> = match &weights {
                GmmWeights::Float(ws) => Box::new(move |i| ws[i].read_f32("weight")),
                GmmWeights::Quant(q) => {
                    let QuantGmm {
                        w,
                        packed,
                        scale,
                        offset,
                        group,
                    } = &**q;
                    let (s, o) = (
                        scale.read_f32("antiquantScale")?,
                        offset.read_f32("antiquantOffset")?,
                    );
                    let group = *group;
                    // The docs: asymmetric quantisation (a non-zero offset) only per channel.
                    if group < k && o.iter().any(|&v| v != 0.0) {
                        return Err(exec_err(
                            "A16W4 per-group antiquant with a non-zero antiquantOffset (asymmetric): the docs support asymmetric quantisation per channel only".into(),
                        ));
                    }
                    let groups = k / group;
                    let packed = *packed;
                    Box::new(move |i| {
                        let codes = if packed {
                            unpack_int32(&w.index0(i as i64).read_i64("weight")?)
                        } else {
                            w.index0(i as i64).read_f32("weight")?
                        };
                        let mut deq = vec![0f32; k * n];
                        for kk in 0..k {
                            let base = (i * groups + kk / group) * n;
                            for nn in 0..n {
                                let p = base + nn;
                                deq[kk * n + nn] = (codes[kk * n + nn] + o[p]) * s[p];
                            }
                        }
                        Ok(deq)
                    })
                }
            };
            let xv = xt.read_f32("x")?;
            let mut out = ot.read_f32("out")?;
            let mut start = 0usize;
            for (i, &end) in ends.iter().enumerate() {
                if end > start {
                    let wv = expert_weight(i)?;
                    for r in start..end {
                        let o = &mut out[r * n..(r + 1) * n];
                        o.fill(0.0);
                        for p in 0..k {
                            let a = xv[r * k + p];
                            for (ov, wv) in o.iter_mut().zip(&wv[p * n..(p + 1) * n]) {
                                *ov += a * wv;
                            }
                        }
                    }
                }
                start = end;
            }
            ot.write_f32(&out, "out")
        }) as Work)
    })
}

// ----------------------------------------------------------------------------- Finalize

#[no_mangle]
pub unsafe extern "C" fn aclnnMoeFinalizeRoutingV2GetWorkspaceSize(
    expanded_x: T,
    expanded_row_idx: T,
    x1: T,
    x2: T,
    bias: T,
    scales: T,
    expert_idx: T,
    drop_pad_mode: i64,
    out: T,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnMoeFinalizeRoutingV2", ws, ex, || {
        let xe = tensor(expanded_x, "expandedX")?;
        let ri = tensor(expanded_row_idx, "expandedRowIdx")?;
        let x1 = opt_tensor(x1, "x1Optional")?;
        let x2 = opt_tensor(x2, "x2Optional")?;
        let b = opt_tensor(bias, "biasOptional")?;
        let sc = opt_tensor(scales, "scalesOptional")?;
        let ei = opt_tensor(expert_idx, "expertIdxOptional")?;
        let o = tensor(out, "out")?;
        need_float(&xe, "expandedX")?;
        need_i32(&ri, "expandedRowIdx")?;
        same_dtype(&xe, &o, "expandedX/out")?;
        // Rule finalize-mode (README): CANN 8.3.RC1 aclnnMoeFinalizeRoutingV2 (aolapi): modes
        // 0/2 are dropless with expandedRowIdx in [0, NUM_ROWS*K-1], 1/3 drop/pad with
        // [-1, E*C-1]; the formula indexes expandedRowIdx[i + k*num_rows] (mode 0, column
        // order), mode 2 reads it in row order, as MoeInitRoutingV2 writes it (vllm-ascend
        // fused_moe.py pairs npu_moe_init_routing_v2 with drop_pad_mode=2).
        if !(0..=3).contains(&drop_pad_mode) {
            return Err(invalid(format!("dropPadMode {drop_pad_mode} not in 0..=3")));
        }
        if drop_pad_mode == 1 || drop_pad_mode == 3 {
            return Err(invalid("drop/pad modes (1, 3) are not emulated"));
        }
        if x1.is_none() && x2.is_some() {
            return Err(invalid("x2Optional given without x1Optional"));
        }
        if b.is_some() && ei.is_none() {
            return Err(invalid("biasOptional needs expertIdxOptional"));
        }
        if o.rank() != 2 || xe.rank() != 2 || ri.rank() != 1 {
            return Err(Fail::new(
                ACLNN_ERR_INNER_TILING_ERROR,
                "out/expandedX must be 2-D and expandedRowIdx 1-D",
            ));
        }
        let (n, h) = (o.dims[0], o.dims[1]);
        let k = match &sc {
            Some(s) => s.dim(-1),
            None => 1,
        };
        if ri.dims[0] != n * k || xe.dims[1] != h {
            return Err(Fail::new(
                ACLNN_ERR_INNER_TILING_ERROR,
                format!(
                    "expandedRowIdx {:?} / expandedX {:?} do not match out {:?} and K={k}",
                    ri.dims, xe.dims, o.dims
                ),
            ));
        }
        if let Some(s) = &sc {
            need_float(s, "scalesOptional")?;
            need_shape(s, &[n, k], "scalesOptional")?;
        }
        for (t, nm) in [(&x1, "x1Optional"), (&x2, "x2Optional")] {
            if let Some(t) = t {
                same_dtype(&xe, t, nm)?;
                need_shape(t, &o.dims, nm)?;
            }
        }
        if let Some(e) = &ei {
            need_i32(e, "expertIdxOptional")?;
            need_shape(e, &[n, k], "expertIdxOptional")?;
        }
        if let Some(bt) = &b {
            same_dtype(&xe, bt, "biasOptional")?;
            if bt.rank() != 2 || bt.dims[1] != h {
                return Err(invalid("biasOptional must be [E, H]"));
            }
        }
        Ok(Box::new(move || {
            let (n, k, h) = (n as usize, k as usize, h as usize);
            let xv = xe.read_f32("expandedX")?;
            let rv = ri.read_i64("expandedRowIdx")?;
            let mut acc = vec![0f32; n * h];
            for (t, nm) in [(&x1, "x1Optional"), (&x2, "x2Optional")] {
                if let Some(t) = t {
                    for (a, v) in acc.iter_mut().zip(t.read_f32(nm)?) {
                        *a += v;
                    }
                }
            }
            let sv = match &sc {
                Some(s) => s.read_f32("scalesOptional")?,
                None => vec![1.0; n],
            };
            let ev = match &ei {
                Some(e) => e.read_i64("expertIdxOptional")?,
                None => vec![0; n * k],
            };
            let bv = match &b {
                Some(bt) => Some(bt.read_f32("biasOptional")?),
                None => None,
            };
            let rows = xe.dims[0];
            for i in 0..n {
                for j in 0..k {
                    // Mode 0 indexes expandedRowIdx by column (MoeInitRouting v1 order),
                    // mode 2 by row (MoeInitRoutingV2 order).
                    let pos = if drop_pad_mode == 0 {
                        i + j * n
                    } else {
                        i * k + j
                    };
                    let r = rv[pos];
                    if r < 0 || r >= rows {
                        bump(&STATS.oob_accesses);
                        return Err(exec_err(format!(
                            "expandedRowIdx[{pos}] = {r} out of range [0, {rows})"
                        )));
                    }
                    let s = sv[i * k + j];
                    let src = &xv[r as usize * h..(r as usize + 1) * h];
                    let a = &mut acc[i * h..(i + 1) * h];
                    if let Some(bv) = &bv {
                        let e = ev[i * k + j] as usize;
                        let brow = bv
                            .get(e * h..(e + 1) * h)
                            .ok_or_else(|| exec_err(format!("expert {e} has no bias row")))?;
                        for ((a, x), bb) in a.iter_mut().zip(src).zip(brow) {
                            *a += s * (x + bb);
                        }
                    } else {
                        for (a, x) in a.iter_mut().zip(src) {
                            *a += s * x;
                        }
                    }
                }
            }
            o.write_f32(&acc, "out")
        }) as Work)
    })
}

// ----------------------------------------------------------------------------- W4A16 / W8A16

/// INT4 values of an INT32-packed weight `[K, N/8]` (eight nibbles per word, low first).
fn unpack_int32(words: &[i64]) -> Vec<f32> {
    let mut out = Vec::with_capacity(words.len() * 8);
    for &w in words {
        let w = w as u32;
        for s in 0..8 {
            let nib = ((w >> (4 * s)) & 0xF) as u8;
            out.push((((nib as i8) << 4) >> 4) as f32);
        }
    }
    out
}

#[no_mangle]
pub unsafe extern "C" fn aclnnWeightQuantBatchMatmulV2GetWorkspaceSize(
    x: T,
    weight: T,
    antiquant_scale: T,
    antiquant_offset: T,
    quant_scale: T,
    quant_offset: T,
    bias: T,
    group_size: c_int,
    y: T,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnWeightQuantBatchMatmulV2", ws, ex, || {
        if !quant_scale.is_null() || !quant_offset.is_null() {
            return Err(invalid(
                "quantScale/quantOffset (quantised output) are not emulated",
            ));
        }
        let xt = tensor(x, "x")?;
        let wt = tensor(weight, "weight")?;
        let sc = tensor(antiquant_scale, "antiquantScale")?;
        let off = opt_tensor(antiquant_offset, "antiquantOffsetOptional")?;
        let bt = opt_tensor(bias, "biasOptional")?;
        let yt = tensor(y, "y")?;
        if !matches!(xt.dtype, D::ACL_FLOAT16 | D::ACL_BF16) {
            return Err(invalid(format!(
                "x dtype {:?} (FLOAT16, BFLOAT16)",
                xt.dtype
            )));
        }
        same_dtype(&xt, &yt, "x/y")?;
        same_dtype(&xt, &sc, "x/antiquantScale")?;
        if xt.rank() != 2 || wt.rank() != 2 {
            return Err(invalid(format!(
                "x {:?} and weight {:?} must be 2-D",
                xt.dims, wt.dims
            )));
        }
        let (m, k) = (xt.dims[0], xt.dims[1]);
        let packed = wt.dtype == D::ACL_INT32;
        // Workspace (workspace.rs): the system part plus a dequantised weight tile per core.
        crate::workspace::user((k.max(1) * 256 * 2) as u64);
        let n = match wt.dtype {
            D::ACL_INT8 | D::ACL_INT4 => wt.dims[1],
            D::ACL_INT32 => wt.dims[1] * 8,
            other => {
                return Err(invalid(format!(
                    "weight dtype {other:?} (INT8, INT4, INT32-packed INT4)"
                )))
            }
        };
        if wt.dims[0] != k {
            return Err(invalid(format!(
                "weight {:?}: first dimension must be K = {k}",
                wt.dims
            )));
        }
        if packed && !wt.is_contiguous() {
            return Err(invalid("an INT32-packed weight must be contiguous"));
        }
        need_shape(&yt, &[m, n], "y")?;
        let g = group_size as i64;
        let groups = if g == 0 {
            let ok = sc.dims == [n] || sc.dims == [1, n] || sc.dims == [1];
            if !ok {
                return Err(invalid(format!(
                    "per-channel antiquantScale must be [N] or [1, N] (N={n}), got {:?}",
                    sc.dims
                )));
            }
            None
        } else {
            if g < 32 || g % 32 != 0 || g >= k {
                return Err(invalid(format!(
                    "antiquantGroupSize {g} must be a multiple of 32 in [32, K-1] (K={k})"
                )));
            }
            need_shape(&sc, &[(k + g - 1) / g, n], "antiquantScale")?;
            Some(g as usize)
        };
        if let Some(o) = &off {
            same_dtype(&xt, o, "x/antiquantOffset")?;
            need_shape(o, &sc.dims, "antiquantOffset")?;
        }
        if let Some(b) = &bt {
            if !matches!(b.dtype, D::ACL_FLOAT16 | D::ACL_BF16 | D::ACL_FLOAT)
                || b.numel() != n as usize
            {
                return Err(invalid("biasOptional must be a float [N] (or [1, N])"));
            }
        }
        Ok(Box::new(move || {
            let (m, k, n) = (m as usize, k as usize, n as usize);
            let w = if packed {
                unpack_int32(&wt.read_i64("weight")?)
            } else {
                wt.read_f32("weight")?
            };
            let s = sc.read_f32("antiquantScale")?;
            let o = match &off {
                Some(o) => o.read_f32("antiquantOffset")?,
                None => vec![0.0; s.len()],
            };
            let at = |kk: usize, nn: usize| -> usize {
                match groups {
                    Some(g) => (kk / g) * n + nn,
                    None if s.len() == 1 => 0,
                    None => nn,
                }
            };
            let mut deq = vec![0f32; k * n];
            for kk in 0..k {
                for nn in 0..n {
                    let i = at(kk, nn);
                    deq[kk * n + nn] = (w[kk * n + nn] + o[i]) * s[i];
                }
            }
            let xv = xt.read_f32("x")?;
            let bv = match &bt {
                Some(b) => b.read_f32("bias")?,
                None => vec![0.0; n],
            };
            let mut out = vec![0f32; m * n];
            for r in 0..m {
                let orow = &mut out[r * n..(r + 1) * n];
                orow.copy_from_slice(&bv);
                for kk in 0..k {
                    let a = xv[r * k + kk];
                    for (ov, d) in orow.iter_mut().zip(&deq[kk * n..(kk + 1) * n]) {
                        *ov += a * d;
                    }
                }
            }
            yt.write_f32(&out, "y")
        }) as Work)
    })
}

phase2_exports!(
    aclnnMoeGatingTopKSoftmax,
    aclnnMoeInitRoutingV2,
    aclnnGroupedMatmulV4,
    aclnnMoeFinalizeRoutingV2,
    aclnnWeightQuantBatchMatmulV2,
);

const _: fns::aclnnMoeGatingTopKSoftmaxGetWorkspaceSize = aclnnMoeGatingTopKSoftmaxGetWorkspaceSize;
const _: fns::aclnnMoeInitRoutingV2GetWorkspaceSize = aclnnMoeInitRoutingV2GetWorkspaceSize;
const _: fns::aclnnGroupedMatmulV4GetWorkspaceSize = aclnnGroupedMatmulV4GetWorkspaceSize;
const _: fns::aclnnMoeFinalizeRoutingV2GetWorkspaceSize = aclnnMoeFinalizeRoutingV2GetWorkspaceSize;
const _: fns::aclnnWeightQuantBatchMatmulV2GetWorkspaceSize =
    aclnnWeightQuantBatchMatmulV2GetWorkspaceSize;
