//! Weight-only quantized linears (AWQ / GPTQ) through `aclnnWeightQuantBatchMatmulV2`.
//!
//! At load the device-neutral [`QuantizedHost`] is repacked into what the operator takes:
//! weight `[K, N]` as signed codes (INT4 packed eight to an INT32 along N, low nibble first;
//! INT8 as it is), antiquant scale and offset `[groups, N]` in the activations' dtype, so that
//! `W[k, n] = (w + offset) · scale`. Our codes are unsigned with a zero point `z`; storing
//! `w = code − 2^(bits−1)` and `offset = 2^(bits−1) − z` gives `(code − z) · scale`. GPTQ
//! act-order weights are permuted along K so that groups are contiguous runs; the activations
//! get the same permutation (one index-select per call).
//!
//! Stacked MoE experts (`count > 1`) go to `aclnnGroupedMatmulV4`'s A16W4 / A16W8 mode instead:
//! codes `[E, K, N/8]` INT32 (the op's V4 entry reads an INT32 weight as eight INT4 along its
//! last axis) or `[E, K, N]` INT8, antiquant scale and offset `[E, N]` (per channel) or
//! `[E, G, N]` (per group, INT4 only, G dividing K). Its docs take asymmetric INT4 per channel
//! only, so asymmetric grouped experts (AWQ's) split the zero point out:
//! `(q − z)·s = (q − 8)·s + (8 − z)·s`. The first term is symmetric INT4 (offset 0); the second
//! is constant within a group, so `x @ W₂ = xs @ b` with `xs [rows, G]` the per-group sums of
//! `x` (`aclnnReduceSum`, F32, cast to BF16) and `b = (8 − z)·s [E, G, N]` (F32, rounded once to
//! BF16): a second, float grouped matmul on the same group list, added to the first. It has no
//! per-expert input permutation, so act-order experts must all share one input order.

use half::bf16;
use qwen3_backend::{BackendError, QuantizedHost, Result};

use crate::desc::{Dt, IntArrayDesc, ScalarDesc};
use crate::moe::GmmQuant;
use crate::{shape_err, unsupported, AscendBackend, AscendTensor};

/// A quantized weight's reading instructions: weight-only (AWQ / GPTQ, here) or W8A8
/// (msModelSlim, [`crate::w8a8`]).
pub(crate) enum Quantized {
    WeightOnly(QuantWeight),
    W8A8(crate::w8a8::W8A8Weight),
    /// Stacked W8A8_DYNAMIC MoE experts ([`crate::moe_w8a8`]).
    W8A8Experts(crate::moe_w8a8::W8A8Experts),
}

impl Quantized {
    /// Device bytes besides the codes.
    pub(crate) fn param_bytes(&self) -> u64 {
        match self {
            Quantized::WeightOnly(q) => q.param_bytes(),
            Quantized::W8A8(q) => q.param_bytes(),
            Quantized::W8A8Experts(q) => q.param_bytes(),
        }
    }
}

/// How to read a quantized weight; its tensor's buffer holds the codes, `[K, N/8]` INT32
/// (4-bit) or `[K, N]` INT8 (8-bit).
pub(crate) struct QuantWeight {
    /// Stacked matrices: 1 for a linear layer (WQBMM), the experts of a MoE layer (GMM).
    experts: usize,
    bits: u32,
    k: usize,
    n: usize,
    /// The operator's `antiquantGroupSize`: 0 for one group over all of K.
    group_size: usize,
    /// `[groups, N]` (or `[N]` per channel), BF16; experts: `[E, groups, N]` (or `[E, N]`).
    scale: AscendTensor,
    offset: AscendTensor,
    /// INT64 `[K]`: the input order under which groups are contiguous (act-order only).
    perm: Option<AscendTensor>,
    /// Asymmetric grouped experts: `b = (2^(bits−1) − z)·s`, BF16 `[E, G, N]`, the zero
    /// points' share of the weight (the GMM's own offset is then 0).
    zero_term: Option<AscendTensor>,
}

impl QuantWeight {
    /// Device bytes besides the codes.
    pub(crate) fn param_bytes(&self) -> u64 {
        let t = |t: &AscendTensor| (t.numel() * t.dtype().size()) as u64;
        t(&self.scale)
            + t(&self.offset)
            + self.perm.as_ref().map_or(0, t)
            + self.zero_term.as_ref().map_or(0, t)
    }
}

