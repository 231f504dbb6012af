//! Mixture of experts: routing (softmax + top-k in F32), `MoeInitRoutingV2`, one grouped
//! matmul per projection, `SwiGlu`, `MoeFinalizeRoutingV2`.

use qwen3_backend::{Backend, BackendError, MoeWeights, Result};

use crate::desc::{Dt, TensorListDesc, View};
use crate::{shape_err, unsupported, AscendBackend, AscendTensor};

impl AscendBackend {
    pub(crate) fn moe_impl(
        &self,
        x: &AscendTensor,
        router_logits: &AscendTensor,
        e: &MoeWeights<AscendTensor>,
    ) -> Result<AscendTensor> {
        let (t, h) = x.matrix();
        let ne = e.num_experts;
        let inter = e.gate.shape.get(1).copied().unwrap_or(0);
        let k = e.top_k;
        if router_logits.matrix() != (t, ne)
            || e.gate.shape != [ne, inter, h]
            || e.up.shape != [ne, inter, h]
            || e.down.shape != [ne, h, inter]
            || k == 0
            || k > ne
            // Float experts in the activations' dtype, or weight-quantized ones.
            || [&e.gate, &e.up, &e.down]
                .iter()
                .any(|w| w.quant.is_none() && w.dt != x.dt)
        {
            return Err(shape_err(
                "moe",
                format!(
                    "x {:?}, router {:?}, gate {:?}, up {:?}, down {:?}, top_k {k}",
                    x.shape, router_logits.shape, e.gate.shape, e.up.shape, e.down.shape
                ),
            ));
        }
        if t == 0 {
            return self.empty(x.dt, &x.shape);
        }
        let c = self.cann_ref();
        let ops = &c.ops;
        let (Some(init_ws), Some(init_run), Some(_), Some(_), Some(fin_ws), Some(fin_run)) = (
            ops.aclnnMoeInitRoutingV2GetWorkspaceSize,
            ops.aclnnMoeInitRoutingV2,
            ops.aclnnGroupedMatmulV4GetWorkspaceSize,
            ops.aclnnGroupedMatmulV4,
            ops.aclnnMoeFinalizeRoutingV2GetWorkspaceSize,
            ops.aclnnMoeFinalizeRoutingV2,
        ) else {
            return Err(unsupported(
                "MoE: aclnnMoeInitRoutingV2, aclnnGroupedMatmulV4 and aclnnMoeFinalizeRoutingV2 are needed",
            ));
        };
        // Routing as transformers' Qwen3Moe, in F32: softmax, top-k, optional renormalisation.
        // Renormalised top-k softmax weights are the softmax of the top-k logits.
        let rl_cast = self.cast(router_logits, Dt::F32)?;
        let rl = rl_cast.as_ref().unwrap_or(router_logits);
        let rl2 = rl.view().reshape(&[t, ne])?;
        let weights = self.empty(Dt::F32, &[t, k])?;
        let idx = self.empty(Dt::I64, &[t, k])?;
        let topk = |src: &View, vals: &View| -> Result<()> {
            let (a, v, i) = (self.td(src)?, self.td(vals)?, self.td(&idx.view())?);
            aclnn!(&self.dev, "aclnnTopk", ops.aclnnTopkGetWorkspaceSize, ops.aclnnTopk;
                a.raw, k as i64, 1i64, true, true, v.raw, i.raw)
        };
        let softmax = |src: &View, out: &View| -> Result<()> {
            let (a, o) = (self.td(src)?, self.td(out)?);
            aclnn!(&self.dev, "aclnnSoftmax", ops.aclnnSoftmaxGetWorkspaceSize, ops.aclnnSoftmax;
                a.raw, 1i64, o.raw)
        };
        if e.renormalize {
            let top = self.empty(Dt::F32, &[t, k])?;
            topk(&rl2, &top.view())?;
            softmax(&top.view(), &weights.view())?;
        } else {
            let probs = self.empty(Dt::F32, &[t, ne])?;
            softmax(&rl2, &probs.view())?;
            topk(&probs.view(), &weights.view())?;
        }
        let idx32 = self
            .cast(&idx, Dt::I32)?
            .ok_or_else(|| BackendError::Device("cast".into()))?;
        let scales_cast = self.cast(&weights, x.dt)?;
        let scales = scales_cast.as_ref().unwrap_or(&weights);

        // Tokens sorted by expert: expanded rows, their mapping, and per-expert cumulative counts.
        let rows = t * k;
        let expanded = self.empty(x.dt, &[rows, h])?;
        let row_idx = self.empty(Dt::I32, &[rows])?;
        let cumsum = self.empty(Dt::I32, &[ne])?;
        {
            let (xd, id) = (
                self.td(&x.view().reshape(&[t, h])?)?,
                self.td(&idx32.view())?,
            );
            let (ed, rd, cd) = (
                self.td(&expanded.view())?,
                self.td(&row_idx.view())?,
                self.td(&cumsum.view())?,
            );
            // activeNum 0 and dropPadMode 0: dropless; flag 1: cumulative counts.
            aclnn!(&self.dev, "aclnnMoeInitRoutingV2", init_ws, init_run;
                xd.raw, id.raw, 0i64, 0i64, ne as i64, 0i64, 1i64, false,
                ed.raw, rd.raw, cd.raw, std::ptr::null())?;
        }
        let group_list = self
            .cast(&cumsum, Dt::I64)?
            .ok_or_else(|| BackendError::Device("cast".into()))?;
        // One grouped matmul per projection: x [rows, kin] by expert weights seen as
        // [E, kin, n] (transposed views of the stored [E, n, kin]).
        let gmm = |input: &AscendTensor,
                   w: &AscendTensor,
                   kin: usize,
                   n: usize|
         -> Result<AscendTensor> {
            if let Some(q) = &w.quant {
                return self.quant_grouped_matmul(input, w, q, &group_list);
            }
            let out = self.empty(x.dt, &[rows, n])?;
            let wt = View {
                shape: vec![ne as i64, kin as i64, n as i64],
                strides: vec![(n * kin) as i64, 1, kin as i64],
                ..w.view()
            };
            let xv = input.view().reshape(&[rows, kin])?;
            self.grouped_matmul(&xv, &wt, GmmQuant::Float, &group_list, &out.view())?;
            Ok(out)
        };
        let g = gmm(&expanded, &e.gate, h, inter)?;
        let u = gmm(&expanded, &e.up, h, inter)?;
        let act = self.silu_mul(&g, &u)?;
        let y = gmm(&act, &e.down, inter, h)?;
        let out = self.empty(x.dt, &x.shape)?;
        {
            let (yd, rd) = (self.td(&y.view())?, self.td(&row_idx.view())?);
            let (sd, id) = (self.td(&scales.view())?, self.td(&idx32.view())?);
            let od = self.td(&out.view().reshape(&[t, h])?)?;
            let nl = std::ptr::null();
            // dropPadMode 2: dropless, expandedRowIdx in row order, as MoeInitRoutingV2 writes
            // it (CANN 8.3.RC1 aclnnMoeFinalizeRoutingV2: modes 0/2 dropless, 0 reads the
            // index column-major; vllm-ascend's fused_moe.py passes drop_pad_mode=2 with
            // npu_moe_init_routing_v2). vllm-ascend's newer path, npu_moe_token_unpermute, is
            // aclnnMoeTokenUnpermute (ops-transformer moe/moe_token_unpermute), not used here.
            aclnn!(&self.dev, "aclnnMoeFinalizeRoutingV2", fin_ws, fin_run;
                yd.raw, rd.raw, nl, nl, nl, sd.raw, id.raw, 2i64, od.raw)?;
        }
        Ok(out)
    }

