//! Structured-output constraints as plain data: what a request asks the output to obey
//! ([`StructuredSpec`]), and one step's allowed-token bitmasks ([`StepMasks`]), which the
//! engine fills while the forward pass runs and the sampler waits for.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

/// What the output must match, as the API received it (compiled by `qwen3-guided`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConstraintKind {
    /// A JSON schema, serialized.
    JsonSchema(String),
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A regular expression the whole output matches.
    Regex(String),
    /// The output is exactly one of these strings.
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect; `%json {...}` embeds a schema).
    Lark(String),
}

/// A request's structured-output constraint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StructuredSpec {
    pub kind: ConstraintKind,
    /// When set, output is unconstrained until this token is sampled (a reasoning model's
    /// `</think>`), and constrained from the next token on.
    pub after_token: Option<u32>,
}

/// One sequence's allowed tokens: bit `t % 32` of word `t / 32` set when token `t` may be
/// sampled (llguidance's and the NPU upload's layout).
pub type TokenBitmask = Arc<[u32]>;

/// Whether token `t` is allowed by `mask` (tokens past the mask's end are not).
pub fn mask_allows(mask: &[u32], t: u32) -> bool {
    mask.get((t / 32) as usize)
        .is_some_and(|w| w & (1 << (t % 32)) != 0)
}

/// One step's masks, one entry per `Batch::seqs` row (None: that row is unconstrained).
/// Published once, possibly after the executor has started; the sampler blocks in
/// [`StepMasks::wait`] until then.
#[derive(Debug, Default)]
pub struct StepMasks {
    rows: OnceLock<Vec<Option<TokenBitmask>>>,
}

impl StepMasks {
    /// Sets the masks; a second call is ignored (the first one wins).
    pub fn publish(&self, rows: Vec<Option<TokenBitmask>>) {
        let _ = self.rows.set(rows);
    }

    /// The masks, once published.
    pub fn wait(&self) -> &[Option<TokenBitmask>] {
        self.rows.wait()
    }

    /// Row `i`'s mask, once published.
    pub fn row(&self, i: usize) -> Option<&[u32]> {
        self.wait().get(i).and_then(|m| m.as_deref())
    }
}