/// Codes of matrix `e` of `w` transposed to `[K, N]` in input order `order`, signed, packed
/// for the op (appended to `out`).
fn pack_codes(w: &QuantizedHost<'_>, e: usize, order: &[u32], out: &mut Vec<u8>) {
    let (k, n) = (w.in_features, w.out_features);
    let half = 1i32 << (w.bits - 1);
    let base = e * n * k;
    let signed = |kk: usize, o: usize| w.codes[base + o * k + order[kk] as usize] as i32 - half;
    if w.bits == 8 {
        for kk in 0..k {
            out.extend((0..n).map(|o| signed(kk, o) as i8 as u8));
        }
        return;
    }
    for kk in 0..k {
        for chunk in 0..n / 8 {
            let mut word = 0u32;
            for j in 0..8 {
                word |= ((signed(kk, chunk * 8 + j) as u32) & 0xF) << (4 * j);
            }
            out.extend_from_slice(&word.to_ne_bytes());
        }
    }
}

/// The input order and the op's group size (0: per channel) for one linear layer through
/// `aclnnWeightQuantBatchMatmulV2`, or the refusal.
fn dense_layout(w: &QuantizedHost<'_>) -> Result<(Vec<u32>, usize)> {
    let k = w.in_features;
    let order = w.contiguous_order(0).ok_or_else(|| {
        unsupported(
            "an act-order (desc_act) weight split by tensor parallelism into groups of uneven length: aclnnWeightQuantBatchMatmulV2 needs contiguous groups; use --tensor-parallel-size 1 or a checkpoint without desc_act",
        )
    })?;
    let group_size = if w.groups == 1 { 0 } else { w.group_size };
    if group_size != 0 && (group_size < 32 || !group_size.is_multiple_of(32) || group_size >= k) {
        return Err(unsupported(&format!(
            "group size {group_size} on the NPU: aclnnWeightQuantBatchMatmulV2 takes groups that are a multiple of 32 and smaller than K = {k}"
        )));
    }
    Ok((order, group_size))
}

/// The shared input order and group size (0: per channel) for a stack of experts through
/// `aclnnGroupedMatmulV4`'s antiquant mode, or the refusal (what its A16W4 / A16W8 docs do
/// not take; asymmetric INT4 in groups is taken, its zero points split out at upload).
fn experts_layout(w: &QuantizedHost<'_>) -> Result<(Vec<u32>, usize)> {
    let k = w.in_features;
    let order = w.contiguous_order(0);
    let shared = order.is_some() && (1..w.count).all(|e| w.contiguous_order(e) == order);
    let order = order.filter(|_| shared).ok_or_else(|| {
        unsupported(
            "act-order (desc_act) MoE experts on the NPU: aclnnGroupedMatmulV4 has no per-expert input permutation, and these experts share no input order under which their groups are contiguous; use a checkpoint without desc_act or serve this model on the CPU",
        )
    })?;
    if w.groups == 1 {
        return Ok((order, 0));
    }
    let gs = w.group_size;
    if w.bits == 8 {
        return Err(unsupported(&format!(
            "8-bit MoE experts in groups of {gs} on the NPU: aclnnGroupedMatmulV4 takes INT8 weights per channel only; use a per-channel (group_size -1) checkpoint or serve this model on the CPU"
        )));
    }
    if gs * w.groups != k {
        return Err(unsupported(&format!(
            "MoE experts in groups of {gs} over {k} inputs on the NPU: aclnnGroupedMatmulV4 needs the group count to divide K"
        )));
    }
    Ok((order, gs))
}

