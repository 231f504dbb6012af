//! The quantized fixtures against their goldens on the emulated NPU, shared by the AWQ/GPTQ
//! (`e2e_quant`) and W8A8 (`e2e_w8a8`) tests: teacher-forced logits at TP 1 and greedy
//! tokens at TP 2, with MoE router near-ties set apart.

use std::sync::Arc;

use qwen3_backend_ascend::{AscendBackend, AscendOptions, AttentionPath};
use qwen3_model::{SingleExecutor, WeightDType};

use super::*;

/// How close a quantized fixture must come to its golden.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Largest |logit difference| at a position that is no router near-tie.
    pub tol: f32,
    /// MoE: a position where the reference's k-th and (k+1)-th router logits (in some MoE
    /// layer) are closer than this is a near-tie: the device's rounding may send the token to
    /// another expert, which moves its logits well past `tol`.
    pub router_eps: f32,
    /// At most this share of the positions may be near-ties, or the check would say little.
    pub max_tie_share: f32,
    /// At TP 1, at least this many greedy tokens the reference decides by more than twice
    /// the error there.
    pub min_greedy: usize,
}

impl Bounds {
    pub fn near_tie(&self, margin: Option<f32>) -> bool {
        margin.is_some_and(|m| m < self.router_eps)
    }
}

/// How a quantized fixture runs on the emulated NPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// F32 weights and KV cache: attention is matmul + softmax (any head_dim).
    F32Cache,
    /// BF16 weights and KV cache: attention is fused infer attention (head_dim 64/128/192).
    Bf16Fused,
}

impl Run {
    fn dtype(self) -> WeightDType {
        match self {
            Run::F32Cache => WeightDType::F32,
            Run::Bf16Fused => WeightDType::BF16,
        }
    }

    fn options(self) -> AscendOptions {
        AscendOptions {
            kv_cache_f32: self == Run::F32Cache,
            ..AscendOptions::default()
        }
    }
}

/// A fixture on emulated device 0, run as `run` says; its attention path checked.
pub fn executor(emu: &Emu, model: &str, run: Run) -> SingleExecutor<AscendBackend> {
    let ex = single_executor(emu, model, run.dtype(), run.options());
    let path = ex.worker().backend.attention_path();
    let fused = matches!(path, AttentionPath::Fused { .. });
    assert_eq!(fused, run == Run::Bf16Fused, "{model} as {run:?}: {path:?}");
    ex
}

/// A fixture on emulated device 0, F32 weights and KV cache.
pub fn f32_executor(emu: &Emu, model: &str) -> SingleExecutor<AscendBackend> {
    executor(emu, model, Run::F32Cache)
}

/// A fixture on two emulated devices, run as `run` says.
pub fn tp2_executor_as(
    emu: &Emu,
    model: &str,
    run: Run,
) -> Box<dyn qwen3_model::ResizableExecutor> {
    let opts = qwen3_model::load::LoadOptions {
        dir: fixtures().join(model),
        config: config(model, None),
        dtype: run.dtype(),
        tensor_parallel_size: 2,
        block_size: BLOCK_SIZE,
        num_blocks: 8,
    };
    qwen3_model::load::ascend_executor_resizable(
        &opts,
        Arc::clone(&emu.cann),
        &[0, 1],
        run.options(),
    )
    .expect("TP 2 executor")
}

/// A fixture on two emulated devices, F32 weights and KV cache.
pub fn tp2_executor(emu: &Emu, model: &str) -> Box<dyn qwen3_model::ResizableExecutor> {
    tp2_executor_as(emu, model, Run::F32Cache)
}

/// Prefill and teacher-forced decode logits within `tol` of the reference (MoE: except at
/// router near-ties, which are counted and must stay rare), and every recorded greedy token
/// the argmax where the reference decides it.
pub fn check_tp1(model: &str, bounds: Bounds) {
    check_tp1_as(model, bounds, Run::F32Cache);
}

