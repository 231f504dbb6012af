//! The step contract: what the engine hands an executor for one step ([`Batch`], with each
//! new request's [`SamplingParams`]) and what comes back ([`StepOutput`] of [`Sampled`]
//! tokens). The engine and the executors (the model on a device, or a fake) both depend on
//! this crate and on nothing of each other's.

#![forbid(unsafe_code)]

pub mod batch;
pub mod sampling;
pub mod structured;

pub use batch::{
    Batch, Executor, ExecutorError, NewSeq, ScheduledSeq, SeqId, SeqOutput, StepOutput,
};
pub use sampling::{PromptLogprob, Sampled, SamplingParams};
pub use structured::{mask_allows, ConstraintKind, StepMasks, StructuredSpec, TokenBitmask};
