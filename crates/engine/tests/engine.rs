//! Engine behaviour with the fake executor, driven step by step.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use proptest::prelude::*;
use qwen3_engine::fake_executor::script_token_fn;
use qwen3_engine::{EngineConfig, EngineError, EngineRequest, ErrorKind, FinishReason, StopReason};

fn assert_same(alone: &[Collected], together: &[Collected], what: &str) {
    assert_eq!(alone.len(), together.len());
    for (i, (a, b)) in alone.iter().zip(together).enumerate() {
        assert!(
            a.finish.is_some(),
            "{what}: request {i} did not finish alone"
        );
        assert_eq!(a.result(), b.result(), "{what}: request {i} differs");
    }
}

#[test]
fn batched_equals_alone_across_configs() {
    let reqs = workload(7, 14, 60, 30);
    let alone = run_alone(None, &reqs);
    let base = config();
    let configs = [
        ("whole prefill, no cache", base.clone()),
        (
            "chunked 64, prefix cache",
            EngineConfig {
                enable_chunked_prefill: true,
                enable_prefix_caching: true,
                max_num_batched_tokens: 64,
                ..base.clone()
            },
        ),
        (
            "chunked 7, prefix cache, tiny cache",
            EngineConfig {
                enable_chunked_prefill: true,
                enable_prefix_caching: true,
                max_num_batched_tokens: 7,
                num_blocks: 40,
                ..base.clone()
            },
        ),
        (
            "whole prefill, tiny cache",
            EngineConfig {
                num_blocks: 30,
                max_num_batched_tokens: 128,
                ..base.clone()
            },
        ),
        (
            "two seqs at a time",
            EngineConfig {
                max_num_seqs: 2,
                enable_prefix_caching: true,
                ..base.clone()
            },
        ),
    ];
    for (what, cfg) in configs {
        let (together, stats) = run_schedule(&cfg, None, &reqs);
        assert_same(&alone, &together, what);
        if cfg.num_blocks <= 40 {
            assert!(
                stats.num_preemptions_total > 0,
                "{what}: expected preemptions"
            );
        }
        let total: usize = together.iter().map(|c| c.tokens.len()).sum();
        assert_eq!(stats.generation_tokens_total, total as u64, "{what}");
        assert_eq!(stats.time_to_first_token.count, reqs.len() as u64);
        assert_eq!(stats.e2e_request_latency.count, reqs.len() as u64);
        assert_eq!(stats.request_queue_time.count, reqs.len() as u64);
        assert_eq!(stats.num_running + stats.num_waiting, 0);
        assert_eq!(stats.kv_cache_usage, 0.0);
    }
}

#[test]
fn chunked_prefill_equals_whole_prefill() {
    // One long prompt among short ones, chunk sizes forced by the token budget.
    let mut reqs = workload(11, 5, 20, 12);
    let long: Vec<u32> = (0..150).map(|i| (i * 7 % 256) as u32).collect();
    let mut r = EngineRequest::new("long", long);
    r.max_tokens = Some(20);
    reqs.push((1, r));
    let whole = run_alone(None, &reqs);
    for budget in [1, 7, 64] {
        let cfg = EngineConfig {
            enable_chunked_prefill: true,
            max_num_batched_tokens: budget,
            ..config()
        };
        let (chunked, _) = run_schedule(&cfg, None, &reqs);
        assert_same(&whole, &chunked, &format!("chunk budget {budget}"));
    }
}

#[test]
fn decodes_do_not_stall_behind_a_long_prefill() {
    let cfg = EngineConfig {
        enable_chunked_prefill: true,
        max_num_batched_tokens: 8,
        ..config()
    };
    let (mut core, _) = core_with(&cfg, None);
    let mut a = EngineRequest::new("a", vec![1, 2, 3]);
    a.max_tokens = Some(60);
    a.ignore_eos = true;
    let mut ta = add(&mut core, a);
    core.step();
    assert_eq!(ta.drain(), 1);
    let mut b = EngineRequest::new("b", (0..100).collect());
    b.max_tokens = Some(5);
    let mut tb = add(&mut core, b);
    // 100 prompt tokens at 7 per step (8 minus a's decode): a gets a token every step.
    for _ in 0..15 {
        let s = core.step();
        assert!(s.num_tokens <= 8);
        assert_eq!(ta.drain(), 1, "the decode stalled");
        tb.drain();
    }
    assert!(
        !tb.out.tokens.is_empty(),
        "the long prompt never finished prefilling"
    );
}

