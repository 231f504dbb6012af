//! Incremental detokenization and stop-string checks.
//!
//! Byte-level BPE (Qwen's tokenizer) splits one Chinese character or emoji over several
//! tokens; decoding a prefix of them yields U+FFFD. As vLLM does, the detokenizer decodes a
//! short window of tokens twice — `[prefix_offset, read_offset)` and `[prefix_offset, end)`
//! — and emits the difference only once the longer text does not end in U+FFFD, so a broken
//! character is never sent. Decoding a window (not a token alone) also keeps whatever the
//! decoder does across token boundaries (leading spaces of SentencePiece-style tokens).
//!
//! Stop strings are searched in the text around the newly added part; the output is cut
//! before the stop string (or after it with `include_stop_str_in_output`). While streaming,
//! the tail of the text that could still turn into a stop string is held back.

use std::sync::Arc;

use tokenizers::Tokenizer;

/// Prompt tokens decoded before the first output token, for context (vLLM uses 5 too).
const PROMPT_CONTEXT_TOKENS: usize = 5;

#[derive(Debug, thiserror::Error)]
#[error("detokenization failed: {0}")]
pub struct DetokenizeError(pub String);

/// Per-request stop-string settings.
#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    pub stop: Vec<String>,
    pub include_stop_str_in_output: bool,
    /// Stop strings are not matched in the text of the first `min_tokens` tokens.
    pub min_tokens: usize,
}

pub struct IncrementalDetokenizer {
    tokenizer: Arc<Tokenizer>,
    skip_special_tokens: bool,
    /// The last few prompt tokens, then every decoded output token.
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// Output text so far (cut at a matched stop string).
    text: String,
    /// Bytes of `text` already handed out by `take_delta`.
    emitted: usize,
    stop: Vec<String>,
    include_stop: bool,
    max_stop_len: usize,
    min_tokens: usize,
    /// Output tokens seen (including a stop token that was not decoded).
    num_tokens: usize,
    /// No stop string may end at or before this byte of `text` (min_tokens).
    stop_check_floor: usize,
}

impl std::fmt::Debug for IncrementalDetokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncrementalDetokenizer")
            .field("text", &self.text)
            .field("emitted", &self.emitted)
            .field("prefix_offset", &self.prefix_offset)
            .field("read_offset", &self.read_offset)
            .finish_non_exhaustive()
    }
}

