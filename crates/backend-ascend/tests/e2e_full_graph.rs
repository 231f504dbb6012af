//! Full-graph decode (`graph_full.rs`) through the real engine on the emulated CANN: at TP 1
//! and TP 2 (all-reduces inside the graphs), dense and MoE at head_dim 128, the tokens
//! equal eager decode's exactly (greedy over bit-identical logits), the first token equals
//! transformers' golden (BF16 drifts from the F32 goldens after it: see
//! `e2e_engine::bf16_tp1_and_tp2_first_tokens_match_goldens`), and every replay updated
//! fused attention's lengths through the task-update API. Quantized too: W8A8_DYNAMIC and AWQ
//! at head_dim 128 (the other quantized fixtures' head_dim 16/32 fused attention refuses).

mod common;

use common::*;
use qwen3_backend_ascend::AscendOptions;
use qwen3_model::WeightDType;

/// Every golden prompt of `model`, submitted at once (decode batches of several
/// sequences, padded to the captured sizes), `max_tokens` each.
fn tokens(emu: &Emu, model: &str, tp: usize, dtype: WeightDType, graph: bool) -> Vec<Vec<u32>> {
    let golden = golden(model);
    let opts = AscendOptions {
        graph_capture: graph,
        capture_batch_sizes: vec![1, 2, 4, 8],
        ..AscendOptions::default()
    };
    let setup = Setup {
        tp,
        dtype,
        max_num_batched_tokens: 64,
        ..Setup::default()
    };
    let e = engine_with(emu, model, &setup, opts);
    let out = rt().block_on(async {
        let streams: Vec<_> = golden
            .cases
            .iter()
            .filter(|c| c.config_overrides.is_none())
            .enumerate()
            .map(|(i, c)| {
                e.submit(request(&format!("r{i}"), &c.prompt_ids, 6))
                    .expect("submit")
            })
            .collect();
        let mut v = Vec::new();
        for s in streams {
            v.push(collect(s).await.0);
        }
        v
    });
    stop(e);
    out
}

fn full_equals_eager(model: &str, dtype: WeightDType) {
    let emu = Emu::new();
    for tp in [1, 2] {
        let eager = tokens(&emu, model, tp, dtype, false);
        let (before, updates_before) = (emu.stats().collectives, emu.stats().task_updates);
        let full = tokens(&emu, model, tp, dtype, true);
        let s = emu.stats();
        assert!(
            s.task_updates > updates_before,
            "{model} TP {tp}: no replay updated attention"
        );
        if tp > 1 {
            assert!(s.collectives > before, "{model} TP {tp}: no collective ran");
        }
        assert_eq!(
            full, eager,
            "{model} TP {tp}: full graphs differ from eager"
        );
        // BF16 against F32 goldens: decisive first tokens exactly, near-ties within the top two.
        let golden = golden(model);
        let cases = golden.cases.iter().filter(|c| c.config_overrides.is_none());
        for (c, t) in cases.zip(&full) {
            check_bf16_first_token(c, t[0], &format!("{model} TP {tp}, full graphs"));
        }
    }
    emu.assert_clean();
}

#[test]
fn full_graph_decode_equals_eager_dense_tp1_tp2() {
    full_equals_eager(DENSE, WeightDType::BF16);
}

#[test]
fn full_graph_decode_equals_eager_moe_tp1_tp2() {
    full_equals_eager("tiny-qwen3-moe-hd128", WeightDType::BF16);
}

/// W8A8_DYNAMIC (per-token DynamicQuant and INT8 matmuls inside the graphs) and AWQ (antiquant
/// matmuls) at head_dim 128, through fused attention. (The W8A8 fixture's TP 2 reference,
/// `__tp2`, has the same first tokens as its TP 1 one, checked here at both.)
#[test]
fn full_graph_decode_equals_eager_quantized_tp1_tp2() {
    full_equals_eager("tiny-qwen3-w8a8-dynamic-hd128", WeightDType::BF16);
    full_equals_eager("tiny-qwen3-awq-hd128", WeightDType::BF16);
}