#[test]
fn prefix_cache_hit_equals_miss_and_is_counted() {
    let cfg = EngineConfig {
        enable_prefix_caching: true,
        ..config()
    };
    let prompt: Vec<u32> = (0..50).map(|i| (i * 13 % 256) as u32).collect();
    let mut a = EngineRequest::new("a", prompt.clone());
    a.max_tokens = Some(10);
    let miss = run_alone(None, &[(0, a.clone())]);

    let (mut core, _) = core_with(&cfg, None);
    let mut ta = add(&mut core, a.clone());
    while core.has_work() {
        core.step();
    }
    ta.drain();
    assert_eq!(ta.out.num_cached_tokens, 0);
    let s = core.stats();
    assert_eq!(
        (s.prefix_cache_queries_total, s.prefix_cache_hits_total),
        (50, 0)
    );

    // Same prompt again: 12 full blocks of 4 hit (48 tokens), the rest is computed.
    a.request_id = "a2".into();
    let mut tb = add(&mut core, a.clone());
    while core.has_work() {
        core.step();
    }
    tb.drain();
    assert_eq!(tb.out.result(), miss[0].result());
    assert_eq!(tb.out.num_cached_tokens, 48);
    let s = core.stats();
    assert_eq!(
        (s.prefix_cache_queries_total, s.prefix_cache_hits_total),
        (100, 48)
    );

    // A prompt of exactly 12 blocks: the last block is recomputed for its logits.
    let mut c = EngineRequest::new("c", prompt[..48].to_vec());
    c.max_tokens = Some(5);
    let c_miss = run_alone(None, &[(0, c.clone())]);
    let mut tc = add(&mut core, c);
    while core.has_work() {
        core.step();
    }
    tc.drain();
    assert_eq!(tc.out.num_cached_tokens, 44);
    assert_eq!(tc.out.result(), c_miss[0].result());
    // The first step of c computed only 4 tokens.
    assert_eq!(core.num_free_blocks(), cfg.num_blocks - 1);
}

#[test]
fn prefix_shared_by_concurrent_requests() {
    // Identical prompts admitted in the same step share blocks the first one is computing.
    let cfg = EngineConfig {
        enable_prefix_caching: true,
        ..config()
    };
    let prompt: Vec<u32> = (0..33).collect();
    let reqs: Vec<_> = (0..4)
        .map(|i| {
            let mut r = EngineRequest::new(format!("r{i}"), prompt.clone());
            r.max_tokens = Some(12);
            (0, r)
        })
        .collect();
    let alone = run_alone(None, &reqs);
    let (together, stats) = run_schedule(&cfg, None, &reqs);
    assert_same(&alone, &together, "shared prefix");
    assert_eq!(stats.prefix_cache_hits_total, 3 * 32);
    assert_eq!(together[3].num_cached_tokens, 32);
}

#[test]
fn preemption_under_a_tiny_cache_keeps_outputs() {
    let reqs = preemption_workload();
    let alone = run_alone(None, &reqs);
    for chunked in [false, true] {
        for caching in [false, true] {
            let cfg = EngineConfig {
                num_blocks: 25,
                enable_chunked_prefill: chunked,
                enable_prefix_caching: caching,
                max_num_batched_tokens: 64,
                ..config()
            };
            let (together, stats) = run_schedule(&cfg, None, &reqs);
            assert_same(&alone, &together, "preemption");
            assert!(stats.num_preemptions_total > 0);
            assert!(together
                .iter()
                .all(|c| c.finish == Some(FinishReason::Length)));
        }
    }
}

