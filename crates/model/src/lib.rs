//! Qwen3 model: config, weights, forward pass, executor, and loading it onto devices.

// The one unsafe call is the weights' mmap (`weights.rs`), allowed where it is made.
#![deny(unsafe_code)]

pub mod config;
pub mod error;
pub mod executor;
pub mod load;
mod load_ascend;
mod load_cpu;
pub mod load_stage;
pub mod modelslim;
pub mod pipeline;
pub mod pipeline_exec;
pub mod pipeline_node;
pub mod pipeline_wire;
pub mod profile;
pub mod prompt_logprobs;
pub mod quant_config;
pub mod quant_unpack;
pub mod qwen3;
pub mod rendezvous;
pub mod rope;
pub mod synthetic;
pub mod tp;
pub mod weights;

pub use error::ModelError;
pub use executor::{ResizableExecutor, SingleExecutor, Worker};
pub use qwen3::{Qwen3, Shard, WeightDType};
