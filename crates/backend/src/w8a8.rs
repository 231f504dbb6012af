//! W8A8 linear weights (int8 weights and int8 activations, as Ascend's msModelSlim writes them)
//! in a device-neutral form, and the activation quantization each scheme applies.
//!
//! The model crate reads a checkpoint into [`W8A8Host`]; a backend packs it for its INT8
//! matmul ([`crate::Backend::upload_w8a8`]). For matrix `e`, output `o` and an activation row
//! `x` quantized to `x_q` (with per-row scale `s_x`, 1 for static):
//! `y[o] = (Σ_i x_q[i] · w[e, o, i] + bias[e, o]) · scale[e, o] · s_x`, which is
//! `x @ W^T` with `W = w · weight_scale`, up to the activation's rounding.

use crate::{BackendError, Result};

/// How a layer's input becomes int8.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActQuant {
    /// `W8A8_DYNAMIC`: per token, `s = max|x| / 127`, `x_q = round(x / s)`.
    Dynamic,
    /// `W8A8` (static, per tensor): `x_q = clamp(round(x / scale + offset), -128, 127)`.
    Static { scale: f32, offset: f32 },
}

/// One W8A8 weight `[out, in]`, or a stack of `count` (`[count, out, in]`, a MoE layer's
/// experts), before any device packing.
#[derive(Clone, Copy, Debug)]
pub struct W8A8Host<'a> {
    pub count: usize,
    pub out_features: usize,
    pub in_features: usize,
    /// `[count, out, in]`, signed.
    pub weight: &'a [i8],
    pub act: ActQuant,
    /// `[count, out]`: the weight scale (dynamic) or `deq_scale` (static, which already
    /// holds the activation scale).
    pub scale: &'a [f32],
    /// `[count, out]`, added to the int32 accumulator before scaling (static `quant_bias`,
    /// which folds in the activation offset); None: zero.
    pub bias: Option<&'a [i32]>,
}

/// Rounds half to even, as `torch.round` and CANN's quant ops (round mode "round") do.
#[inline(always)]
fn round(v: f32) -> f32 {
    v.round_ties_even()
}

/// Quantizes one activation row per `act` into `out`; returns the row's scale (1 for
/// static). An all-zero row quantizes to zeros with scale 0 under the dynamic scheme.
pub fn quantize_row(act: ActQuant, x: &[f32], out: &mut [i8]) -> f32 {
    match act {
        ActQuant::Dynamic => {
            let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let s = max / 127.0;
            if s == 0.0 {
                out.iter_mut().for_each(|q| *q = 0);
                return 0.0;
            }
            for (q, &v) in out.iter_mut().zip(x) {
                *q = round(v / s).clamp(-127.0, 127.0) as i8;
            }
            s
        }
        ActQuant::Static { scale, offset } => {
            for (q, &v) in out.iter_mut().zip(x) {
                *q = round(v / scale + offset).clamp(-128.0, 127.0) as i8;
            }
            1.0
        }
    }
}

