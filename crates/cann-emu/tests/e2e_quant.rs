//! AWQ / GPTQ weights through the Ascend backend's `aclnnWeightQuantBatchMatmulV2` path on
//! the emulated CANN: one quantized matmul against the dequantized reference, the quantized
//! fixtures against transformers' references on their dequantized weights (TP 1 and 2), and
//! the clear refusals.

mod common;

use std::sync::Arc;

use common::*;
use qwen3_backend::{Backend, HostData, QuantizedHost};
use qwen3_backend_ascend::{AscendBackend, AscendOptions};
use qwen3_model::{Qwen3, Shard, SingleExecutor, WeightDType, Worker};

/// The quantized matmuls take BF16 activations (the operator has no F32 input): the BF16
/// bound of the dense parity test.
const TOL: f32 = 0.25;

fn lcg(seed: &mut u64) -> u32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*seed >> 33) as u32
}

/// A random `[n, k]` weight in `bits` with groups of `group` (None: one group), inputs of
/// each group scattered by a permutation when `act_order`.
struct Made {
    codes: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<f32>,
    g_idx: Option<Vec<u32>>,
    groups: usize,
    group_size: usize,
}

fn make(n: usize, k: usize, bits: u32, group: Option<usize>, act_order: bool) -> Made {
    let mut s = 7u64;
    let g = group.unwrap_or(k);
    let groups = k.div_ceil(g);
    let codes = (0..n * k)
        .map(|_| (lcg(&mut s) % (1 << bits)) as u8)
        .collect();
    let scales = (0..groups * n)
        .map(|_| 0.002 + (lcg(&mut s) % 100) as f32 * 1e-4)
        .collect();
    let zeros = (0..groups * n)
        .map(|_| (lcg(&mut s) % (1 << bits)) as f32)
        .collect();
    let g_idx = act_order.then(|| {
        let mut idx: Vec<u32> = (0..k).map(|i| (i / g) as u32).collect();
        for i in (1..k).rev() {
            idx.swap(i, lcg(&mut s) as usize % (i + 1));
        }
        idx
    });
    Made {
        codes,
        scales,
        zeros,
        g_idx,
        groups,
        group_size: g,
    }
}

fn host<'a>(m: &'a Made, n: usize, k: usize, bits: u32) -> QuantizedHost<'a> {
    QuantizedHost {
        count: 1,
        out_features: n,
        in_features: k,
        bits,
        group_size: m.group_size,
        groups: m.groups,
        codes: &m.codes,
        scales: &m.scales,
        zeros: &m.zeros,
        g_idx: m.g_idx.as_deref(),
    }
}

#[test]
fn quantized_matmul_matches_the_dequantized_weight() {
    let emu = Emu::new();
    {
        let b = AscendBackend::open(Arc::clone(&emu.cann), 0).expect("device");
        let (m, n, k) = (5, 24, 96);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let xt = b.upload(HostData::F32(&x), &[m, k]).expect("x");
        for (bits, group, act_order) in [
            (4, Some(32), false),
            (4, Some(32), true),
            (8, None, false),
            (8, Some(64), true),
        ] {
            let made = make(n, k, bits, group, act_order);
            let w = host(&made, n, k, bits);
            let wt = b.upload_quantized(&w).expect("upload");
            assert_eq!(b.shape(&wt), &[n, k]);
            let got = b
                .to_host_f32(&b.linear(&xt, &wt).expect("linear"))
                .expect("y");
            for r in 0..m {
                for o in 0..n {
                    // The operator sees x in BF16, as the backend passes it; scales are
                    // BF16 too, so the bound is relative to the terms' magnitude.
                    let terms: Vec<f32> = (0..k)
                        .map(|i| half::bf16::from_f32(x[r * k + i]).to_f32() * w.weight(0, o, i))
                        .collect();
                    let want: f32 = terms.iter().sum();
                    let scale: f32 = terms.iter().map(|t| t.abs()).sum();
                    let d = (got[r * n + o] - want).abs();
                    assert!(
                        d <= 1e-2 * scale,
                        "bits {bits} group {group:?} act-order {act_order}: [{r},{o}] {} vs {want}",
                        got[r * n + o]
                    );
                }
            }
            // Packed 4-bit codes take half a byte per weight on the device.
            let codes_bytes = n * k * bits as usize / 8;
            assert!(b.size_bytes(&wt) >= codes_bytes as u64);
            assert!(b.size_bytes(&wt) < (n * k * 2) as u64);
        }
        // Stacked (MoE expert) weights are not wired to the grouped matmul yet.
        let made = make(n, k, 4, Some(32), false);
        let mut stacked = made.codes.clone();
        stacked.extend_from_slice(&made.codes);
        let (mut sc, mut ze) = (made.scales.clone(), made.zeros.clone());
        sc.extend_from_slice(&made.scales);
        ze.extend_from_slice(&made.zeros);
        let w2 = QuantizedHost {
            count: 2,
            codes: &stacked,
            scales: &sc,
            zeros: &ze,
            ..host(&made, n, k, 4)
        };
        let err = b
            .upload_quantized(&w2)
            .expect_err("stack refused")
            .to_string();
        assert!(err.contains("MoE experts on the NPU"), "{err}");
        // Groups the operator cannot take are refused with the constraint.
        let made = make(n, k, 4, Some(16), false);
        let err = b
            .upload_quantized(&host(&made, n, k, 4))
            .expect_err("group 16 refused")
            .to_string();
        assert!(err.contains("multiple of 32"), "{err}");
    }
    emu.assert_clean();
}

