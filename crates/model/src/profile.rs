//! The profiling pass start-up runs before sizing the KV cache, and the one-sequence batches
//! it (and benches and tests) step the model with.

use std::sync::Arc;

use qwen3_step::{Batch, Executor, NewSeq, SamplingParams, ScheduledSeq};

use crate::error::ModelError;

/// Sequence id of the profiling pass's one sequence (no engine request can have it).
const PROFILE_SEQ: u64 = u64::MAX;

/// A step of one greedy sequence `seq_id` computing `ids` at positions `start..`, its blocks
/// `1..` in order (block 0 is the engine's null block); `new` introduces the sequence. Used by
/// the profiling pass, benches and tests.
pub fn single_seq_batch(
    seq_id: u64,
    ids: &[u32],
    start: usize,
    new: bool,
    block_size: usize,
) -> Batch {
    let ctx = start + ids.len();
    let blocks = ctx.div_ceil(block_size);
    Batch {
        new_seqs: if new {
            vec![NewSeq {
                seq_id,
                token_ids: ids.into(),
                num_prompt_tokens: ids.len(),
                sampling: Arc::new(SamplingParams::greedy()),
            }]
        } else {
            Vec::new()
        },
        finished: Vec::new(),
        seqs: vec![ScheduledSeq {
            seq_id,
            query_start: 0,
            query_len: ids.len() as u32,
            context_len: ctx as u32,
            sample: true,
            suppressed: Vec::new(),
        }],
        token_ids: ids.to_vec(),
        positions: (start as u32..ctx as u32).collect(),
        slot_mapping: (start as u32..ctx as u32)
            .map(|p| p + block_size as u32)
            .collect(),
        block_tables: (1..=blocks as u32).collect(),
        max_blocks_per_seq: blocks,
        block_size,
        masks: None,
        deferred_inputs: Vec::new(),
    }
}

/// The batch of a profiling pass: `num_tokens` prompt tokens of one sequence.
pub fn profile_batch(num_tokens: usize, block_size: usize, token_id: u32) -> Batch {
    single_seq_batch(
        PROFILE_SEQ,
        &vec![token_id; num_tokens],
        0,
        true,
        block_size,
    )
}

/// One pure-decode step of each size in `sizes` (at most `block_size`): that many one-token
/// sequences at position 0, writing distinct slots of block 0 (the engine's null block,
/// which no sequence reads), then freed. A backend that captures decode graphs captures
/// them now, at start-up, rather than while serving.
pub fn decode_warmup(
    executor: &mut dyn Executor,
    sizes: &[usize],
    block_size: usize,
) -> Result<(), ModelError> {
    for &n in sizes.iter().filter(|&&n| n > 0 && n <= block_size) {
        let ids: Vec<u64> = (0..n as u64).map(|i| PROFILE_SEQ - 1 - i).collect();
        let batch = Batch {
            new_seqs: ids
                .iter()
                .map(|&seq_id| NewSeq {
                    seq_id,
                    token_ids: vec![0].into(),
                    num_prompt_tokens: 1,
                    sampling: Arc::new(SamplingParams::greedy()),
                })
                .collect(),
            finished: Vec::new(),
            seqs: ids
                .iter()
                .enumerate()
                .map(|(i, &seq_id)| ScheduledSeq {
                    seq_id,
                    query_start: i as u32,
                    query_len: 1,
                    context_len: 1,
                    sample: true,
                    suppressed: Vec::new(),
                })
                .collect(),
            token_ids: vec![0; n],
            positions: vec![0; n],
            slot_mapping: (0..n as u32).collect(),
            block_tables: vec![0; n],
            max_blocks_per_seq: 1,
            block_size,
            masks: None,
            deferred_inputs: Vec::new(),
        };
        executor
            .execute(&batch)
            .map_err(|e| ModelError::Invalid(format!("decode warm-up of {n} failed: {e}")))?;
        executor
            .execute(&Batch {
                finished: ids,
                block_size,
                ..Default::default()
            })
            .map_err(|e| ModelError::Invalid(format!("decode warm-up cleanup failed: {e}")))?;
    }
    Ok(())
}

/// One profiling step of `tokens` prompt tokens, then its sequence freed, so the executor is
/// left as it was.
pub fn profile_step(
    executor: &mut dyn Executor,
    tokens: usize,
    block_size: usize,
) -> Result<(), ModelError> {
    executor
        .execute(&profile_batch(tokens, block_size, 0))
        .map_err(|e| ModelError::Invalid(format!("profiling forward pass failed: {e}")))?;
    let cleanup = Batch {
        finished: vec![PROFILE_SEQ],
        block_size,
        ..Default::default()
    };
    executor
        .execute(&cleanup)
        .map_err(|e| ModelError::Invalid(format!("profiling cleanup failed: {e}")))?;
    Ok(())
}
