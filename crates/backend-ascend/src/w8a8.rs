//! W8A8 linears (Ascend msModelSlim checkpoints) on the NPU, as vllm-ascend's
//! `--quantization ascend` runs them (`methods/w8a8_static.py`, `methods/w8a8_dynamic.py`):
//!
//! - static: `aclnnAscendQuantV3` quantizes the activations with the reciprocal of the
//!   per-tensor input scale and the offset (in F32, the op's most precise input), then
//!   `aclnnQuantMatmulV4` with the INT32 `quant_bias` and the F32 `deq_scale`;
//! - dynamic: `aclnnDynamicQuant` (per-token scales, BF16 input) then `aclnnQuantMatmulV4`
//!   with the F32 weight scale and the per-token scales.
//!
//! Both matmuls write BF16 (the A2 dtype table has no F32 output); F32 models are cast there
//! and back. `deq_scale` always reaches the op as FLOAT32 (which its A2 rows take with a
//! BF16 out): the INT64 form msModelSlim writes for FLOAT16 checkpoints (the FP32 bits in an
//! int64) is decoded on the host by the loader, so the device never sees an INT64 scale
//! (that dtype is for `aclnnTransQuantParamV2`'s packing, which we do not need). The weight stays `[n, k]` INT8 in ND and is read with `transposeX2` (vllm-ascend
//! casts it to FRACTAL_NZ for speed; not done here). MoE experts take grouped matmul's INT8
//! path ([`crate::moe_w8a8`]).

use qwen3_backend::{ActQuant, Result, W8A8Host};

use crate::desc::{Dt, View};
use crate::mem::MemKind;
use crate::quant::Quantized;
use crate::{shape_err, unsupported, AscendBackend, AscendTensor};

/// How to read a W8A8 weight; its tensor's buffer holds the INT8 `[n, k]` codes.
pub(crate) struct W8A8Weight {
    k: usize,
    n: usize,
    /// F32 `[n]`: the weight scale (dynamic) or `deq_scale` (static).
    scale: AscendTensor,
    /// INT32 `[n]`: static `quant_bias`, on the rank that adds it.
    bias: Option<AscendTensor>,
    /// Static: F32 `[1]` reciprocal input scale and `[1]` offset for `aclnnAscendQuantV3`.
    act: Option<(AscendTensor, AscendTensor)>,
}

impl W8A8Weight {
    /// Device bytes besides the codes.
    pub(crate) fn param_bytes(&self) -> u64 {
        let t = |t: &AscendTensor| (t.numel() * t.dtype().size()) as u64;
        t(&self.scale)
            + self.bias.as_ref().map_or(0, t)
            + self.act.as_ref().map_or(0, |(s, o)| t(s) + t(o))
    }
}

impl AscendBackend {
    /// A weight that lives as long as the model: an exact-size allocation, uploaded now.
    pub(crate) fn upload_weight_bytes(
        &self,
        bytes: &[u8],
        dt: Dt,
        shape: &[usize],
    ) -> Result<AscendTensor> {
        let buf = self.dev.alloc_direct(bytes.len(), MemKind::Weights)?;
        self.dev.upload_blocking(&buf, bytes)?;
        Ok(AscendTensor {
            buf,
            shape: shape.to_vec(),
            dt,
            quant: None,
        })
    }