/// [`check_tp1`], run as `run` says.
pub fn check_tp1_as(model: &str, bounds: Bounds, run: Run) {
    let tol = bounds.tol;
    let emu = Emu::new();
    let mut worst = 0.0f32;
    let mut checked = 0;
    let mut ties: Vec<f32> = Vec::new();
    let mut positions = 0;
    for case in &golden(model).cases {
        positions += case.prompt_ids.len() + case.greedy_ids.len();
        let rec = recorded(case);
        let mut ex = executor(&emu, model, run);
        let vocab = ex.worker().model.config.vocab_size;
        let n = case.prompt_ids.len();
        let rows: Vec<u32> = (0..n as u32).collect();
        let logits = ex
            .logits(&single_seq_batch(&case.prompt_ids, 0, true), &rows)
            .expect("prefill");
        for (p, want) in rec.prefill.iter().enumerate() {
            let d = max_diff(&logits[p * vocab..(p + 1) * vocab], want, &rec.columns);
            if bounds.near_tie(case.router_margins.as_ref().map(|r| r.prefill[p])) {
                ties.push(d);
                continue;
            }
            assert!(d < tol, "{model}/{}: prefill {p} differs by {d}", case.name);
            worst = worst.max(d);
        }
        let mut last = logits[(n - 1) * vocab..n * vocab].to_vec();
        for (i, &tok) in case.greedy_ids.iter().enumerate() {
            let d = max_diff(&last, &rec.decode[i], &rec.columns);
            let tie = bounds.near_tie(case.router_margins.as_ref().map(|r| r.decode[i]));
            if tie {
                ties.push(d);
            } else {
                assert!(d < tol, "{model}/{}: decode {i} differs by {d}", case.name);
                worst = worst.max(d);
            }
            // The token must match wherever the reference's margin over the next recorded
            // column exceeds twice our error at that step; closer calls (one GPTQ-8 case has
            // a margin of 0.002) are below what BF16 activations resolve.
            let want = &rec.decode[i];
            let tok_col = rec.columns.iter().position(|&c| c == tok as usize);
            let margin = tok_col.map(|j| {
                want.iter()
                    .enumerate()
                    .filter(|&(c, _)| c != j)
                    .map(|(_, &v)| want[j] - v)
                    .fold(f32::INFINITY, f32::min)
            });
            if !tie && margin.is_some_and(|m| m > 2.0 * d) {
                let ours = qwen3_backend::sampling::argmax(&last);
                assert_eq!(ours, tok, "{model}/{}: greedy token {i}", case.name);
                checked += 1;
            }
            last = ex
                .logits(&single_seq_batch(&[tok], n + i, false), &[0])
                .expect("decode");
        }
    }
    let worst_tie = ties.iter().copied().fold(0.0f32, f32::max);
    eprintln!(
        "{model} on the NPU ({run:?}): max |diff| {worst:.2e}, {checked} greedy tokens checked; \
         {} of {positions} positions at router near-ties (max |diff| there {worst_tie:.2e})",
        ties.len()
    );
    // Near-ties must stay rare, or the check would say little.
    assert!(
        ties.len() as f32 <= bounds.max_tie_share * positions as f32,
        "{model}: {} of {positions} positions are router near-ties",
        ties.len()
    );
    assert!(
        checked >= bounds.min_greedy,
        "{model}: too few greedy tokens were decisive ({checked})"
    );
    emu.assert_clean();
}

/// Top logprobs asked of each TP 2 step: the columns compared with the reference.
const TOP_LOGPROBS: u32 = 20;

/// `model` at TP 2 against the golden `reference` (a model's own, or its `__tp2` one),
/// teacher-forced (after a router near-tie a free-running continuation may legitimately
/// differ): the sampled token must be the reference's at every step the reference decides by
/// more than twice `bounds.tol` and whose routing is no near-tie (at least `min_checked`
/// such steps); and with `logit_diffs`, at every non-tie step, the step's top logprobs, as
/// logit differences from the reference's token (the softmax's normaliser cancels), within
/// twice `bounds.tol` of the reference's, over the recorded columns among them.
pub fn check_tp2(
    model: &str,
    reference: &str,
    bounds: Bounds,
    min_checked: usize,
    logit_diffs: bool,
) {
    check_tp2_as(
        model,
        reference,
        bounds,
        min_checked,
        logit_diffs,
        Run::F32Cache,
    );
}

