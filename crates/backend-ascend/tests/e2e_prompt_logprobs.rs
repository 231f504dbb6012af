//! Prompt logprobs through the engine on the Ascend backend over the emulated CANN, against
//! transformers' log-softmax at every prompt position (goldens/prompt_logprobs.json): F32
//! (chunked prefill, MoE, TP 2). BF16 is not covered: the backend's BF16 path needs head_dim
//! 64/128/192 and the goldens are for the head_dim-32 fixtures. The backend has no device kernel
//! of its own for prompt logprobs yet: the trait's default reads each chunk of prompt rows'
//! logits back and computes on the host.

mod common;

use common::*;
use qwen3_engine::batch::PromptLogprob;
use serde_json::Value;

/// F32 weights, activations and KV cache: as the CPU backend's prompt-logprob test (observed
/// under 1e-5).
const TOL_F32: f32 = 1e-4;

/// One golden prompt: its name, ids, the logprob of each token after the first, and the
/// top-5 logprobs at each of those positions.
type PromptGolden = (String, Vec<u32>, Vec<f32>, Vec<Vec<f32>>);

fn goldens(model: &str) -> Vec<PromptGolden> {
    let path = fixtures().join("goldens/prompt_logprobs.json");
    let g: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("goldens"))
        .expect("goldens json");
    let cases = g["models"][model].as_object().expect("model").clone();
    let nums = |v: &Value| -> Vec<f32> {
        v.as_array()
            .expect("array")
            .iter()
            .filter_map(|x| x.as_f64().map(|x| x as f32))
            .collect()
    };
    cases
        .into_iter()
        .map(|(name, c)| {
            let ids = c["prompt_ids"].as_array().expect("ids");
            let ids = ids.iter().filter_map(|x| x.as_u64().map(|x| x as u32));
            let top = c["top_logprobs"].as_array().expect("top").iter().map(nums);
            (name, ids.collect(), nums(&c["logprobs"]), top.collect())
        })
        .collect()
}

fn check(model: &str, s: &Setup, tol: f32) {
    let emu = Emu::new();
    let e = engine(&emu, model, s);
    let cases = goldens(model);
    let streams: Vec<_> = cases
        .iter()
        .map(|(name, ids, _, _)| {
            let mut r = request(name, ids, 2);
            r.sampling.prompt_logprobs = Some(5);
            e.submit(r).expect("submit")
        })
        .collect();
    rt().block_on(async {
        for ((name, ids, want, want_top), mut stream) in cases.iter().zip(streams) {
            let mut got: Option<Vec<PromptLogprob>> = None;
            while let Some(o) = stream.next().await {
                got = got.or(o.prompt_logprobs);
            }
            let got = got.expect("prompt logprobs");
            assert_eq!(got.len(), ids.len() - 1, "{name}");
            let mut worst = 0.0f32;
            for (i, g) in got.iter().enumerate() {
                assert_eq!(g.token_id, ids[i + 1]);
                worst = worst.max((g.logprob - want[i]).abs());
                for (k, &(_, l)) in g.top.iter().enumerate() {
                    worst = worst.max((l - want_top[i][k]).abs());
                }
            }
            assert!(worst < tol, "{model}/{name} tp{}: max |diff| {worst}", s.tp);
            eprintln!(
                "{model}/{name} tp{} {:?}: max |diff| {worst:.2e}",
                s.tp, s.dtype
            );
        }
    });
    stop(e);
    emu.assert_clean();
}

#[test]
fn f32_chunked_and_tp2_match_transformers() {
    for model in ["tiny-qwen3", "tiny-qwen3-moe"] {
        check(
            model,
            &Setup {
                max_num_batched_tokens: 7,
                ..Setup::default()
            },
            TOL_F32,
        );
    }
    let tp2 = Setup {
        tp: 2,
        max_num_batched_tokens: 16,
        ..Setup::default()
    };
    check("tiny-qwen3", &tp2, TOL_F32);
}
