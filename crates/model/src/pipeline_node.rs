//! Serving one model across nodes: node 0's executor (its own stage, plus each step's
//! metadata sent to the other nodes over the rendezvous' TCP connection) and the loop a
//! headless node runs (its stage, stepped by what node 0 sends).
//!
//! Metadata travels over TCP, hidden states over HCCL (see [`crate::pipeline_exec`]): the
//! batch is host data of variable length that the stages need before they can post their
//! receives, which an HCCL broadcast would need device buffers, sizes sent first and two
//! copies for; vLLM too sends step metadata on a CPU channel (its shared-memory message
//! queue / gloo group), and tensors on HCCL/NCCL.

use std::net::TcpStream;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use qwen3_step::{Batch, Executor, ExecutorError, StepMasks, StepOutput};

use crate::error::ModelError;
use crate::executor::ResizableExecutor;
use crate::pipeline_wire::{read_frame, write_frame, Command, Reply};
use crate::rendezvous::NodeLink;

/// Node 0's executor: runs the first stage locally and drives the other nodes' stages; the
/// last stage's node samples and answers with the step's output.
pub struct PipelineLeader {
    local: Box<dyn ResizableExecutor>,
    /// The other nodes in node order; the last runs the last stage.
    nodes: Vec<NodeLink>,
    broken: bool,
}

fn node_err(node: u32, what: impl std::fmt::Display) -> String {
    format!("pipeline node {node}: {what}")
}

impl PipelineLeader {
    /// `nodes` (from the rendezvous) get `reply_timeout` to answer each step: HCCL's
    /// execution timeout, past which their stage's own transfers have failed anyway.
    pub fn new(
        local: Box<dyn ResizableExecutor>,
        mut nodes: Vec<NodeLink>,
        reply_timeout: Duration,
    ) -> Result<Self, ModelError> {
        nodes.sort_by_key(|n| n.node_rank);
        for n in &nodes {
            n.stream
                .set_read_timeout(Some(reply_timeout))
                .and_then(|()| n.stream.set_nodelay(true))
                .map_err(|e| ModelError::Invalid(node_err(n.node_rank, e)))?;
        }
        Ok(Self {
            local,
            nodes,
            broken: false,
        })
    }

    fn send_all(&mut self, cmd: &Command) -> Result<(), String> {
        let bytes = cmd.encode().map_err(|e| e.to_string())?;
        for n in &mut self.nodes {
            write_frame(&mut n.stream, &bytes).map_err(|e| node_err(n.node_rank, e))?;
        }
        Ok(())
    }

    /// Every node's answer, in node order (all are read, so none is left for the next step).
    fn replies(&mut self) -> Vec<Result<Reply, String>> {
        self.nodes
            .iter_mut()
            .map(|n| {
                let r = match read_frame(&mut n.stream) {
                    Ok(Some(f)) => Reply::decode(&f).map_err(|e| e.to_string()),
                    Ok(None) => Err("closed the connection (the node stopped)".into()),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        Err("no answer within HCCL's execution timeout".into())
                    }
                    Err(e) => Err(e.to_string()),
                };
                r.map_err(|e| node_err(n.node_rank, e))
            })
            .collect()
    }

    fn fail(&mut self, why: String) -> ExecutorError {
        self.broken = true;
        ExecutorError(why)
    }
}

impl Executor for PipelineLeader {
    fn execute(&mut self, batch: &Batch) -> Result<StepOutput, ExecutorError> {
        if self.broken {
            return Err(ExecutorError("the pipeline group is broken".into()));
        }
        let step = Command::Step {
            batch: batch.clone(),
            masks_follow: batch.masks.is_some(),
        };
        if let Err(e) = self.send_all(&step) {
            return Err(self.fail(e));
        }
        let local = self.local.execute(batch);
        // The engine publishes the masks while the first stage runs; the sampler is on the
        // last node.
        if let Some(m) = &batch.masks {
            if let Err(e) = self.send_all(&Command::Masks(m.wait().to_vec())) {
                return Err(self.fail(e));
            }
        }
        let mut out = StepOutput::default();
        // The other nodes' failures first: a node that died is the cause, node 0's transfer
        // to it timing out the consequence.
        let mut failures = Vec::new();
        for r in self.replies() {
            match r {
                Ok(Reply::Output(o)) => out = o,
                Ok(Reply::Done) => {}
                Ok(Reply::Failed(why)) | Err(why) => failures.push(why),
            }
        }
        if let Err(e) = local {
            failures.push(format!("pipeline node 0: {}", e.0));
        }
        if failures.is_empty() {
            Ok(out)
        } else {
            Err(self.fail(failures.join("; ")))
        }
    }

    fn is_broken(&self) -> bool {
        self.broken || self.local.is_broken()
    }
}