/// [`check_tp2`], run as `run` says.
pub fn check_tp2_as(
    model: &str,
    reference: &str,
    bounds: Bounds,
    min_checked: usize,
    logit_diffs: bool,
    run: Run,
) {
    let emu = Emu::new();
    let mut checked = 0;
    let (mut compared, mut worst) = (0usize, 0f32);
    {
        let mut ex = tp2_executor_as(&emu, model, run);
        for (seq, case) in golden(reference).cases.iter().enumerate() {
            let seq = seq as u64 + 1;
            let rec = recorded(case);
            let margins = case.router_margins.as_ref();
            let mut next = case.prompt_ids.clone();
            let mut start = 0;
            for (i, &want) in case.greedy_ids.iter().enumerate() {
                let mut b = qwen3_model::profile::single_seq_batch(
                    seq,
                    &next,
                    start,
                    start == 0,
                    BLOCK_SIZE,
                );
                for s in &mut b.new_seqs {
                    s.sampling = Arc::new(qwen3_engine::batch::SamplingParams {
                        logprobs: Some(TOP_LOGPROBS),
                        ..qwen3_engine::batch::SamplingParams::greedy()
                    });
                }
                let out = ex.execute(&b).expect("step");
                let sampled = &out.outputs[0].sampled;
                let ours = sampled.token;
                let row = &rec.decode[i];
                let mut top: Vec<f32> = row.clone();
                top.sort_by(|a, b| b.total_cmp(a));
                let tie = bounds.near_tie(margins.map(|m| m.decode[i]));
                if top[0] - top[1] > 2.0 * bounds.tol && !tie {
                    assert_eq!(ours, want, "{model}/{} at TP 2: step {i}", case.name);
                    checked += 1;
                }
                let lp = |tok: usize| {
                    let t = sampled
                        .top_logprobs
                        .iter()
                        .find(|&&(t, _)| t as usize == tok);
                    t.map(|&(_, v)| v)
                };
                let col = |tok: usize| rec.columns.iter().position(|&c| c == tok);
                let anchor = lp(want as usize).filter(|_| logit_diffs && !tie);
                if let (Some(anchor), Some(j)) = (anchor, col(want as usize)) {
                    for (c, &tok) in rec.columns.iter().enumerate() {
                        if let Some(v) = lp(tok) {
                            let d = ((v - anchor) - (row[c] - row[j])).abs();
                            assert!(
                                d < 2.0 * bounds.tol,
                                "{model}/{} at TP 2: step {i}, token {tok}: logit difference off by {d}",
                                case.name
                            );
                            worst = worst.max(d);
                            compared += 1;
                        }
                    }
                }
                start += next.len();
                next = vec![want];
            }
            let done = qwen3_engine::Batch {
                finished: vec![seq],
                block_size: BLOCK_SIZE,
                ..Default::default()
            };
            ex.execute(&done).expect("finish");
        }
    }
    eprintln!(
        "{model} at TP 2 ({run:?}) against {reference}: {checked} greedy tokens checked, \
         {compared} logit differences (worst {worst:.2e})"
    );
    assert!(
        !logit_diffs || compared >= 20,
        "{model}: too few logits compared ({compared})"
    );
    assert!(
        checked >= min_checked,
        "{model}: too few decisive steps ({checked})"
    );
    emu.assert_clean();
}

/// The MoE op tests' shape: tokens, hidden, intermediate, experts, top-k.
pub const MOE_SHAPE: (usize, usize, usize, usize, usize) = (6, 64, 32, 4, 2);

/// The MoE op tests' activations `[t, h]` and router logits `[t, ne]` (of [`MOE_SHAPE`]), on
/// the host and uploaded.
pub struct MoeInput {
    pub x: Vec<f32>,
    pub router: Vec<f32>,
    pub xt: qwen3_backend_ascend::AscendTensor,
    pub rt: qwen3_backend_ascend::AscendTensor,
}

impl MoeInput {
    pub fn new(b: &AscendBackend) -> Self {
        use qwen3_backend::{Backend, HostData};
        let (t, h, _, ne, _) = MOE_SHAPE;
        let x: Vec<f32> = (0..t * h)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let router: Vec<f32> = (0..t * ne)
            .map(|i| ((i * 13 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let xt = b.upload(HostData::F32(&x), &[t, h]).expect("x");
        let rt = b.upload(HostData::F32(&router), &[t, ne]).expect("router");
        Self { x, router, xt, rt }
    }

    /// Token `r`'s top-k experts and their weights (the softmax of the top-k logits), and its
    /// activations as the quantized operators see them (BF16).
    pub fn routed(&self, r: usize) -> (Vec<(usize, f32)>, Vec<f32>) {
        let (_, h, _, ne, top_k) = MOE_SHAPE;
        let logits = &self.router[r * ne..(r + 1) * ne];
        let mut idx: Vec<usize> = (0..ne).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let top = &idx[..top_k];
        let z: f32 = top.iter().map(|&i| logits[i].exp()).sum();
        let experts = top.iter().map(|&e| (e, logits[e].exp() / z)).collect();
        let xr = self.x[r * h..(r + 1) * h]
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        (experts, xr)
    }
}
