//! Async scheduling with the real model on the CPU, driven step by step: stops mid-batch,
//! max_tokens, an abort with a step in flight and preemption give exactly what synchronous
//! steps give, and the transformers goldens where a request runs to its end.

mod common;

use common::*;
use qwen3_engine::{EngineRequest, FinishReason, RequestOutput};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

type Outcome = (String, Vec<u32>, Option<FinishReason>);

/// Every fixture case, each made to end differently: at a stop token taken from its own
/// greedy output (mid-batch), at a short max_tokens, or at its full length; one more is
/// aborted after a few steps. A cache of 6 usable blocks of 16 forces preemption.
fn drive(async_scheduling: bool) -> (Vec<Outcome>, u64) {
    let golden = golden("tiny-qwen3");
    let mut core = engine_core(
        "tiny-qwen3",
        &Setup {
            num_blocks: 7,
            async_scheduling,
            ..Setup::default()
        },
    );
    assert_eq!(core.is_async(), async_scheduling);
    let mut streams: Vec<(String, UnboundedReceiver<RequestOutput>)> = Vec::new();
    let cases = golden.cases.iter().filter(|c| c.config_overrides.is_none());
    for (i, c) in cases.enumerate() {
        let mut r = EngineRequest::new(format!("r{i}"), c.prompt_ids.clone());
        r.max_tokens = Some(c.greedy_ids.len() as u32);
        r.ignore_eos = true;
        match i % 3 {
            0 if c.greedy_ids.len() > 3 => r.stop_token_ids = vec![c.greedy_ids[3]],
            1 => r.max_tokens = Some(3),
            _ => {}
        }
        let (tx, rx) = unbounded_channel();
        core.add_request(r, tx).expect("add");
        streams.push((format!("r{i}"), rx));
    }
    let first = &golden.cases[0];
    let mut victim = EngineRequest::new("victim", first.prompt_ids.clone());
    victim.ignore_eos = true;
    victim.max_tokens = Some(first.greedy_ids.len() as u32);
    let (tx, rx) = unbounded_channel();
    core.add_request(victim, tx).expect("add");
    streams.push(("victim".into(), rx));
    let mut steps = 0;
    while core.has_work() {
        core.step();
        steps += 1;
        if steps == 4 {
            assert!(core.abort_request("victim"));
        }
        assert!(steps < 10_000, "no progress");
    }
    assert_eq!(core.num_free_blocks(), 6, "blocks leaked");
    let outcomes = streams
        .into_iter()
        .map(|(id, mut rx)| {
            let (mut toks, mut finish) = (Vec::new(), None);
            while let Ok(o) = rx.try_recv() {
                assert!(finish.is_none(), "{id}: output after the final one");
                toks.extend(o.token_ids);
                finish = o.finish_reason;
            }
            (id, toks, finish)
        })
        .collect();
    (outcomes, core.stats().num_preemptions_total)
}

#[test]
fn async_equals_sync_with_stops_max_tokens_abort_and_preemption() {
    let (sync, _) = drive(false);
    let (asynch, preemptions) = drive(true);
    assert!(preemptions > 0, "the tiny cache should preempt");
    assert_eq!(sync, asynch);
    // And both are transformers' greedy tokens, cut where each request was told to stop.
    let golden = golden("tiny-qwen3");
    let cases = golden.cases.iter().filter(|c| c.config_overrides.is_none());
    for (i, (c, (id, toks, finish))) in cases.zip(&asynch).enumerate() {
        assert_eq!(&c.greedy_ids[..toks.len()], &toks[..], "{id}");
        let want = match i % 3 {
            0 if c.greedy_ids.len() > 3 => {
                let stop = c.greedy_ids[3];
                let at = c.greedy_ids.iter().position(|&t| t == stop).unwrap_or(0);
                assert_eq!(toks.len(), at + 1, "{id}");
                FinishReason::Stop
            }
            1 => {
                assert_eq!(toks.len(), 3.min(c.greedy_ids.len()), "{id}");
                FinishReason::Length
            }
            _ => {
                assert_eq!(toks.len(), c.greedy_ids.len(), "{id}");
                FinishReason::Length
            }
        };
        assert_eq!(finish.as_ref(), Some(&want), "{id}");
    }
    let victim = asynch.last().expect("victim");
    assert_eq!(victim.2, Some(FinishReason::Abort));
}
