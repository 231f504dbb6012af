//! The async handle: streams, abort, disconnects, queue limits, executor faults, shutdown.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use qwen3_engine::fake_executor::{FakeControl, FakeExecutor};
use qwen3_engine::{
    EngineConfig, EngineError, EngineHandle, EngineRequest, ErrorKind, FinishReason, RequestStream,
};

fn start(cfg: &EngineConfig, delay_us: u64) -> (EngineHandle, Arc<FakeControl>) {
    let fake = FakeExecutor::new(cfg.block_size, cfg.num_blocks, VOCAB);
    let control = fake.control();
    control.step_delay_us.store(delay_us, Ordering::SeqCst);
    let h = EngineHandle::start(cfg.clone(), Box::new(fake), tokenizer()).unwrap();
    (h, control)
}

fn long_request(id: &str) -> EngineRequest {
    let mut r = EngineRequest::new(id, (0..20).collect());
    r.max_tokens = Some(200);
    r.ignore_eos = true;
    r
}

async fn collect(s: RequestStream) -> Collected {
    collect_more(s, Collected::default()).await
}

async fn collect_more(mut s: RequestStream, mut c: Collected) -> Collected {
    while let Some(o) = s.next().await {
        c.absorb(o);
    }
    c
}

async fn wait_until(h: &EngineHandle, what: &str, f: impl Fn(&qwen3_engine::EngineStats) -> bool) {
    let t0 = Instant::now();
    while !f(&h.stats()) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn concurrent_streams_match_solo_runs() {
    let reqs = workload(5, 12, 50, 20);
    let alone = run_alone(None, &reqs);
    let cfg = EngineConfig {
        enable_chunked_prefill: true,
        enable_prefix_caching: true,
        max_num_batched_tokens: 32,
        num_blocks: 60,
        ..config()
    };
    let (h, _) = start(&cfg, 0);
    let streams: Vec<_> = reqs
        .iter()
        .map(|(_, r)| h.submit(r.clone()).unwrap())
        .collect();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|s| tokio::spawn(collect(s)))
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let c = t.await.unwrap();
        assert_eq!(c.result(), alone[i].result(), "request {i}");
    }
    let s = h.stats();
    assert_eq!(s.num_running + s.num_waiting, 0);
    assert_eq!(s.kv_cache_usage, 0.0);
    h.shutdown(Duration::from_secs(1));
    assert!(!h.is_alive());
}

#[tokio::test]
async fn abort_by_id_ends_the_stream_and_frees_blocks() {
    let (h, _) = start(&config(), 500);
    let mut s = h.submit(long_request("victim")).unwrap();
    let first = s.next().await.unwrap();
    assert_eq!(first.token_ids.len(), 1);
    h.abort("victim");
    let mut last = first;
    while let Some(o) = s.next().await {
        last = o;
    }
    assert_eq!(last.finish_reason, Some(FinishReason::Abort));
    wait_until(&h, "blocks freed", |s| {
        s.kv_cache_usage == 0.0 && s.num_running == 0
    })
    .await;
    assert_eq!(h.stats().request_success_total.abort, 1);
}

#[tokio::test]
async fn dropping_the_stream_aborts_at_once() {
    let (h, _) = start(&config(), 500);
    let mut s = h.submit(long_request("gone")).unwrap();
    s.next().await.unwrap();
    s.next().await.unwrap();
    assert!(h.stats().kv_cache_usage > 0.0);
    drop(s);
    wait_until(&h, "blocks freed", |s| {
        s.kv_cache_usage == 0.0 && s.num_running == 0
    })
    .await;
    let st = h.stats();
    assert_eq!(st.request_success_total.abort, 1);
    assert!(st.generation_tokens_total < 50);
    // The engine keeps serving.
    let mut r = EngineRequest::new("next", vec![1, 2, 3]);
    r.max_tokens = Some(3);
    r.ignore_eos = true;
    let c = collect(h.submit(r).unwrap()).await;
    assert_eq!(c.finish, Some(FinishReason::Length));
}

