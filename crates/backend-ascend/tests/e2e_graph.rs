//! Graph-captured decode equals eager decode on the emulated CANN: the same logits bit for
//! bit for a two-sequence batch over several steps (the first captures, the rest replay),
//! with both attention paths, and the engine with graph capture on gives the goldens.
//! BF16 steps are captured whole by default (`graph_full.rs`; F32-cache attention stays
//! piecewise); the `piecewise_*` tests force piecewise graphs.

mod common;

use std::sync::Arc;

use common::*;
use qwen3_backend::Backend;
use qwen3_backend_ascend::{AscendBackend, AscendOptions, GraphKind};
use qwen3_engine::{Batch, ScheduledSeq};
use qwen3_model::{Qwen3, ResizableExecutor, Shard, SingleExecutor, WeightDType, Worker};

fn executor(
    emu: &Emu,
    device: i32,
    dtype: WeightDType,
    graph: bool,
    sizes: &[usize],
) -> SingleExecutor<AscendBackend> {
    executor_of(emu, DENSE, device, dtype, graph, sizes, 4, None, true)
}

/// Decode graphs captured in segments, attention eager between them.
fn executor_piecewise(
    emu: &Emu,
    device: i32,
    dtype: WeightDType,
    sizes: &[usize],
) -> SingleExecutor<AscendBackend> {
    executor_of(emu, DENSE, device, dtype, true, sizes, 4, None, false)
}

#[allow(clippy::too_many_arguments)]
fn executor_of(
    emu: &Emu,
    model: &str,
    device: i32,
    dtype: WeightDType,
    graph: bool,
    sizes: &[usize],
    blocks: usize,
    overrides: Option<&serde_json::Value>,
    full_graph: bool,
) -> SingleExecutor<AscendBackend> {
    let opts = AscendOptions {
        kv_cache_f32: dtype == WeightDType::F32,
        graph_capture: graph,
        capture_batch_sizes: sizes.to_vec(),
        full_graph,
        ..AscendOptions::default()
    };
    let backend = AscendBackend::with_options(Arc::clone(&emu.cann), device, opts).expect("device");
    let m = Qwen3::load(
        &backend,
        &fixtures().join(model),
        config(model, overrides),
        dtype,
        Shard::WHOLE,
    )
    .expect("model loads");
    let kv = backend
        .alloc_kv_cache(m.kv_shape(blocks, BLOCK_SIZE))
        .expect("kv");
    SingleExecutor::new(Worker {
        backend,
        model: m,
        kv,
    })
}

/// One step of two sequences: sequence 0 in block 1, sequence 1 in block 2, each computing
/// `ids[i]` (a prompt or one decode token) after `past[i]` tokens.
fn two_seq_batch(ids: [&[u32]; 2], past: [usize; 2]) -> Batch {
    let mut b = Batch {
        new_seqs: Vec::new(),
        finished: Vec::new(),
        seqs: Vec::new(),
        token_ids: Vec::new(),
        positions: Vec::new(),
        slot_mapping: Vec::new(),
        block_tables: vec![1, 2],
        max_blocks_per_seq: 1,
        block_size: BLOCK_SIZE,
        masks: None,
        deferred_inputs: Vec::new(),
    };
    for s in 0..2 {
        let start = b.token_ids.len() as u32;
        for (i, &t) in ids[s].iter().enumerate() {
            let pos = (past[s] + i) as u32;
            b.token_ids.push(t);
            b.positions.push(pos);
            b.slot_mapping
                .push((s as u32 + 1) * BLOCK_SIZE as u32 + pos);
        }
        b.seqs.push(ScheduledSeq {
            seq_id: s as u64 + 1,
            query_start: start,
            query_len: ids[s].len() as u32,
            context_len: (past[s] + ids[s].len()) as u32,
            sample: true,
            suppressed: Vec::new(),
        });
    }
    b
}

/// Prefill two golden prompts, then decode `steps` steps greedily; every step's logits.
fn run(ex: &mut SingleExecutor<AscendBackend>, steps: usize) -> Vec<Vec<f32>> {
    run_model(ex, DENSE, steps)
}

/// [`run`] with `model`'s golden prompts.
fn run_model(ex: &mut SingleExecutor<AscendBackend>, model: &str, steps: usize) -> Vec<Vec<f32>> {
    let g = golden(model);
    let (p0, p1) = (&g.cases[0].prompt_ids, &g.cases[1].prompt_ids);
    let vocab = ex.worker().model.config.vocab_size;
    let b = two_seq_batch([p0, p1], [0, 0]);
    let last = [p0.len() as u32 - 1, (p0.len() + p1.len()) as u32 - 1];
    let mut logits = ex.logits(&b, &last).expect("prefill");
    let mut all = vec![logits.clone()];
    let mut past = [p0.len(), p1.len()];
    for _ in 0..steps {
        let next = [
            qwen3_backend::sampling::argmax(&logits[..vocab]),
            qwen3_backend::sampling::argmax(&logits[vocab..]),
        ];
        let b = two_seq_batch([&next[..1], &next[1..]], past);
        logits = ex.logits(&b, &[0, 1]).expect("decode");
        all.push(logits.clone());
        past = [past[0] + 1, past[1] + 1];
    }
    all
}

