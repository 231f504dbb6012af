//! Async scheduling (the host one step ahead of the executor) against synchronous steps, with
//! the fake executor, which checks that every deferred input is the token it sampled for that
//! sequence in the step before, and simulates the KV cache to catch a block freed under a
//! step still in flight. Outputs must be identical token for token, text for text.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use proptest::prelude::*;
use qwen3_engine::fake_executor::script_token_fn;
use qwen3_engine::{EngineConfig, EngineRequest, FinishReason, StopReason};

fn with_async(cfg: &EngineConfig) -> EngineConfig {
    EngineConfig {
        async_scheduling: true,
        ..cfg.clone()
    }
}

/// The mixed workload, with stop strings, stop token ids and min_tokens sprinkled in, so
/// sequences stop mid-batch for every reason while others keep running.
fn stopping_workload(seed: u64, n: usize) -> Vec<(usize, EngineRequest)> {
    let mut reqs = workload(seed, n, 40, 30);
    for (i, (_, r)) in reqs.iter_mut().enumerate() {
        match i % 4 {
            1 => r.stop_token_ids = vec![(i * 37 % 256) as u32, 7],
            2 => r.stop = "abcdefghij".chars().map(String::from).collect(),
            3 => r.min_tokens = r.max_tokens.map_or(0, |m| m.min(3)),
            _ => {}
        }
        if i % 5 == 4 {
            r.sampling.logprobs = Some(2);
        }
    }
    reqs
}

fn assert_equal(sync: &[Collected], asynch: &[Collected], what: &str) {
    assert_eq!(sync.len(), asynch.len());
    for (i, (s, a)) in sync.iter().zip(asynch).enumerate() {
        assert!(s.finish.is_some(), "{what}: request {i} did not finish");
        assert_eq!(s.result(), a.result(), "{what}: request {i} differs");
        let lp =
            |c: &Collected| -> Vec<_> { c.outputs.iter().map(|o| o.logprobs.clone()).collect() };
        assert_eq!(lp(s), lp(a), "{what}: request {i}'s logprobs differ");
    }
}

#[test]
fn async_equals_sync_across_configs() {
    let reqs = stopping_workload(11, 16);
    let base = config();
    let configs = [
        ("whole prefill", base.clone()),
        (
            "chunked 7, prefix cache",
            EngineConfig {
                enable_chunked_prefill: true,
                enable_prefix_caching: true,
                max_num_batched_tokens: 7,
                ..base.clone()
            },
        ),
        (
            "tiny cache: preemption",
            EngineConfig {
                enable_chunked_prefill: true,
                enable_prefix_caching: true,
                max_num_batched_tokens: 64,
                num_blocks: 30,
                ..base.clone()
            },
        ),
        (
            "one seq at a time",
            EngineConfig {
                max_num_seqs: 1,
                ..base.clone()
            },
        ),
    ];
    let mut stops = [0usize; 3];
    for (what, cfg) in configs {
        let (sync, sync_stats) = run_schedule(&cfg, None, &reqs);
        let (asynch, async_stats) = run_schedule(&with_async(&cfg), None, &reqs);
        assert_equal(&sync, &asynch, what);
        assert_eq!(
            sync_stats.request_success_total, async_stats.request_success_total,
            "{what}"
        );
        assert_eq!(
            sync_stats.generation_tokens_total, async_stats.generation_tokens_total,
            "{what}"
        );
        if what.starts_with("tiny") {
            assert!(
                async_stats.num_preemptions_total > 0,
                "{what}: no preemption"
            );
        }
        for c in &asynch {
            match (&c.finish, &c.stop_reason) {
                (Some(FinishReason::Stop), Some(StopReason::Text(_))) => stops[0] += 1,
                (Some(FinishReason::Stop), _) => stops[1] += 1,
                (Some(FinishReason::Length), _) => stops[2] += 1,
                _ => {}
            }
        }
    }
    // The workload exercises every way to stop (text, token/EOS, length).
    assert!(stops.iter().all(|&n| n > 0), "{stops:?}");
}

#[test]
fn preemption_under_a_tiny_cache_matches_sync() {
    let reqs = preemption_workload();
    for chunked in [false, true] {
        for caching in [false, true] {
            let cfg = EngineConfig {
                num_blocks: 25,
                enable_chunked_prefill: chunked,
                enable_prefix_caching: caching,
                max_num_batched_tokens: 64,
                ..config()
            };
            let (sync, _) = run_schedule(&cfg, None, &reqs);
            let (asynch, stats) = run_schedule(&with_async(&cfg), None, &reqs);
            assert_equal(&sync, &asynch, "preemption");
            assert!(stats.num_preemptions_total > 0);
        }
    }
}