#[test]
fn requests_that_can_never_fit_are_rejected() {
    let cfg = EngineConfig {
        num_blocks: 11, // 40 tokens of KV
        max_num_batched_tokens: 32,
        max_model_len: 64,
        ..config()
    };
    let (mut core, _) = core_with(&cfg, None);
    let mut add_req = |r: EngineRequest| {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        core.add_request(r, tx)
    };
    let mut r = EngineRequest::new("a", vec![1; 30]);
    r.max_tokens = Some(40);
    let e = add_req(r).unwrap_err();
    assert!(
        matches!(e, EngineError::ContextLengthExceeded { .. }),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::InvalidRequest);

    let mut r = EngineRequest::new("b", vec![1; 20]);
    r.max_tokens = Some(30);
    let e = add_req(r).unwrap_err();
    assert!(matches!(e, EngineError::ExceedsKvCache { .. }), "{e}");

    let mut r = EngineRequest::new("c", vec![1; 33]);
    r.max_tokens = Some(1);
    let e = add_req(r).unwrap_err();
    assert!(matches!(e, EngineError::PromptExceedsBatch { .. }), "{e}");

    let e = add_req(EngineRequest::new("d", vec![])).unwrap_err();
    assert!(matches!(e, EngineError::InvalidRequest(_)));
    let mut r = EngineRequest::new("e", vec![1]);
    r.max_tokens = Some(0);
    assert!(add_req(r).is_err());
    let e = add_req(EngineRequest::new("f", vec![1, 999_999])).unwrap_err();
    assert!(e.to_string().contains("vocabulary"), "{e}");
    let mut r = EngineRequest::new("f2", vec![1]);
    r.stop_token_ids = vec![100_000];
    assert!(add_req(r).is_err());
    let mut r = EngineRequest::new("f3", vec![1]);
    r.sampling.logit_bias = vec![(5, 1.0), (1_000_000, -1.0)];
    assert!(add_req(r).is_err());
    let mut r = EngineRequest::new("g", vec![1]);
    r.max_tokens = Some(3);
    r.min_tokens = 4;
    assert!(add_req(r).is_err());
    let e = add_req(EngineRequest::new("h", vec![1; 64])).unwrap_err();
    assert!(
        matches!(e, EngineError::ContextLengthExceeded { .. }),
        "{e}"
    );

    // max_tokens None: as many as max_model_len and the cache allow (41 - 10 = 31).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut r = EngineRequest::new("ok", vec![1; 10]);
    r.ignore_eos = true;
    core.add_request(r.clone(), tx.clone()).unwrap();
    let e = core.add_request(r, tx).unwrap_err();
    assert!(e.to_string().contains("already in flight"), "{e}");
    while core.has_work() {
        core.step();
    }
    let mut n = 0;
    let mut last = None;
    while let Ok(o) = rx.try_recv() {
        n += o.token_ids.len();
        last = o.finish_reason;
    }
    assert_eq!((n, last), (31, Some(FinishReason::Length)));
}

#[test]
fn abort_frees_blocks_and_tells_the_executor() {
    let (mut core, control) = core_with(&config(), None);
    let mut r = EngineRequest::new("a", (0..30).collect());
    r.ignore_eos = true;
    let mut t = add(&mut core, r);
    let mut other = EngineRequest::new("b", vec![5, 6]);
    other.max_tokens = Some(3);
    for _ in 0..3 {
        core.step();
    }
    assert!(core.num_free_blocks() < 511);
    assert!(core.abort_request("a"));
    assert!(!core.abort_request("a"));
    t.drain();
    assert_eq!(t.out.finish, Some(FinishReason::Abort));
    assert_eq!(core.num_free_blocks(), 511);
    assert_eq!(core.stats().request_success_total.abort, 1);
    // The next step carries the aborted id in `finished` (the fake checks it was live).
    let mut tb = add(&mut core, other);
    while core.has_work() {
        core.step();
    }
    tb.drain();
    assert_eq!(tb.out.finish, Some(FinishReason::Length));
    assert_eq!(control.steps.load(Ordering::Relaxed), 6);
}

fn bytes(s: &str) -> Vec<u32> {
    s.bytes().map(u32::from).collect()
}

fn run_one(f: qwen3_engine::fake_executor::TokenFn, r: EngineRequest) -> Collected {
    let (mut o, _) = run_schedule(&config(), Some(f), &[(0, r)]);
    o.remove(0)
}

#[test]
fn stop_strings() {
    let f = script_token_fn(bytes("Hello STOP world and more text"));
    let mut r = EngineRequest::new("s", vec![1, 2]);
    r.max_tokens = Some(40);
    r.stop = vec!["STOP".into(), "zzz".into()];
    let c = run_one(f.clone(), r.clone());
    assert_eq!(c.text, "Hello ");
    assert_eq!(c.finish, Some(FinishReason::Stop));
    assert_eq!(c.stop_reason, Some(StopReason::Text("STOP".into())));
    // Generation stops at the token that completes the stop string.
    assert_eq!(c.tokens, bytes("Hello STOP"));
    // The part of the stop string seen so far is never streamed.
    assert!(c.deltas.iter().all(|d| !d.contains('S')), "{:?}", c.deltas);

    r.include_stop_str_in_output = true;
    let c = run_one(f.clone(), r.clone());
    assert_eq!(c.text, "Hello STOP");

    // Stop strings are not matched within the first min_tokens tokens.
    let mut r2 = EngineRequest::new("s2", vec![1]);
    r2.max_tokens = Some(40);
    r2.stop = vec!["l".into()];
    r2.min_tokens = 3;
    let c = run_one(f, r2);
    assert_eq!(c.text, "Hel");
}

