//! Tensor parallelism: one worker thread per rank, each owning its device, its shard and its
//! KV cache, driven in lock-step; rank 0 samples from the gathered logits and hands the
//! tokens to the other ranks, whose histories then stay whole (async scheduling's deferred
//! inputs are filled from them on every rank). With pipeline parallelism the ranks run one
//! stage, and rank 0 samples on the last stage only.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use qwen3_backend::comm::Communicator;
use qwen3_backend::Backend;
use qwen3_step::{Batch, Executor, ExecutorError, SeqId, StepOutput};

use crate::error::ModelError;
use crate::executor::{exec_err, ResizableExecutor, SeqStates, StepArrays, Worker};
use crate::pipeline_exec::StageLinks;

/// What a rank thread is given to build itself on its own thread (devices bind per thread).
pub type RankInit<B> =
    Box<dyn FnOnce() -> Result<(Worker<B>, Box<dyn Communicator<B>>), ModelError> + Send + 'static>;

/// Like [`RankInit`], for a rank of one pipeline stage: also its links to the neighbouring
/// stages.
pub type StageRankInit<B> = Box<
    dyn FnOnce() -> Result<(Worker<B>, Box<dyn Communicator<B>>, StageLinks<B>), ModelError>
        + Send
        + 'static,
>;

enum Job {
    Step(Arc<Batch>),
    ResizeKv {
        num_blocks: usize,
        block_size: usize,
    },
    KvBlockBytes {
        block_size: usize,
    },
}

enum Reply {
    Sampled(Result<StepOutput, ExecutorError>),
    Done(Result<(), ExecutorError>),
    Bytes(u64),
}

/// Sampled tokens of one step, from rank 0 to each other rank.
type Tokens = Arc<Vec<(SeqId, u32)>>;

/// A rank's end of the sampled-token hand-off.
enum TokenShare {
    /// Rank 0: one sender per other rank.
    Send(Vec<Sender<Tokens>>),
    Receive(Receiver<Tokens>),
}

struct Rank {
    tx: Sender<Job>,
    rx: Receiver<Reply>,
    thread: Option<JoinHandle<()>>,
}

pub struct TpExecutor {
    ranks: Vec<Rank>,
    /// Called when a rank fails, so peers blocked in a collective are released.
    abort: Arc<dyn Fn() + Send + Sync>,
    /// Set when a rank failed: its collectives are aborted for good, so no step can run.
    broken: bool,
}

