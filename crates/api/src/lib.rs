//! OpenAI-compatible HTTP API: routes, request and response types, SSE, auth, chat
//! templates, Qwen3 reasoning and hermes tool-call parsing, Prometheus metrics (the engine's
//! and the NPUs').
//!
//! The binary builds an [`AppState`] (config, engine handle, tokenizer, chat template) and
//! calls [`serve`]`(listener, `[`router`]`(state), shutdown)`.

#![forbid(unsafe_code)]

pub mod chat_template;
pub mod conn;
pub mod error;
pub mod health;
pub mod metrics;
pub mod npu;
pub mod openai;
pub mod openapi;
pub mod reasoning;
mod routes;
pub mod server;
mod tokenize;
pub mod tool_parser;

pub use chat_template::ChatTemplate;
pub use conn::{serve_with, ConnLimits};
pub use error::ApiError;
pub use health::Health;
pub use npu::{NpuSample, NpuTelemetry, ProcessMemory};
pub use openai::SamplingDefaults;
pub use server::{router, serve, ApiConfig, AppState};