#[test]
fn chinese_stop_string_over_byte_tokens() {
    let f = script_token_fn(bytes("你好世界！再见"));
    let mut r = EngineRequest::new("zh", vec![1]);
    r.max_tokens = Some(30);
    r.stop = vec!["世界".into()];
    let c = run_one(f.clone(), r.clone());
    assert_eq!(c.text, "你好");
    assert!(
        c.deltas.iter().all(|d| !d.contains('\u{FFFD}')),
        "{:?}",
        c.deltas
    );
    r.include_stop_str_in_output = true;
    assert_eq!(run_one(f.clone(), r.clone()).text, "你好世界");
    r.stop.clear();
    r.max_tokens = Some(bytes("你好世界！再见").len() as u32);
    let c = run_one(f, r);
    assert_eq!(c.text, "你好世界！再见");
    assert!(c.deltas.iter().all(|d| !d.contains('\u{FFFD}')));
    // Every character arrives whole, in the step of its last byte.
    assert!(c
        .deltas
        .iter()
        .filter(|d| !d.is_empty())
        .all(|d| d.chars().count() == 1));
}

#[test]
fn real_qwen_tokenizer_chinese_and_stop() {
    let Some(tok) = qwen_tokenizer() else { return };
    let text = "我们今天去公园散步吧 🙂 好的。";
    let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
    let vocab = tok.get_vocab_size(true) as u32;
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let mut script = ids.clone();
    script.push(im_end);
    let cfg = EngineConfig {
        eos_token_ids: vec![im_end],
        ..config()
    };
    let run = |r: EngineRequest| {
        let (mut core, _) = core_with_tok(
            &cfg,
            Some(script_token_fn(script.clone())),
            tok.clone(),
            vocab,
        );
        let mut t = add(&mut core, r);
        while core.has_work() {
            core.step();
        }
        t.drain();
        t.out
    };
    let mut r = EngineRequest::new("q", vec![9707]);
    r.max_tokens = Some(100);
    let c = run(r.clone());
    assert_eq!(c.text, text);
    assert_eq!(c.finish, Some(FinishReason::Stop));
    assert_eq!(c.stop_reason, None);
    assert!(
        c.deltas.iter().all(|d| !d.contains('\u{FFFD}')),
        "{:?}",
        c.deltas
    );
    r.stop = vec!["公园".into()];
    let c = run(r.clone());
    assert_eq!(c.text, "我们今天去");
    assert_eq!(c.stop_reason, Some(StopReason::Text("公园".into())));
    r.stop = vec!["🙂".into()];
    r.include_stop_str_in_output = true;
    assert_eq!(run(r).text, "我们今天去公园散步吧 🙂");
}

#[test]
fn min_tokens_suppresses_eos_and_stop_ids() {
    // The model wants to end at once.
    let f = script_token_fn(vec![EOS]);
    let mut r = EngineRequest::new("m", vec![1]);
    r.max_tokens = Some(20);
    let c = run_one(f.clone(), r.clone());
    assert_eq!(
        (c.tokens.len(), c.finish.clone()),
        (1, Some(FinishReason::Stop))
    );
    assert_eq!(c.stop_reason, None);
    r.min_tokens = 5;
    let c = run_one(f, r);
    assert_eq!(c.tokens.len(), 6);
    assert!(c.tokens[..5].iter().all(|&t| t != EOS));
    assert_eq!(c.tokens[5], EOS);

    let f = script_token_fn(vec![b'A' as u32]);
    let mut r = EngineRequest::new("m2", vec![1]);
    r.max_tokens = Some(20);
    r.stop_token_ids = vec![b'A' as u32];
    r.min_tokens = 3;
    let c = run_one(f, r);
    assert_eq!(c.tokens.len(), 4);
    assert_eq!(c.stop_reason, Some(StopReason::TokenId(b'A' as u32)));
    // The stop token's text is not in the output.
    assert_eq!(c.text, "BBB");
}

