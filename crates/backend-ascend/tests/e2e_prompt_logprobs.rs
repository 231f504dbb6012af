//! Prompt logprobs through the engine on the Ascend backend over the emulated CANN, against
//! transformers' log-softmax at every prompt position (goldens/prompt_logprobs.json): F32
//! (chunked prefill, MoE, TP 2, head_dim 128) and BF16 at head_dim 128 (the shapes fused
//! attention takes). The log-softmax, ranks and top 5 are computed on the device
//! (`src/prompt_logprobs.rs`); only those numbers are read back.

mod common;

use common::*;
use qwen3_engine::batch::PromptLogprob;
use serde_json::Value;

/// F32 weights, activations and KV cache: as the CPU backend's prompt-logprob test (observed
/// under 1e-5).
const TOL_F32: f32 = 1e-4;

/// One golden prompt: its ids, and at each position after the first the logprob of the
/// token, its rank (with how many other tokens lie within 1e-4 of it) and the top-5
/// logprobs; where recorded, transformers' own BF16 computation's largest deviation from
/// these F32 numbers.
struct PromptGolden {
    name: String,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    ranks: Vec<u32>,
    rank_slack: Vec<u32>,
    top: Vec<Vec<f32>>,
    bf16_max_abs_diff: Option<f32>,
}

/// What a run is held to.
#[derive(Clone, Copy)]
enum Bound {
    /// Every logprob and top logprob within this of the F32 goldens, ranks within the slack.
    F32(f32),
    /// Every number within twice transformers' own BF16 deviation from the F32 goldens, for
    /// that prompt: another BF16 computation (fused attention, a BF16 KV cache, other rounding
    /// points and summation orders) is as entitled to that envelope as transformers' is, on
    /// either side of the F32 value. Ranks are not compared (BF16 logits tie and reorder).
    Bf16Envelope,
}

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
    let ints = |v: &Value| -> Vec<u32> {
        let a = v.as_array().expect("array");
        a.iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect()
    };
    cases
        .into_iter()
        .map(|(name, c)| PromptGolden {
            name,
            ids: ints(&c["prompt_ids"]),
            logprobs: nums(&c["logprobs"]),
            ranks: ints(&c["ranks"]),
            rank_slack: ints(&c["rank_slack"]),
            top: c["top_logprobs"]
                .as_array()
                .expect("top")
                .iter()
                .map(nums)
                .collect(),
            bf16_max_abs_diff: c["bf16"]["max_abs_diff"].as_f64().map(|x| x as f32),
        })
        .collect()
}

fn check(model: &str, s: &Setup, bound: Bound) {
    let emu = Emu::new();
    let e = engine(&emu, model, s);
    let cases = goldens(model);
    let streams: Vec<_> = cases
        .iter()
        .map(|c| {
            let mut r = request(&c.name, &c.ids, 2);
            r.sampling.prompt_logprobs = Some(5);
            e.submit(r).expect("submit")
        })
        .collect();
    rt().block_on(async {
        for (c, mut stream) in cases.iter().zip(streams) {
            let mut got: Option<Vec<PromptLogprob>> = None;
            while let Some(o) = stream.next().await {
                got = got.or(o.prompt_logprobs);
            }
            let got = got.expect("prompt logprobs");
            let name = &c.name;
            assert_eq!(got.len(), c.ids.len() - 1, "{name}");
            let mut worst = 0.0f32;
            for (i, g) in got.iter().enumerate() {
                assert_eq!(g.token_id, c.ids[i + 1]);
                assert_eq!(g.top.len(), 5, "{name}");
                worst = worst.max((g.logprob - c.logprobs[i]).abs());
                for (k, &(_, l)) in g.top.iter().enumerate() {
                    worst = worst.max((l - c.top[i][k]).abs());
                }
                if let Bound::F32(_) = bound {
                    let (want, slack) = (c.ranks[i], c.rank_slack[i]);
                    assert!(
                        g.rank.abs_diff(want) <= slack,
                        "{model}/{name} position {}: rank {} vs {want} (slack {slack})",
                        i + 1,
                        g.rank
                    );
                }
            }
            let tol = match bound {
                Bound::F32(tol) => tol,
                Bound::Bf16Envelope => {
                    2.0 * c.bf16_max_abs_diff.expect("goldens with a BF16 reference")
                }
            };
            assert!(
                worst <= tol,
                "{model}/{name} tp{}: max |diff| {worst} over {tol}",
                s.tp
            );
            eprintln!(
                "{model}/{name} tp{} {:?}: max |diff| {worst:.2e} (bound {tol:.2e})",
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
            Bound::F32(TOL_F32),
        );
    }
    let tp2 = Setup {
        tp: 2,
        max_num_batched_tokens: 16,
        ..Setup::default()
    };
    check("tiny-qwen3", &tp2, Bound::F32(TOL_F32));
}

#[test]
fn head_dim_128_bf16_within_transformers_envelope_and_f32_within_1e4() {
    // F32: matmul + softmax attention over an F32 KV cache, as the head_dim 32 fixtures.
    check(DENSE, &Setup::default(), Bound::F32(TOL_F32));
    // BF16: fused attention over a BF16 cache, prefill in chunks of 16 so later chunks read
    // the paged cache.
    let bf16 = Setup {
        dtype: qwen3_model::WeightDType::BF16,
        max_num_batched_tokens: 16,
        ..Setup::default()
    };
    check(DENSE, &bf16, Bound::Bf16Envelope);
}
