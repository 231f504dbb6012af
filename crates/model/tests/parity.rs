//! The forward pass against Hugging Face transformers: logits within 1e-3 at every prompt
//! position and decode step, and identical greedy tokens, for the dense and MoE fixtures.

mod common;

use common::*;
use qwen3_backend::cpu::CpuBackend;
use qwen3_model::SingleExecutor;

const TOL: f32 = 1e-3;

fn executor(model: &str, overrides: Option<&serde_json::Value>) -> SingleExecutor<CpuBackend> {
    fixture_executor(model, overrides, CpuBackend::new())
}

fn check_model(model: &str) {
    let golden = golden(model);
    assert!(!golden.cases.is_empty());
    for case in &golden.cases {
        let rec = recorded(case);
        let mut ex = executor(model, case.config_overrides.as_ref());
        let vocab = ex.worker().model.config.vocab_size;
        let n = case.prompt_ids.len();
        let batch = single_seq_batch(&case.prompt_ids, 0, true);
        let rows: Vec<u32> = (0..n as u32).collect();
        let logits = ex.logits(&batch, &rows).expect("prefill");
        let mut worst = 0.0f32;
        for (p, want) in rec.prefill.iter().enumerate() {
            let d = max_diff(&logits[p * vocab..(p + 1) * vocab], want, &rec.columns);
            assert!(
                d < TOL,
                "{model}/{}: prefill position {p} differs by {d}",
                case.name
            );
            worst = worst.max(d);
        }
        // Decode with the recorded greedy tokens; each step's logits must match and pick them.
        let mut last = logits[(n - 1) * vocab..n * vocab].to_vec();
        for (i, &tok) in case.greedy_ids.iter().enumerate() {
            let d = max_diff(&last, &rec.decode[i], &rec.columns);
            assert!(
                d < TOL,
                "{model}/{}: decode step {i} differs by {d}",
                case.name
            );
            worst = worst.max(d);
            let ours = qwen3_backend::sampling::argmax(&last);
            assert_eq!(ours, tok, "{model}/{}: greedy token {i}", case.name);
            let b = single_seq_batch(&[tok], n + i, false);
            last = ex.logits(&b, &[0]).expect("decode");
        }
        eprintln!("{model}/{}: max |diff| {worst:.2e}", case.name);
    }
}

#[test]
fn dense_matches_transformers() {
    check_model("tiny-qwen3");
}

#[test]
fn moe_matches_transformers() {
    check_model("tiny-qwen3-moe");
}
