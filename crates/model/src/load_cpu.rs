//! Loading a model on the CPU: one rank, or in-process tensor-parallel ranks that reduce
//! through shared memory.

use std::sync::Arc;

use qwen3_backend::comm::Communicator;
use qwen3_backend::cpu::comm::InProcessGroup;
use qwen3_backend::cpu::{CpuBackend, CpuPrecision};
use qwen3_step::Executor;

use crate::error::ModelError;
use crate::executor::{ResizableExecutor, SingleExecutor};
use crate::load::{load_worker, rank_kv_shape, LoadOptions};
use crate::qwen3::Shard;
use crate::tp::{RankInit, TpExecutor};

/// Loads the model on the CPU, in-process TP ranks when `tensor_parallel_size > 1`, on the
/// exact F32 path (activations and KV cache).
pub fn cpu_executor(opts: &LoadOptions) -> Result<Box<dyn Executor>, ModelError> {
    Ok(cpu_executor_resizable(opts, CpuPrecision::default())?)
}

/// Like [`cpu_executor`] at `precision`; the KV cache can still be resized after profiling.
pub fn cpu_executor_resizable(
    opts: &LoadOptions,
    precision: CpuPrecision,
) -> Result<Box<dyn ResizableExecutor>, ModelError> {
    let world = opts.tensor_parallel_size;
    let kv_shape = rank_kv_shape(opts)?;
    let backend = move || CpuBackend::new().with_precision(precision);
    if world == 1 {
        let worker = load_worker(backend(), opts, Shard::WHOLE, kv_shape)?;
        return Ok(Box::new(SingleExecutor::new(worker)));
    }
    let groups = InProcessGroup::new(world);
    let aborter = groups[0].clone();
    let inits: Vec<RankInit<CpuBackend>> = groups
        .into_iter()
        .enumerate()
        .map(|(rank, group)| {
            let opts = opts.clone();
            let init: RankInit<CpuBackend> = Box::new(move || {
                let worker = load_worker(backend(), &opts, Shard { rank, world }, kv_shape)?;
                let comm: Box<dyn Communicator<CpuBackend>> = Box::new(group);
                Ok((worker, comm))
            });
            init
        })
        .collect();
    let ex = TpExecutor::start(inits, Arc::new(move || aborter.abort()))?;
    Ok(Box::new(ex))
}
