//! Prompt logprobs from the engine with the real model equal transformers' log-softmax at
//! every prompt position (goldens/prompt_logprobs.json, made by make_logprob_goldens.py):
//! plain prompts, chunked prefill at small chunk sizes, a prefix-cache hit (recomputed),
//! preemption, tensor parallelism, dense and MoE.
//!
//! Bound 1e-4: F32 weights and F32 compute on both sides; what remains is summation order
//! over a 64-wide hidden state and a 151,936-token log-sum-exp (observed ~1e-6).

mod common;

use common::*;
use qwen3_engine::batch::PromptLogprob;
use qwen3_engine::{EngineHandle, EngineRequest};
use qwen3_model::WeightDType;
use serde::Deserialize;
use std::collections::HashMap;

const TOL: f32 = 1e-4;
const TOP: u32 = 5;

#[derive(Deserialize)]
struct Goldens {
    top: u32,
    models: HashMap<String, HashMap<String, PromptCase>>,
}

#[derive(Deserialize)]
struct PromptCase {
    prompt_ids: Vec<u32>,
    logprobs: Vec<f32>,
    ranks: Vec<u32>,
    /// Tokens whose logprob is within 1e-4 of the prompt token's: its rank may move by that.
    rank_slack: Vec<u32>,
    top_ids: Vec<Vec<u32>>,
    top_logprobs: Vec<Vec<f32>>,
}

