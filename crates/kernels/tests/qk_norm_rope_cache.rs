//! The fused q/k RMSNorm + neox RoPE + paged KV write kernel, run on the AscendC sim, against
//! the plain definition in F64 on the same BF16 inputs.
//!
//! Bound: the kernel computes in F32 and rounds once to BF16 (half an ulp: 2^-9 relative);
//! F32 error over a 128-element norm is ~1e-6 relative. So |got - want| <= 2^-8 |want| + 1e-3
//! (the absolute term covers values near 0, where a BF16 ulp is tiny but the inputs' rounding
//! carries through the rotation).

mod common;

use common::{f64s, worst, Rng};
use half::bf16;
use qwen3_kernels::{
    qk_norm_rope_cache, qk_norm_rope_cache_tiling, CoreSpec, KernelError, NormRopeShape,
    QkNormRopeCacheIo,
};

const REL: f64 = 1.0 / 256.0;
const ABS: f64 = 1e-3;

struct Case {
    hq: usize,
    hk: usize,
    d: usize,
    /// YaRN-style attention factor folded into the tables (1 for plain RoPE).
    mscale: f64,
    /// Floats per table row: `d / 2`, or `d` as the NPU backend's full-width tables (the
    /// second half then holds NaN, which poisons the result if the kernel reads it).
    stride: usize,
}

/// RMSNorm (weight w) then neox rotation of one head row.
fn norm_rope(x: &[f64], w: &[f64], cos: &[f64], sin: &[f64], eps: f64) -> Vec<f64> {
    let d = x.len();
    let rstd = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt();
    let y: Vec<f64> = x.iter().zip(w).map(|(v, w)| v * rstd * w).collect();
    let h = d / 2;
    (0..d)
        .map(|i| {
            if i < h {
                y[i] * cos[i] - y[i + h] * sin[i]
            } else {
                y[i] * cos[i - h] + y[i - h] * sin[i - h]
            }
        })
        .collect()
}

fn run(case: &Case, positions: &[i32], slots: &[i32], cores: &CoreSpec) {
    let mut rng = Rng::new(case.hq as u64 * 31 + case.d as u64);
    let (t, d, hq, hk) = (positions.len(), case.d, case.hq, case.hk);
    let rows = 4096usize;
    let num_slots = 1024usize;
    let eps = 1e-6f32;
    // Tables from Qwen3's theta with a YaRN-like per-frequency stretch and attention factor.
    let st = case.stride;
    let (mut cos, mut sin) = (vec![f32::NAN; rows * st], vec![f32::NAN; rows * st]);
    for p in 0..rows {
        for i in 0..d / 2 {
            let inv = 1e6f64.powf(-2.0 * i as f64 / d as f64) / if i > d / 4 { 4.0 } else { 1.0 };
            cos[p * st + i] = ((p as f64 * inv).cos() * case.mscale) as f32;
            sin[p * st + i] = ((p as f64 * inv).sin() * case.mscale) as f32;
        }
    }
    let q = rng.bf16s(t * hq * d, 3.0);
    let k = rng.bf16s(t * hk * d, 3.0);
    let v = rng.bf16s(t * hk * d, 1.0);
    let qw: Vec<bf16> = (0..d)
        .map(|_| bf16::from_f32(1.0 + 0.5 * rng.unit()))
        .collect();
    let kw: Vec<bf16> = (0..d)
        .map(|_| bf16::from_f32(1.0 + 0.5 * rng.unit()))
        .collect();
    let sentinel = bf16::from_f32(-7.0);
    let mut q_out = vec![sentinel; q.len()];
    let mut k_cache = vec![sentinel; num_slots * hk * d];
    let mut v_cache = vec![sentinel; num_slots * hk * d];
    let shape = NormRopeShape {
        num_q_heads: hq as u32,
        num_kv_heads: hk as u32,
        head_dim: d as u32,
        num_slots: num_slots as u32,
        rope_rows: rows as u32,
        rope_stride: st as u32,
        eps,
    };
    let tiling = qk_norm_rope_cache_tiling(t as u32, &shape, cores).unwrap();
    qk_norm_rope_cache(
        &tiling,
        QkNormRopeCacheIo {
            q: &q,
            k: &k,
            v: &v,
            q_weight: &qw,
            k_weight: &kw,
            cos: &cos,
            sin: &sin,
            positions,
            slot_mapping: slots,
            q_out: &mut q_out,
            k_cache: &mut k_cache,
            v_cache: &mut v_cache,
        },
    )
    .unwrap();

    let (qf, kf, qwf, kwf) = (f64s(&q), f64s(&k), f64s(&qw), f64s(&kw));
    let cos64: Vec<f64> = cos.iter().map(|&c| f64::from(c)).collect();
    let sin64: Vec<f64> = sin.iter().map(|&c| f64::from(c)).collect();
    let mut want_q = Vec::new();
    let (mut got_k, mut want_k) = (Vec::new(), Vec::new());
    for tok in 0..t {
        let p = positions[tok] as usize;
        let (c, s) = (&cos64[p * st..][..d / 2], &sin64[p * st..][..d / 2]);
        for h in 0..hq {
            want_q.extend(norm_rope(
                &qf[(tok * hq + h) * d..][..d],
                &qwf,
                c,
                s,
                f64::from(eps),
            ));
        }
        if slots[tok] < 0 {
            continue;
        }
        let slot = slots[tok] as usize;
        for h in 0..hk {
            want_k.extend(norm_rope(
                &kf[(tok * hk + h) * d..][..d],
                &kwf,
                c,
                s,
                f64::from(eps),
            ));
            got_k.extend_from_slice(&k_cache[(slot * hk + h) * d..][..d]);
        }
        // V is copied bit for bit.
        assert_eq!(
            &v_cache[slot * hk * d..][..hk * d],
            &v[tok * hk * d..][..hk * d]
        );
    }
    let wq = worst(&q_out, &want_q, REL, ABS);
    let wk = worst(&got_k, &want_k, REL, ABS);
    assert!(
        wq <= 1.0 && wk <= 1.0,
        "q worst {wq}, k worst {wk} of the bound"
    );
    // Slots nobody wrote keep what they held.
    let written: Vec<usize> = slots
        .iter()
        .filter(|&&s| s >= 0)
        .map(|&s| s as usize)
        .collect();
    for slot in (0..num_slots).filter(|s| !written.contains(s)) {
        assert!(
            k_cache[slot * hk * d..][..hk * d]
                .iter()
                .all(|&x| x == sentinel),
            "slot {slot} touched"
        );
        assert!(
            v_cache[slot * hk * d..][..hk * d]
                .iter()
                .all(|&x| x == sentinel),
            "slot {slot} touched"
        );
    }
}

