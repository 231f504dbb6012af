//! Weight-only quantized linear weights in a device-neutral form.
//!
//! The model crate turns each checkpoint format (AWQ, GPTQ with its quirks) into
//! [`QuantizedHost`]; a backend packs that as its kernels want it ([`crate::Backend::upload_quantized`]).
//! So no backend knows about AWQ's nibble order or GPTQ's zero-point off-by-one.
//!
//! The weight of matrix `e`, output `o`, input `i` is
//! `(codes[e, o, i] - zeros[e, g, o]) * scales[e, g, o]`, where the group `g` of input `i` is
//! `g_idx[e, i]` when given (GPTQ act-order, or a tensor-parallel slice of it), else
//! `i / group_size`. The result of [`crate::Backend::linear`] with such a weight is
//! `x @ W^T`, exactly as for a dense `[out, in]` weight.

use crate::{BackendError, Result};

/// One quantized weight matrix `[out, in]`, or a stack of `count` of them (`[count, out, in]`,
/// the experts of a MoE layer), before any device packing.
#[derive(Clone, Copy, Debug)]
pub struct QuantizedHost<'a> {
    /// Stacked matrices: 1 for a linear layer, the number of experts for MoE weights.
    pub count: usize,
    pub out_features: usize,
    pub in_features: usize,
    /// 4 or 8: every code is below `2^bits`.
    pub bits: u32,
    /// Inputs per group when `g_idx` is None (`in_features` for one group over all inputs);
    /// the last group may be shorter.
    pub group_size: usize,
    /// Rows of `scales` and `zeros` per matrix.
    pub groups: usize,
    /// `[count, out, in]`, one unsigned code per byte (not packed: each backend packs).
    pub codes: &'a [u8],
    /// `[count, groups, out]`, as AWQ, GPTQ and Ascend's antiquant scale lay them out.
    pub scales: &'a [f32],
    /// `[count, groups, out]`: the real zero point subtracted from a code (symmetric
    /// schemes give `2^(bits-1)`).
    pub zeros: &'a [f32],
    /// `[count, in]`: each input's group, when groups are not contiguous runs of
    /// `group_size` (GPTQ act-order). A backend that needs contiguous groups can sort the
    /// inputs by group and permute the activations the same way.
    pub g_idx: Option<&'a [u32]>,
}

