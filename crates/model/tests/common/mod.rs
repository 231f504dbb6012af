//! Shared helpers for the fixture parity tests: the goldens transformers recorded,
//! hand-built batches for one sequence at a time, and the model run rank by rank (`ranks`).
#![allow(dead_code)]

pub mod ranks;

use std::path::{Path, PathBuf};

use std::sync::Arc;

use qwen3_engine::{Batch, EngineConfig, EngineCore, EngineHandle, Executor};
use qwen3_model::config::ModelConfig;
use qwen3_model::load::{cpu_executor, LoadOptions};
use qwen3_model::WeightDType;
use serde::Deserialize;
use tokenizers::Tokenizer;

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

/// The fixture `model` (BF16 weights) on `backend`, one sequence's KV cache (16 blocks).
pub fn fixture_executor(
    model: &str,
    overrides: Option<&serde_json::Value>,
    backend: qwen3_backend::cpu::CpuBackend,
) -> qwen3_model::SingleExecutor<qwen3_backend::cpu::CpuBackend> {
    use qwen3_backend::Backend;
    let m = qwen3_model::Qwen3::load(
        &backend,
        &fixtures().join(model),
        config(model, overrides),
        WeightDType::BF16,
        qwen3_model::Shard::WHOLE,
    )
    .expect("model loads");
    let kv = backend
        .alloc_kv_cache(m.kv_shape(16, BLOCK_SIZE))
        .expect("kv");
    qwen3_model::SingleExecutor::new(qwen3_model::Worker {
        backend,
        model: m,
        kv,
    })
}

/// A step of one sequence (id 1) computing `ids` at positions `start..`.
pub fn single_seq_batch(ids: &[u32], start: usize, new: bool) -> Batch {
    qwen3_model::profile::single_seq_batch(1, ids, start, new, BLOCK_SIZE)
}

/// Largest |ours - theirs| over the recorded columns.
pub fn max_diff(ours: &[f32], theirs: &[f32], columns: &[usize]) -> f32 {
    columns
        .iter()
        .zip(theirs)
        .map(|(&c, t)| (ours[c] - t).abs())
        .fold(0.0, f32::max)
}

/// How a test's engine on the CPU is set up.
pub struct Setup {
    pub tp: usize,
    pub num_blocks: usize,
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub prefix_caching: bool,
    pub dtype: WeightDType,
    /// Async scheduling (the host one step ahead of the executor).
    pub async_scheduling: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            tp: 1,
            num_blocks: 64,
            max_num_batched_tokens: 256,
            max_num_seqs: 8,
            prefix_caching: true,
            dtype: WeightDType::BF16,
            async_scheduling: false,
        }
    }
}

/// The engine with the fixture `model` on the CPU (blocks of 16, max_model_len 256).
pub fn engine(model: &str, s: &Setup) -> EngineHandle {
    let (cfg, executor, tok) = engine_parts(model, s);
    EngineHandle::start(cfg, executor, tok).expect("engine starts")
}

/// The same engine, driven step by step on the caller's thread (deterministic scheduling).
pub fn engine_core(model: &str, s: &Setup) -> EngineCore {
    let (cfg, executor, tok) = engine_parts(model, s);
    EngineCore::new(cfg, executor, tok).expect("engine core")
}

/// The engine with structured outputs on: the compiler for the fixture's tokenizer and the
/// model's vocabulary, shared by the engine and the caller (who compiles to validate).
pub fn structured_engine(model: &str, s: &Setup) -> (EngineHandle, Arc<qwen3_guided::Compiler>) {
    let (cfg, executor, tok) = engine_parts(model, s);
    let compiler = Arc::new(
        qwen3_guided::compiler_for(
            &fixtures().join(model).join("tokenizer.json"),
            Arc::clone(&tok),
            config(model, None).vocab_size,
            &cfg.eos_token_ids,
            qwen3_guided::CompilerLimits::default(),
        )
        .expect("structured-output compiler"),
    );
    let core = EngineCore::new(cfg, executor, tok)
        .expect("engine core")
        .with_structured(Arc::clone(&compiler));
    (
        EngineHandle::start_core(core).expect("engine starts"),
        compiler,
    )
}

/// How `model` is laid out for a test's engine (blocks of 16).
pub fn load_options(model: &str, s: &Setup) -> LoadOptions {
    LoadOptions {
        dir: fixtures().join(model),
        config: config(model, None),
        dtype: s.dtype,
        tensor_parallel_size: s.tp,
        block_size: BLOCK_SIZE,
        num_blocks: s.num_blocks,
    }
}

/// The engine over `executor` (which must hold `model` as [`load_options`] lays it out).
pub fn engine_over(model: &str, s: &Setup, executor: Box<dyn Executor>) -> EngineHandle {
    let (cfg, tok) = engine_config(model, s);
    EngineHandle::start(cfg, executor, tok).expect("engine starts")
}

fn engine_parts(model: &str, s: &Setup) -> (EngineConfig, Box<dyn Executor>, Arc<Tokenizer>) {
    let executor = cpu_executor(&load_options(model, s)).expect("executor");
    let (cfg, tok) = engine_config(model, s);
    (cfg, executor, tok)
}

fn engine_config(model: &str, s: &Setup) -> (EngineConfig, Arc<Tokenizer>) {
    let block_size = BLOCK_SIZE;
    let tok =
        Tokenizer::from_file(fixtures().join(model).join("tokenizer.json")).expect("tokenizer");
    let cfg = EngineConfig {
        block_size,
        num_blocks: s.num_blocks,
        max_num_seqs: s.max_num_seqs,
        max_num_batched_tokens: s.max_num_batched_tokens,
        max_model_len: 256,
        enable_prefix_caching: s.prefix_caching,
        enable_chunked_prefill: true,
        max_waiting_requests: 64,
        eos_token_ids: vec![151645, 151643],
        async_scheduling: s.async_scheduling,
    };
    (cfg, Arc::new(tok))
}

/// Anonymous resident bytes of this process (loaded weights; the mmapped files are not anonymous).
pub fn rss_anon() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