impl ResizableExecutor for PipelineLeader {
    fn resize_kv(&mut self, num_blocks: usize, block_size: usize) -> Result<(), ModelError> {
        self.send_all(&Command::ResizeKv {
            num_blocks,
            block_size,
        })
        .map_err(ModelError::Invalid)?;
        let local = self.local.resize_kv(num_blocks, block_size);
        for r in self.replies() {
            match r {
                Ok(Reply::Done) => {}
                Ok(Reply::Failed(why)) | Err(why) => return Err(ModelError::Invalid(why)),
                Ok(Reply::Output(_)) => {
                    return Err(ModelError::Invalid(
                        "a node answered a KV resize with a step's output".into(),
                    ))
                }
            }
        }
        local
    }

    /// Node 0's ranks: start-up sizes every node's KV cache from node 0's memory (stages
    /// hold near-equal shares of the weights); a node short of memory fails its resize.
    fn kv_block_bytes(&self, block_size: usize) -> Result<u64, ModelError> {
        self.local.kv_block_bytes(block_size)
    }
}

impl Drop for PipelineLeader {
    fn drop(&mut self) {
        // Best effort: the nodes also stop when the connection closes.
        let _ = self.send_all(&Command::Stop);
    }
}

/// What the headless loop's reader hands the stepping thread.
enum Job {
    Step(Batch),
    ResizeKv {
        num_blocks: usize,
        block_size: usize,
    },
}

/// Reads node 0's commands: steps and resizes go to `jobs`; masks are published to the step
/// waiting for them. Returns when node 0 stops or the connection ends; a step still
/// waiting for masks then gets none (its output goes nowhere).
fn read_commands(mut stream: TcpStream, jobs: Sender<Job>) -> Result<(), String> {
    let mut pending: Option<Arc<StepMasks>> = None;
    let result = loop {
        let frame = match read_frame(&mut stream) {
            Ok(Some(f)) => f,
            Ok(None) => break Err("node 0 closed the connection".to_string()),
            Err(e) => break Err(format!("reading from node 0: {e}")),
        };
        let job = match Command::decode(&frame) {
            Ok(Command::Stop) => break Ok(()),
            Ok(Command::Step {
                mut batch,
                masks_follow,
            }) => {
                if let Some(old) = pending.take() {
                    old.publish(Vec::new());
                }
                if masks_follow {
                    let m = Arc::new(StepMasks::default());
                    pending = Some(Arc::clone(&m));
                    batch.masks = Some(m);
                }
                Job::Step(batch)
            }
            Ok(Command::Masks(rows)) => {
                if let Some(m) = pending.take() {
                    m.publish(rows);
                }
                continue;
            }
            Ok(Command::ResizeKv {
                num_blocks,
                block_size,
            }) => Job::ResizeKv {
                num_blocks,
                block_size,
            },
            Err(e) => break Err(e.to_string()),
        };
        if jobs.send(job).is_err() {
            break Ok(());
        }
    };
    if let Some(m) = pending.take() {
        m.publish(Vec::new());
    }
    result
}

/// A node other than 0: runs its stage for every step node 0 sends over `link`, answering
/// each, until node 0 says stop (Ok) or the connection ends or the stage fails (Err).
pub fn serve_stage(
    link: NodeLink,
    mut stage: Box<dyn ResizableExecutor>,
) -> Result<(), ModelError> {
    let node = link.node_rank;
    let io = |e: std::io::Error| ModelError::Invalid(node_err(node, e));
    let mut out = link.stream.try_clone().map_err(io)?;
    out.set_nodelay(true).map_err(io)?;
    let (tx, rx): (Sender<Job>, Receiver<Job>) = channel();
    let reader = std::thread::Builder::new()
        .name("pipeline-commands".into())
        .spawn(move || read_commands(link.stream, tx))
        .map_err(io)?;
    while let Ok(job) = rx.recv() {
        let reply = match job {
            Job::Step(batch) => match stage.execute(&batch) {
                Ok(o) => Reply::Output(o),
                Err(e) => Reply::Failed(node_err(node, e.0)),
            },
            Job::ResizeKv {
                num_blocks,
                block_size,
            } => match stage.resize_kv(num_blocks, block_size) {
                Ok(()) => Reply::Done,
                Err(e) => Reply::Failed(node_err(node, e)),
            },
        };
        let failed = match &reply {
            Reply::Failed(why) => Some(why.clone()),
            _ => None,
        };
        write_frame(&mut out, &reply.encode()).map_err(io)?;
        if let Some(why) = failed.filter(|_| stage.is_broken()) {
            return Err(ModelError::Invalid(why));
        }
    }
    drop(rx);
    match reader.join() {
        Ok(r) => r.map_err(|e| ModelError::Invalid(node_err(node, e))),
        Err(_) => Err(ModelError::Invalid(node_err(node, "the reader panicked"))),
    }
}
