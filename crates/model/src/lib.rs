//! Qwen3 model: config, weights, forward pass, executor.