#[test]
fn a_stopped_sequence_never_emits_the_token_computed_after_its_stop() {
    // The model says EOS as its 4th token and goes on with 'z' if asked further.
    let script = vec![b'a' as u32, b'b' as u32, b'c' as u32, EOS, b'z' as u32];
    let mut r = EngineRequest::new("s", vec![1, 2, 3]);
    r.max_tokens = Some(20);
    let cfg = with_async(&config());
    let (mut core, control) = core_with(&cfg, Some(script_token_fn(script)));
    assert!(core.is_async());
    let mut t = add(&mut core, r);
    while core.has_work() {
        core.step();
    }
    t.drain();
    assert_eq!(
        t.out.tokens,
        vec![b'a' as u32, b'b' as u32, b'c' as u32, EOS]
    );
    assert_eq!(t.out.finish, Some(FinishReason::Stop));
    // The step after EOS was computed (the host did not know yet) and its token dropped.
    assert_eq!(control.steps.load(Ordering::Relaxed), 5);
    assert_eq!(core.num_free_blocks(), cfg.num_blocks - 1);
    assert_eq!(core.stats().generation_tokens_total, 4);
}

#[test]
fn max_tokens_is_never_overshot_nor_overcomputed() {
    let mut r = EngineRequest::new("m", vec![1, 2, 3]);
    r.max_tokens = Some(6);
    r.ignore_eos = true;
    let cfg = with_async(&config());
    let (mut core, control) = core_with(&cfg, Some(script_token_fn(vec![b'x' as u32])));
    let mut t = add(&mut core, r);
    while core.has_work() {
        core.step();
    }
    t.drain();
    assert_eq!(t.out.tokens.len(), 6);
    assert_eq!(t.out.finish, Some(FinishReason::Length));
    // Known in advance: no step is spent after the 6th token.
    assert_eq!(control.steps.load(Ordering::Relaxed), 6);
}

#[test]
fn aborted_mid_flight_is_not_streamed_further() {
    let cfg = with_async(&config());
    let (mut core, _control) = core_with(&cfg, None);
    let mk = |id: &str| {
        let mut r = EngineRequest::new(id, (0..30).collect());
        r.ignore_eos = true;
        r.max_tokens = Some(50);
        r
    };
    let mut a = add(&mut core, mk("a"));
    let mut b = add(&mut core, mk("b"));
    for _ in 0..4 {
        core.step();
    }
    a.drain();
    let before = a.out.tokens.len();
    // A step computing a token for "a" is in flight now.
    assert!(core.abort_request("a"));
    a.drain();
    assert_eq!(a.out.finish, Some(FinishReason::Abort));
    while core.has_work() {
        core.step();
    }
    // Nothing after the abort (absorb() asserts no output follows the final one).
    a.drain();
    assert_eq!(a.out.tokens.len(), before);
    b.drain();
    assert_eq!(b.out.tokens.len(), 50);
    assert_eq!(core.num_free_blocks(), cfg.num_blocks - 1);
    // The same request alone, synchronously, gives the same tokens.
    let (alone, _) = run_schedule(&config(), None, &[(0, mk("b"))]);
    assert_eq!(alone[0].result(), b.out.result());
}

#[test]
fn n_identical_choices_match_sync() {
    // n > 1 reaches the engine as n requests of one prompt (their seeds differ by choice).
    let reqs: Vec<_> = (0..4)
        .map(|i| {
            let mut r = EngineRequest::new(format!("c-{i}"), vec![9, 8, 7, 6, 5]);
            r.max_tokens = Some(12);
            r.sampling.seed = Some(100 + i);
            (0, r)
        })
        .collect();
    let cfg = EngineConfig {
        enable_prefix_caching: true,
        ..config()
    };
    let (sync, _) = run_schedule(&cfg, None, &reqs);
    let (asynch, stats) = run_schedule(&with_async(&cfg), None, &reqs);
    assert_equal(&sync, &asynch, "n = 4");
    assert!(stats.prefix_cache_hits_total > 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Any workload under any limits gives the same outputs with async scheduling as without.
    #[test]
    fn prop_async_equals_sync(
        seed in any::<u64>(),
        n in 1usize..10,
        chunked in any::<bool>(),
        caching in any::<bool>(),
        num_blocks in 24usize..120,
        budget in 1usize..80,
        max_num_seqs in 1usize..6,
    ) {
        let reqs = stopping_workload(seed, n);
        let cfg = EngineConfig {
            enable_chunked_prefill: chunked,
            enable_prefix_caching: caching,
            num_blocks,
            max_num_batched_tokens: if chunked { budget } else { budget.max(40) },
            max_num_seqs,
            ..config()
        };
        let (sync, _) = run_schedule(&cfg, None, &reqs);
        let (asynch, _) = run_schedule(&with_async(&cfg), None, &reqs);
        for (s, a) in sync.iter().zip(&asynch) {
            prop_assert_eq!(s.result(), a.result());
        }
    }
}