#[tokio::test]
async fn queue_full_is_reported() {
    let cfg = EngineConfig {
        max_num_seqs: 1,
        max_waiting_requests: 2,
        ..config()
    };
    let (h, _) = start(&cfg, 1000);
    let mut running = h.submit(long_request("r0")).unwrap();
    running.next().await.unwrap(); // admitted: no longer counts as waiting
    let _w1 = h.submit(long_request("w1")).unwrap();
    let _w2 = h.submit(long_request("w2")).unwrap();
    let e = h.submit(long_request("w3")).unwrap_err();
    assert!(matches!(e, EngineError::QueueFull { limit: 2 }), "{e}");
    assert_eq!(e.kind(), ErrorKind::Overloaded);
    // Rejections of impossible requests are synchronous too.
    let mut r = EngineRequest::new("huge", vec![1; 10]);
    r.max_tokens = Some(10_000);
    assert_eq!(h.submit(r).unwrap_err().kind(), ErrorKind::InvalidRequest);
    h.shutdown(Duration::ZERO);
}

#[tokio::test]
async fn executor_fault_fails_in_flight_but_engine_lives() {
    let (h, control) = start(&config(), 300);
    let mut a = h.submit(long_request("a")).unwrap();
    let b = h.submit(long_request("b")).unwrap();
    let mut ca = Collected::default();
    ca.absorb(a.next().await.unwrap());
    control.fail_next.store(true, Ordering::SeqCst);
    let ca = collect_more(a, ca).await;
    let cb = collect(b).await;
    for c in [&ca, &cb] {
        assert!(
            matches!(&c.finish, Some(FinishReason::Error(m)) if m.contains("injected")),
            "{:?}",
            c.finish
        );
    }
    assert!(h.is_alive());
    let mut r = EngineRequest::new("after", vec![4, 5]);
    r.max_tokens = Some(4);
    r.ignore_eos = true;
    let c = collect(h.submit(r).unwrap()).await;
    assert_eq!((c.tokens.len(), c.finish), (4, Some(FinishReason::Length)));
    assert_eq!(h.stats().request_success_total.error, 2);
}

#[tokio::test]
async fn shutdown_lets_short_requests_finish_and_aborts_the_rest() {
    let (h, _) = start(&config(), 2000);
    let mut short = EngineRequest::new("short", vec![1, 2]);
    short.max_tokens = Some(3);
    short.ignore_eos = true;
    let s_short = h.submit(short).unwrap();
    let s_long = h.submit(long_request("long")).unwrap();
    let t_short = tokio::spawn(collect(s_short));
    let t_long = tokio::spawn(collect(s_long));
    let h2 = h.clone();
    tokio::task::spawn_blocking(move || h2.shutdown(Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(!h.is_alive());
    assert_eq!(t_short.await.unwrap().finish, Some(FinishReason::Length));
    let long = t_long.await.unwrap();
    assert_eq!(long.finish, Some(FinishReason::Abort));
    assert!(long.tokens.len() < 200);
    let e = h.submit(long_request("late")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn idle_engine_sleeps() {
    let (h, control) = start(&config(), 0);
    let mut r = EngineRequest::new("one", vec![1]);
    r.max_tokens = Some(2);
    r.ignore_eos = true;
    collect(h.submit(r).unwrap()).await;
    let steps = control.steps.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // No steps while idle (the thread blocks on its command channel).
    assert_eq!(control.steps.load(Ordering::SeqCst), steps);
    assert_eq!(steps, 2);
}

#[tokio::test]
async fn duplicate_request_id_fails_the_second() {
    let (h, _) = start(&config(), 500);
    let _a = h.submit(long_request("dup")).unwrap();
    let b = collect(h.submit(long_request("dup")).unwrap()).await;
    assert!(matches!(&b.finish, Some(FinishReason::Error(m)) if m.contains("in flight")));
}
