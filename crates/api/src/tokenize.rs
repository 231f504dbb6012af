//! Tokenizing request text with the work bounded by the context length: a text that cannot
//! fit is refused after tokenizing little more than a context's worth of it, so a huge
//! prompt costs neither seconds of CPU nor a memory spike.

use tokenizers::{Encoding, Tokenizer};

use crate::error::ApiError;

/// Texts up to this many bytes are tokenized at once; longer ones are first counted in
/// pieces of this size, stopping as soon as they cannot fit.
const PIECE_BYTES: usize = 64 << 10;
/// Tokens one cut between pieces may add to (or, conservatively, take from) the count: the
/// two halves of a word split apart, or of a special token.
const SLACK_PER_CUT: usize = 8;

/// Where to cut `text` at or before `at`: before a whitespace that follows a non-space (a
/// boundary the pre-tokenizer makes anyway) within the last KiB, else at a char boundary.
fn cut_before(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = text.as_bytes();
    let floor = end.saturating_sub(1024).max(1);
    (floor..end)
        .rev()
        .find(|&i| bytes[i].is_ascii_whitespace() && !bytes[i - 1].is_ascii_whitespace())
        .unwrap_or(end)
}

/// vLLM's error for a prompt of `count` tokens that leaves no room in the context.
pub(crate) fn prompt_too_long(
    param: &str,
    max_len: usize,
    count: impl std::fmt::Display,
) -> ApiError {
    ApiError {
        code: Some("context_length_exceeded"),
        ..ApiError::invalid(
            param,
            format!(
                "This model's maximum context length is {max_len} tokens. However, your request has {count} input tokens. Please reduce the length of the input."
            ),
        )
    }
}

/// The encoding of `text`, unless it certainly has more than `max_len` tokens: then a
/// `context_length_exceeded` error naming `param`, found without tokenizing all of it.
pub(crate) fn encode_bounded(
    tokenizer: &Tokenizer,
    text: &str,
    add_special_tokens: bool,
    max_len: usize,
    param: &str,
) -> Result<Encoding, ApiError> {
    let failed = |e| ApiError::invalid(param, format!("cannot tokenize the prompt: {e}"));
    if text.len() > PIECE_BYTES {
        let (mut start, mut counted, mut cuts) = (0, 0usize, 0usize);
        while start < text.len() {
            let end = cut_before(text, start + PIECE_BYTES);
            let end = if end <= start { text.len() } else { end };
            counted += tokenizer
                .encode(&text[start..end], false)
                .map_err(failed)?
                .len();
            let at_least = counted.saturating_sub(cuts * SLACK_PER_CUT);
            if at_least > max_len {
                let count = format!(
                    "at least {at_least} (counted in the first {end} of its {} bytes)",
                    text.len()
                );
                return Err(prompt_too_long(param, max_len, count));
            }
            start = end;
            cuts += 1;
        }
    }
    tokenizer.encode(text, add_special_tokens).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/tiny-qwen3/tokenizer.json"
        );
        Tokenizer::from_file(path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn cuts_fall_before_whitespace_on_char_boundaries() {
        let t = "héllo wörld  again";
        for at in 0..=t.len() {
            let c = cut_before(t, at);
            assert!(t.is_char_boundary(c) && c <= at, "{at} -> {c}");
        }
        assert_eq!(cut_before(t, 9), 6);
    }

    #[test]
    fn a_text_that_fits_gets_its_exact_encoding() {
        let tok = tokenizer();
        // Longer than one piece, so it is counted in pieces first.
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(3000);
        let exact = tok
            .encode(text.as_str(), false)
            .map(|e| e.len())
            .unwrap_or(0);
        let got = encode_bounded(&tok, &text, false, exact, "prompt").map(|e| e.len());
        assert_eq!(got, Ok(exact));
    }

    #[test]
    fn a_huge_text_is_refused_after_a_context_worth_of_work() {
        let tok = tokenizer();
        let text = "word ".repeat(4 << 20); // 20 MiB
        let start = std::time::Instant::now();
        let e = encode_bounded(&tok, &text, true, 1000, "prompt").expect_err("too long");
        // Generous: one piece of 64 KiB is a few ms; the whole text would be tens of seconds.
        assert!(start.elapsed().as_secs_f64() < 2.0, "{:?}", start.elapsed());
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert!(e.message.contains("at least"), "{}", e.message);
    }
}