/// A mixed batch: a 37-token prefill chunk at positions 100.., two decodes, one padding token.
fn mixed_batch() -> (Vec<i32>, Vec<i32>) {
    let mut positions: Vec<i32> = (100..137).collect();
    let mut slots: Vec<i32> = (0..37).map(|i| 3 * 128 + 100 + i).collect();
    positions.extend([5, 4000, 0]);
    slots.extend([7 * 128 + 5, 2 * 128 + 127, -1]);
    (positions, slots)
}

#[test]
fn qwen3_shapes_gqa_4_and_8_to_1_head_dim_128() {
    let (p, s) = mixed_batch();
    // 8:1 reads the backend's full-width tables, 4:1 half-width ones.
    for (hq, hk, stride) in [(32, 4, 128), (32, 8, 64)] {
        run(
            &Case {
                hq,
                hk,
                d: 128,
                mscale: 1.0,
                stride,
            },
            &p,
            &s,
            &CoreSpec::ASCEND_910B2,
        );
    }
}

#[test]
fn yarn_tables_and_odd_shapes() {
    let (p, s) = mixed_batch();
    run(
        &Case {
            hq: 6,
            hk: 3,
            d: 64,
            mscale: 1.1,
            stride: 32,
        },
        &p,
        &s,
        &CoreSpec::ASCEND_910B3,
    );
    // One token, one block.
    run(
        &Case {
            hq: 4,
            hk: 1,
            d: 128,
            mscale: 1.0,
            stride: 64,
        },
        &[9],
        &[500],
        &CoreSpec::ASCEND_910B2,
    );
}

#[test]
fn bad_indices_are_refused_before_launch() {
    let shape = NormRopeShape {
        num_q_heads: 4,
        num_kv_heads: 1,
        head_dim: 128,
        num_slots: 16,
        rope_rows: 8,
        rope_stride: 64,
        eps: 1e-6,
    };
    let t = qk_norm_rope_cache_tiling(2, &shape, &CoreSpec::ASCEND_910B2).unwrap();
    let z = vec![bf16::ZERO; 2 * 4 * 128];
    let mut q_out = z.clone();
    let (k, w) = (vec![bf16::ZERO; 2 * 128], vec![bf16::ONE; 128]);
    let tab = vec![0f32; 8 * 64];
    let (mut kc, mut vc) = (vec![bf16::ZERO; 16 * 128], vec![bf16::ZERO; 16 * 128]);
    for (pos, slot, says) in [
        ([0, 8], [0, 1], "position 8"),
        ([0, 1], [3, 3], "slot 3 written twice"),
        ([0, 1], [0, 16], "slot 16"),
    ] {
        let r = qk_norm_rope_cache(
            &t,
            QkNormRopeCacheIo {
                q: &z,
                k: &k,
                v: &k,
                q_weight: &w,
                k_weight: &w,
                cos: &tab,
                sin: &tab,
                positions: &pos,
                slot_mapping: &slot,
                q_out: &mut q_out,
                k_cache: &mut kc,
                v_cache: &mut vc,
            },
        );
        assert!(
            matches!(&r, Err(KernelError::Input(m)) if m.contains(says)),
            "{r:?}"
        );
    }
}