#[test]
fn ignore_eos_runs_to_max_tokens() {
    let f = script_token_fn(vec![b'x' as u32, EOS]);
    let mut r = EngineRequest::new("e", vec![1]);
    r.max_tokens = Some(9);
    let c = run_one(f.clone(), r.clone());
    assert_eq!(c.tokens, vec![b'x' as u32, EOS]);
    assert_eq!(c.finish, Some(FinishReason::Stop));
    r.ignore_eos = true;
    let c = run_one(f, r);
    assert_eq!(c.tokens.len(), 9);
    assert_eq!(c.finish, Some(FinishReason::Length));
    assert_eq!(c.text, "xxxxx");
}

#[test]
fn logprobs_when_asked() {
    let mut r = EngineRequest::new("l", vec![1, 2, 3]);
    r.max_tokens = Some(4);
    r.ignore_eos = true;
    r.sampling.logprobs = Some(2);
    let c = run_one(script_token_fn(vec![7]), r.clone());
    let lps: Vec<_> = c.outputs.iter().flat_map(|o| o.logprobs.clone()).collect();
    assert_eq!(lps.len(), 4);
    assert!(lps.iter().all(|l| l.token_id == 7 && l.top.len() == 2));
    r.sampling.logprobs = None;
    let c = run_one(script_token_fn(vec![7]), r);
    assert!(c.outputs.iter().all(|o| o.logprobs.is_empty()));
}

#[test]
fn executor_error_fails_in_flight_and_engine_survives() {
    for (panic, async_scheduling) in [(false, false), (true, false), (false, true), (true, true)] {
        // With async scheduling a step is in flight when the fault comes: it is waited for
        // and its tokens dropped.
        let cfg = EngineConfig {
            enable_prefix_caching: true,
            async_scheduling,
            ..config()
        };
        let (mut core, control) = core_with(&cfg, None);
        let mk = |id: &str| {
            let mut r = EngineRequest::new(id, (0..20).collect());
            r.max_tokens = Some(10);
            r.ignore_eos = true;
            r
        };
        let mut a = add(&mut core, mk("a"));
        let mut b = add(&mut core, mk("b"));
        core.step();
        core.step();
        if panic {
            control.panic_next.store(true, Ordering::SeqCst);
        } else {
            control.fail_next.store(true, Ordering::SeqCst);
        }
        while core.has_work() {
            core.step();
        }
        a.drain();
        b.drain();
        for t in [&a, &b] {
            match &t.out.finish {
                Some(FinishReason::Error(m)) => {
                    assert!(m.contains(if panic { "panic" } else { "fault" }), "{m}")
                }
                other => panic!("expected an error, got {other:?}"),
            }
        }
        assert_eq!(core.num_free_blocks(), cfg.num_blocks - 1);
        assert_eq!(core.stats().request_success_total.error, 2);
        // A new request (same prompt: the cache was reset, so no stale hit) runs normally.
        let mut c = add(&mut core, mk("c"));
        while core.has_work() {
            core.step();
        }
        c.drain();
        assert_eq!(c.out.finish, Some(FinishReason::Length));
        assert_eq!(c.out.tokens.len(), 10);
        assert_eq!(c.out.num_cached_tokens, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Any workload under any limits gives every request exactly its solo output.
    #[test]
    fn prop_batched_equals_alone(
        seed in any::<u64>(),
        n in 1usize..10,
        chunked in any::<bool>(),
        caching in any::<bool>(),
        num_blocks in 24usize..120,
        budget in 1usize..80,
        max_num_seqs in 1usize..6,
    ) {
        let reqs = workload(seed, n, 40, 24);
        let cfg = EngineConfig {
            enable_chunked_prefill: chunked,
            enable_prefix_caching: caching,
            num_blocks,
            // Without chunking the budget must hold a whole prompt.
            max_num_batched_tokens: if chunked { budget } else { budget.max(40) },
            max_num_seqs,
            ..config()
        };
        let alone = run_alone(None, &reqs);
        let (together, _) = run_schedule(&cfg, None, &reqs);
        for (a, b) in alone.iter().zip(&together) {
            prop_assert_eq!(a.result(), b.result());
        }
    }
}
