//! The engine: request lifecycle, scheduler, paged KV blocks with prefix caching.

pub mod batch;

pub use batch::{
    Batch, Executor, ExecutorError, NewSeq, ScheduledSeq, SeqId, SeqOutput, StepOutput,
};
