//! One pipeline-parallel step on one rank: receive the previous stage's hidden states, run
//! this stage's layers, hand the result to the next stage or, on the last, compute logits.

use qwen3_backend::comm::Communicator;
use qwen3_backend::{Backend, BackendError};
use qwen3_step::batch::SeqPromptLogprobs;
use qwen3_step::Batch;

use crate::error::ModelError;
use crate::executor::{StepArrays, Worker};
use crate::prompt_logprobs::{self, PromptSpan};
use crate::qwen3::{StageHidden, StageOut};

/// The last stage's logits of the sampling rows, and the prompt logprobs.
pub type StageLogits<B> = (<B as Backend>::Tensor, Vec<SeqPromptLogprobs>);

/// A rank's point-to-point link to the same tensor-parallel rank of a neighbouring stage.
/// Each rank of a stage holds the whole (all-reduced) hidden states, so each talks to its
/// own peer, as vLLM's pipeline groups pair ranks of equal TP rank.
pub trait StageLink<B: Backend>: Send + Sync {
    /// Hands `t` to the peer stage; paired, in order, with its [`StageLink::recv`].
    fn send(&self, backend: &B, t: &B::Tensor) -> Result<(), BackendError>;
    /// Receives a tensor of `shape` from the peer stage.
    fn recv(&self, backend: &B, shape: &[usize]) -> Result<B::Tensor, BackendError>;
    /// Waits until this rank's sends are done: a stage that hands on its hidden states reads
    /// no result back, so without this its steps would queue without bound, and a failed
    /// transfer would surface a step late.
    fn wait_sent(&self, backend: &B) -> Result<(), BackendError>;
}

/// A rank's links to the stages before and after it (None at the ends of the pipeline, and
/// both None without pipeline parallelism).
pub struct StageLinks<B: Backend> {
    pub prev: Option<Box<dyn StageLink<B>>>,
    pub next: Option<Box<dyn StageLink<B>>>,
}

impl<B: Backend> StageLinks<B> {
    /// No pipeline: the rank runs the whole model.
    pub fn none() -> Self {
        Self {
            prev: None,
            next: None,
        }
    }
}

impl<B: Backend> Worker<B> {
    /// Runs the step on this rank's stage: the logits of the sampling rows and the prompt
    /// logprobs of `spans` on the last stage (as [`Worker::step`]), None on the others,
    /// which hand their hidden states on through `links.next`.
    pub fn stage_step(
        &mut self,
        links: &StageLinks<B>,
        batch: &Batch,
        arrays: &mut StepArrays,
        spans: &[PromptSpan],
        emit: bool,
        comm: &dyn Communicator<B>,
    ) -> Result<Option<StageLogits<B>>, ModelError> {
        if links.prev.is_none() && links.next.is_none() {
            return self.step(batch, arrays, spans, emit, comm).map(Some);
        }
        arrays.refill(batch);
        let (model, backend) = (&self.model, &self.backend);
        let meta = arrays.meta(batch, &model.rope);
        let input = match &links.prev {
            None => None,
            Some(prev) => {
                let shape = [batch.num_tokens(), model.config.hidden_size];
                // The order the previous stage sends them in.
                let residual = prev.recv(backend, &shape)?;
                let mlp_out = prev.recv(backend, &shape)?;
                Some(StageHidden { residual, mlp_out })
            }
        };
        match model.stage_forward(backend, comm, &meta, &mut self.kv, input)? {
            StageOut::Hidden(h) => {
                let next = links.next.as_ref().ok_or_else(|| {
                    ModelError::Invalid(format!(
                        "layers {:?} are not the last stage, but no next stage is linked",
                        model.stage
                    ))
                })?;
                next.send(backend, &h.residual)?;
                next.send(backend, &h.mlp_out)?;
                next.wait_sent(backend)?;
                Ok(None)
            }
            StageOut::Normed(hidden) => {
                let lps = prompt_logprobs::compute(model, backend, comm, &hidden, spans, emit)?;
                let logits = model.logits(backend, comm, &hidden, arrays.sample_rows())?;
                Ok(Some((logits, lps)))
            }
        }
    }
}
