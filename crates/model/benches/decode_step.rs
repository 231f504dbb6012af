//! One decode step of the tiny fixture model at TP 1, 2 and 4 on the CPU: the model is tiny,
//! so the difference is the cost of the in-process collectives and the rank hand-off.
//!
//! And one decode step of a random-weight model of Qwen3-0.6B's exact shape (written to a
//! temporary directory, 1.2 GB) at 128 tokens of context, batch 1 and 8, on the kernel level in
//! force (`QWEN3_CPU_KERNELS`) and rayon's pool (`RAYON_NUM_THREADS`). Skipped when
//! `QWEN3_BENCH_SKIP_0_6B` is set.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qwen3_model::config::ModelConfig;
use qwen3_model::load::{cpu_executor, LoadOptions};
use qwen3_model::profile::single_seq_batch;
use qwen3_model::synthetic::{write_model, Shape};
use qwen3_model::WeightDType;

const BLOCK: usize = 16;

fn batch(ids: &[u32], start: usize, new: bool) -> qwen3_engine::Batch {
    single_seq_batch(1, ids, start, new, BLOCK)
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen3");
    let text = std::fs::read_to_string(dir.join("config.json")).expect("fixture config");
    let config = ModelConfig::from_json_str(&text).expect("config");
    let mut group = c.benchmark_group("decode_step_tiny_qwen3");
    for tp in [1, 2, 4] {
        let opts = LoadOptions {
            dir: dir.clone(),
            config: config.clone(),
            dtype: WeightDType::BF16,
            tensor_parallel_size: tp,
            block_size: BLOCK,
            num_blocks: 16,
        };
        let mut ex = cpu_executor(&opts).expect("executor");
        let prompt: Vec<u32> = (0..64).map(|i| 1000 + i).collect();
        ex.execute(&batch(&prompt, 0, true)).expect("prefill");
        let step = batch(&[42], 64, false);
        group.bench_function(format!("tp{tp}"), |b| {
            b.iter(|| ex.execute(&step).expect("decode"))
        });
    }
    group.finish();
}

/// Blocks each sequence of the batch-8 bench owns (10 × 16 covers 129 tokens).
const BLOCKS_PER_SEQ: usize = 10;

/// One step over several sequences `(seq_id, ids, start, new)`; sequence `i` owns blocks
/// `1 + i * BLOCKS_PER_SEQ ..` (block 0 is the engine's null block).
fn multi_seq_batch(seqs: &[(u64, &[u32], usize, bool)]) -> qwen3_engine::Batch {
    use qwen3_engine::{Batch, NewSeq, ScheduledSeq};
    let mut b = Batch {
        new_seqs: Vec::new(),
        finished: Vec::new(),
        seqs: Vec::new(),
        token_ids: Vec::new(),
        positions: Vec::new(),
        slot_mapping: Vec::new(),
        block_tables: Vec::new(),
        max_blocks_per_seq: BLOCKS_PER_SEQ,
        block_size: BLOCK,
        masks: None,
        deferred_inputs: Vec::new(),
    };
    for (i, &(seq_id, ids, start, new)) in seqs.iter().enumerate() {
        let first = 1 + i * BLOCKS_PER_SEQ;
        let ctx = start + ids.len();
        if new {
            b.new_seqs.push(NewSeq {
                seq_id,
                token_ids: ids.into(),
                num_prompt_tokens: ids.len(),
                sampling: std::sync::Arc::new(qwen3_backend::sampling::SamplingParams::greedy()),
            });
        }
        b.seqs.push(ScheduledSeq {
            seq_id,
            query_start: b.token_ids.len() as u32,
            query_len: ids.len() as u32,
            context_len: ctx as u32,
            sample: true,
            suppressed: Vec::new(),
        });
        b.token_ids.extend_from_slice(ids);
        b.positions.extend(start as u32..ctx as u32);
        b.slot_mapping
            .extend((start..ctx).map(|p| ((first + p / BLOCK) * BLOCK + p % BLOCK) as u32));
        b.block_tables
            .extend((0..BLOCKS_PER_SEQ).map(|j| (first + j) as u32));
    }
    b
}

fn bench_0_6b(c: &mut Criterion) {
    if std::env::var_os("QWEN3_BENCH_SKIP_0_6B").is_some() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let shape = Shape::by_name("qwen3-0.6b").expect("shape");
    write_model(dir.path(), &shape, 0).expect("random model");
    let text = std::fs::read_to_string(dir.path().join("config.json")).expect("config");
    let config = ModelConfig::from_json_str(&text).expect("config");
    let opts = LoadOptions {
        dir: dir.path().to_path_buf(),
        config,
        dtype: WeightDType::BF16,
        tensor_parallel_size: 1,
        block_size: BLOCK,
        num_blocks: 8 * 16,
    };
    let mut ex = cpu_executor(&opts).expect("executor");
    let mut group = c.benchmark_group("decode_step_qwen3_0.6b_random");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(shape.weight_bytes_per_token()));
    // Batch 1: one sequence with a 128-token prompt.
    let prompt: Vec<u32> = (0..128).map(|i| 1000 + i).collect();
    ex.execute(&batch(&prompt, 0, true)).expect("prefill");
    let step = batch(&[42], 128, false);
    group.bench_function("batch1_ctx128", |b| {
        b.iter(|| ex.execute(&step).expect("decode"))
    });
    // Batch 8: eight sequences of 128 tokens, each decoding one token.
    let mut seqs = Vec::new();
    let prompts: Vec<Vec<u32>> = (0..8u32)
        .map(|s| (0..128).map(|i| 2000 + i + s * 131).collect())
        .collect();
    let first: Vec<(u64, &[u32], usize, bool)> = prompts
        .iter()
        .enumerate()
        .map(|(s, p)| (100 + s as u64, &p[..], 0, true))
        .collect();
    ex.execute(&multi_seq_batch(&first)).expect("prefill");
    seqs.extend(first.iter().map(|f| f.0));
    let steps: Vec<(u64, &[u32], usize, bool)> =
        seqs.iter().map(|&s| (s, &[7u32][..], 128, false)).collect();
    let step8 = multi_seq_batch(&steps);
    group.bench_function("batch8_ctx128", |b| {
        b.iter(|| ex.execute(&step8).expect("decode"))
    });
    group.finish();
}

criterion_group!(benches, bench, bench_0_6b);
criterion_main!(benches);
