//! The model run rank by rank on the CPU: every tensor-parallel rank on a thread of its own,
//! joined through an in-process group, as the TP and quantized parity tests need it.

use qwen3_backend::comm::Communicator;
use qwen3_backend::cpu::comm::InProcessGroup;
use qwen3_backend::cpu::CpuBackend;
use qwen3_backend::Backend;
use qwen3_model::executor::StepArrays;
use qwen3_model::{Qwen3, Shard, WeightDType, Worker};

use super::{config, fixtures, single_seq_batch, Case, BLOCK_SIZE};

/// Prefill of `case`'s prompt, then `decode_steps` of its recorded greedy tokens, on `world`
/// ranks of `model` (BF16 weights, config `overrides` applied). Returns the logits rows of
/// rank 0 (every prompt position, then each decode step), after checking that every rank
/// gathered the same.
pub fn rank_logits(
    model: &str,
    case: &Case,
    overrides: Option<&serde_json::Value>,
    world: usize,
    decode_steps: usize,
) -> Vec<Vec<f32>> {
    rank_logits_in(
        &fixtures().join(model),
        model,
        case,
        overrides,
        world,
        decode_steps,
    )
}

/// [`rank_logits`] on the weights in `dir` (an altered copy of fixture `model`).
pub fn rank_logits_in(
    dir: &std::path::Path,
    model: &str,
    case: &Case,
    overrides: Option<&serde_json::Value>,
    world: usize,
    decode_steps: usize,
) -> Vec<Vec<f32>> {
    let groups = InProcessGroup::new(world);
    let handles: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(rank, group)| {
            let model = model.to_string();
            let dir = dir.to_path_buf();
            let prompt = case.prompt_ids.clone();
            let greedy = case.greedy_ids[..decode_steps].to_vec();
            let overrides = overrides.cloned();
            std::thread::spawn(move || {
                let backend = CpuBackend::new();
                let cfg = config(&model, overrides.as_ref());
                let m = Qwen3::load(
                    &backend,
                    &dir,
                    cfg,
                    WeightDType::BF16,
                    Shard { rank, world },
                )
                .expect("shard loads");
                // Blocks 1.. hold the sequence (block 0 is the engine's null block).
                let blocks = (prompt.len() + greedy.len()).div_ceil(BLOCK_SIZE) + 1;
                let kv = backend
                    .alloc_kv_cache(m.kv_shape(blocks, BLOCK_SIZE))
                    .expect("kv");
                let mut w = Worker {
                    backend,
                    model: m,
                    kv,
                };
                let vocab = w.model.config.vocab_size;
                let comm: &dyn Communicator<CpuBackend> = &group;
                let b = single_seq_batch(&prompt, 0, true);
                let all: Vec<u32> = (0..prompt.len() as u32).collect();
                let l = w
                    .forward_rows(&b, &StepArrays::new(&b), &all, comm)
                    .expect("prefill");
                let l = w.backend.to_host_f32(&l).expect("host");
                let mut rows: Vec<Vec<f32>> = l.chunks(vocab).map(|r| r.to_vec()).collect();
                for (i, &tok) in greedy.iter().enumerate() {
                    let b = single_seq_batch(&[tok], prompt.len() + i, false);
                    let l = w
                        .forward_rows(&b, &StepArrays::new(&b), &[0], comm)
                        .expect("decode");
                    rows.push(w.backend.to_host_f32(&l).expect("host"));
                }
                rows
            })
        })
        .collect();
    let mut results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("rank"))
        .collect();
    let first = results.remove(0);
    for other in &results {
        assert_eq!(other.len(), first.len());
        for (a, b) in first.iter().zip(other) {
            assert_eq!(a, b, "ranks disagree after the gather");
        }
    }
    first
}