impl QuantizedHost<'_> {
    /// The tensor shape a backend reports: `[out, in]`, or `[count, out, in]` for a stack.
    pub fn shape(&self) -> Vec<usize> {
        if self.count == 1 {
            vec![self.out_features, self.in_features]
        } else {
            vec![self.count, self.out_features, self.in_features]
        }
    }

    /// Group of input `i` of matrix `e`.
    pub fn group_of(&self, e: usize, i: usize) -> usize {
        match self.g_idx {
            Some(g) => g[e * self.in_features + i] as usize,
            None => i / self.group_size,
        }
    }

    /// The dequantized weight `[out, in]` of matrix `e` at `(o, i)` (for tests and reference
    /// paths; kernels never materialise the whole matrix).
    pub fn weight(&self, e: usize, o: usize, i: usize) -> f32 {
        let (n, k) = (self.out_features, self.in_features);
        let g = self.group_of(e, i);
        let q = self.codes[(e * n + o) * k + i] as f32;
        let gi = (e * self.groups + g) * n + o;
        (q - self.zeros[gi]) * self.scales[gi]
    }

    /// For kernels that need contiguous groups of `group_size` (Ascend's antiquant group
    /// size): the input order under which matrix `e`'s groups are consecutive runs of
    /// `group_size` in group order, to apply to the activations and the codes alike; None when
    /// no order does it (a tensor-parallel slice of an act-order weight, whose runs differ in
    /// length). The identity without `g_idx`.
    pub fn contiguous_order(&self, e: usize) -> Option<Vec<u32>> {
        let k = self.in_features;
        let Some(g) = self.g_idx else {
            return Some((0..k as u32).collect());
        };
        let g = &g[e * k..(e + 1) * k];
        let mut order: Vec<u32> = (0..k as u32).collect();
        order.sort_by_key(|&i| g[i as usize]);
        let runs_fit = order
            .iter()
            .enumerate()
            .all(|(j, &i)| g[i as usize] as usize == j / self.group_size);
        runs_fit.then_some(order)
    }

    /// Checks sizes and ranges, so backends may index without further checks.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| {
            Err(BackendError::Shape {
                op: "upload_quantized",
                detail,
            })
        };
        let (c, n, k) = (self.count, self.out_features, self.in_features);
        if !matches!(self.bits, 4 | 8) {
            return Err(BackendError::Unsupported(format!(
                "{}-bit quantized weights",
                self.bits
            )));
        }
        if c == 0 || n == 0 || k == 0 || self.group_size == 0 || self.groups == 0 {
            return bad(format!(
                "empty quantized weight: {c} x [{n}, {k}], group size {}, {} groups",
                self.group_size, self.groups
            ));
        }
        if self.g_idx.is_none() && self.groups != k.div_ceil(self.group_size) {
            return bad(format!(
                "{} groups for {k} inputs in groups of {}",
                self.groups, self.group_size
            ));
        }
        if self.codes.len() != c * n * k {
            return bad(format!("{} codes for {c} x [{n}, {k}]", self.codes.len()));
        }
        let per_group = c * self.groups * n;
        if self.scales.len() != per_group || self.zeros.len() != per_group {
            return bad(format!(
                "{} scales and {} zeros for {c} x [{}, {n}]",
                self.scales.len(),
                self.zeros.len(),
                self.groups
            ));
        }
        if self.bits == 4 && self.codes.iter().any(|&q| q >= 16) {
            return bad("a 4-bit code is 16 or more".into());
        }
        if let Some(g) = self.g_idx {
            if g.len() != c * k {
                return bad(format!("{} group indices for {c} x {k} inputs", g.len()));
            }
            if g.iter().any(|&x| x as usize >= self.groups) {
                return bad(format!("a group index is not below {}", self.groups));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host<'a>(codes: &'a [u8], s: &'a [f32], z: &'a [f32]) -> QuantizedHost<'a> {
        QuantizedHost {
            count: 1,
            out_features: 2,
            in_features: 3,
            bits: 4,
            group_size: 2,
            groups: 2,
            codes,
            scales: s,
            zeros: z,
            g_idx: None,
        }
    }

    #[test]
    fn weight_follows_groups_and_validation_catches_sizes() {
        let codes = [1, 2, 3, 4, 5, 15];
        let s = [1.0, 2.0, 0.5, 0.25];
        let z = [8.0, 8.0, 0.0, 1.0];
        let h = host(&codes, &s, &z);
        assert!(h.validate().is_ok());
        // Input 2 is in group 1: (3 - 0) * 0.5.
        assert_eq!(h.weight(0, 0, 2), 1.5);
        // Output 1, input 0, group 0: (4 - 8) * 2.
        assert_eq!(h.weight(0, 1, 0), -8.0);
        assert_eq!(h.shape(), vec![2, 3]);
        let short = host(&codes[..5], &s, &z);
        assert!(short.validate().is_err());
        let big = [1, 2, 3, 4, 5, 16];
        assert!(host(&big, &s, &z).validate().is_err());
        let g = [1u32, 0, 2];
        let bad_g = QuantizedHost {
            g_idx: Some(&g),
            ..host(&codes, &s, &z)
        };
        assert!(bad_g.validate().is_err());
        assert_eq!(h.contiguous_order(0), Some(vec![0, 1, 2]));
        // Act-order: inputs 1 and 2 form group 0, input 0 group 1.
        let act = [1u32, 0, 0];
        let h_act = QuantizedHost {
            g_idx: Some(&act),
            ..host(&codes, &s, &z)
        };
        assert!(h_act.validate().is_ok());
        assert_eq!(h_act.contiguous_order(0), Some(vec![1, 2, 0]));
        assert_eq!(h_act.weight(0, 0, 0), (1.0 - 0.0) * 0.5);
        // A slice whose groups hold 1 and 2 inputs cannot be runs of 2.
        let uneven = [1u32, 0, 1];
        let h_uneven = QuantizedHost {
            g_idx: Some(&uneven),
            ..host(&codes, &s, &z)
        };
        assert_eq!(h_uneven.contiguous_order(0), None);
        let three = QuantizedHost {
            bits: 3,
            ..host(&codes, &s, &z)
        };
        assert!(matches!(
            three.validate(),
            Err(BackendError::Unsupported(_))
        ));
    }
}
