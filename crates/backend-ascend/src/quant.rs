//! Weight-only quantized linears (AWQ / GPTQ) through `aclnnWeightQuantBatchMatmulV2`.
//!
//! At load the device-neutral [`QuantizedHost`] is repacked into what the operator takes:
//! weight `[K, N]` as signed codes (INT4 packed eight to an INT32 along N, low nibble first;
//! INT8 as it is), antiquant scale and offset `[groups, N]` in the activations' dtype, so that
//! `W[k, n] = (w + offset) · scale`. Our codes are unsigned with a zero point `z`; storing
//! `w = code − 2^(bits−1)` and `offset = 2^(bits−1) − z` gives `(code − z) · scale`. GPTQ
//! act-order weights are permuted along K so that groups are contiguous runs; the activations
//! get the same permutation (one index-select per call).

use half::bf16;
use qwen3_backend::{QuantizedHost, Result};

use crate::desc::{launch, Dt};
use crate::{shape_err, unsupported, AscendBackend, AscendTensor};

/// How to read a quantized weight; its tensor's buffer holds the codes, `[K, N/8]` INT32
/// (4-bit) or `[K, N]` INT8 (8-bit).
pub(crate) struct QuantWeight {
    bits: u32,
    k: usize,
    n: usize,
    /// The operator's `antiquantGroupSize`: 0 for one group over all of K.
    group_size: usize,
    /// `[groups, N]` (or `[N]` per channel), BF16.
    scale: AscendTensor,
    offset: AscendTensor,
    /// INT64 `[K]`: the input order under which groups are contiguous (act-order only).
    perm: Option<AscendTensor>,
}

impl QuantWeight {
    /// Device bytes besides the codes.
    pub(crate) fn param_bytes(&self) -> u64 {
        let t = |t: &AscendTensor| (t.numel() * t.dtype().size()) as u64;
        t(&self.scale) + t(&self.offset) + self.perm.as_ref().map_or(0, t)
    }
}

/// Codes of `w` transposed to `[K, N]` in input order `order`, signed, packed for the op.
fn pack_codes(w: &QuantizedHost<'_>, order: &[u32]) -> Vec<u8> {
    let (k, n) = (w.in_features, w.out_features);
    let half = 1i32 << (w.bits - 1);
    let signed = |kk: usize, o: usize| w.codes[o * k + order[kk] as usize] as i32 - half;
    if w.bits == 8 {
        let mut out = Vec::with_capacity(k * n);
        for kk in 0..k {
            out.extend((0..n).map(|o| signed(kk, o) as i8 as u8));
        }
        return out;
    }
    let mut out = Vec::with_capacity(k * n / 2);
    for kk in 0..k {
        for chunk in 0..n / 8 {
            let mut word = 0u32;
            for j in 0..8 {
                word |= ((signed(kk, chunk * 8 + j) as u32) & 0xF) << (4 * j);
            }
            out.extend_from_slice(&word.to_ne_bytes());
        }
    }
    out
}

impl AscendBackend {
    pub(crate) fn upload_quantized_weight(&self, w: &QuantizedHost<'_>) -> Result<AscendTensor> {
        w.validate()?;
        let (k, n) = (w.in_features, w.out_features);
        if w.count != 1 {
            return Err(unsupported(
                "weight-quantized MoE experts on the NPU (aclnnGroupedMatmulV4's antiquant inputs are not wired yet); serve this model on the CPU",
            ));
        }
        if !matches!(w.bits, 4 | 8) {
            return Err(unsupported(&format!("{}-bit weights on the NPU", w.bits)));
        }
        if w.bits == 4 && !n.is_multiple_of(8) {
            return Err(shape_err(
                "upload_quantized",
                format!("4-bit weights need N a multiple of 8 (INT32 packing), got {n}"),
            ));
        }
        let order = w.contiguous_order(0).ok_or_else(|| {
            unsupported(
                "an act-order (desc_act) weight split by tensor parallelism into groups of uneven length: aclnnWeightQuantBatchMatmulV2 needs contiguous groups; use --tensor-parallel-size 1 or a checkpoint without desc_act",
            )
        })?;
        let group_size = if w.groups == 1 { 0 } else { w.group_size };
        if group_size != 0 && (group_size < 32 || !group_size.is_multiple_of(32) || group_size >= k)
        {
            return Err(unsupported(&format!(
                "group size {group_size} on the NPU: aclnnWeightQuantBatchMatmulV2 takes groups that are a multiple of 32 and smaller than K = {k}"
            )));
        }
        let half = (1u32 << (w.bits - 1)) as f32;
        let to_bf16 = |v: &mut dyn Iterator<Item = f32>| -> Vec<u8> {
            v.flat_map(|x| bf16::from_f32(x).to_bits().to_ne_bytes())
                .collect()
        };
        let count = w.groups * n;
        let scale_bytes = to_bf16(&mut w.scales[..count].iter().copied());
        let offset_bytes = to_bf16(&mut w.zeros[..count].iter().map(|&z| half - z));
        let param_shape: Vec<usize> = if group_size == 0 {
            vec![n]
        } else {
            vec![w.groups, n]
        };
        let upload = |bytes: &[u8], dt: Dt, shape: &[usize]| -> Result<AscendTensor> {
            let buf = self.dev.alloc_direct(bytes.len())?;
            self.dev.upload_blocking(&buf, bytes)?;
            Ok(AscendTensor {
                buf,
                shape: shape.to_vec(),
                dt,
                quant: None,
            })
        };
        let scale = upload(&scale_bytes, Dt::BF16, &param_shape)?;
        let offset = upload(&offset_bytes, Dt::BF16, &param_shape)?;
        let identity = order.iter().enumerate().all(|(i, &o)| i == o as usize);
        let perm = if identity {
            None
        } else {
            let bytes: Vec<u8> = order
                .iter()
                .flat_map(|&o| (o as i64).to_ne_bytes())
                .collect();
            Some(upload(&bytes, Dt::I64, &[k])?)
        };
        let packed = pack_codes(w, &order);
        let codes = self.dev.alloc_direct(packed.len())?;
        self.dev.upload_blocking(&codes, &packed)?;
        // The tensor reports the logical `[out, in]` shape; `quant` says how to read it.
        Ok(AscendTensor {
            buf: codes,
            shape: vec![n, k],
            dt: Dt::I8,
            quant: Some(Box::new(QuantWeight {
                bits: w.bits,
                k,
                n,
                group_size,
                scale,
                offset,
                perm,
            })),
        })
    }

