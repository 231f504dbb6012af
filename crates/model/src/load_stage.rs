//! Loading one pipeline stage on a node: each rank's share of the stage's layers, its
//! tensor-parallel group on this node and, over HCCL, its link to the same TP rank of the
//! neighbouring stages on the other nodes.

use std::ops::Range;
use std::sync::Arc;

use qwen3_backend::comm::{Communicator, SingleRank};
use qwen3_backend::{Backend, BackendError};
use qwen3_backend_ascend::comm::{HcclCommunicator, HcclRootInfo};
use qwen3_backend_ascend::desc::Dt;
use qwen3_backend_ascend::device_query::Cann;
use qwen3_backend_ascend::{AscendBackend, AscendOptions, AscendTensor};

use crate::error::ModelError;
use crate::executor::{ResizableExecutor, Worker};
use crate::load::LoadOptions;
use crate::load_ascend::RootSource;
use crate::pipeline_exec::{StageLink, StageLinks};
use crate::qwen3::{Qwen3, Shard, WeightDType};
use crate::tp::{StageRankInit, TpExecutor};
use crate::weights::WeightStore;

/// Rank `shard` of the stage running decoder layers `stage`, with a KV cache for those
/// layers of `opts.num_blocks` blocks.
pub fn stage_worker<B: Backend>(
    backend: B,
    opts: &LoadOptions,
    shard: Shard,
    stage: Range<usize>,
) -> Result<Worker<B>, ModelError> {
    let store = WeightStore::open(&opts.dir)?;
    let model = Qwen3::load_stage(
        &backend,
        &store,
        opts.config.clone(),
        opts.dtype,
        shard,
        stage,
    )?;
    let kv = backend.alloc_kv_cache(model.kv_shape(opts.num_blocks, opts.block_size))?;
    Ok(Worker { backend, model, kv })
}

/// Which pipeline stage this node runs, and the HCCL root info of each cross-node pipeline
/// group: group `i` pairs TP rank `i` of every stage, its rank `s` on stage `s`.
pub struct PipelinePlace {
    pub stage: usize,
    pub stages: usize,
    pub layers: Range<usize>,
    /// One per TP rank, made on node 0 (stage 0 is each group's rank 0).
    pub roots: Vec<HcclRootInfo>,
}

/// One rank's link to the same TP rank of a neighbouring stage.
struct HcclPeer {
    comm: Arc<HcclCommunicator>,
    peer: usize,
    /// The hidden states' element type: the weights' (the embedding output's).
    dt: Dt,
}

impl StageLink<AscendBackend> for HcclPeer {
    fn send(&self, backend: &AscendBackend, t: &AscendTensor) -> Result<(), BackendError> {
        self.comm.send(backend, t, self.peer)
    }

    fn recv(&self, backend: &AscendBackend, shape: &[usize]) -> Result<AscendTensor, BackendError> {
        self.comm.recv_new(backend, self.dt, shape, self.peer)
    }

    fn wait_sent(&self, backend: &AscendBackend) -> Result<(), BackendError> {
        // HcclSend completes once the peer has received (HCCL API reference).
        backend.synchronize()
    }
}

/// This node's stage on the NPUs `devices` (one per TP rank): every rank thread joins its
/// node's TP group, then its pipeline group (HcclCommInitRootInfo once per group it is in),
/// then loads its share of the stage's layers.
pub fn ascend_stage_executor(
    opts: &LoadOptions,
    cann: Arc<Cann>,
    devices: &[i32],
    backend_opts: AscendOptions,
    place: PipelinePlace,
) -> Result<Box<dyn ResizableExecutor>, ModelError> {
    let world = opts.tensor_parallel_size;
    if devices.len() != world || place.roots.len() != world || world == 0 {
        return Err(ModelError::Invalid(format!(
            "a pipeline stage of tensor parallel size {world} needs as many devices and \
             pipeline root infos, got {devices:?} and {}",
            place.roots.len()
        )));
    }
    let backend_opts = AscendOptions {
        kv_cache_f32: backend_opts.kv_cache_f32 || opts.dtype == WeightDType::F32,
        ..backend_opts
    };
    let dt = match opts.dtype {
        WeightDType::BF16 => Dt::BF16,
        WeightDType::F32 => Dt::F32,
    };
    let (stage, stages, layers) = (place.stage, place.stages, place.layers);
    let inits: Vec<StageRankInit<AscendBackend>> = devices
        .iter()
        .zip(RootSource::group(world))
        .zip(place.roots)
        .enumerate()
        .map(|(rank, ((&device, tp_root), pp_root))| {
            let (opts, cann, backend_opts) =
                (opts.clone(), Arc::clone(&cann), backend_opts.clone());
            let layers = layers.clone();
            let init: StageRankInit<AscendBackend> = Box::new(move || {
                let backend = AscendBackend::with_options(cann, device, backend_opts)?;
                // Collective, in the same order on every rank: the TP group, then the
                // pipeline group.
                let tp: Box<dyn Communicator<AscendBackend>> = if world == 1 {
                    Box::new(SingleRank)
                } else {
                    let root = tp_root.get(&backend)?;
                    Box::new(HcclCommunicator::init(&backend, &root, rank, world)?)
                };
                let pp = Arc::new(HcclCommunicator::init(&backend, &pp_root, stage, stages)?);
                let link = |peer: usize| -> Box<dyn StageLink<AscendBackend>> {
                    Box::new(HcclPeer {
                        comm: Arc::clone(&pp),
                        peer,
                        dt,
                    })
                };
                let links = StageLinks {
                    prev: (stage > 0).then(|| link(stage - 1)),
                    next: (stage + 1 < stages).then(|| link(stage + 1)),
                };
                let worker = stage_worker(backend, &opts, Shard { rank, world }, layers)?;
                Ok((worker, tp, links))
            });
            init
        })
        .collect();
    // As in `load_ascend`: HCCL has no abort from another thread; HCCL's execution timeout
    // ends a peer's wait.
    Ok(Box::new(TpExecutor::start_stage(inits, Arc::new(|| {}))?))
}
