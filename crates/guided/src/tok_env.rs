//! The tokenizer as llguidance sees it: every token's bytes (read from `tokenizer.json` by
//! llguidance itself) in a token trie, padded to the model's vocabulary, and tokenization
//! through our own `tokenizers` (toktrie_hf_tokenizers would pull a second, older copy).

use std::sync::Arc;

use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use tokenizers::Tokenizer;

use crate::GuidedError;

struct Env {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |s| {
            match self.tokenizer.encode_fast(s, false) {
                Ok(enc) => enc.get_ids().to_vec(),
                // Only grammar literals come here; the trie's greedy split is still exact.
                Err(_) => self.trie.greedy_tokenize(s.as_bytes()),
            }
        })
    }
}

/// Builds the token environment for a model whose logits have `model_vocab` rows (at least
/// the tokenizer's size; the extra rows become tokens no grammar ever allows).
pub fn tok_env(
    tokenizer_json: &str,
    tokenizer: Arc<Tokenizer>,
    model_vocab: usize,
    eos_token_ids: &[u32],
) -> Result<TokEnv, GuidedError> {
    let bad = |m: String| GuidedError::Tokenizer(m);
    let json: serde_json::Value =
        serde_json::from_str(tokenizer_json).map_err(|e| bad(e.to_string()))?;
    let mut words =
        llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| bad(format!("{e:#}")))?;
    if words.len() > model_vocab {
        return Err(bad(format!(
            "the tokenizer has {} tokens, more than the model's {model_vocab} logits",
            words.len()
        )));
    }
    // Unnamed rows (holes in the id space, the model's padding rows) become special tokens
    // that no text matches, so no grammar allows them.
    let placeholder = |id: usize| {
        let mut w = format!(".<[{id}]>").into_bytes();
        w[0] = TokTrie::SPECIAL_TOKEN_MARKER;
        w
    };
    for (id, w) in words.iter_mut().enumerate() {
        if w.is_empty() {
            *w = placeholder(id);
        }
    }
    while words.len() < model_vocab {
        words.push(placeholder(words.len()));
    }
    let Some((&eos, _)) = eos_token_ids.split_first() else {
        return Err(bad("no EOS token id is known".into()));
    };
    if let Some(&t) = eos_token_ids.iter().find(|&&t| t as usize >= model_vocab) {
        return Err(bad(format!("EOS token id {t} is outside the vocabulary")));
    }
    let info = TokRxInfo::new(model_vocab as u32, eos);
    let mut trie = TokTrie::from(&info, &words);
    if eos_token_ids.len() > 1 {
        trie = trie.with_eos_tokens(eos_token_ids);
    }
    Ok(Arc::new(Env { trie, tokenizer }))
}