fn executor(emu: &Emu, model: &str) -> SingleExecutor<AscendBackend> {
    let opts = AscendOptions {
        kv_cache_f32: true,
        ..AscendOptions::default()
    };
    let backend = AscendBackend::with_options(Arc::clone(&emu.cann), 0, opts).expect("device 0");
    let m = Qwen3::load(
        &backend,
        &fixtures().join(model),
        config(model, None),
        WeightDType::F32,
        Shard::WHOLE,
    )
    .expect("quantized model loads on the NPU");
    let kv = backend
        .alloc_kv_cache(m.kv_shape(4, BLOCK_SIZE))
        .expect("kv");
    SingleExecutor::new(Worker {
        backend,
        model: m,
        kv,
    })
}

/// Prefill and teacher-forced decode logits within [`TOL`] of the reference, and every
/// recorded greedy token the argmax.
fn check_tp1(model: &str) {
    let emu = Emu::new();
    let mut worst = 0.0f32;
    let mut checked = 0;
    for case in &golden(model).cases {
        let rec = recorded(case);
        let mut ex = executor(&emu, model);
        let vocab = ex.worker().model.config.vocab_size;
        let n = case.prompt_ids.len();
        let rows: Vec<u32> = (0..n as u32).collect();
        let logits = ex
            .logits(&single_seq_batch(&case.prompt_ids, 0, true), &rows)
            .expect("prefill");
        for (p, want) in rec.prefill.iter().enumerate() {
            let d = max_diff(&logits[p * vocab..(p + 1) * vocab], want, &rec.columns);
            assert!(d < TOL, "{model}/{}: prefill {p} differs by {d}", case.name);
            worst = worst.max(d);
        }
        let mut last = logits[(n - 1) * vocab..n * vocab].to_vec();
        for (i, &tok) in case.greedy_ids.iter().enumerate() {
            let d = max_diff(&last, &rec.decode[i], &rec.columns);
            assert!(d < TOL, "{model}/{}: decode {i} differs by {d}", case.name);
            worst = worst.max(d);
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
            if margin.is_some_and(|m| m > 2.0 * d) {
                let ours = qwen3_backend::sampling::argmax(&last);
                assert_eq!(ours, tok, "{model}/{}: greedy token {i}", case.name);
                checked += 1;
            }
            last = ex
                .logits(&single_seq_batch(&[tok], n + i, false), &[0])
                .expect("decode");
        }
    }
    eprintln!("{model} on the NPU: max |diff| {worst:.2e}, {checked} greedy tokens checked");
    assert!(
        checked >= 12,
        "{model}: too few greedy tokens were decisive ({checked})"
    );
    emu.assert_clean();
}

#[test]
fn awq_matches_the_dequantized_reference() {
    check_tp1("tiny-qwen3-awq");
}

