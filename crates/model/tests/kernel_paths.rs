//! Fixture parity (logits within 1e-3 of transformers at every prompt position and decode
//! step, same greedy tokens) on every CPU kernel level this machine can run: scalar, AVX2,
//! AVX-512, AVX512_BF16 or NEON. The level is process-wide, so this binary holds one test.

mod common;

use common::*;
use qwen3_backend::cpu::simd::{self, Level};
use qwen3_backend::cpu::CpuBackend;
use qwen3_backend::Backend;
use qwen3_model::{Qwen3, Shard, SingleExecutor, WeightDType, Worker};

const TOL: f32 = 1e-3;

fn executor(model: &str, overrides: Option<&serde_json::Value>) -> SingleExecutor<CpuBackend> {
    let backend = CpuBackend::new();
    let cfg = config(model, overrides);
    let m = Qwen3::load(
        &backend,
        &fixtures().join(model),
        cfg,
        WeightDType::BF16,
        Shard::WHOLE,
    )
    .expect("model loads");
    let kv = backend
        .alloc_kv_cache(m.kv_shape(16, BLOCK_SIZE))
        .expect("kv");
    SingleExecutor::new(Worker {
        backend,
        model: m,
        kv,
    })
}

fn worst_diff(model: &str, level: Level) -> f32 {
    let golden = golden(model);
    let mut worst = 0.0f32;
    for case in &golden.cases {
        let rec = recorded(case);
        let mut ex = executor(model, case.config_overrides.as_ref());
        let vocab = ex.worker().model.config.vocab_size;
        let n = case.prompt_ids.len();
        // Prompts of at most 8 tokens also run prefill through the decode GEMV.
        for split in [n, n.min(8)] {
            let mut ex2 = executor(model, case.config_overrides.as_ref());
            let rows: Vec<u32> = (0..split as u32).collect();
            let logits = ex2
                .logits(&single_seq_batch(&case.prompt_ids[..split], 0, true), &rows)
                .expect("prefill");
            for (p, want) in rec.prefill.iter().take(split).enumerate() {
                let d = max_diff(&logits[p * vocab..(p + 1) * vocab], want, &rec.columns);
                assert!(
                    d < TOL,
                    "{} {model}/{} prefill {p}: {d}",
                    level.name(),
                    case.name
                );
                worst = worst.max(d);
            }
        }
        let rows: Vec<u32> = (0..n as u32).collect();
        let logits = ex
            .logits(&single_seq_batch(&case.prompt_ids, 0, true), &rows)
            .expect("prefill");
        let mut last = logits[(n - 1) * vocab..n * vocab].to_vec();
        for (i, &tok) in case.greedy_ids.iter().enumerate() {
            let d = max_diff(&last, &rec.decode[i], &rec.columns);
            assert!(
                d < TOL,
                "{} {model}/{} decode {i}: {d}",
                level.name(),
                case.name
            );
            worst = worst.max(d);
            let ours = qwen3_backend::sampling::argmax(&last);
            assert_eq!(
                ours,
                tok,
                "{} {model}/{}: greedy token {i}",
                level.name(),
                case.name
            );
            last = ex
                .logits(&single_seq_batch(&[tok], n + i, false), &[0])
                .expect("decode");
        }
    }
    worst
}

#[test]
fn fixtures_match_transformers_on_every_kernel_level() {
    let levels = simd::supported_levels();
    assert!(levels.contains(&Level::Scalar));
    for level in levels {
        simd::set_level(Some(level)).expect("supported level");
        for model in ["tiny-qwen3", "tiny-qwen3-moe"] {
            let d = worst_diff(model, level);
            eprintln!("{model} on {}: max |diff| {d:.2e}", level.name());
        }
    }
    simd::set_level(None).expect("default level");
    let unsupported = Level::ALL.into_iter().find(|l| !l.supported());
    if let Some(l) = unsupported {
        assert!(simd::set_level(Some(l)).is_err(), "{} accepted", l.name());
    }
}
