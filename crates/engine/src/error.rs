//! Errors the engine reports to its callers.

/// How the API layer should treat an [`EngineError`] (the engine knows nothing of HTTP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request can never be served as given (HTTP 400).
    InvalidRequest,
    /// Try again later (HTTP 429).
    Overloaded,
    /// The engine is shutting down or dead (HTTP 503).
    Unavailable,
    /// Start-up or internal failure (HTTP 500).
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(
        "this model's maximum context length is {max_model_len} tokens, but {} tokens were \
         requested ({prompt_tokens} in the prompt, {max_tokens} for the completion); reduce \
         the prompt or max_tokens",
        prompt_tokens + max_tokens
    )]
    ContextLengthExceeded {
        prompt_tokens: usize,
        max_tokens: usize,
        max_model_len: usize,
    },
    #[error(
        "the request may need {needed_tokens} tokens of KV cache, but the whole cache holds \
         {capacity_tokens}; reduce the prompt or max_tokens"
    )]
    ExceedsKvCache {
        needed_tokens: usize,
        capacity_tokens: usize,
    },
    #[error(
        "the prompt has {prompt_tokens} tokens, more than max_num_batched_tokens \
         ({max_num_batched_tokens}), and chunked prefill is disabled"
    )]
    PromptExceedsBatch {
        prompt_tokens: usize,
        max_num_batched_tokens: usize,
    },
    #[error("too many requests are waiting (limit {limit}); retry later")]
    QueueFull { limit: usize },
    /// One request asks for more sequences than the waiting queue can ever hold.
    #[error(
        "this request needs {count} sequences (prompts × n), more than the server's \
         --max-waiting-requests ({limit}) allows at once; send fewer prompts or a smaller n"
    )]
    TooManySequences { count: usize, limit: usize },
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("the engine is not running")]
    EngineDead,
    #[error("could not start the engine thread: {0}")]
    Spawn(#[source] std::io::Error),
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::InvalidRequest(_)
            | EngineError::ContextLengthExceeded { .. }
            | EngineError::ExceedsKvCache { .. }
            | EngineError::PromptExceedsBatch { .. }
            | EngineError::TooManySequences { .. } => ErrorKind::InvalidRequest,
            EngineError::QueueFull { .. } => ErrorKind::Overloaded,
            EngineError::ShuttingDown | EngineError::EngineDead => ErrorKind::Unavailable,
            EngineError::InvalidConfig(_) | EngineError::Spawn(_) => ErrorKind::Internal,
        }
    }
}