#[test]
fn gptq_matches_the_dequantized_reference() {
    check_tp1("tiny-qwen3-gptq");
}

#[test]
fn gptq_act_order_matches_the_dequantized_reference() {
    check_tp1("tiny-qwen3-gptq-actorder");
}

#[test]
fn gptq_8bit_matches_the_dequantized_reference() {
    check_tp1("tiny-qwen3-gptq8");
}

/// TP 2 (HCCL across two emulated NPUs): the greedy continuation, step by step.
#[test]
fn awq_gptq_and_8bit_at_tp2_give_the_reference_tokens() {
    use qwen3_model::build::LoadOptions;
    for model in ["tiny-qwen3-awq", "tiny-qwen3-gptq", "tiny-qwen3-gptq8"] {
        let emu = Emu::new();
        {
            let opts = LoadOptions {
                dir: fixtures().join(model),
                config: config(model, None),
                dtype: WeightDType::F32,
                tensor_parallel_size: 2,
                block_size: BLOCK_SIZE,
                num_blocks: 8,
            };
            let backend = AscendOptions {
                kv_cache_f32: true,
                ..AscendOptions::default()
            };
            let mut ex = qwen3_model::build_ascend::ascend_executor_resizable(
                &opts,
                Arc::clone(&emu.cann),
                &[0, 1],
                backend,
            )
            .expect("TP 2 executor");
            // Free-running decode diverges at the first near-tie: cases whose reference
            // margins are all above BF16's error only.
            let cases = golden(model).cases;
            let decisive: Vec<_> = cases.iter().filter(|c| c.min_top2_gap >= 0.03).collect();
            assert!(!decisive.is_empty(), "{model}: no decisive case");
            for (seq, case) in decisive.into_iter().enumerate() {
                let seq = seq as u64 + 1;
                let n = case.prompt_ids.len();
                let mut toks = Vec::new();
                let mut next = case.prompt_ids.clone();
                let mut start = 0;
                for _ in 0..case.greedy_ids.len() {
                    let b = qwen3_model::build::single_seq_batch(
                        seq,
                        &next,
                        start,
                        start == 0,
                        BLOCK_SIZE,
                    );
                    let out = ex.as_executor().execute(&b).expect("step");
                    let tok = out.outputs[0].sampled.token;
                    toks.push(tok);
                    start += next.len();
                    next = vec![tok];
                }
                assert_eq!(
                    toks, case.greedy_ids,
                    "{model}/{} at TP 2 ({n} prompt tokens)",
                    case.name
                );
                let done = qwen3_engine::Batch {
                    finished: vec![seq],
                    block_size: BLOCK_SIZE,
                    ..Default::default()
                };
                ex.as_executor().execute(&done).expect("finish");
            }
        }
        emu.assert_clean();
    }
}

#[test]
fn what_the_operator_cannot_take_is_refused_clearly() {
    // Act-order split by TP along K: groups of uneven length on each rank.
    let emu = Emu::new();
    let model = "tiny-qwen3-gptq-actorder";
    let b = AscendBackend::open(Arc::clone(&emu.cann), 0).expect("device");
    let err = Qwen3::load(
        &b,
        &fixtures().join(model),
        config(model, None),
        WeightDType::BF16,
        Shard { rank: 0, world: 2 },
    )
    .err()
    .expect("refused")
    .to_string();
    // (The rank's slice keeps the checkpoint's groups of 16, which the operator refuses too.)
    assert!(
        err.contains("act-order") || err.contains("multiple of 32"),
        "{err}"
    );
    // Quantized MoE experts are not wired to the grouped matmul yet.
    let model = "tiny-qwen3-moe-awq";
    let err = Qwen3::load(
        &b,
        &fixtures().join(model),
        config(model, None),
        WeightDType::BF16,
        Shard::WHOLE,
    )
    .err()
    .expect("refused")
    .to_string();
    // Its attention weights' groups of 16 are refused before its experts are reached.
    assert!(err.contains("multiple of 32"), "{err}");
    drop(b);
    // Refused at load: nothing ran, and what the partial loads allocated was freed.
    let st = emu.stats();
    assert_eq!((st.violations(), st.leaks()), (0, 0), "{st:?}");
}