/// Every step's logits of the eager and the graph run are equal bit for bit.
fn assert_same_logits(dtype: WeightDType, eager: &[Vec<f32>], graph: &[Vec<f32>]) {
    assert_eq!(eager.len(), graph.len());
    for (i, (a, b)) in eager.iter().zip(graph).enumerate() {
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(
            same,
            "{dtype:?}: step {i} differs between eager and graph decode"
        );
    }
}

/// `sizes`: the captured token counts (2 exactly, or 4 with the two sequences padded).
fn graph_equals_eager(dtype: WeightDType, sizes: &[usize]) {
    graph_equals_eager_for(DENSE, dtype, sizes, true)
}

fn graph_equals_eager_as(dtype: WeightDType, sizes: &[usize], full: bool) {
    graph_equals_eager_for(DENSE, dtype, sizes, full)
}

fn graph_equals_eager_for(model: &str, dtype: WeightDType, sizes: &[usize], full: bool) {
    let emu = Emu::new();
    let eager = {
        let mut ex = executor_of(&emu, model, 0, dtype, false, &[], 4, None, true);
        run_model(&mut ex, model, 6)
    };
    let graph = {
        let mut ex = executor_of(&emu, model, 1, dtype, true, sizes, 4, None, full);
        let kind = ex.worker().backend.graph_kind();
        let want_full = full && dtype == WeightDType::BF16;
        assert_eq!(kind == GraphKind::Full, want_full, "{kind:?}");
        let before = emu.stats();
        let out = run_model(&mut ex, model, 6);
        let s = emu.stats();
        // Full graphs: one task group per layer, updated at every replay.
        let layers = ex.worker().model.config.num_hidden_layers as u64;
        let updates = s.task_updates - before.task_updates;
        assert_eq!(updates, if want_full { 5 * layers } else { 0 });
        assert_eq!(
            ex.worker().backend.captured_graphs(),
            1,
            "one decode shape captured"
        );
        assert_eq!(
            ex.worker().backend.graph_replays(),
            5,
            "later decode steps replay it"
        );
        let ws = ex.worker().backend.workspace_stats();
        assert_eq!(ws.grows_while_capturing, 0, "{ws:?}");
        out
    };
    let s = emu.stats();
    assert!(s.live_graphs == 0, "graphs freed with the backend: {s:?}");
    assert_same_logits(dtype, &eager, &graph);
    emu.assert_clean();
}

#[test]
fn graph_decode_equals_eager_fused_attention() {
    graph_equals_eager(WeightDType::BF16, &[2]);
}

#[test]
fn piecewise_graph_decode_equals_eager_fused_attention() {
    graph_equals_eager_as(WeightDType::BF16, &[2], false);
    graph_equals_eager_as(WeightDType::BF16, &[4], false);
}

#[test]
fn graph_decode_equals_eager_f32_attention() {
    graph_equals_eager(WeightDType::F32, &[2]);
}

/// The MoE fixture at head_dim 128: routing, grouped expert matmuls and the combine inside
/// captured segments, fused attention (BF16) or the F32 path between them.
#[test]
fn moe_hd128_graph_decode_equals_eager() {
    graph_equals_eager_for(MOE_HD128, WeightDType::BF16, &[2], true);
    graph_equals_eager_for(MOE_HD128, WeightDType::F32, &[4], true);
}

/// The quantized fixtures at head_dim 128: per-token DynamicQuant and INT8 matmuls (W8A8) or
/// antiquant matmuls (AWQ) inside full graphs and piecewise segments, fused attention.
#[test]
fn quantized_hd128_graph_decode_equals_eager() {
    for model in ["tiny-qwen3-w8a8-dynamic-hd128", "tiny-qwen3-awq-hd128"] {
        graph_equals_eager_for(model, WeightDType::BF16, &[2], true);
        graph_equals_eager_for(model, WeightDType::BF16, &[2], false);
    }
}

#[test]
fn padded_graph_decode_equals_eager() {
    graph_equals_eager(WeightDType::BF16, &[1, 4]);
    graph_equals_eager(WeightDType::F32, &[4]);
}

