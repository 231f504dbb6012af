//! The engine with the real model: batching, chunked prefill, prefix caching, preemption and
//! tensor parallelism all give transformers' greedy tokens.

mod common;

use common::*;
use qwen3_engine::{EngineHandle, EngineRequest};

fn request(id: &str, case: &Case) -> EngineRequest {
    let mut r = EngineRequest::new(id, case.prompt_ids.clone());
    r.max_tokens = Some(case.greedy_ids.len() as u32);
    r.ignore_eos = true;
    r
}

async fn collect(mut s: qwen3_engine::RequestStream) -> (Vec<u32>, usize) {
    let mut toks = Vec::new();
    let mut cached = 0;
    while let Some(o) = s.next().await {
        toks.extend(o.token_ids);
        cached = o.num_cached_tokens;
        if let Some(r) = o.finish_reason {
            assert_eq!(r, qwen3_engine::FinishReason::Length);
        }
    }
    (toks, cached)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Submits every case, staggered so they join at different steps, and checks each stream
/// gives the recorded greedy tokens.
fn run_all(model: &str, s: &Setup) -> EngineHandle {
    let golden = golden(model);
    let cases: Vec<&Case> = golden
        .cases
        .iter()
        .filter(|c| c.config_overrides.is_none())
        .collect();
    let e = engine(model, s);
    rt().block_on(async {
        let mut tasks = Vec::new();
        for (i, c) in cases.iter().enumerate() {
            let mut stream = e.submit(request(&format!("r{i}"), c)).expect("submit");
            // Let earlier requests run a step or two before the next arrives.
            let first = stream.next().await;
            let mut head = Vec::new();
            if let Some(o) = first {
                head.extend(o.token_ids);
            }
            let want = c.greedy_ids.clone();
            let name = c.name.clone();
            tasks.push(tokio::spawn(async move {
                let (rest, _) = collect(stream).await;
                head.extend(rest);
                assert_eq!(head, want, "{name}");
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
    e
}

#[test]
fn batched_requests_match_alone_dense_and_moe() {
    for model in ["tiny-qwen3", "tiny-qwen3-moe"] {
        run_all(model, &Setup::default());
    }
}

#[test]
fn chunked_prefill_at_1_7_64_matches_whole() {
    for chunk in [1, 7, 64] {
        run_all(
            "tiny-qwen3",
            &Setup {
                max_num_batched_tokens: chunk,
                ..Setup::default()
            },
        );
    }
}

#[test]
fn prefix_cache_hit_gives_the_same_tokens() {
    let golden = golden("tiny-qwen3");
    let long = golden
        .cases
        .iter()
        .find(|c| c.name == "long")
        .expect("long case");
    let e = engine("tiny-qwen3", &Setup::default());
    rt().block_on(async {
        let (a, cached_a) = collect(e.submit(request("a", long)).expect("a")).await;
        let (b, cached_b) = collect(e.submit(request("b", long)).expect("b")).await;
        assert_eq!(a, long.greedy_ids);
        assert_eq!(b, long.greedy_ids);
        assert_eq!(cached_a, 0);
        // 47 prompt tokens: two full blocks of 16 are reused.
        assert_eq!(cached_b, 32, "cached tokens on the second run");
    });
    let stats = e.stats();
    assert!(stats.prefix_cache_hits_total >= 32, "{stats:?}");
}

#[test]
fn preemption_under_a_tiny_cache_keeps_outputs() {
    // 8 usable blocks of 16 tokens: not enough for all cases at once (each needs 3–5).
    let e = run_all(
        "tiny-qwen3",
        &Setup {
            num_blocks: 9,
            prefix_caching: false,
            ..Setup::default()
        },
    );
    assert!(e.stats().num_preemptions_total > 0, "expected preemptions");
}

#[test]
fn tensor_parallel_2_and_4_in_the_engine_match() {
    for model in ["tiny-qwen3", "tiny-qwen3-moe"] {
        for tp in [2, 4] {
            run_all(
                model,
                &Setup {
                    tp,
                    max_num_batched_tokens: 7,
                    ..Setup::default()
                },
            );
        }
    }
}

#[test]
fn async_scheduling_gives_the_goldens_batched_chunked_preempted_and_tp2() {
    let on = Setup {
        async_scheduling: true,
        ..Setup::default()
    };
    for model in ["tiny-qwen3", "tiny-qwen3-moe"] {
        run_all(model, &on);
    }
    run_all(
        "tiny-qwen3",
        &Setup {
            max_num_batched_tokens: 7,
            tp: 2,
            ..on
        },
    );
    let e = run_all(
        "tiny-qwen3",
        &Setup {
            num_blocks: 9,
            prefix_caching: false,
            ..on
        },
    );
    assert!(e.stats().num_preemptions_total > 0, "expected preemptions");
}