fn rank_loop<B: Backend>(
    rank: usize,
    init: StageRankInit<B>,
    share: TokenShare,
    jobs: Receiver<Job>,
    replies: Sender<Reply>,
    ready: Sender<Result<(), ModelError>>,
    abort: Arc<dyn Fn() + Send + Sync>,
) {
    let (mut worker, comm, links) = match init() {
        Ok(w) => {
            let _ = ready.send(Ok(()));
            w
        }
        Err(e) => {
            abort();
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut states = SeqStates::default();
    let mut arrays = StepArrays::default();
    while let Ok(job) = jobs.recv() {
        let batch = match job {
            Job::Step(b) => b,
            Job::ResizeKv {
                num_blocks,
                block_size,
            } => {
                let r = worker.resize_kv(num_blocks, block_size).map_err(exec_err);
                if replies.send(Reply::Done(r)).is_err() {
                    return;
                }
                continue;
            }
            Job::KvBlockBytes { block_size } => {
                if replies
                    .send(Reply::Bytes(worker.kv_block_bytes(block_size)))
                    .is_err()
                {
                    return;
                }
                continue;
            }
        };
        // Every rank keeps the sequences' prompts: all must compute the same prompt-logprob
        // rows, as the lm_head's gather is a collective. Only rank 0 samples.
        states.update(&batch);
        // None: nothing to run, or a stage before the last (nothing to sample).
        let result = if batch.seqs.is_empty() {
            Ok(None)
        } else {
            let spans = states.prompt_spans(&batch);
            arrays.resolve_inputs(&batch, &states).and_then(|()| {
                worker
                    .stage_step(
                        &links,
                        &batch,
                        &mut arrays,
                        &spans,
                        rank == 0,
                        comm.as_ref(),
                    )
                    .map_err(exec_err)
            })
        };
        if result.is_err() {
            abort();
        }
        let samples = batch.seqs.iter().any(|s| s.sample);
        let reply = match &share {
            TokenShare::Send(peers) => {
                let out = result.and_then(|logits| match logits {
                    Some((l, prompt)) => {
                        let mut out = states.sample(&worker.backend, &batch, &l)?;
                        out.prompt_logprobs = prompt;
                        Ok(out)
                    }
                    None => Ok(StepOutput::default()),
                });
                if samples {
                    // Sent on failure too (empty), so no peer waits forever.
                    let tokens: Tokens = Arc::new(match &out {
                        Ok(o) => o
                            .outputs
                            .iter()
                            .map(|o| (o.seq_id, o.sampled.token))
                            .collect(),
                        Err(_) => Vec::new(),
                    });
                    for p in peers {
                        let _ = p.send(Arc::clone(&tokens));
                    }
                }
                Reply::Sampled(out)
            }
            TokenShare::Receive(from_rank0) => {
                let result = result.and_then(|_| {
                    if samples {
                        let tokens = from_rank0.recv().map_err(|_| {
                            ExecutorError("rank 0 stopped before sharing its tokens".into())
                        })?;
                        states.record_sampled(&tokens);
                    }
                    Ok(())
                });
                Reply::Done(result)
            }
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

impl TpExecutor {
    /// Starts one thread per entry of `inits` (rank order) and waits until every rank has
    /// loaded its shard. `abort` releases ranks blocked in collectives when one fails.
    pub fn start<B: Backend>(
        inits: Vec<RankInit<B>>,
        abort: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Self, ModelError> {
        let inits = inits
            .into_iter()
            .map(|init| -> StageRankInit<B> {
                Box::new(move || init().map(|(w, c)| (w, c, StageLinks::none())))
            })
            .collect();
        Self::start_stage(inits, abort)
    }

    /// Like [`TpExecutor::start`], for the ranks of one pipeline stage.
    pub fn start_stage<B: Backend>(
        inits: Vec<StageRankInit<B>>,
        abort: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Self, ModelError> {
        let mut ranks = Vec::with_capacity(inits.len());
        let mut readies = Vec::with_capacity(inits.len());
        let (token_txs, token_rxs): (Vec<Sender<Tokens>>, Vec<Receiver<Tokens>>) =
            (1..inits.len()).map(|_| channel()).unzip();
        let shares = std::iter::once(TokenShare::Send(token_txs))
            .chain(token_rxs.into_iter().map(TokenShare::Receive));
        for ((rank, init), share) in inits.into_iter().enumerate().zip(shares) {
            let (job_tx, job_rx) = channel();
            let (rep_tx, rep_rx) = channel();
            let (ready_tx, ready_rx) = channel();
            let abort_r = abort.clone();
            let thread = std::thread::Builder::new()
                .name(format!("tp-rank-{rank}"))
                .spawn(move || rank_loop(rank, init, share, job_rx, rep_tx, ready_tx, abort_r))
                .map_err(|e| ModelError::Invalid(format!("cannot start rank {rank}: {e}")))?;
            ranks.push(Rank {
                tx: job_tx,
                rx: rep_rx,
                thread: Some(thread),
            });
            readies.push(ready_rx);
        }
        let mut first_err = None;
        for (rank, r) in readies.into_iter().enumerate() {
            let res = r.recv().unwrap_or_else(|_| {
                Err(ModelError::Invalid(format!(
                    "rank {rank} died while loading"
                )))
            });
            if let Err(e) = res {
                first_err.get_or_insert(ModelError::Invalid(format!("rank {rank}: {e}")));
            }
        }
        let ex = Self {
            ranks,
            abort,
            broken: false,
        };
        match first_err {
            Some(e) => Err(e),
            None => Ok(ex),
        }
    }
}

impl ResizableExecutor for TpExecutor {
    fn resize_kv(&mut self, num_blocks: usize, block_size: usize) -> Result<(), ModelError> {
        for r in &self.ranks {
            r.tx.send(Job::ResizeKv {
                num_blocks,
                block_size,
            })
            .map_err(|_| ModelError::Invalid("a tensor-parallel rank has stopped".into()))?;
        }
        let mut result = Ok(());
        for (i, r) in self.ranks.iter().enumerate() {
            match r.rx.recv() {
                Ok(Reply::Done(Ok(()))) => {}
                Ok(Reply::Done(Err(e))) | Ok(Reply::Sampled(Err(e))) => {
                    result = Err(ModelError::Invalid(format!("rank {i}: {}", e.0)))
                }
                Ok(Reply::Sampled(Ok(_)) | Reply::Bytes(_)) => {}
                Err(_) => result = Err(ModelError::Invalid(format!("rank {i} has stopped"))),
            }
        }
        result
    }

    fn kv_block_bytes(&self, block_size: usize) -> Result<u64, ModelError> {
        let stopped = |i| ModelError::Invalid(format!("tensor-parallel rank {i} has stopped"));
        for (i, r) in self.ranks.iter().enumerate() {
            r.tx.send(Job::KvBlockBytes { block_size })
                .map_err(|_| stopped(i))?;
        }
        // Every rank's reply is read, so none is left for the next step to mistake.
        let mut total = Ok(0);
        for (i, r) in self.ranks.iter().enumerate() {
            match (r.rx.recv(), &mut total) {
                (Ok(Reply::Bytes(b)), Ok(sum)) => *sum += b,
                (Ok(Reply::Bytes(_)), Err(_)) => {}
                (_, t) => *t = Err(stopped(i)),
            }
        }
        total
    }
}

impl Executor for TpExecutor {
    fn execute(&mut self, batch: &Batch) -> Result<StepOutput, ExecutorError> {
        let batch = Arc::new(batch.clone());
        for (i, r) in self.ranks.iter().enumerate() {
            if r.tx.send(Job::Step(batch.clone())).is_err() {
                (self.abort)();
                self.broken = true;
                return Err(ExecutorError(format!(
                    "tensor-parallel rank {i} has stopped"
                )));
            }
        }
        let mut out = Err(ExecutorError("rank 0 sent no output".into()));
        let mut failure = None;
        for (i, r) in self.ranks.iter().enumerate() {
            match r.rx.recv() {
                Ok(Reply::Sampled(res)) => out = res,
                Ok(Reply::Done(Ok(())) | Reply::Bytes(_)) => {}
                Ok(Reply::Done(Err(e))) => {
                    failure.get_or_insert(ExecutorError(format!("rank {i}: {}", e.0)));
                }
                Err(_) => {
                    failure.get_or_insert(ExecutorError(format!(
                        "tensor-parallel rank {i} has stopped"
                    )));
                }
            }
        }
        match failure {
            Some(e) => {
                self.broken = true;
                Err(e)
            }
            None => out,
        }
    }

    fn is_broken(&self) -> bool {
        self.broken
    }

    fn resolves_deferred_inputs(&self) -> bool {
        true
    }
}

impl Drop for TpExecutor {
    fn drop(&mut self) {
        for r in &mut self.ranks {
            // Closing the job channel ends the rank's loop.
            let (dead_tx, _) = channel();
            r.tx = dead_tx;
        }
        for r in &mut self.ranks {
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }
}