fn goldens() -> Goldens {
    let path = fixtures().join("goldens/prompt_logprobs.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// F32 weights: the goldens are F32 and the bound is 1e-4.
fn f32_setup() -> Setup {
    Setup {
        dtype: WeightDType::F32,
        ..Setup::default()
    }
}

fn request(
    id: &str,
    prompt: &[u32],
    prompt_logprobs: Option<u32>,
    max_tokens: u32,
) -> EngineRequest {
    let mut r = EngineRequest::new(id, prompt.to_vec());
    r.max_tokens = Some(max_tokens);
    r.ignore_eos = true;
    r.sampling.prompt_logprobs = prompt_logprobs;
    r
}

/// (prompt logprobs, cached tokens) of one request run to the end.
async fn drain(mut s: qwen3_engine::RequestStream) -> (Option<Vec<PromptLogprob>>, usize) {
    let (mut lps, mut cached, mut outputs) = (None, 0, 0);
    while let Some(o) = s.next().await {
        assert!(
            !matches!(o.finish_reason, Some(qwen3_engine::FinishReason::Error(_))),
            "{o:?}"
        );
        if o.prompt_logprobs.is_some() {
            assert!(lps.is_none(), "prompt logprobs sent twice");
            assert_eq!(
                outputs, 0,
                "prompt logprobs must come with the first output"
            );
            lps = o.prompt_logprobs;
        }
        outputs += 1;
        cached = o.num_cached_tokens;
    }
    (lps, cached)
}

async fn run(e: &EngineHandle, r: EngineRequest) -> (Option<Vec<PromptLogprob>>, usize) {
    drain(e.submit(r).expect("submit")).await
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn check(label: &str, got: &[PromptLogprob], want: &PromptCase) {
    assert_eq!(
        got.len(),
        want.prompt_ids.len() - 1,
        "{label}: one entry per token after the first"
    );
    let mut worst = 0.0f32;
    for (i, g) in got.iter().enumerate() {
        assert_eq!(
            g.token_id,
            want.prompt_ids[i + 1],
            "{label}: token at {}",
            i + 1
        );
        let d = (g.logprob - want.logprobs[i]).abs();
        assert!(
            d < TOL,
            "{label}: position {} logprob {} vs {}",
            i + 1,
            g.logprob,
            want.logprobs[i]
        );
        worst = worst.max(d);
        assert!(
            g.rank.abs_diff(want.ranks[i]) <= want.rank_slack[i],
            "{label}: rank at {}: {} vs {} (slack {})",
            i + 1,
            g.rank,
            want.ranks[i],
            want.rank_slack[i]
        );
        assert_eq!(g.top.len(), TOP as usize);
        for (k, &(id, l)) in g.top.iter().enumerate() {
            let d = (l - want.top_logprobs[i][k]).abs();
            assert!(
                d < TOL,
                "{label}: position {} top {k}: {l} vs {}",
                i + 1,
                want.top_logprobs[i][k]
            );
            worst = worst.max(d);
            // Ids agree unless two candidates tie within the bound.
            let tied = want.top_logprobs[i].iter().enumerate().any(|(j, &w)| {
                j != k && (w - want.top_logprobs[i][k]).abs() < TOL && want.top_ids[i][j] == id
            });
            assert!(
                id == want.top_ids[i][k] || tied,
                "{label}: position {} top {k} id {id}",
                i + 1
            );
        }
    }
    eprintln!("{label}: {} positions, max |diff| {worst:.2e}", got.len());
}

/// Every golden prompt of `model`, submitted together so their chunks share steps.
fn check_all(model: &str, s: &Setup) -> EngineHandle {
    let g = goldens();
    assert_eq!(g.top, TOP);
    let cases = &g.models[model];
    let e = engine(model, s);
    // All submitted before any is read, so their chunks share steps.
    let streams: Vec<_> = cases
        .iter()
        .map(|(name, c)| {
            let r = request(name, &c.prompt_ids, Some(TOP), 3);
            (name, e.submit(r).expect("submit"))
        })
        .collect();
    rt().block_on(async {
        for (name, stream) in streams {
            let (lps, _) = drain(stream).await;
            let label = format!(
                "{model}/{name} tp{} chunk {}",
                s.tp, s.max_num_batched_tokens
            );
            check(&label, &lps.expect("prompt logprobs"), &cases[name]);
        }
    });
    e
}

#[test]
fn dense_and_moe_match_transformers() {
    for model in ["tiny-qwen3", "tiny-qwen3-moe"] {
        check_all(model, &f32_setup());
    }
}

#[test]
fn chunked_prefill_at_1_and_7_matches() {
    for chunk in [1, 7] {
        check_all(
            "tiny-qwen3",
            &Setup {
                max_num_batched_tokens: chunk,
                ..f32_setup()
            },
        );
    }
}

#[test]
fn tensor_parallel_2_matches_dense_and_moe() {
    for model in ["tiny-qwen3", "tiny-qwen3-moe"] {
        check_all(
            model,
            &Setup {
                tp: 2,
                max_num_batched_tokens: 7,
                ..f32_setup()
            },
        );
    }
}

#[test]
fn preemption_under_a_tiny_cache_keeps_prompt_logprobs() {
    // 5 usable blocks of 16; the three prompts (5, 4 and 47 tokens) with 30 tokens each need
    // 3 + 3 + 5: stepped on this thread, the scheduling (and so the preemption) is fixed.
    let g = goldens();
    let cases = &g.models["tiny-qwen3"];
    let s = Setup {
        num_blocks: 6,
        max_num_batched_tokens: 16,
        ..f32_setup()
    };
    let mut core = engine_core("tiny-qwen3", &s);
    let mut names: Vec<&String> = cases.keys().collect();
    names.sort();
    let mut sinks = Vec::new();
    for name in names {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let r = request(name, &cases[name].prompt_ids, Some(TOP), 30);
        core.add_request(r, tx).expect("add");
        sinks.push((name, rx));
    }
    while core.has_work() {
        core.step();
    }
    assert!(
        core.stats().num_preemptions_total > 0,
        "expected preemptions"
    );
    for (name, mut rx) in sinks {
        let mut lps = None;
        while let Ok(o) = rx.try_recv() {
            assert!(o.finish_reason != Some(qwen3_engine::FinishReason::Abort));
            lps = lps.or(o.prompt_logprobs);
        }
        check(
            &format!("tiny-qwen3/{name} preempted"),
            &lps.expect("prompt logprobs"),
            &cases[name],
        );
    }
}

#[test]
fn a_prefix_cache_hit_is_recomputed_for_prompt_logprobs() {
    let g = goldens();
    let long = &g.models["tiny-qwen3"]["long"];
    let e = engine("tiny-qwen3", &f32_setup());
    rt().block_on(async {
        let (none, cached) = run(&e, request("a", &long.prompt_ids, None, 2)).await;
        assert!(none.is_none(), "not asked for");
        assert_eq!(cached, 0);
        // The prompt's blocks are cached now; asking for prompt logprobs recomputes them.
        let (lps, cached) = run(&e, request("b", &long.prompt_ids, Some(TOP), 2)).await;
        assert_eq!(
            cached, 0,
            "a prompt-logprobs request reads no cached blocks"
        );
        check(
            "tiny-qwen3/long after a cache fill",
            &lps.expect("prompt logprobs"),
            long,
        );
        // Plain requests still hit the cache.
        let (_, cached) = run(&e, request("c", &long.prompt_ids, None, 2)).await;
        assert_eq!(cached, 32);
    });
}

#[test]
fn a_one_token_prompt_has_no_prompt_logprobs() {
    let e = engine("tiny-qwen3", &f32_setup());
    rt().block_on(async {
        let (lps, _) = run(&e, request("a", &[9707], Some(0), 1)).await;
        assert_eq!(lps, Some(Vec::new()));
    });
}
