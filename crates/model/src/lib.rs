//! Qwen3 model: config, weights, forward pass, executor.

pub mod build;
pub mod build_ascend;
pub mod config;
pub mod error;
pub mod executor;
pub mod prompt_logprobs;
pub mod quant;
pub mod quantized;
pub mod qwen3;
pub mod rope;
pub mod synthetic;
pub mod tp;
pub mod weights;

pub use executor::{SingleExecutor, Worker};
pub use qwen3::{ModelError, Qwen3, Shard, WeightDType};
