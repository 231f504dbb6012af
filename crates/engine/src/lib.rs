//! The engine: request lifecycle, scheduler, paged KV blocks with prefix caching,
//! incremental detokenization, stop checks and metrics.
//!
//! - [`EngineHandle`] is what the API layer uses: `submit` a tokenized [`EngineRequest`],
//!   read its [`RequestStream`], `abort`, `stats`, `shutdown`.
//! - [`EngineCore`] is the same engine driven step by step on the caller's thread (tests).
//! - [`Scheduler`], [`KvCacheManager`] and [`BlockPool`] are the parts, public for benches
//!   and for anyone who wants to drive them directly.
//! - [`fake_executor::FakeExecutor`] is a deterministic fake model that checks every batch.

#![forbid(unsafe_code)]

pub mod block_pool;
pub mod detokenizer;
pub mod engine;
pub mod error;
pub mod fake_executor;
pub mod handle;
pub mod kv_cache_manager;
pub mod metrics;
pub mod scheduler;
mod step_thread;
mod structured;

pub use block_pool::{BlockPool, NULL_BLOCK};
pub use engine::{
    validate_request, EngineConfig, EngineCore, EngineRequest, FinishReason, OutputSink, Phase,
    PhaseSpan, RequestOutput, StopReason, TokenLogprob,
};
pub use error::{EngineError, ErrorKind};
pub use handle::{EngineHandle, RequestStream, Reservation};
pub use kv_cache_manager::KvCacheManager;
pub use metrics::{EngineStats, FinishCounts, Histogram};
/// The step contract lives in `qwen3-step`; `qwen3_engine::batch::…` keeps naming it.
pub use qwen3_step as batch;
pub use qwen3_step::{
    Batch, Executor, ExecutorError, NewSeq, ScheduledSeq, SeqId, SeqOutput, StepOutput,
};
pub use scheduler::{Scheduler, SchedulerConfig, SeqParams};

#[cfg(test)]
mod tests {
    fn assert_shared<T: Clone + Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn handle_types_are_thread_safe() {
        assert_shared::<crate::EngineHandle>();
        assert_send::<crate::RequestStream>();
        assert_send::<crate::EngineCore>();
    }
}