    pub(crate) fn upload_w8a8_weight(&self, w: &W8A8Host<'_>) -> Result<AscendTensor> {
        w.validate()?;
        if w.count != 1 {
            return self.upload_w8a8_experts(w);
        }
        let (n, k) = (w.out_features, w.in_features);
        let f32s = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_ne_bytes()).collect() };
        let scale = self.upload_weight_bytes(&f32s(w.scale), Dt::F32, &[n])?;
        let bias = match w.bias {
            Some(b) => {
                let bytes: Vec<u8> = b.iter().flat_map(|x| x.to_ne_bytes()).collect();
                Some(self.upload_weight_bytes(&bytes, Dt::I32, &[n])?)
            }
            None => None,
        };
        let act = match w.act {
            ActQuant::Dynamic => None,
            ActQuant::Static { scale, offset } => Some((
                self.upload_weight_bytes(&f32s(&[1.0 / scale]), Dt::F32, &[1])?,
                self.upload_weight_bytes(&f32s(&[offset]), Dt::F32, &[1])?,
            )),
        };
        let codes: Vec<u8> = w.weight.iter().map(|&v| v as u8).collect();
        let mut t = self.upload_weight_bytes(&codes, Dt::I8, &[n, k])?;
        t.quant = Some(Box::new(Quantized::W8A8(W8A8Weight {
            k,
            n,
            scale,
            bias,
            act,
        })));
        Ok(t)
    }

    /// Per-token symmetric INT8 quantization of `x` `[m, k]` into `xq` through
    /// `aclnnDynamicQuant` (which takes FLOAT16/BFLOAT16: F32 is cast to BF16); returns the
    /// F32 `[m]` scales.
    pub(crate) fn dynamic_quant(
        &self,
        x: &AscendTensor,
        xq: &AscendTensor,
    ) -> Result<AscendTensor> {
        let (m, k) = x.matrix();
        let c = self.cann_ref();
        let (Some(ws), Some(run)) = (
            c.ops.aclnnDynamicQuantGetWorkspaceSize,
            c.ops.aclnnDynamicQuant,
        ) else {
            return Err(unsupported(
                "dynamic activation quantization (aclnnDynamicQuant) is not exported by this CANN",
            ));
        };
        let xb16 = self.cast(x, Dt::BF16)?;
        let xb = xb16.as_ref().unwrap_or(x);
        let scales = self.empty(Dt::F32, &[m])?;
        let (a, qd, sd) = (
            self.td(&xb.view().reshape(&[m, k])?)?,
            self.td(&xq.view().reshape(&[m, k])?)?,
            self.td(&scales.view())?,
        );
        aclnn!(&self.dev, "aclnnDynamicQuant", ws, run;
            a.raw, std::ptr::null(), qd.raw, sd.raw)?;
        Ok(scales)
    }

    /// `x @ W^T` for a W8A8 weight: quantize `x` per the scheme, INT8 matmul, dequantize in
    /// the epilogue.
    pub(crate) fn w8a8_linear(
        &self,
        x: &AscendTensor,
        w: &AscendTensor,
        q: &W8A8Weight,
    ) -> Result<AscendTensor> {
        let (m, k) = x.matrix();
        if k != q.k {
            return Err(shape_err(
                "linear",
                format!("x {:?} @ W8A8 w [{}, {}]^T", x.shape(), q.n, q.k),
            ));
        }
        let c = self.cann_ref();
        let (Some(mm_ws), Some(mm)) = (
            c.ops.aclnnQuantMatmulV4GetWorkspaceSize,
            c.ops.aclnnQuantMatmulV4,
        ) else {
            return Err(unsupported(
                "INT8 matmul (aclnnQuantMatmulV4) is not exported by this CANN",
            ));
        };
        let mut shape = x.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = q.n;
        }
        let y = self.empty(Dt::BF16, &[m, q.n])?;
        if m > 0 {
            let xq = self.empty(Dt::I8, &[m, k])?;
            let pertoken = match &q.act {
                Some((rscale, offset)) => {
                    let (Some(ws), Some(run)) = (
                        c.ops.aclnnAscendQuantV3GetWorkspaceSize,
                        c.ops.aclnnAscendQuantV3,
                    ) else {
                        return Err(unsupported(
                            "static activation quantization (aclnnAscendQuantV3) is not exported by this CANN",
                        ));
                    };
                    let x32 = self.cast(x, Dt::F32)?;
                    let xf = x32.as_ref().unwrap_or(x);
                    let (a, s, o, qd) = (
                        self.td(&xf.view().reshape(&[m, k])?)?,
                        self.td(&rscale.view())?,
                        self.td(&offset.view())?,
                        self.td(&xq.view())?,
                    );
                    let mode = c"round".as_ptr();
                    // dstType 2: INT8; axis -1: the scale runs along the features.
                    aclnn!(&self.dev, "aclnnAscendQuantV3", ws, run;
                        a.raw, s.raw, o.raw, false, mode, 2i32, -1i32, qd.raw)?;
                    None
                }
                None => Some(self.dynamic_quant(x, &xq)?),
            };
            let wv = View::contiguous(w.buf.ptr, Dt::I8, &[q.n, q.k]);
            let (a, b, s, yd) = (
                self.td(&xq.view())?,
                self.td(&wv)?,
                self.td(&q.scale.view())?,
                self.td(&y.view())?,
            );
            let p = match &pertoken {
                Some(t) => Some(self.td(&t.view())?),
                None => None,
            };
            let bd = match &q.bias {
                Some(t) => Some(self.td(&t.view())?),
                None => None,
            };
            let (pr, br) = (
                p.as_ref().map_or(std::ptr::null(), |d| d.raw as *const _),
                bd.as_ref().map_or(std::ptr::null(), |d| d.raw as *const _),
            );
            let nul = std::ptr::null();
            aclnn!(&self.dev, "aclnnQuantMatmulV4", mm_ws, mm;
                a.raw, b.raw, s.raw, nul, pr, br, false, true, yd.raw)?;
        }
        let mut out = match self.cast(&y, x.dtype())? {
            Some(t) => t,
            None => y,
        };
        out.shape = shape;
        Ok(out)
    }
}
