//! One decode step of the tiny fixture model at TP 1, 2 and 4 on the CPU: the model is tiny,
//! so the difference is the cost of the in-process collectives and the rank hand-off.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use qwen3_model::build::{cpu_executor, single_seq_batch, LoadOptions};
use qwen3_model::config::ModelConfig;
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

criterion_group!(benches, bench);
criterion_main!(benches);
