//! One scheduler step with 256 running decode sequences and 1,000 waiting requests.
//!
//! `scheduler_step/*`: schedule (batch layout, slot allocation, block tables) + append the
//! sampled tokens + token-level stop checks, with and without prefix caching (which hashes
//! every block a sequence fills). `engine_core_step`: the same through `EngineCore` with a
//! no-op executor, adding incremental detokenization, metrics and the per-request output
//! channel sends.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use qwen3_engine::batch::{Sampled, SamplingParams};
use qwen3_engine::fake_executor::byte_level_test_tokenizer;
use qwen3_engine::{
    Batch, EngineConfig, EngineCore, EngineRequest, Executor, ExecutorError, Scheduler,
    SchedulerConfig, SeqOutput, SeqParams, StepOutput,
};

const RUNNING: usize = 256;
const WAITING: usize = 1000;
const PROMPT: usize = 512;
/// Steps timed per fresh state (sequences grow from 512 to at most 1024 tokens).
const CHUNK: u64 = 512;

fn fill_outputs(batch: &Batch, out: &mut StepOutput) {
    out.outputs.clear();
    for q in batch.seqs.iter().filter(|q| q.sample) {
        out.outputs.push(SeqOutput {
            seq_id: q.seq_id,
            sampled: Sampled {
                token: q.context_len % 250 + 1,
                logprob: None,
                top_logprobs: Vec::new(),
            },
        });
    }
}

fn step(s: &mut Scheduler<()>, batch: &mut Batch, out: &mut StepOutput) {
    s.schedule(batch);
    fill_outputs(batch, out);
    // Outputs always match the batch here.
    let _ = s.update_from_output(out);
}

fn setup(caching: bool) -> (Scheduler<()>, Batch, StepOutput) {
    let mut s: Scheduler<()> = Scheduler::new(SchedulerConfig {
        block_size: 16,
        num_blocks: RUNNING * 2048 / 16 + 1,
        max_num_seqs: RUNNING,
        max_num_batched_tokens: 8192,
        max_model_len: 4096,
        enable_prefix_caching: caching,
        enable_chunked_prefill: true,
        eos_token_ids: vec![0],
    });
    let sampling = Arc::new(SamplingParams::greedy());
    for i in 0..(RUNNING + WAITING) as u64 {
        s.add(
            SeqParams {
                seq_id: i,
                prompt: (0..PROMPT as u32)
                    .map(|t| (t * 31 + i as u32) % 250 + 1)
                    .collect(),
                sampling: Arc::clone(&sampling),
                max_tokens: 2048,
                min_tokens: 0,
                stop_token_ids: vec![],
                ignore_eos: false,
            },
            (),
        )
        .expect("unique ids");
    }
    let mut batch = Batch::default();
    let mut out = StepOutput::default();
    // Prefill everything that fits; stop once every running sequence is decoding.
    loop {
        step(&mut s, &mut batch, &mut out);
        if batch.seqs.len() == RUNNING && batch.seqs.iter().all(|q| q.query_len == 1) {
            break;
        }
    }
    assert_eq!(s.num_waiting(), WAITING);
    (s, batch, out)
}

fn bench_scheduler(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler_step");
    for caching in [false, true] {
        let name = if caching {
            "256_decode_1000_waiting_prefix_cache"
        } else {
            "256_decode_1000_waiting"
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    let (mut s, mut batch, mut out) = setup(caching);
                    let t = Instant::now();
                    for _ in 0..n {
                        step(&mut s, &mut batch, &mut out);
                        black_box(&batch);
                    }
                    total += t.elapsed();
                    left -= n;
                }
                total
            })
        });
    }
    g.finish();
}

/// Samples a fixed printable token for every sequence that samples.
struct NullExecutor;

impl Executor for NullExecutor {
    fn execute(&mut self, batch: &Batch) -> Result<StepOutput, ExecutorError> {
        let mut out = StepOutput::default();
        fill_outputs(batch, &mut out);
        for o in &mut out.outputs {
            o.sampled.token = 97 + o.sampled.token % 26;
        }
        Ok(out)
    }
}

fn bench_engine_core(c: &mut Criterion) {
    let tok = Arc::new(byte_level_test_tokenizer().expect("test tokenizer"));
    let setup = || {
        let cfg = EngineConfig {
            block_size: 16,
            num_blocks: RUNNING * 2048 / 16 + 1,
            max_num_seqs: RUNNING,
            max_num_batched_tokens: 8192,
            max_model_len: 4096,
            enable_prefix_caching: true,
            enable_chunked_prefill: true,
            max_waiting_requests: 10_000,
            eos_token_ids: vec![256],
            async_scheduling: false,
        };
        let mut core =
            EngineCore::new(cfg, Box::new(NullExecutor), Arc::clone(&tok)).expect("config");
        let mut rxs = Vec::new();
        for i in 0..RUNNING + WAITING {
            let mut r = EngineRequest::new(
                format!("r{i}"),
                (0..PROMPT as u32)
                    .map(|t| (t * 31 + i as u32) % 250 + 1)
                    .collect(),
            );
            r.max_tokens = Some(2048);
            r.stop = vec!["never appears: \u{1F600}".into()];
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            core.add_request(r, tx).expect("valid");
            rxs.push(rx);
        }
        loop {
            let s = core.step();
            if core.num_waiting() == WAITING && s.num_seqs == RUNNING && s.num_tokens == RUNNING {
                break;
            }
        }
        (core, rxs)
    };
    c.bench_function("engine_core_step/256_decode_1000_waiting", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(CHUNK);
                let (mut core, rxs) = setup();
                let t = Instant::now();
                for _ in 0..n {
                    black_box(core.step());
                }
                total += t.elapsed();
                drop(rxs);
                left -= n;
            }
            total
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5));
    targets = bench_scheduler, bench_engine_core
}
criterion_main!(benches);
