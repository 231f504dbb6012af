//! Shared helpers for the fixture parity tests: the goldens transformers recorded, and
//! hand-built batches for one sequence at a time.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qwen3_backend::sampling::SamplingParams;
use qwen3_engine::{Batch, NewSeq, ScheduledSeq};
use qwen3_model::config::ModelConfig;
use serde::Deserialize;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[derive(Debug, Deserialize)]
pub struct Golden {
    pub model: String,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub logits_file: String,
    #[serde(default)]
    pub config_overrides: Option<serde_json::Value>,
}

/// Logits transformers recorded, at a subset of vocabulary columns.
pub struct RecordedLogits {
    pub columns: Vec<usize>,
    /// `[prompt_len, columns]`
    pub prefill: Vec<Vec<f32>>,
    /// `[32, columns]`
    pub decode: Vec<Vec<f32>>,
}

pub fn golden(model: &str) -> Golden {
    let path = fixtures().join(format!("goldens/{model}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn recorded(case: &Case) -> RecordedLogits {
    let path = fixtures().join("goldens").join(&case.logits_file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("golden safetensors");
    let f32s = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(name).expect(name);
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (t.shape().to_vec(), v)
    };
    let cols = st.tensor("columns").expect("columns");
    let columns: Vec<usize> = cols
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
        .collect();
    let rows = |name: &str| {
        let (shape, v) = f32s(name);
        v.chunks(shape[1]).map(|r| r.to_vec()).collect::<Vec<_>>()
    };
    RecordedLogits {
        columns,
        prefill: rows("prefill_logits"),
        decode: rows("decode_logits"),
    }
}

pub fn config(model: &str, overrides: Option<&serde_json::Value>) -> ModelConfig {
    let text = std::fs::read_to_string(fixtures().join(model).join("config.json")).expect("config");
    ModelConfig::from_json_str_with_overrides(&text, overrides).expect("config parses")
}

pub const BLOCK_SIZE: usize = 16;

/// A step of one sequence whose blocks are `0..`, computing tokens `start..start+ids.len()`.
pub fn single_seq_batch(ids: &[u32], start: usize, new: bool) -> Batch {
    let ctx = start + ids.len();
    let blocks = ctx.div_ceil(BLOCK_SIZE);
    Batch {
        new_seqs: if new {
            vec![NewSeq {
                seq_id: 1,
                token_ids: Arc::from(ids),
                num_prompt_tokens: ids.len(),
                sampling: Arc::new(SamplingParams::greedy()),
            }]
        } else {
            Vec::new()
        },
        finished: Vec::new(),
        seqs: vec![ScheduledSeq {
            seq_id: 1,
            query_start: 0,
            query_len: ids.len() as u32,
            context_len: ctx as u32,
            sample: true,
            suppressed: Vec::new(),
        }],
        token_ids: ids.to_vec(),
        positions: (start as u32..ctx as u32).collect(),
        slot_mapping: (start as u32..ctx as u32).collect(),
        block_tables: (0..blocks as u32).collect(),
        max_blocks_per_seq: blocks,
        block_size: BLOCK_SIZE,
    }
}

/// Largest |ours - theirs| over the recorded columns.
pub fn max_diff(ours: &[f32], theirs: &[f32], columns: &[usize]) -> f32 {
    columns
        .iter()
        .zip(theirs)
        .map(|(&c, t)| (ours[c] - t).abs())
        .fold(0.0, f32::max)
}