    /// `out = x @ w[e]` for the rows of each expert `e`, through `aclnnGroupedMatmulV4` as
    /// every MoE projection calls it: splitItem 3 / groupType 0 (one x, one stacked weight
    /// `[E, K, N]`, one y, grouped along m), groupListType 0 (`group_list` INT64 cumulative
    /// ends), no activation; `q` says how the weights are quantized.
    pub(crate) fn grouped_matmul(
        &self,
        x: &View,
        w: &View,
        q: GmmQuant<'_>,
        group_list: &AscendTensor,
        out: &View,
    ) -> Result<()> {
        let c = self.cann_ref();
        let (Some(ws), Some(run)) = (
            c.ops.aclnnGroupedMatmulV4GetWorkspaceSize,
            c.ops.aclnnGroupedMatmulV4,
        ) else {
            return Err(unsupported("MoE: aclnnGroupedMatmulV4 is needed"));
        };
        let list =
            |v: &View| -> Result<TensorListDesc<'_>> { TensorListDesc::new(c, vec![self.td(v)?]) };
        let (xl, wl, yl) = (list(x)?, list(w)?, list(out)?);
        let pair = |a: &View, b: &View| -> Result<_> { Ok((Some(list(a)?), Some(list(b)?))) };
        let ((aqs, aqo), (sc, pt)) = match q {
            GmmQuant::Float => ((None, None), (None, None)),
            GmmQuant::Antiquant(s, o) => (pair(s, o)?, (None, None)),
            GmmQuant::PerToken(s, p) => ((None, None), pair(s, p)?),
        };
        let nl = std::ptr::null();
        let nm = std::ptr::null_mut();
        let raw = |l: &Option<TensorListDesc<'_>>| l.as_ref().map_or(nl, |l| l.raw.cast_const());
        let (aqs, aqo, sc, pt) = (raw(&aqs), raw(&aqo), raw(&sc), raw(&pt));
        let gl = self.td(&group_list.view())?;
        aclnn!(&self.dev, "aclnnGroupedMatmulV4", ws, run;
            xl.raw, wl.raw, nl, sc, nl, aqs, aqo, pt, gl.raw, nl, nl, nl,
            3i64, 0i64, 0i64, 0i64, yl.raw, nm, nm)
    }
}

/// How a grouped matmul's weights are quantized, and the op's inputs that say so.
pub(crate) enum GmmQuant<'a> {
    /// Float weights in the activations' dtype.
    Float,
    /// Weight-only ("伪量化"): antiquant scale and offset, `[E, N]` or `[E, G, N]`.
    Antiquant(&'a View, &'a View),
    /// INT8 activations and weights (A8W8): the per-channel weight scale `[E, N]` and the
    /// per-token activation scales `[rows]`, applied in the op's epilogue.
    PerToken(&'a View, &'a View),
}