impl W8A8Host<'_> {
    /// `[out, in]`, or `[count, out, in]` for a stack.
    pub fn shape(&self) -> Vec<usize> {
        if self.count == 1 {
            vec![self.out_features, self.in_features]
        } else {
            vec![self.count, self.out_features, self.in_features]
        }
    }

    /// Checks sizes and values, so backends may index without further checks.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| {
            Err(BackendError::Shape {
                op: "upload_w8a8",
                detail,
            })
        };
        let (c, n, k) = (self.count, self.out_features, self.in_features);
        if c == 0 || n == 0 || k == 0 {
            return bad(format!("empty W8A8 weight: {c} x [{n}, {k}]"));
        }
        if self.weight.len() != c * n * k {
            return bad(format!(
                "{} weights for {c} x [{n}, {k}]",
                self.weight.len()
            ));
        }
        if self.scale.len() != c * n || self.bias.is_some_and(|b| b.len() != c * n) {
            return bad(format!(
                "{} scales and {:?} biases for {c} x {n} outputs",
                self.scale.len(),
                self.bias.map(<[i32]>::len)
            ));
        }
        if self.scale.iter().any(|s| !s.is_finite()) {
            return bad("a W8A8 scale is not finite".into());
        }
        if let ActQuant::Static { scale, offset } = self.act {
            if !(scale.is_finite() && scale > 0.0 && (-128.0..=127.0).contains(&offset)) {
                return bad(format!(
                    "static activation scale {scale} / offset {offset}: the scale must be \
                     positive and the offset an int8"
                ));
            }
        }
        Ok(())
    }

    /// Straightforward reference: `out[m, n]` for matrix `e` and activations `x[m, k]`,
    /// quantizing each row as the scheme says (what kernels are tested against).
    pub fn matmul_reference(&self, e: usize, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.out_features, self.in_features);
        let mut out = vec![0.0; m * n];
        let mut q = vec![0i8; k];
        for r in 0..m {
            let sx = quantize_row(self.act, &x[r * k..(r + 1) * k], &mut q);
            for o in 0..n {
                let w = &self.weight[(e * n + o) * k..(e * n + o + 1) * k];
                let acc: i64 = q.iter().zip(w).map(|(&a, &b)| a as i64 * b as i64).sum();
                let bias = self.bias.map_or(0, |b| b[e * n + o]) as i64;
                out[r * n + o] = (acc + bias) as f32 * self.scale[e * n + o] * sx;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_quantize_as_the_schemes_say() {
        let mut q = [0i8; 4];
        // max 2.54 → s = 0.02: 1.27 / 0.02 = 63.5 rounds to even 64; -2.54 → -127.
        let s = quantize_row(ActQuant::Dynamic, &[1.27, -2.54, 0.01, 0.0], &mut q);
        assert!((s - 0.02).abs() < 1e-7);
        assert_eq!(q, [64, -127, 0, 0]);
        assert_eq!(quantize_row(ActQuant::Dynamic, &[0.0; 4], &mut q), 0.0);
        assert_eq!(q, [0; 4]);
        let st = ActQuant::Static {
            scale: 0.5,
            offset: -3.0,
        };
        // 1.25 / 0.5 - 3 = -0.5 → -0 (even); 100 saturates at 127; -100 at -128.
        assert_eq!(quantize_row(st, &[1.25, 100.0, -100.0, 2.0], &mut q), 1.0);
        assert_eq!(q, [0, 127, -128, 1]);
    }

    #[test]
    fn validation_catches_sizes_and_bad_parameters() {
        let w = [1i8, -2, 3, 4, 5, -6];
        let s = [0.5f32, 0.25];
        let b = [10i32, -10];
        let h = W8A8Host {
            count: 1,
            out_features: 2,
            in_features: 3,
            weight: &w,
            act: ActQuant::Static {
                scale: 0.5,
                offset: 1.0,
            },
            scale: &s,
            bias: Some(&b),
        };
        assert!(h.validate().is_ok());
        // x = [1, 2, 3] → x_q = [3, 5, 7]: row 0 = 3 - 10 + 21 + 10 = 24 → 12.
        let y = h.matmul_reference(0, &[1.0, 2.0, 3.0], 1);
        assert_eq!(y[0], 12.0);
        assert!(W8A8Host {
            weight: &w[..5],
            ..h
        }
        .validate()
        .is_err());
        assert!(W8A8Host {
            bias: Some(&b[..1]),
            ..h
        }
        .validate()
        .is_err());
        let nan = [f32::NAN, 1.0];
        assert!(W8A8Host { scale: &nan, ..h }.validate().is_err());
        let bad_act = ActQuant::Static {
            scale: 0.0,
            offset: 0.0,
        };
        assert!(W8A8Host { act: bad_act, ..h }.validate().is_err());
        assert_eq!(h.shape(), vec![2, 3]);
    }
}