impl AscendBackend {
    pub(crate) fn upload_quantized_weight(&self, w: &QuantizedHost<'_>) -> Result<AscendTensor> {
        w.validate()?;
        let (e, k, n) = (w.count, w.in_features, w.out_features);
        if !matches!(w.bits, 4 | 8) {
            return Err(unsupported(&format!("{}-bit weights on the NPU", w.bits)));
        }
        if w.bits == 4 && !n.is_multiple_of(8) {
            return Err(shape_err(
                "upload_quantized",
                format!("4-bit weights need N a multiple of 8 (INT32 packing), got {n}"),
            ));
        }
        let (order, group_size) = if e == 1 {
            dense_layout(w)?
        } else {
            experts_layout(w)?
        };
        let half = (1u32 << (w.bits - 1)) as f32;
        let to_bf16 = |v: &mut dyn Iterator<Item = f32>| -> Vec<u8> {
            v.flat_map(|x| bf16::from_f32(x).to_bits().to_ne_bytes())
                .collect()
        };
        // [E, groups, N] on the host is the op's layout already.
        let scale_bytes = to_bf16(&mut w.scales.iter().copied());
        // GroupedMatmulV4 takes asymmetric INT4 per channel only: grouped experts with zero
        // points keep a zero offset and carry `offset · scale` as a separate term.
        let split_zeros = e > 1 && group_size != 0 && w.zeros.iter().any(|&z| z != half);
        let offset_bytes = if split_zeros {
            to_bf16(&mut w.zeros.iter().map(|_| 0.0))
        } else {
            to_bf16(&mut w.zeros.iter().map(|&z| half - z))
        };
        let mut param_shape: Vec<usize> = if group_size == 0 {
            vec![n]
        } else {
            vec![w.groups, n]
        };
        if e > 1 {
            param_shape.insert(0, e);
        }
        let upload = |bytes: &[u8], dt: Dt, shape: &[usize]| -> Result<AscendTensor> {
            let buf = self
                .dev
                .alloc_direct(bytes.len(), crate::mem::MemKind::Weights)?;
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
        let zero_term = if split_zeros {
            let b = w
                .zeros
                .iter()
                .zip(w.scales)
                .map(|(&z, &sc)| (half - z) * sc);
            Some(upload(
                &to_bf16(&mut b.into_iter()),
                Dt::BF16,
                &param_shape,
            )?)
        } else {
            None
        };
        let mut packed = Vec::with_capacity(e * k * n * w.bits as usize / 8);
        for m in 0..e {
            pack_codes(w, m, &order, &mut packed);
        }
        let codes = self
            .dev
            .alloc_direct(packed.len(), crate::mem::MemKind::Weights)?;
        self.dev.upload_blocking(&codes, &packed)?;
        // The tensor reports the logical `[out, in]` (`[E, out, in]`) shape; `quant` says how
        // to read it.
        Ok(AscendTensor {
            buf: codes,
            shape: w.shape(),
            dt: Dt::I8,
            quant: Some(Box::new(Quantized::WeightOnly(QuantWeight {
                experts: e,
                bits: w.bits,
                k,
                n,
                group_size,
                scale,
                offset,
                perm,
                zero_term,
            }))),
        })
    }

    /// `x @ W^T` through `aclnnWeightQuantBatchMatmulV2` (BF16 activations; F32 inputs are
    /// cast there and back, as the operator takes FLOAT16/BFLOAT16 only).
    pub(crate) fn quant_linear(
        &self,
        x: &AscendTensor,
        w: &AscendTensor,
        q: &Quantized,
    ) -> Result<AscendTensor> {
        let q = match q {
            Quantized::WeightOnly(q) => q,
            Quantized::W8A8(q) => return self.w8a8_linear(x, w, q),
            Quantized::W8A8Experts(_) => {
                return Err(shape_err("linear", "W8A8 MoE experts are no linear".into()))
            }
        };
        let (m, k) = x.matrix();
        if q.experts != 1 || k != q.k {
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

    /// Row groups of `input` `[rows, K]` (sorted by expert, `group_list` INT64 cumulative ends)
    /// times their expert's quantized weight, through `aclnnGroupedMatmulV4`'s antiquant mode:
    /// BF16 in and out (the mode takes FLOAT16/BFLOAT16 only; F32 is cast there and back).
    pub(crate) fn quant_grouped_matmul(
        &self,
        input: &AscendTensor,
        w: &AscendTensor,
        q: &Quantized,
        group_list: &AscendTensor,
    ) -> Result<AscendTensor> {
        let q = match q {
            Quantized::WeightOnly(q) => q,
            Quantized::W8A8Experts(q) => return self.w8a8_grouped_matmul(input, w, q, group_list),
            Quantized::W8A8(_) => {
                return Err(shape_err("moe", "a W8A8 linear is no expert stack".into()))
            }
        };
        let (rows, k) = input.matrix();
        if q.experts != group_list.numel() || k != q.k {
            return Err(shape_err(
                "moe",
                format!(
                    "x {:?} by {} quantized experts [{}, {}], group list {:?}",
                    input.shape(),
                    q.experts,
                    q.n,
                    q.k,
                    group_list.shape()
                ),
            ));
        }
        let c = self.cann_ref();
        let x_cast = self.cast(input, Dt::BF16)?;
        let xb = x_cast.as_ref().unwrap_or(input);
        let permuted;
        let xin = match &q.perm {
            // Act-order experts that share one input order: permute the rows' inputs once.
            Some(p) => {
                permuted = self.empty(Dt::BF16, &[rows, k])?;
                let (a, i, o) = (
                    self.td(&xb.view().reshape(&[rows, k])?)?,
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
            (Dt::I32, [q.experts, q.k, q.n / 8])
        } else {
            (Dt::I8, [q.experts, q.k, q.n])
        };
        let y = self.empty(Dt::BF16, &[rows, q.n])?;
        let xv = xin.view().reshape(&[rows, k])?;
        let wv = crate::desc::View::contiguous(w.buf.ptr, wdt, &wshape);
        let (sv, ov) = (q.scale.view(), q.offset.view());
        let aq = GmmQuant::Antiquant(&sv, &ov);
        self.grouped_matmul(&xv, &wv, aq, group_list, &y.view())?;
        if let Some(b) = &q.zero_term {
            self.add_zero_term(xin, b, q.group_size, group_list, &y)?;
        }
        Ok(match self.cast(&y, input.dtype())? {
            Some(t) => t,
            None => y,
        })
    }

    /// `y += xs @ b[e]` per expert's rows: the zero points' share of asymmetric grouped
    /// experts, with `xs [rows, G]` the sums of `x [rows, K]` over each group of
    /// `group_size` inputs and `b [E, G, N]` (see the module docs).
    fn add_zero_term(
        &self,
        x: &AscendTensor,
        b: &AscendTensor,
        group_size: usize,
        group_list: &AscendTensor,
        y: &AscendTensor,
    ) -> Result<()> {
        let c = self.cann_ref();
        let (Some(sum_ws), Some(sum_run)) =
            (c.ops.aclnnReduceSumGetWorkspaceSize, c.ops.aclnnReduceSum)
        else {
            return Err(unsupported(
                "asymmetric (zero-point) 4-bit MoE experts in groups on the NPU need aclnnReduceSum, which this CANN does not export",
            ));
        };
        let (rows, k) = x.matrix();
        let groups = k / group_size.max(1);
        // Sums in F32, rounded once to BF16 (the grouped matmul takes BF16 with a BF16 weight).
        let sums = self.empty(Dt::F32, &[rows, groups])?;
        {
            let (a, o) = (
                self.td(&x.view().reshape(&[rows, groups, group_size])?)?,
                self.td(&sums.view())?,
            );
            let last = IntArrayDesc::new(c, &[-1])?;
            aclnn!(&self.dev, "aclnnReduceSum", sum_ws, sum_run;
                a.raw, last.raw.cast_const(), false, Dt::F32.acl(), o.raw)?;
        }
        let sums_bf = self
            .cast(&sums, Dt::BF16)?
            .ok_or_else(|| BackendError::Device("cast".into()))?;
        let term = self.empty(Dt::BF16, &[rows, y.matrix().1])?;
        self.grouped_matmul(
            &sums_bf.view(),
            &b.view(),
            GmmQuant::Float,
            group_list,
            &term.view(),
        )?;
        let (yd, td) = (self.td(&y.view())?, self.td(&term.view())?);
        let one = ScalarDesc::f32(c, 1.0)?;
        aclnn!(&self.dev, "aclnnInplaceAdd", c.ops.aclnnInplaceAddGetWorkspaceSize,
            c.ops.aclnnInplaceAdd; yd.raw, td.raw, one.raw)
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
        let mut packed = Vec::new();
        pack_codes(&w, 0, &[0], &mut packed);
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
        let mut packed = Vec::new();
        pack_codes(&w, 0, &[2, 0, 1], &mut packed);
        let v: Vec<i8> = packed.iter().map(|&b| b as i8).collect();
        assert_eq!(v, vec![127, -98, -128, -118, 0, -108]);
    }
}
