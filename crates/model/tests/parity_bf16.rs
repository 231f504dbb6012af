//! The CPU's BF16 precision policy (matmul inputs rounded to BF16, F32 accumulation, BF16 KV
//! cache) against transformers. Bounds, per ARCHITECTURE.md's precision policy:
//! - every logit within transformers' own BF16 error envelope: for each fixture model, the
//!   largest |transformers BF16 − transformers F32| over all its cases' recorded rows (the
//!   `__bf16` goldens, made by `make_fixtures.py bf16-refs`, teacher-forced with the F32 greedy
//!   tokens). Per model, not per case: an MoE router near a tie flips experts under BF16
//!   rounding (transformers' own BF16 moves the MoE's `long` case by 3.3), and which token
//!   flips differs between two BF16 computations;
//! - the F32 greedy token wherever the F32 reference's top-2 margin is decisive: larger than
//!   twice what transformers' BF16 moved that row's logits.

mod common;

use common::*;
use qwen3_backend::cpu::{CpuBackend, CpuDType, CpuPrecision};

/// Top-2 margin of a row over the recorded columns.
fn margin(row: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in row {
        if v > a {
            (a, b) = (v, a);
        } else if v > b {
            b = v;
        }
    }
    a - b
}

fn row_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Our worst |diff| from the F32 reference and transformers' BF16 envelope, over all cases.
fn check_model(model: &str, precision: CpuPrecision) -> (f32, f32) {
    let golden = golden(model);
    let cases: Vec<_> = golden
        .cases
        .iter()
        .filter(|c| c.config_overrides.is_none())
        .map(|case| {
            let bf16_case = Case {
                logits_file: case
                    .logits_file
                    .replace(".safetensors", "__bf16.safetensors"),
                name: case.name.clone(),
                prompt_ids: case.prompt_ids.clone(),
                greedy_ids: case.greedy_ids.clone(),
                config_overrides: None,
            };
            (case, recorded(case), recorded(&bf16_case))
        })
        .collect();
    let envelope = cases
        .iter()
        .flat_map(|(_, f, t)| {
            let (rf, rt) = (
                f.prefill.iter().chain(&f.decode),
                t.prefill.iter().chain(&t.decode),
            );
            rf.zip(rt).map(|(a, b)| row_diff(a, b))
        })
        .fold(0.0, f32::max);
    let (mut ours_worst, mut checked) = (0.0f32, 0);
    for (case, f32_ref, tf_bf16) in &cases {
        let rows_ref: Vec<&Vec<f32>> = f32_ref.prefill.iter().chain(&f32_ref.decode).collect();
        let rows_tf: Vec<&Vec<f32>> = tf_bf16.prefill.iter().chain(&tf_bf16.decode).collect();

        let mut ex = fixture_executor(model, None, CpuBackend::new().with_precision(precision));
        let vocab = ex.worker().model.config.vocab_size;
        let n = case.prompt_ids.len();
        let batch = single_seq_batch(&case.prompt_ids, 0, true);
        let rows: Vec<u32> = (0..n as u32).collect();
        let logits = ex.logits(&batch, &rows).expect("prefill");
        let mut ours: Vec<Vec<f32>> = (0..n)
            .map(|p| logits[p * vocab..(p + 1) * vocab].to_vec())
            .collect();
        let mut last = ours[n - 1].clone();
        for (i, &tok) in case.greedy_ids.iter().enumerate() {
            if i > 0 {
                ours.push(last.clone());
            }
            let b = single_seq_batch(&[tok], n + i, false);
            last = ex.logits(&b, &[0]).expect("decode");
        }
        // Row p of `ours` lines up with row p of prefill then decode (decode row 0 is the last
        // prefill row).
        let mut ours_rows: Vec<Vec<f32>> = ours[..n].to_vec();
        ours_rows.extend(ours[n - 1..].iter().cloned());
        assert_eq!(
            ours_rows.len(),
            rows_ref.len(),
            "{model}/{}: rows",
            case.name
        );
        for (r, (mine, want)) in ours_rows.iter().zip(&rows_ref).enumerate() {
            let at_cols: Vec<f32> = f32_ref.columns.iter().map(|&c| mine[c]).collect();
            let d = row_diff(&at_cols, want);
            assert!(
                d <= envelope,
                "{model}/{} row {r}: |ours − F32| = {d} beyond transformers' BF16 envelope {envelope}",
                case.name
            );
            ours_worst = ours_worst.max(d);
            // Decode rows: the recorded greedy token where the margin is decisive.
            if let Some(i) = r.checked_sub(n) {
                let moved = row_diff(rows_tf[r], want);
                if margin(want) > 2.0 * moved {
                    checked += 1;
                    assert_eq!(
                        qwen3_backend::sampling::argmax(mine),
                        case.greedy_ids[i],
                        "{model}/{}: greedy token {i} (margin {}, transformers BF16 moved {moved})",
                        case.name,
                        margin(want)
                    );
                }
            }
        }
    }
    assert!(checked > 0, "{model}: no decisive greedy step was checked");
    eprintln!(
        "{model} {precision:?}: max |ours − F32| {ours_worst:.2e}, transformers BF16 envelope {envelope:.2e}, {checked} decisive tokens"
    );
    (ours_worst, envelope)
}

const BF16: CpuPrecision = CpuPrecision {
    activations: CpuDType::BF16,
    kv_cache: CpuDType::BF16,
};

#[test]
fn dense_bf16_policy_within_transformers_bf16_envelope() {
    check_model("tiny-qwen3", BF16);
}

#[test]
fn moe_bf16_policy_within_transformers_bf16_envelope() {
    check_model("tiny-qwen3-moe", BF16);
}

#[test]
fn hd128_bf16_policy_within_transformers_bf16_envelope() {
    check_model("tiny-qwen3-hd128", BF16);
}

#[test]
fn bf16_kv_cache_alone_stays_near_the_f32_path() {
    // F32 matmul inputs, BF16 K/V: only the cache's rounding moves the logits.
    let (ours, envelope) = check_model(
        "tiny-qwen3",
        CpuPrecision {
            activations: CpuDType::F32,
            kv_cache: CpuDType::BF16,
        },
    );
    assert!(ours < envelope / 4.0, "{ours} vs {envelope}");
}
