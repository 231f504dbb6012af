//! Rotary frequencies with the config's scaling folded in, as transformers computes them
//! (`modeling_rope_utils`), so logits match it position for position.

use qwen3_backend::RopeSpec;

use crate::config::{ModelConfig, RopeScaling};

/// Inverse frequencies and the cos/sin multiplier for the whole model.
pub fn rope_spec(cfg: &ModelConfig) -> RopeSpec {
    let dim = cfg.head_dim;
    let base = cfg.rope_theta;
    // transformers computes `base ** (arange(0, dim, 2) / dim)` in F32.
    let pos_freqs: Vec<f32> = (0..dim / 2)
        .map(|i| (base as f32).powf((2 * i) as f32 / dim as f32))
        .collect();
    let default = || pos_freqs.iter().map(|p| 1.0 / p).collect::<Vec<f32>>();
    match &cfg.rope_scaling {
        RopeScaling::None => RopeSpec {
            inv_freq: default(),
            mscale: 1.0,
        },
        RopeScaling::Linear { factor } => RopeSpec {
            inv_freq: default().into_iter().map(|f| f / *factor as f32).collect(),
            mscale: 1.0,
        },
        // vLLM's fixed-length form: the NTK base for the longest supported context. transformers
        // recomputes it per forward from the current length, which a batch of mixed lengths
        // cannot share.
        RopeScaling::Dynamic {
            factor,
            original_max_position_embeddings,
        } => {
            let orig = *original_max_position_embeddings as f64;
            let max_len = orig * factor;
            let base = base
                * ((factor * max_len / orig) - (factor - 1.0))
                    .powf(dim as f64 / (dim as f64 - 2.0));
            RopeSpec {
                inv_freq: (0..dim / 2)
                    .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / dim as f32))
                    .collect(),
                mscale: 1.0,
            }
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
            attention_factor,
            truncate,
        } => {
            let factor = *factor;
            let get_mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention = attention_factor.unwrap_or(match (mscale, mscale_all_dim) {
                (Some(m), Some(a)) if *m != 0.0 && *a != 0.0 => {
                    get_mscale(factor, *m) / get_mscale(factor, *a)
                }
                _ => get_mscale(factor, 1.0),
            });
            let orig = *original_max_position_embeddings as f64;
            let correction_dim = |rot: f64| {
                (dim as f64 * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
            };
            let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
            if *truncate {
                low = low.floor();
                high = high.ceil();
            }
            let low = low.max(0.0) as f32;
            let mut high = high.min(dim as f64 - 1.0) as f32;
            if low == high {
                high += 0.001;
            }
            let inv_freq = pos_freqs
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let extrapolation = 1.0 / p;
                    let interpolation = 1.0 / (factor as f32 * p);
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation_factor = 1.0 - ramp;
                    interpolation * (1.0 - extrapolation_factor)
                        + extrapolation * extrapolation_factor
                })
                .collect();
            RopeSpec {
                inv_freq,
                mscale: attention as f32,
            }
        }
    }
}
