//! W8A8_DYNAMIC MoE experts (msModelSlim) on the NPU, as vllm-ascend's
//! `quantization/w8a8_dynamic.py` runs them: the expert-sorted tokens are quantized per token
//! (`aclnnDynamicQuant`), then `aclnnGroupedMatmulV4`'s INT8 mode multiplies them by each
//! expert's INT8 weight and dequantizes in its epilogue, `(x·w) · weight_scale · token_scale`.
//!
//! The op's Atlas A2 rows (ops-transformer `gmm/grouped_matmul/docs/aclnnGroupedMatmulV4.md`)
//! pair a BFLOAT16 out with a BFLOAT16 weight scale (a FLOAT32 scale only with a FLOAT16 out),
//! so the per-channel scale is kept in BF16 on the device, as vllm-ascend casts it
//! (`w13_weight_scale.to(torch.bfloat16)`). The codes stay as the checkpoint stores them,
//! `[E, N, K]` INT8 ND, read as the op's `[E, K, N]` through a transposed view (the doc
//! allows a transposed weight for a single stacked weight; vllm-ascend transposes them at
//! load and casts to FRACTAL_NZ for speed, which is not done here).

use half::bf16;
use qwen3_backend::{ActQuant, Result, W8A8Host};

use crate::desc::{Dt, View};
use crate::moe::GmmQuant;
use crate::quant::Quantized;
use crate::{shape_err, unsupported, AscendBackend, AscendTensor};

/// How to read a stack of W8A8_DYNAMIC experts; its tensor's buffer holds the INT8
/// `[E, n, k]` codes.
pub(crate) struct W8A8Experts {
    experts: usize,
    k: usize,
    n: usize,
    /// BF16 `[E, n]`: the per-channel weight scale.
    scale: AscendTensor,
}

impl W8A8Experts {
    /// Device bytes besides the codes.
    pub(crate) fn param_bytes(&self) -> u64 {
        (self.scale.numel() * self.scale.dtype().size()) as u64
    }
}

impl AscendBackend {
    /// A stack of `w.count` experts (validated by the caller).
    pub(crate) fn upload_w8a8_experts(&self, w: &W8A8Host<'_>) -> Result<AscendTensor> {
        // msModelSlim quantizes experts W8A8_DYNAMIC only (the loader refuses the rest);
        // a static stack would need a per-tensor activation quantization per expert.
        if !matches!(w.act, ActQuant::Dynamic) || w.bias.is_some() {
            return Err(unsupported(
                "static (per-tensor) W8A8 MoE experts on the NPU: only W8A8_DYNAMIC experts (per-token activations, no quant_bias) are taken",
            ));
        }
        let (e, n, k) = (w.count, w.out_features, w.in_features);
        let scale: Vec<u8> = w
            .scale
            .iter()
            .flat_map(|&s| bf16::from_f32(s).to_ne_bytes())
            .collect();
        let scale = self.upload_weight_bytes(&scale, Dt::BF16, &[e, n])?;
        let codes: Vec<u8> = w.weight.iter().map(|&v| v as u8).collect();
        let mut t = self.upload_weight_bytes(&codes, Dt::I8, &[e, n, k])?;
        t.quant = Some(Box::new(Quantized::W8A8Experts(W8A8Experts {
            experts: e,
            k,
            n,
            scale,
        })));
        Ok(t)
    }

    /// Row groups of `input` `[rows, k]` (sorted by expert, `group_list` INT64 cumulative
    /// ends) times their expert's W8A8 weight: per-token INT8, the INT8 grouped matmul, BF16
    /// out (cast back to `input`'s dtype).
    pub(crate) fn w8a8_grouped_matmul(
        &self,
        input: &AscendTensor,
        w: &AscendTensor,
        q: &W8A8Experts,
        group_list: &AscendTensor,
    ) -> Result<AscendTensor> {
        let (rows, k) = input.matrix();
        if q.experts != group_list.numel() || k != q.k {
            return Err(shape_err(
                "moe",
                format!(
                    "x {:?} by {} W8A8 experts [{}, {}], group list {:?}",
                    input.shape(),
                    q.experts,
                    q.n,
                    q.k,
                    group_list.shape()
                ),
            ));
        }
        let xq = self.empty(Dt::I8, &[rows, k])?;
        let token_scale = self.dynamic_quant(input, &xq)?;
        let (e, n) = (q.experts as i64, q.n as i64);
        let wv = View {
            shape: vec![e, k as i64, n],
            strides: vec![n * k as i64, 1, k as i64],
            ..View::contiguous(w.buf.ptr, Dt::I8, &[q.experts, q.n, q.k])
        };
        let y = self.empty(Dt::BF16, &[rows, q.n])?;
        let (sv, pv) = (q.scale.view(), token_scale.view());
        self.grouped_matmul(
            &xq.view(),
            &wv,
            GmmQuant::PerToken(&sv, &pv),
            group_list,
            &y.view(),
        )?;
        Ok(match self.cast(&y, input.dtype())? {
            Some(t) => t,
            None => y,
        })
    }
}
