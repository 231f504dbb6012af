//! Structured outputs with llguidance: a [`Compiler`] turns a request's
//! [`qwen3_step::StructuredSpec`] into a grammar (bounded in size and work, cached by
//! content), and each sequence gets a [`SeqMatcher`] that advances on accepted tokens and
//! yields the next step's allowed-token bitmask. [`tools`] builds the grammar that forces a
//! hermes `<tool_call>` from the tools' parameter schemas.

#![forbid(unsafe_code)]

mod compiler;
mod matcher;
mod tok_env;
pub mod tools;

pub use compiler::{CompiledGrammar, Compiler, CompilerLimits};
pub use matcher::SeqMatcher;
pub use qwen3_step::{ConstraintKind, StructuredSpec, TokenBitmask};
pub use tok_env::tok_env;

use std::path::Path;
use std::sync::Arc;

/// A compiler for a model whose tokenizer is `tokenizer_json` (the file `tokenizer` was
/// loaded from) and whose logits have `model_vocab` rows; `eos_token_ids` end generation.
pub fn compiler_for(
    tokenizer_json: &Path,
    tokenizer: Arc<tokenizers::Tokenizer>,
    model_vocab: usize,
    eos_token_ids: &[u32],
    limits: CompilerLimits,
) -> Result<Compiler, GuidedError> {
    let text = std::fs::read_to_string(tokenizer_json)
        .map_err(|e| GuidedError::Tokenizer(format!("{}: {e}", tokenizer_json.display())))?;
    Compiler::new(
        tok_env(&text, tokenizer, model_vocab, eos_token_ids)?,
        limits,
    )
}

/// [`compiler_for`] with the token table built on a thread of its own (see
/// [`Compiler::in_background`]): start-up does not wait for it, the first constrained
/// request does.
pub fn compiler_in_background(
    tokenizer_json: std::path::PathBuf,
    tokenizer: Arc<tokenizers::Tokenizer>,
    model_vocab: usize,
    eos_token_ids: Vec<u32>,
    limits: CompilerLimits,
    on_ready: impl FnOnce(Result<(), &str>, std::time::Duration) + Send + 'static,
) -> Compiler {
    Compiler::in_background(
        model_vocab,
        limits,
        move || {
            let text = std::fs::read_to_string(&tokenizer_json).map_err(|e| {
                GuidedError::Tokenizer(format!("{}: {e}", tokenizer_json.display()))
            })?;
            tok_env(&text, tokenizer, model_vocab, &eos_token_ids)
        },
        on_ready,
    )
}

/// Why a constraint could not be compiled or followed.
#[derive(Debug, thiserror::Error)]
pub enum GuidedError {
    /// The tokenizer could not be turned into llguidance's token table.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The schema, regex, choice list or grammar is invalid, unsupported or too large.
    #[error("{0}")]
    Invalid(String),
    /// The matcher refused a token or could not compute a mask (the request must end).
    #[error("structured output failed: {0}")]
    Matcher(String),
}