#[test]
fn engine_with_graph_capture_matches_goldens() {
    let emu = Emu::new();
    let golden = golden(DENSE);
    let e = engine_with(
        &emu,
        DENSE,
        &Setup::default(),
        AscendOptions {
            graph_capture: true,
            capture_batch_sizes: vec![1, 2, 4],
            ..AscendOptions::default()
        },
    );
    rt().block_on(async {
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
            let want = c.greedy_ids.clone();
            tasks.push(tokio::spawn(async move {
                assert_eq!(collect(s).await.0, want);
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
    stop(e);
    emu.assert_clean();
}

/// No graph holds the KV cache's address (the K/V write and attention run between
/// segments), so graphs captured before the cache is sized survive its resize: start-up
/// captures them before sizing it. Were a graph to write the old cache, the emulator would
/// refuse the replay (use after free) and the results would differ.
#[test]
fn graphs_survive_a_kv_resize() {
    kv_resize(false, 1, 5);
}

/// Runs, resizes the KV cache, runs again: the graphs left right after the resize, and the
/// replays in all.
fn kv_resize(full: bool, graphs_after: usize, replays: u64) {
    let emu = Emu::new();
    let mut ex = executor_of(&emu, DENSE, 0, WeightDType::BF16, true, &[2], 4, None, full);
    let first = run(&mut ex, 3);
    assert_eq!(ex.worker().backend.captured_graphs(), 1);
    ex.resize_kv(6, BLOCK_SIZE).expect("resize");
    assert_eq!(ex.worker().backend.captured_graphs(), graphs_after);
    let second = run(&mut ex, 3);
    assert_eq!(ex.worker().backend.captured_graphs(), 1);
    assert_eq!(ex.worker().backend.graph_replays(), replays);
    assert_eq!(first, second);
    drop(ex);
    emu.assert_clean();
}

/// Full graphs hold the KV cache's address: a new cache drops them, the next decode step
/// captures again, and the results do not change (a replay of a graph on the freed cache
/// would be refused by the emulator as a use after free).
#[test]
fn full_graphs_are_captured_again_after_a_kv_resize() {
    kv_resize(true, 0, 4);
}

/// Start-up's warm-up captures one graph per configured size (keyed by padded size only),
/// each with layers + 1 segments (piecewise) or one (full), before any request; serving
/// then only replays.
#[test]
fn decode_warmup_captures_every_configured_size() {
    let emu = Emu::new();
    let layers = {
        let mut ex = executor(&emu, 0, WeightDType::BF16, true, &[1, 2, 4]);
        qwen3_model::profile::decode_warmup(&mut ex, &[1, 2, 4], BLOCK_SIZE).expect("warm-up");
        assert_eq!(ex.worker().backend.captured_sizes(), vec![1, 2, 4]);
        assert_eq!(
            ex.worker().backend.captured_segments(),
            3,
            "one graph a size"
        );
        ex.worker().model.config.num_hidden_layers
    };
    let mut ex = executor_piecewise(&emu, 0, WeightDType::BF16, &[1, 2, 4]);
    qwen3_model::profile::decode_warmup(&mut ex, &[1, 2, 4], BLOCK_SIZE).expect("warm-up");
    assert_eq!(ex.worker().backend.captured_sizes(), vec![1, 2, 4]);
    assert_eq!(ex.worker().backend.captured_segments(), 3 * (layers + 1));
    let eager = run(&mut executor(&emu, 1, WeightDType::BF16, false, &[]), 3);
    assert_eq!(run(&mut ex, 3), eager);
    assert_eq!(
        ex.worker().backend.captured_graphs(),
        3,
        "no capture while serving"
    );
    assert_eq!(ex.worker().backend.graph_replays(), 3);
    drop(ex);
    emu.assert_clean();
}

/// Decode batches of changing size under one padded capture size: 2 sequences, then only
/// the first, then both again (a replay), each padded to 4; the same logits as eager.
#[test]
fn padded_graphs_follow_the_real_batch_size() {
    let emu = Emu::new();
    let g = golden(DENSE);
    let (p0, p1) = (g.cases[0].prompt_ids.clone(), g.cases[1].prompt_ids.clone());
    let drive = |ex: &mut SingleExecutor<AscendBackend>| -> Vec<Vec<f32>> {
        let vocab = ex.worker().model.config.vocab_size;
        let b = two_seq_batch([&p0, &p1], [0, 0]);
        let last = [p0.len() as u32 - 1, (p0.len() + p1.len()) as u32 - 1];
        let mut out = vec![ex.logits(&b, &last).expect("prefill")];
        let mut past = [p0.len(), p1.len()];
        for round in 0..3 {
            let prev = out.last().expect("logits");
            let t0 = qwen3_backend::sampling::argmax(&prev[..vocab]);
            if round == 1 {
                // Only sequence 0 this step.
                let mut b = two_seq_batch([&[t0], &[0]], past);
                b.seqs.truncate(1);
                b.token_ids.truncate(1);
                b.positions.truncate(1);
                b.slot_mapping.truncate(1);
                b.block_tables.truncate(1);
                let l = ex.logits(&b, &[0]).expect("decode one");
                // Keep two rows so the next step's argmax reads the same layout.
                let mut l2 = l.clone();
                l2.extend_from_slice(&prev[vocab..]);
                out.push(l2);
                past[0] += 1;
            } else {
                let t1 = qwen3_backend::sampling::argmax(&prev[vocab..]);
                let b = two_seq_batch([&[t0], &[t1]], past);
                out.push(ex.logits(&b, &[0, 1]).expect("decode two"));
                past = [past[0] + 1, past[1] + 1];
            }
        }
        out
    };
    let eager = drive(&mut executor(&emu, 0, WeightDType::BF16, false, &[]));
    let mut ex = executor(&emu, 1, WeightDType::BF16, true, &[4]);
    let graph = drive(&mut ex);
    assert_eq!(
        ex.worker().backend.captured_graphs(),
        1,
        "keyed by the padded size only"
    );
    assert_eq!(ex.worker().backend.graph_replays(), 2);
    // The graph and every eager op share one workspace, sized before the capture (the
    // prefill's ops ask for the most), so capturing allocated none.
    let ws = ex.worker().backend.workspace_stats();
    assert_eq!(ws.grows_while_capturing, 0, "{ws:?}");
    assert!(
        ws.bytes >= 16 << 20,
        "the 16 MiB system workspace at least: {ws:?}"
    );
    drop(ex);
    for (i, (a, b)) in eager.iter().zip(&graph).enumerate() {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "step {i} differs"
        );
    }
    emu.assert_clean();
}

/// One sequence computing `ids` after `past` tokens, its blocks 0, 1, 2... in order.
fn long_seq_batch(ids: &[u32], past: usize, max_blocks: usize) -> Batch {
    let positions: Vec<u32> = (past..past + ids.len()).map(|p| p as u32).collect();
    Batch {
        new_seqs: Vec::new(),
        finished: Vec::new(),
        seqs: vec![ScheduledSeq {
            seq_id: 1,
            query_start: 0,
            query_len: ids.len() as u32,
            context_len: (past + ids.len()) as u32,
            sample: true,
            suppressed: Vec::new(),
        }],
        token_ids: ids.to_vec(),
        slot_mapping: positions.clone(),
        positions,
        block_tables: (0..max_blocks as u32).collect(),
        max_blocks_per_seq: max_blocks,
        block_size: BLOCK_SIZE,
        masks: None,
        deferred_inputs: Vec::new(),
    }
}

/// Issue 18 point 8: a decode graph captured while the RoPE table had 4,096 rows, then an
/// eager step past position 4,096 (which rebuilds the table larger), then a decode step
/// there: the replay must not read the old table ("index 5041 out of range [0, 4096)"
/// when served, with YaRN factor 4 over 4,096 original positions, as here). The logits
/// must equal eager decode's bit for bit.
#[test]
fn decode_past_the_first_rope_table_after_a_captured_graph() {
    let emu = Emu::new();
    let blocks = 5200usize.div_ceil(BLOCK_SIZE);
    let yarn = serde_json::json!({"rope_scaling": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}});
    let steps = |ex: &mut SingleExecutor<AscendBackend>| -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        // Warm-up traffic: two decode steps at small positions (the first one captures).
        for pos in [8usize, 9] {
            let b = long_seq_batch(&[17], pos, blocks);
            out.push(ex.logits(&b, &[0]).expect("warm-up decode"));
        }
        // A chunk of a long prompt past 4,096 positions (eager: query longer than one).
        let b = long_seq_batch(&[40, 41], 5039, blocks);
        out.push(ex.logits(&b, &[1]).expect("long prefill chunk"));
        // Decode there: replays the graph captured at the start.
        let b = long_seq_batch(&[42], 5041, blocks);
        out.push(ex.logits(&b, &[0]).expect("decode at position 5041"));
        out
    };
    for dtype in [WeightDType::BF16, WeightDType::F32] {
        let eager = steps(&mut executor_of(
            &emu,
            DENSE,
            0,
            dtype,
            false,
            &[],
            blocks,
            Some(&yarn),
            true,
        ));
        let mut ex = executor_of(&emu, DENSE, 1, dtype, true, &[1], blocks, Some(&yarn), true);
        let graph = steps(&mut ex);
        assert!(
            ex.worker().backend.captured_graphs() >= 1,
            "{dtype:?}: nothing captured"
        );
        drop(ex);
        assert_same_logits(dtype, &eager, &graph);
    }
    emu.assert_clean();
}
