//! OpenAI-compatible HTTP API: routes, request types, SSE, auth, chat templates, reasoning
//! and tool-call parsing, Prometheus metrics.

pub mod error;
pub mod metrics;
pub mod openai;
pub mod parsers;
pub mod server;
pub mod template;

pub use server::{router, serve, ApiConfig, AppState, SamplingDefaults};
pub use template::ChatTemplate;