impl IncrementalDetokenizer {
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        prompt: &[u32],
        skip_special_tokens: bool,
        stop_cfg: StopStrings,
    ) -> Self {
        let ctx = &prompt[prompt.len().saturating_sub(PROMPT_CONTEXT_TOKENS)..];
        let mut ids = Vec::with_capacity(ctx.len() + 64);
        ids.extend_from_slice(ctx);
        // An empty stop string would match everywhere: it is ignored.
        let stop: Vec<String> = stop_cfg
            .stop
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        let max_stop_len = stop.iter().map(String::len).max().unwrap_or(0);
        Self {
            tokenizer,
            skip_special_tokens,
            prefix_offset: 0,
            read_offset: ids.len(),
            ids,
            text: String::new(),
            emitted: 0,
            stop,
            include_stop: stop_cfg.include_stop_str_in_output,
            max_stop_len,
            min_tokens: stop_cfg.min_tokens,
            num_tokens: 0,
            stop_check_floor: 0,
        }
    }

    /// The output text so far (stop string already cut).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The stop strings (indices returned by `push` point here).
    pub fn stop_strings(&self) -> &[String] {
        &self.stop
    }

    /// Adds one sampled token. `stop_terminated`: the token is EOS or a stop token id; its
    /// text is left out unless include_stop_str_in_output (as vLLM). Returns the index of a
    /// matched stop string; the text is then already cut.
    pub fn push(
        &mut self,
        token: u32,
        stop_terminated: bool,
    ) -> Result<Option<usize>, DetokenizeError> {
        self.num_tokens += 1;
        let prev_len = self.text.len();
        if !stop_terminated || self.include_stop {
            self.decode_next(token)?;
        }
        if self.num_tokens <= self.min_tokens {
            self.stop_check_floor = self.text.len();
            return Ok(None);
        }
        if self.stop.is_empty() || self.text.len() == prev_len {
            return Ok(None);
        }
        Ok(self.check_stop(prev_len.max(self.stop_check_floor)))
    }

    /// Decodes any tokens still held back (an incomplete character at the very end of the
    /// output): called when the sequence finishes for a reason other than a stop string.
    pub fn flush(&mut self) -> Result<(), DetokenizeError> {
        if self.read_offset >= self.ids.len() {
            return Ok(());
        }
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        if let Some(delta) = full.get(prefix.len()..) {
            self.text.push_str(delta);
        }
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(())
    }

    /// Text not yet handed out. While the request runs, a tail that might begin a stop
    /// string is kept back; once `finished`, everything goes.
    pub fn take_delta(&mut self, finished: bool) -> String {
        if self.emitted > self.text.len() {
            self.emitted = self.text.len();
        }
        let end = if finished {
            self.text.len()
        } else {
            self.text.len() - self.holdback()
        };
        if end <= self.emitted {
            return String::new();
        }
        let delta = self.text[self.emitted..end].to_string();
        self.emitted = end;
        delta
    }

    fn decode(&self, from: usize, to: usize) -> Result<String, DetokenizeError> {
        self.tokenizer
            .decode(&self.ids[from..to], self.skip_special_tokens)
            .map_err(|e| DetokenizeError(e.to_string()))
    }

    fn decode_next(&mut self, token: u32) -> Result<(), DetokenizeError> {
        self.ids.push(token);
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            // `get` rather than slicing: a decoder that rewrote the prefix must not panic.
            if let Some(delta) = full.get(prefix.len()..) {
                self.text.push_str(delta);
            }
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
        }
        Ok(())
    }

    /// Finds the earliest stop string that ends after byte `new_from`; cuts the text there.
    fn check_stop(&mut self, new_from: usize) -> Option<usize> {
        // A match must include new text, so it starts at most max_stop_len - 1 bytes earlier.
        let mut from = new_from.saturating_sub(self.max_stop_len.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let window = &self.text[from..];
        let mut best: Option<(usize, usize)> = None;
        for (i, s) in self.stop.iter().enumerate() {
            if let Some(pos) = window.find(s.as_str()) {
                let at = from + pos;
                if at + s.len() > new_from && best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, i));
                }
            }
        }
        let (at, i) = best?;
        let cut = if self.include_stop {
            at + self.stop[i].len()
        } else {
            at
        };
        self.text.truncate(cut);
        Some(i)
    }

    /// Bytes at the end of the text that are a proper prefix of some stop string.
    fn holdback(&self) -> usize {
        if self.stop.is_empty() || self.include_stop {
            return 0;
        }
        let tail_start = self.emitted;
        let tail = &self.text[tail_start..];
        let mut best = 0;
        for s in &self.stop {
            let max_k = (s.len() - 1).min(tail.len());
            for k in (best + 1..=max_k).rev() {
                if s.is_char_boundary(k) && tail.ends_with(&s[..k]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_executor::byte_level_test_tokenizer;

    fn tok() -> Arc<Tokenizer> {
        Arc::new(byte_level_test_tokenizer().unwrap())
    }

    fn ids(t: &Tokenizer, s: &str) -> Vec<u32> {
        t.encode(s, false).unwrap().get_ids().to_vec()
    }

    #[test]
    fn chinese_split_over_byte_tokens_never_breaks() {
        let t = tok();
        let toks = ids(&t, "你好, world 🙂!");
        assert!(toks.len() > 10, "byte tokens expected");
        let mut d = IncrementalDetokenizer::new(t.clone(), &[], true, StopStrings::default());
        let mut out = String::new();
        for &x in &toks {
            assert_eq!(d.push(x, false).unwrap(), None);
            let delta = d.take_delta(false);
            assert!(!delta.contains('\u{FFFD}'), "broken char in {delta:?}");
            out.push_str(&delta);
        }
        out.push_str(&d.take_delta(true));
        assert_eq!(out, "你好, world 🙂!");
    }

    #[test]
    fn skip_special_tokens() {
        let t = tok();
        let eos = t.token_to_id("<|im_end|>").unwrap();
        let mut toks = ids(&t, "ab");
        toks.push(eos);
        toks.extend(ids(&t, "c"));
        for (skip, want) in [(true, "abc"), (false, "ab<|im_end|>c")] {
            let mut d = IncrementalDetokenizer::new(t.clone(), &[], skip, StopStrings::default());
            for &x in &toks {
                d.push(x, false).unwrap();
            }
            assert_eq!(d.take_delta(true), want);
        }
    }

    fn run_stop(stop: &[&str], include: bool, text: &str) -> (String, Option<usize>, Vec<String>) {
        let t = tok();
        let mut d = IncrementalDetokenizer::new(
            t.clone(),
            &[],
            true,
            StopStrings {
                stop: stop.iter().map(|s| s.to_string()).collect(),
                include_stop_str_in_output: include,
                min_tokens: 0,
            },
        );
        let mut deltas = vec![];
        let mut hit = None;
        for &x in &ids(&t, text) {
            hit = d.push(x, false).unwrap();
            let delta = d.take_delta(hit.is_some());
            deltas.push(delta);
            if hit.is_some() {
                break;
            }
        }
        if hit.is_none() {
            deltas.push(d.take_delta(true));
        }
        (deltas.concat(), hit, deltas)
    }

    #[test]
    fn stop_string_split_across_tokens_is_cut_and_never_streamed() {
        let (out, hit, deltas) = run_stop(&["STOP"], false, "abc STOP def");
        assert_eq!(out, "abc ");
        assert_eq!(hit, Some(0));
        assert!(deltas.iter().all(|d| !d.contains('S')));
        let (out, _, _) = run_stop(&["STOP"], true, "abc STOP def");
        assert_eq!(out, "abc STOP");
        // A prefix of a stop string that does not complete is released.
        let (out, hit, _) = run_stop(&["STOP"], false, "ST STO xyz");
        assert_eq!(out, "ST STO xyz");
        assert_eq!(hit, None);
        // Earliest match wins, whatever the list order.
        let (out, hit, _) = run_stop(&["zz", "b"], false, "abzz");
        assert_eq!((out.as_str(), hit), ("a", Some(1)));
    }

    #[test]
    fn chinese_stop_string() {
        let (out, hit, deltas) = run_stop(&["世界"], false, "你好世界!");
        assert_eq!(out, "你好");
        assert_eq!(hit, Some(0));
        assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')));
        let (out, _, _) = run_stop(&["世界"], true, "你好世界!");
        assert_eq!(out, "你好世界");
    }

    #[test]
    fn stop_token_text_left_out_unless_included() {
        let t = tok();
        let eos = t.token_to_id("<|im_end|>").unwrap();
        for (include, want) in [(false, "hi"), (true, "hi<|im_end|>")] {
            let mut d = IncrementalDetokenizer::new(
                t.clone(),
                &[],
                false,
                StopStrings {
                    include_stop_str_in_output: include,
                    ..Default::default()
                },
            );
            for &x in &ids(&t, "hi") {
                d.push(x, false).unwrap();
            }
            d.push(eos, true).unwrap();
            assert_eq!(d.take_delta(true), want);
        }
    }

    #[test]
    fn flush_emits_incomplete_tail() {
        let t = tok();
        let bytes = ids(&t, "é");
        assert_eq!(bytes.len(), 2);
        let mut d = IncrementalDetokenizer::new(t, &[], true, StopStrings::default());
        d.push(bytes[0], false).unwrap();
        assert_eq!(d.take_delta(false), "");
        d.flush().unwrap();
        assert_eq!(d.take_delta(true), "\u{FFFD}");
    }
}
