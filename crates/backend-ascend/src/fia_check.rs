//! The start-up self-check of fused attention V4's calling convention.
//!
//! V4's signature drifts between 8.3 builds: ops-transformer's V4 header of one commit has
//! `learnableSinkOptional`, the V4 doc of the same commit does not, and an argument off by one
//! shifts every one after it into the wrong slot: no error, wrong numbers. So V4 is used only
//! when one small call through it agrees with the same call through V3 (or V2), whose
//! signatures have been stable on A2, and with a CPU reference; otherwise the backend stays on
//! the older version and says why (start-up log and `doctor`).

use ascend_sys::AttentionApi;
use qwen3_backend::{AttnGeometry, Backend, KvCacheShape, Result};

use crate::desc::Dt;
use crate::{AscendBackend, AttentionPath};

/// Geometry of the check: one query token over a context of `CTX` slots, at a head_dim and
/// block size fused attention in TND takes on every release (64, 128).
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 64;
const BLOCK: usize = 128;
const CTX: usize = 5;
/// BF16 inputs and output (8 bits of mantissa): differences below this are rounding; a
/// shifted argument (another scale, another layout) moves the output far more.
const TOLERANCE: f32 = 3e-2;

/// What the check decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FiaV4Check {
    pub use_v4: bool,
    pub detail: String,
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503));
            ((x >> 8) % 2000) as f32 / 1000.0 - 1.0
        })
        .map(|v| half::bf16::from_f32(v).to_f32())
        .collect()
}

/// softmax(q·kᵀ·scale)·v per head over the context (GQA: heads share the KV head).
fn reference(q: &[f32], k: &[f32], v: &[f32], scale: f32) -> Vec<f32> {
    let mut out = vec![0f32; HEADS * HEAD_DIM];
    for h in 0..HEADS {
        let qh = &q[h * HEAD_DIM..(h + 1) * HEAD_DIM];
        let s: Vec<f32> = (0..CTX)
            .map(|j| {
                let kj = &k[j * KV_HEADS * HEAD_DIM..][..HEAD_DIM];
                qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
            })
            .collect();
        let m = s.iter().fold(f32::MIN, |a, &b| a.max(b));
        let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f32 = e.iter().sum();
        for (j, w) in e.iter().enumerate() {
            let vj = &v[j * KV_HEADS * HEAD_DIM..][..HEAD_DIM];
            for d in 0..HEAD_DIM {
                out[h * HEAD_DIM + d] += w / z * vj[d];
            }
        }
    }
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

impl AscendBackend {
    /// Runs one small attention through `api` and returns its output.
    fn fia_probe(&self, api: AttentionApi, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        let g = AttnGeometry {
            num_heads: HEADS,
            num_kv_heads: KV_HEADS,
            head_dim: HEAD_DIM,
            scale: 1.0 / (HEAD_DIM as f32).sqrt(),
            sliding_window: None,
        };
        let s = KvCacheShape {
            num_layers: 1,
            num_blocks: 1,
            block_size: BLOCK,
            num_kv_heads: KV_HEADS,
            head_dim: HEAD_DIM,
        };
        let slots = BLOCK * KV_HEADS * HEAD_DIM;
        let pad = |x: &[f32]| {
            let mut p = x.to_vec();
            p.resize(slots, 0.0);
            p
        };
        let qt = self.upload_float(q, Dt::BF16, &[1, HEADS * HEAD_DIM])?;
        let kt = self.upload_float(&pad(k), Dt::BF16, &[1, BLOCK, KV_HEADS * HEAD_DIM])?;
        let vt = self.upload_float(&pad(v), Dt::BF16, &[1, BLOCK, KV_HEADS * HEAD_DIM])?;
        let bt = self.upload_i32(&[0], &[1, 1])?;
        let lens = (&[1i64][..], &[CTX as i64][..]);
        let out = self.fia_call(api, &qt, &kt, &vt, lens, &bt, 1, &g, &s)?;
        let f = self
            .cast(&out, Dt::F32)?
            .ok_or_else(|| qwen3_backend::BackendError::Device("cast".into()))?;
        self.to_host_f32(&f)
    }

    /// Whether V4 agrees with the stable version `fallback` and with the CPU on one call.
    pub(crate) fn check_fia_v4(&self, fallback: AttentionApi) -> FiaV4Check {
        let (q, k, v) = (
            values(HEADS * HEAD_DIM, 1),
            values(CTX * KV_HEADS * HEAD_DIM, 2),
            values(CTX * KV_HEADS * HEAD_DIM, 3),
        );
        let want = reference(&q, &k, &v, 1.0 / (HEAD_DIM as f32).sqrt());
        let v4 = self.fia_probe(AttentionApi::FiaV4, &q, &k, &v);
        let old = self.fia_probe(fallback, &q, &k, &v);
        match (v4, old) {
            (Ok(a), Ok(b)) => {
                let (d_old, d_cpu) = (max_diff(&a, &b), max_diff(&a, &want));
                let use_v4 = d_old <= TOLERANCE && d_cpu <= TOLERANCE;
                let detail = format!(
                    "FiaV4 self-check vs {fallback:?} and the CPU: max |diff| {d_old:.1e} / {d_cpu:.1e} (tolerance {TOLERANCE:.0e}){}",
                    if use_v4 { "" } else { ": calling convention differs, using the older version" }
                );
                FiaV4Check { use_v4, detail }
            }
            (Err(e), _) => FiaV4Check {
                use_v4: false,
                detail: format!("FiaV4 self-check failed ({e}): using {fallback:?}"),
            },
            (Ok(a), Err(e)) => {
                // Nothing to compare with but the CPU.
                let d_cpu = max_diff(&a, &want);
                let use_v4 = d_cpu <= TOLERANCE;
                FiaV4Check {
                    use_v4,
                    detail: format!(
                        "FiaV4 self-check vs the CPU: max |diff| {d_cpu:.1e} (tolerance {TOLERANCE:.0e}; {fallback:?} failed: {e})"
                    ),
                }
            }
        }
    }

    /// At start-up: keeps V4 only if the self-check agrees (when V4 was picked because it is
    /// the newest exported, not asked for by the options).
    pub(crate) fn settle_fia_v4(&mut self, forced: bool) {
        let AttentionPath::Fused { api, cann } = &self.attention_path else {
            return;
        };
        if forced || *api != AttentionApi::FiaV4 {
            return;
        }
        let exported = self.cann().ops.attention_apis();
        let Some(fallback) = [AttentionApi::FiaV3, AttentionApi::FiaV2]
            .into_iter()
            .find(|a| exported.contains(a))
        else {
            return;
        };
        let cann = cann.clone();
        let check = self.check_fia_v4(fallback);
        if check.use_v4 {
            tracing::info!("attention: {}", check.detail);
        } else {
            tracing::warn!("attention: {}", check.detail);
            self.attention_api = Some(fallback);
            self.attention_path = AttentionPath::Fused {
                api: fallback,
                cann,
            };
        }
        self.fia_v4_check = Some(check);
    }

    /// What the start-up self-check of FIA V4 found (`None`: not run).
    pub fn fia_v4_check(&self) -> Option<&FiaV4Check> {
        self.fia_v4_check.as_ref()
    }
}
