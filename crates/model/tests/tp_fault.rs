//! A fault in a rank of a CPU tensor-parallel group: the group's collectives are aborted for
//! good, so the engine fails the request and stops (its handle then reports not alive, and
//! `/health` 503) instead of failing every later request; a single-rank executor with the
//! same fault fails the request and goes on.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use qwen3_engine::{EngineConfig, EngineHandle, EngineRequest, FinishReason};
use qwen3_model::load::{cpu_executor, LoadOptions};
use qwen3_model::WeightDType;

/// An engine that believes in 64 KV blocks over an executor that has 2: the first step that
/// writes past them is the injected device fault.
fn engine_with_short_kv(tp: usize) -> EngineHandle {
    let model = "tiny-qwen3";
    let block_size = 16;
    let opts = LoadOptions {
        dir: fixtures().join(model),
        config: config(model, None),
        dtype: WeightDType::BF16,
        tensor_parallel_size: tp,
        block_size,
        num_blocks: 2,
    };
    let executor = cpu_executor(&opts).expect("executor");
    let tok = tokenizers::Tokenizer::from_file(fixtures().join(model).join("tokenizer.json"))
        .expect("tokenizer");
    let cfg = EngineConfig {
        block_size,
        num_blocks: 64,
        max_num_seqs: 4,
        max_num_batched_tokens: 256,
        max_model_len: 256,
        enable_prefix_caching: false,
        enable_chunked_prefill: true,
        max_waiting_requests: 16,
        eos_token_ids: vec![151645, 151643],
        async_scheduling: false,
    };
    EngineHandle::start(cfg, executor, Arc::new(tok)).expect("engine starts")
}

/// Runs a request needing more blocks than the executor has; returns how it finished.
fn run_past_the_cache(e: &EngineHandle) -> Option<FinishReason> {
    let mut r = EngineRequest::new("r", (1..=100).collect());
    r.max_tokens = Some(8);
    r.ignore_eos = true;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut s = e.submit(r).expect("submitted");
        let mut last = None;
        while let Some(o) = s.next().await {
            if o.finish_reason.is_some() {
                last = o.finish_reason;
            }
        }
        last
    })
}

#[test]
fn a_rank_fault_stops_the_engine_but_a_single_rank_fault_does_not() {
    let e = engine_with_short_kv(2);
    let finish = run_past_the_cache(&e);
    assert!(
        matches!(finish, Some(FinishReason::Error(_)) | None),
        "{finish:?}"
    );
    let start = Instant::now();
    while e.is_alive() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the engine kept running"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(e
        .submit(EngineRequest::new("after", vec![1, 2, 3]))
        .is_err());

    let single = engine_with_short_kv(1);
    let finish = run_past_the_cache(&single);
    assert!(matches!(finish, Some(FinishReason::Error(_))), "{finish:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        single.is_alive(),
        "a single-rank fault must not stop the engine"
    );
    single.shutdown(Duration::from_millis(10));
}
