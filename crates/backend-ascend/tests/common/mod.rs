//! Shared helpers of the end-to-end tests: the emulated CANN, the fixtures and their
//! goldens (as crates/model/tests/common reads them), and an engine on the Ascend backend.
#![allow(dead_code)]

pub mod quant_check;

use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard};

use ascend_sys::Cann;
use cann_emu::harness;
use cann_emu::CannEmuStats;
use qwen3_backend::Backend;
use qwen3_backend_ascend::{AscendBackend, AscendOptions};
use qwen3_engine::{Batch, EngineConfig, EngineHandle, EngineRequest};
use qwen3_model::config::ModelConfig;
use qwen3_model::load::{ascend_executor_resizable, LoadOptions};
use qwen3_model::{Qwen3, Shard, SingleExecutor, WeightDType, Worker};
use serde::Deserialize;

/// Fused attention wants KV blocks of 128 tokens whenever a query is longer than one.
pub const BLOCK_SIZE: usize = 128;

/// The dense fixture the NPU end-to-end tests run: real Qwen3's head_dim 128 with GQA 8:1,
/// shapes fused attention in layout TND accepts (head_dim 64/128/192 only). The head_dim 16/32
/// fixtures stay only where attention is the F32 matmul + softmax path (any head_dim).
pub const DENSE: &str = "tiny-qwen3-hd128";

/// The MoE fixture at real Qwen3's head_dim 128 (8 q / 2 kv heads; made by the fixture
/// script with transformers goldens, like DENSE).
pub const MOE_HD128: &str = "tiny-qwen3-moe-hd128";

/// The emulator, fresh, for one test at a time (its counters are process-wide).
pub struct Emu {
    pub cann: Arc<Cann>,
    _guard: MutexGuard<'static, ()>,
}

impl Emu {
    pub fn new() -> Self {
        let guard = harness::exclusive();
        harness::reset().expect("emulator reset");
        let dir = harness::lib_dir().expect("emulator built");
        let cann = Cann::load_from([dir]).expect("CANN symbols from the emulator");
        Self {
            cann: Arc::new(cann),
            _guard: guard,
        }
    }

    pub fn stats(&self) -> CannEmuStats {
        harness::stats().expect("emulator stats")
    }

    /// No violation was caught and nothing is left alive (call once everything is dropped).
    pub fn assert_clean(&self) {
        let s = self.stats();
        assert_eq!(s.violations(), 0, "memory violations: {s:?}");
        assert_eq!(s.leaks(), 0, "leaked resources: {s:?}");
        assert_eq!(s.exec_errors, 0, "execution errors: {s:?}");
        // Per-step copies go through page-locked staging: a pageable async copy would stall
        // the host until it ran (CANN 8.3 aclrtMemcpyAsync).
        assert_eq!(s.pageable_async_copies, 0, "pageable async copies: {s:?}");
        assert!(s.ops_executed > 0, "nothing ran on the emulator: {s:?}");
    }
}

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
    /// Smallest top-1/top-2 logit margin along the greedy path (quantized goldens).
    #[serde(default)]
    pub min_top2_gap: f32,
    /// MoE goldens: per prefill / decode position, the smallest gap over the MoE layers
    /// between the k-th and (k+1)-th router logit of the reference.
    #[serde(default)]
    pub router_margins: Option<RouterMargins>,
}

#[derive(Debug, Deserialize)]
pub struct RouterMargins {
    pub prefill: Vec<f32>,
    pub decode: Vec<f32>,
}

/// Logits transformers recorded, at a subset of vocabulary columns.
pub struct RecordedLogits {
    pub columns: Vec<usize>,
    pub prefill: Vec<Vec<f32>>,
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
    let rows = |name: &str| -> Vec<Vec<f32>> {
        let t = st.tensor(name).expect(name);
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        v.chunks(t.shape()[1]).map(|r| r.to_vec()).collect()
    };
    let cols = st.tensor("columns").expect("columns");
    let columns = cols
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
        .collect();
    RecordedLogits {
        columns,
        prefill: rows("prefill_logits"),
        decode: rows("decode_logits"),
    }
}

