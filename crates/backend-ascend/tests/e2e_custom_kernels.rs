//! `--attention-backend custom`: attention through qwen3-serve's own AscendC kernels
//! (`kernels/`), launched through the emulator's `aclrtlaunch_*` stubs (the sim-compiled
//! kernels), on the head_dim 128 fixture: logits against fused infer attention and the
//! goldens, and the engine with graph capture on against the same engine on FIA.

mod common;

use std::sync::Arc;

use common::*;
use qwen3_backend_ascend::{AscendBackend, AscendOptions, AttentionBackend};
use qwen3_model::{SingleExecutor, WeightDType};

/// BF16 weights and activations, as the FIA parity test (`e2e_parity.rs`) allows.
const TOL_GOLDEN: f32 = 0.25;
/// Custom vs FIA on the same BF16 model: both round their BF16 output once from F32
/// softmax; what differs is the order of F32 sums, plus BF16 ties flipping downstream.
const TOL_FIA: f32 = 0.05;

fn executor(emu: &Emu, attention: AttentionBackend) -> SingleExecutor<AscendBackend> {
    let opts = AscendOptions {
        attention_backend: attention,
        ..AscendOptions::default()
    };
    single_executor(emu, DENSE, WeightDType::BF16, opts)
}

/// Every prompt position's and teacher-forced decode step's logits of each golden case.
fn logits(ex: &mut SingleExecutor<AscendBackend>) -> Vec<Vec<f32>> {
    let golden = golden(DENSE);
    let vocab = ex.worker().model.config.vocab_size;
    let mut out = Vec::new();
    for case in golden.cases.iter().filter(|c| c.config_overrides.is_none()) {
        let n = case.prompt_ids.len();
        let rows: Vec<u32> = (0..n as u32).collect();
        let l = ex
            .logits(&single_seq_batch(&case.prompt_ids, 0, true), &rows)
            .expect("prefill");
        out.extend(l.chunks(vocab).map(<[f32]>::to_vec));
        for (i, &tok) in case.greedy_ids.iter().enumerate() {
            let b = single_seq_batch(&[tok], n + i, false);
            out.push(ex.logits(&b, &[0]).expect("decode"));
        }
    }
    out
}

#[test]
fn custom_attention_matches_fia_and_the_goldens() {
    let emu = Emu::new();
    let custom = logits(&mut executor(&emu, AttentionBackend::Custom));
    let fia = logits(&mut executor(&emu, AttentionBackend::Fia));
    assert_eq!(custom.len(), fia.len());
    let all: Vec<usize> = (0..custom[0].len()).collect();
    let vs_fia = custom
        .iter()
        .zip(&fia)
        .map(|(c, f)| max_diff(c, f, &all))
        .fold(0.0f32, f32::max);
    assert!(vs_fia < TOL_FIA, "custom vs FIA: {vs_fia}");

    // Against transformers' goldens: decode golden i is the logits before feeding greedy
    // token i, i.e. the last prompt row, then the row after each fed token.
    let golden = golden(DENSE);
    let mut base = 0;
    let mut worst = 0.0f32;
    for case in golden.cases.iter().filter(|c| c.config_overrides.is_none()) {
        let rec = recorded(case);
        let n = case.prompt_ids.len();
        let rows = rec.prefill.iter().enumerate().map(|(p, w)| (base + p, w));
        let rows = rows.chain(
            rec.decode
                .iter()
                .enumerate()
                .map(|(i, w)| (base + n - 1 + i, w)),
        );
        for (r, want) in rows {
            worst = worst.max(max_diff(&custom[r], want, &rec.columns));
        }
        base += n + case.greedy_ids.len();
    }
    assert!(worst < TOL_GOLDEN, "custom vs goldens: {worst}");
    eprintln!("custom attention: max |diff| {vs_fia:.2e} vs FIA, {worst:.2e} vs transformers");
    emu.assert_clean();
}

/// Greedy tokens of every golden prompt through the engine (BF16, graph capture on).
fn engine_tokens(emu: &Emu, attention: AttentionBackend) -> Vec<Vec<u32>> {
    let golden = golden(DENSE);
    let e = engine_with(
        emu,
        DENSE,
        &Setup {
            dtype: WeightDType::BF16,
            ..Setup::default()
        },
        AscendOptions {
            graph_capture: true,
            capture_batch_sizes: vec![1, 2, 4],
            attention_backend: attention,
            ..AscendOptions::default()
        },
    );
    let out = rt().block_on(async {
        let mut tasks = Vec::new();
        for (i, c) in golden
            .cases
            .iter()
            .filter(|c| c.config_overrides.is_none())
            .enumerate()
        {
            let s = e
                .submit(request(&format!("r{i}"), &c.prompt_ids, c.greedy_ids.len()))
                .expect("submit");
            tasks.push(tokio::spawn(async move { collect(s).await.0 }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    stop(e);
    out
}

/// BF16 greedy decoding leaves transformers' F32 greedy path within a few tokens on this
/// random-weight model (as with FIA), so the engine is held to FIA's tokens: the same
/// batches, chunking and captured decode graphs, only the attention kernels differ.
#[test]
fn engine_with_custom_attention_and_graph_capture_decodes_as_fia() {
    let emu = Emu::new();
    let custom = engine_tokens(&emu, AttentionBackend::Custom);
    let fia = engine_tokens(&emu, AttentionBackend::Fia);
    assert_eq!(custom, fia);
    emu.assert_clean();
}

#[test]
fn custom_attention_refuses_an_f32_cache() {
    let emu = Emu::new();
    let opts = AscendOptions {
        attention_backend: AttentionBackend::Custom,
        kv_cache_f32: true,
        ..AscendOptions::default()
    };
    let err = AscendBackend::with_options(Arc::clone(&emu.cann), 0, opts)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("BF16 KV cache only"), "{err}");
}
