//! Building an executor for a model directory: TP ranks, shards, and KV cache sizing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qwen3_backend::comm::Communicator;
use qwen3_backend::cpu::comm::InProcessGroup;
use qwen3_backend::cpu::CpuBackend;
use qwen3_backend::{Backend, KvCacheShape};
use qwen3_step::Executor;

use crate::config::ModelConfig;
use crate::executor::{SingleExecutor, Worker};
use crate::qwen3::{HeadPlan, ModelError, Qwen3, Shard, WeightDType};
use crate::tp::{RankInit, TpExecutor};

/// Everything that decides how a model is laid out on its devices.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub dtype: WeightDType,
    pub tensor_parallel_size: usize,
    pub block_size: usize,
    pub num_blocks: usize,
}

/// The KV cache geometry of one rank for `opts` (heads this rank holds).
pub fn rank_kv_shape(opts: &LoadOptions) -> Result<KvCacheShape, ModelError> {
    let heads = HeadPlan::new(
        &opts.config,
        Shard {
            rank: 0,
            world: opts.tensor_parallel_size,
        },
    )?;
    Ok(KvCacheShape {
        num_layers: opts.config.num_hidden_layers,
        num_blocks: opts.num_blocks,
        block_size: opts.block_size,
        num_kv_heads: heads.kv_heads,
        head_dim: opts.config.head_dim,
    })
}

/// Bytes of weight files in a model directory (what loading will roughly take).
pub fn weight_file_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A CPU executor before it is boxed for the engine: its KV cache can still be resized
/// (after the profiling pass has measured what activations need).
pub enum CpuExecutor {
    Single(Box<SingleExecutor<CpuBackend>>),
    Tp(TpExecutor),
}

impl CpuExecutor {
    pub fn resize_kv(&mut self, num_blocks: usize, block_size: usize) -> Result<(), ModelError> {
        match self {
            CpuExecutor::Single(e) => e.resize_kv(num_blocks, block_size),
            CpuExecutor::Tp(e) => e
                .resize_kv(num_blocks, block_size)
                .map_err(|e| ModelError::Invalid(e.0)),
        }
    }

    pub fn as_executor(&mut self) -> &mut dyn Executor {
        match self {
            CpuExecutor::Single(e) => e.as_mut(),
            CpuExecutor::Tp(e) => e,
        }
    }

    pub fn into_boxed(self) -> Box<dyn Executor> {
        match self {
            CpuExecutor::Single(e) => e,
            CpuExecutor::Tp(e) => Box::new(e),
        }
    }
}

/// A step of one greedy sequence `seq_id` computing `ids` at positions `start..`, its blocks
/// `1..` in order (block 0 is the engine's null block); `new` introduces the sequence. Used by
/// the profiling pass, benches and tests.
pub fn single_seq_batch(
    seq_id: u64,
    ids: &[u32],
    start: usize,
    new: bool,
    block_size: usize,
) -> qwen3_step::Batch {
    use qwen3_step::{Batch, NewSeq, ScheduledSeq};
    let ctx = start + ids.len();
    let blocks = ctx.div_ceil(block_size);
    Batch {
        new_seqs: if new {
            vec![NewSeq {
                seq_id,
                token_ids: ids.into(),
                num_prompt_tokens: ids.len(),
                sampling: Arc::new(qwen3_step::SamplingParams::greedy()),
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
    }
}

/// The batch of a profiling pass: `num_tokens` prompt tokens of one sequence.
pub fn profile_batch(num_tokens: usize, block_size: usize, token_id: u32) -> qwen3_step::Batch {
    single_seq_batch(u64::MAX, &vec![token_id; num_tokens], 0, true, block_size)
}

/// Loads the model on the CPU, in-process TP ranks when `tensor_parallel_size > 1`.
pub fn cpu_executor(opts: &LoadOptions) -> Result<Box<dyn Executor>, ModelError> {
    Ok(cpu_executor_resizable(opts)?.into_boxed())
}

/// Like [`cpu_executor`], but unboxed so the KV cache can be resized after profiling.
pub fn cpu_executor_resizable(opts: &LoadOptions) -> Result<CpuExecutor, ModelError> {
    let world = opts.tensor_parallel_size;
    let kv_shape = rank_kv_shape(opts)?;
    if world == 1 {
        let backend = CpuBackend::new();
        let model = Qwen3::load(
            &backend,
            &opts.dir,
            opts.config.clone(),
            opts.dtype,
            Shard::WHOLE,
        )?;
        let kv = backend.alloc_kv_cache(kv_shape)?;
        return Ok(CpuExecutor::Single(Box::new(SingleExecutor::new(Worker {
            backend,
            model,
            kv,
        }))));
    }
    let groups = InProcessGroup::new(world);
    let aborter = groups[0].clone();
    let inits: Vec<RankInit<CpuBackend>> = groups
        .into_iter()
        .enumerate()
        .map(|(rank, group)| {
            let opts = opts.clone();
            let init: RankInit<CpuBackend> = Box::new(move || {
                let backend = CpuBackend::new();
                let shard = Shard { rank, world };
                let model = Qwen3::load(&backend, &opts.dir, opts.config, opts.dtype, shard)?;
                let kv = backend.alloc_kv_cache(kv_shape)?;
                let comm: Box<dyn Communicator<CpuBackend>> = Box::new(group);
                Ok((Worker { backend, model, kv }, comm))
            });
            init
        })
        .collect();
    let ex = TpExecutor::start(inits, Arc::new(move || aborter.abort()))?;
    Ok(CpuExecutor::Tp(ex))
}
