//! One sequence's matcher: waits for the reasoning end token when asked to, then advances on
//! every accepted token and gives the allowed-token bitmask for the next one.

use llguidance::Matcher;
use qwen3_step::TokenBitmask;

use crate::{CompiledGrammar, GuidedError};

pub struct SeqMatcher {
    matcher: Matcher,
    /// Unconstrained until this token is accepted.
    waiting_for: Option<u32>,
    words: usize,
}

impl SeqMatcher {
    pub(crate) fn new(
        grammar: &CompiledGrammar,
        after_token: Option<u32>,
        vocab_size: usize,
    ) -> Result<Self, GuidedError> {
        let matcher = Matcher::new(Ok(grammar.fresh_parser()));
        if let Some(e) = matcher.get_error() {
            return Err(GuidedError::Matcher(e));
        }
        Ok(Self {
            matcher,
            waiting_for: after_token,
            words: vocab_size.div_ceil(32),
        })
    }

    /// Whether the next token is constrained (false while waiting for the reasoning end).
    pub fn is_active(&self) -> bool {
        self.waiting_for.is_none()
    }

    /// Takes an accepted token: while waiting, watches for the reasoning end; after, the
    /// grammar must allow it.
    pub fn advance(&mut self, token: u32) -> Result<(), GuidedError> {
        if let Some(t) = self.waiting_for {
            if t == token {
                self.waiting_for = None;
            }
            return Ok(());
        }
        // EOS ends the output where the grammar accepts; llguidance need not consume it.
        if self.is_eos(token) && (self.matcher.is_stopped() || self.is_accepting()) {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| GuidedError::Matcher(format!("token {token} was refused: {e:#}")))
    }

    /// Whether the grammar is complete here (EOS is allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// The allowed tokens for the next step (None while unconstrained). EOS is in it only
    /// where the grammar accepts.
    pub fn mask(&mut self) -> Result<Option<TokenBitmask>, GuidedError> {
        if !self.is_active() {
            return Ok(None);
        }
        let vob = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| GuidedError::Matcher(format!("{e:#}")))?;
        let words = vob.as_slice();
        let mut mask = vec![0u32; self.words];
        let n = words.len().min(self.words);
        mask[..n].copy_from_slice(&words[..n]);
        if mask.iter().all(|&w| w == 0) {
            return Err(GuidedError::Matcher(
                "no token can continue the output".into(),
            ));
        }
        Ok(Some(mask.into()))
    }

    fn is_eos(&self, token: u32) -> bool {
        self.matcher
            .tok_env()
            .map(|env| env.tok_trie().eos_tokens().contains(&token))
            .unwrap_or(false)
    }
}
