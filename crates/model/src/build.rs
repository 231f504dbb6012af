//! Building an executor for a model directory: TP ranks, shards, and KV cache sizing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qwen3_backend::comm::Communicator;
use qwen3_backend::cpu::comm::InProcessGroup;
use qwen3_backend::cpu::CpuBackend;
use qwen3_backend::{Backend, KvCacheShape};
use qwen3_engine::Executor;

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

/// Loads the model on the CPU, in-process TP ranks when `tensor_parallel_size > 1`.
pub fn cpu_executor(opts: &LoadOptions) -> Result<Box<dyn Executor>, ModelError> {
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
        return Ok(Box::new(SingleExecutor::new(Worker { backend, model, kv })));
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
    Ok(Box::new(ex))
}