    /// `x @ W^T` through `aclnnWeightQuantBatchMatmulV2` (BF16 activations; F32 inputs are
    /// cast there and back, as the operator takes FLOAT16/BFLOAT16 only).
    pub(crate) fn quant_linear(
        &self,
        x: &AscendTensor,
        w: &AscendTensor,
        q: &QuantWeight,
    ) -> Result<AscendTensor> {
        let (m, k) = x.matrix();
        if k != q.k {
            return Err(shape_err(
                "linear",
                format!("x {:?} @ quantized w [{}, {}]^T", x.shape(), q.n, q.k),
            ));
        }
        let c = self.cann_ref();
        let (Some(ws), Some(run)) = (
            c.ops.aclnnWeightQuantBatchMatmulV2GetWorkspaceSize,
            c.ops.aclnnWeightQuantBatchMatmulV2,
        ) else {
            return Err(unsupported(
                "weight-quantized matmul (aclnnWeightQuantBatchMatmulV2, CANN 8.0.RC1+) is not exported by this CANN",
            ));
        };
        let mut shape = x.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = q.n;
        }
        let x_cast = self.cast(x, Dt::BF16)?;
        let xb = x_cast.as_ref().unwrap_or(x);
        let y = self.empty(Dt::BF16, &[m, q.n])?;
        if m > 0 {
            let permuted;
            let xin = match &q.perm {
                Some(p) => {
                    permuted = self.empty(Dt::BF16, &[m, k])?;
                    let (a, i, o) = (
                        self.td(&xb.view().reshape(&[m, k])?)?,
                        self.td(&p.view())?,
                        self.td(&permuted.view())?,
                    );
                    aclnn!(&self.dev, "aclnnIndexSelect", c.ops.aclnnIndexSelectGetWorkspaceSize,
                        c.ops.aclnnIndexSelect; a.raw, 1i64, i.raw, o.raw)?;
                    &permuted
                }
                None => xb,
            };
            let (wdt, wshape) = if q.bits == 4 {
                (Dt::I32, [q.k, q.n / 8])
            } else {
                (Dt::I8, [q.k, q.n])
            };
            let wv = crate::desc::View::contiguous(w.buf.ptr, wdt, &wshape);
            let (a, wd, s, o, yd) = (
                self.td(&xin.view().reshape(&[m, k])?)?,
                self.td(&wv)?,
                self.td(&q.scale.view())?,
                self.td(&q.offset.view())?,
                self.td(&y.view())?,
            );
            let nul = std::ptr::null();
            let group = q.group_size as std::ffi::c_int;
            aclnn!(&self.dev, "aclnnWeightQuantBatchMatmulV2", ws, run;
                a.raw, wd.raw, s.raw, o.raw, nul, nul, nul, group, yd.raw)?;
        }
        let out = match self.cast(&y, x.dtype())? {
            Some(t) => t,
            None => y,
        };
        let mut out = out;
        out.shape = shape;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_bit_codes_pack_signed_low_nibble_first_along_n() {
        // 1 input, 8 outputs: codes 0..8 around zero point 8 → signed −8..−1.
        let codes: Vec<u8> = (0..8).collect();
        let scales = vec![1.0; 8];
        let zeros = vec![8.0; 8];
        let w = QuantizedHost {
            count: 1,
            out_features: 8,
            in_features: 1,
            bits: 4,
            group_size: 1,
            groups: 1,
            codes: &codes,
            scales: &scales,
            zeros: &zeros,
            g_idx: None,
        };
        let packed = pack_codes(&w, &[0]);
        let word = u32::from_ne_bytes([packed[0], packed[1], packed[2], packed[3]]);
        for j in 0..8 {
            let nib = ((word >> (4 * j)) & 0xF) as i32;
            let signed = if nib >= 8 { nib - 16 } else { nib };
            assert_eq!(signed, j - 8);
        }
    }

    #[test]
    fn eight_bit_codes_are_signed_bytes_in_k_major_order() {
        // 2 outputs × 3 inputs, permuted inputs [2, 0, 1].
        let codes: Vec<u8> = vec![0, 128, 255, 10, 20, 30];
        let w = QuantizedHost {
            count: 1,
            out_features: 2,
            in_features: 3,
            bits: 8,
            group_size: 3,
            groups: 1,
            codes: &codes,
            scales: &[1.0, 1.0],
            zeros: &[128.0, 128.0],
            g_idx: None,
        };
        let packed = pack_codes(&w, &[2, 0, 1]);
        let v: Vec<i8> = packed.iter().map(|&b| b as i8).collect();
        assert_eq!(v, vec![127, -98, -128, -118, 0, -108]);
    }
}
