//! Tensor parallelism on the CPU: ranks as threads with in-process collectives give the same
//! logits (within 1e-3) and greedy tokens as transformers, and each rank reads only its slice.

mod common;

use common::*;
use qwen3_backend::cpu::CpuBackend;
use qwen3_model::weights::WeightStore;
use qwen3_model::{Qwen3, Shard, WeightDType};

fn check(model: &str, world: usize) {
    let golden = golden(model);
    for case in golden.cases.iter().take(3) {
        let rec = recorded(case);
        let rows = ranks::rank_logits(
            model,
            case,
            case.config_overrides.as_ref(),
            world,
            case.greedy_ids.len(),
        );
        let n = case.prompt_ids.len();
        for (p, want) in rec.prefill.iter().enumerate() {
            let d = max_diff(&rows[p], want, &rec.columns);
            assert!(
                d < 1e-3,
                "{model} tp{world} {}: prefill {p} differs by {d}",
                case.name
            );
        }
        for (i, &tok) in case.greedy_ids.iter().enumerate() {
            let logits = if i == 0 {
                &rows[n - 1]
            } else {
                &rows[n + i - 1]
            };
            let d = max_diff(logits, &rec.decode[i], &rec.columns);
            assert!(
                d < 1e-3,
                "{model} tp{world} {}: decode {i} differs by {d}",
                case.name
            );
            assert_eq!(
                qwen3_backend::sampling::argmax(logits),
                tok,
                "{model} tp{world} {}: token {i}",
                case.name
            );
        }
    }
}

#[test]
fn dense_tp2_and_tp4_match_transformers() {
    check("tiny-qwen3", 2);
    // 8 query heads over 4 ranks, 2 KV heads: each KV head replicated on two ranks.
    check("tiny-qwen3", 4);
}

#[test]
fn moe_tp2_and_tp4_match_transformers() {
    check("tiny-qwen3-moe", 2);
    check("tiny-qwen3-moe", 4);
}

#[test]
fn a_rank_reads_only_its_slice() {
    let dir = fixtures().join("tiny-qwen3");
    let whole = WeightStore::open(&dir).expect("store");
    let backend = CpuBackend::new();
    Qwen3::load_from_store(
        &backend,
        &whole,
        config("tiny-qwen3", None),
        WeightDType::BF16,
        Shard::WHOLE,
    )
    .expect("whole");
    let total = whole.bytes_read();
    let sharded = WeightStore::open(&dir).expect("store");
    let shard = Shard { rank: 1, world: 4 };
    Qwen3::load_from_store(
        &backend,
        &sharded,
        config("tiny-qwen3", None),
        WeightDType::BF16,
        shard,
    )
    .expect("rank 1 of 4");
    let part = sharded.bytes_read();
    // Norms are replicated and KV heads are shared by two ranks, so a bit over a quarter.
    assert!(
        part * 10 < total * 3,
        "rank 1 of 4 read {part} of {total} bytes"
    );
}

#[test]
fn tp_that_does_not_divide_heads_is_refused() {
    let backend = CpuBackend::new();
    let err = Qwen3::load(
        &backend,
        &fixtures().join("tiny-qwen3"),
        config("tiny-qwen3", None),
        WeightDType::BF16,
        Shard { rank: 0, world: 3 },
    )
    .map(|_| ())
    .expect_err("tp 3 refused");
    assert!(
        err.to_string()
            .contains("must divide the 8 attention heads"),
        "{err}"
    );
}