/// Transformers' BF16 run of `case` (the `__bf16` goldens of `make_fixtures.py bf16-refs`,
/// teacher-forced with the F32 greedy tokens).
pub fn recorded_bf16(case: &Case) -> RecordedLogits {
    recorded(&Case {
        logits_file: case
            .logits_file
            .replace(".safetensors", "__bf16.safetensors"),
        name: case.name.clone(),
        prompt_ids: case.prompt_ids.clone(),
        greedy_ids: case.greedy_ids.clone(),
        config_overrides: None,
        min_top2_gap: 0.0,
        router_margins: None,
    })
}

/// Whether greedy token `i` of `case` is decisive under BF16: the F32 reference's top-2
/// margin before it exceeds twice what transformers' own BF16 run moved that row (the CPU's
/// BF16 promise, `model/tests/parity_bf16.rs`). Elsewhere two BF16 computations may
/// lawfully pick either of the near-tied tokens.
pub fn bf16_decisive(f32_ref: &RecordedLogits, bf16_ref: &RecordedLogits, i: usize) -> bool {
    let (row, moved) = (&f32_ref.decode[i], &bf16_ref.decode[i]);
    let all: Vec<usize> = (0..row.len()).collect();
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in row {
        if v > a {
            (a, b) = (v, a);
        } else if v > b {
            b = v;
        }
    }
    a - b > 2.0 * max_diff(moved, row, &all)
}

/// The golden's top two tokens before greedy token `i`.
pub fn top2(f32_ref: &RecordedLogits, i: usize) -> [u32; 2] {
    let row = &f32_ref.decode[i];
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
    [
        f32_ref.columns[idx[0]] as u32,
        f32_ref.columns[idx[1]] as u32,
    ]
}

/// Checks BF16 serving's first greedy token of `case` (`what` names the run): transformers'
/// where its margin is decisive under BF16 (`bf16_decisive`; always, where the fixture has no
/// BF16 reference), else one of the golden's top two. Returns whether it was decisive.
pub fn check_bf16_first_token(case: &Case, got: u32, what: &str) -> bool {
    let bf16_file = case
        .logits_file
        .replace(".safetensors", "__bf16.safetensors");
    let f32_ref = recorded(case);
    let decisive = !fixtures().join("goldens").join(bf16_file).exists()
        || bf16_decisive(&f32_ref, &recorded_bf16(case), 0);
    if decisive {
        assert_eq!(
            got, case.greedy_ids[0],
            "{}: first token, {what}",
            case.name
        );
    } else {
        let near = top2(&f32_ref, 0);
        assert!(
            near.contains(&got),
            "{}: first token, {what}: {got} not in {near:?}",
            case.name
        );
    }
    decisive
}

pub fn config(model: &str, overrides: Option<&serde_json::Value>) -> ModelConfig {
    let text = std::fs::read_to_string(fixtures().join(model).join("config.json")).expect("config");
    ModelConfig::from_json_str_with_overrides(&text, overrides).expect("config parses")
}

/// A step of one sequence (id 1) computing `ids` at positions `start..`.
/// `model` on emulated device 0 in `dtype`, with a KV cache of 4 blocks, behind one executor.
pub fn single_executor(
    emu: &Emu,
    model: &str,
    dtype: WeightDType,
    opts: AscendOptions,
) -> SingleExecutor<AscendBackend> {
    let backend = AscendBackend::with_options(Arc::clone(&emu.cann), 0, opts).expect("device 0");
    let m = Qwen3::load(
        &backend,
        &fixtures().join(model),
        config(model, None),
        dtype,
        Shard::WHOLE,
    )
    .unwrap_or_else(|e| panic!("{model} loads on the NPU: {e}"));
    let kv = backend
        .alloc_kv_cache(m.kv_shape(4, BLOCK_SIZE))
        .expect("kv");
    SingleExecutor::new(Worker {
        backend,
        model: m,
        kv,
    })
}

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

/// How the engine is set up in a test.
pub struct Setup {
    pub tp: usize,
    pub num_blocks: usize,
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub prefix_caching: bool,
    pub dtype: WeightDType,
    /// Async scheduling (the host one step ahead of the device).
    pub async_scheduling: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            tp: 1,
            num_blocks: 16,
            max_num_batched_tokens: 256,
            max_num_seqs: 8,
            prefix_caching: true,
            dtype: WeightDType::F32,
            async_scheduling: false,
        }
    }
}

pub fn engine(emu: &Emu, model: &str, s: &Setup) -> EngineHandle {
    engine_with(emu, model, s, AscendOptions::default())
}

pub fn engine_with(emu: &Emu, model: &str, s: &Setup, backend: AscendOptions) -> EngineHandle {
    let (cfg, executor, tok) = engine_parts(emu, model, s, backend);
    EngineHandle::start(cfg, executor, tok).expect("engine starts")
}

/// What an engine on the emulated NPU is made of: its config, the executor, the tokenizer.
pub fn engine_parts(
    emu: &Emu,
    model: &str,
    s: &Setup,
    backend: AscendOptions,
) -> (
    EngineConfig,
    Box<dyn qwen3_engine::Executor>,
    Arc<tokenizers::Tokenizer>,
) {
    let opts = LoadOptions {
        dir: fixtures().join(model),
        config: config(model, None),
        dtype: s.dtype,
        tensor_parallel_size: s.tp,
        block_size: BLOCK_SIZE,
        num_blocks: s.num_blocks,
    };
    let devices: Vec<i32> = (0..s.tp as i32).collect();
    let executor: Box<dyn qwen3_engine::Executor> =
        ascend_executor_resizable(&opts, Arc::clone(&emu.cann), &devices, backend)
            .expect("executor");
    let tok = tokenizers::Tokenizer::from_file(fixtures().join(model).join("tokenizer.json"))
        .expect("tokenizer");
    let cfg = EngineConfig {
        block_size: BLOCK_SIZE,
        num_blocks: s.num_blocks,
        max_num_seqs: s.max_num_seqs,
        max_num_batched_tokens: s.max_num_batched_tokens,
        max_model_len: 512,
        enable_prefix_caching: s.prefix_caching,
        enable_chunked_prefill: true,
        max_waiting_requests: 512,
        eos_token_ids: vec![151645, 151643],
        async_scheduling: s.async_scheduling,
    };
    (cfg, executor, Arc::new(tok))
}

pub fn request(id: &str, prompt: &[u32], max_tokens: usize) -> EngineRequest {
    let mut r = EngineRequest::new(id, prompt.to_vec());
    r.max_tokens = Some(max_tokens as u32);
    r.ignore_eos = true;
    r
}

/// Every token of a stream, and the prompt tokens served from the prefix cache.
pub async fn collect(mut s: qwen3_engine::RequestStream) -> (Vec<u32>, usize) {
    let mut toks = Vec::new();
    let mut cached = 0;
    while let Some(o) = s.next().await {
        toks.extend(o.token_ids);
        cached = o.num_cached_tokens;
        if let Some(r) = o.finish_reason {
            // Every test request ignores EOS and runs to its max_tokens.
            assert_eq!(
                r,
                qwen3_engine::FinishReason::Length,
                "after {} tokens",
                toks.len()
            );
        }
    }
    (toks, cached)
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Stops the engine and waits for its thread (which drops the executor and its devices).
pub fn stop(e: EngineHandle) {
    e.shutdown(std::time::Duration::from_secs(5));
    drop(e);
}
