//! Qwen3's reasoning parser (vLLM's `--reasoning-parser qwen3`): splits `<think>…</think>`
//! from the answer, for whole outputs and incrementally for streams.
//!
//! Where the output starts matters. Qwen3 writes `<think>` itself, unless the chat template
//! already put it at the end of the prompt (the thinking-only 2507 models do); with
//! `enable_thinking=false` the template writes an empty, closed think block and the output is
//! all answer. So a parser starts "inside thinking" when the prompt leaves a `<think>` open.
//!
//! Whole outputs follow vLLM's qwen3 parser: text before `</think>` is reasoning (a leading
//! `<think>` dropped), text after it is content (`None` when empty); without `</think>` the
//! whole text is content — except when the prompt opened the think block, where an output cut
//! short while thinking is all reasoning (as the stream reported it).

pub const THINK_START: &str = "<think>";
pub const THINK_END: &str = "</think>";

/// Whether a rendered prompt leaves a think block open for the model to continue: it ends
/// with `<think>` (a `<think>` quoted in a user message earlier does not count).
pub fn prompt_opens_think(prompt: &str) -> bool {
    prompt.trim_end().ends_with(THINK_START)
}

/// `(reasoning, content)` of a whole output.
pub fn split_reasoning(text: &str, prompt_opens: bool) -> (Option<String>, Option<String>) {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    match text.find(THINK_END) {
        Some(end) => {
            let before = &text[..end];
            let reasoning = before.strip_prefix(THINK_START).unwrap_or(before);
            (
                Some(reasoning.to_string()),
                non_empty(&text[end + THINK_END.len()..]),
            )
        }
        None if prompt_opens => (
            Some(text.strip_prefix(THINK_START).unwrap_or(text).to_string()),
            None,
        ),
        None => (None, Some(text.to_string())),
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `tag` (a tag that may
/// still be arriving).
pub fn partial_tag_len(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| tag.is_char_boundary(n) && text.ends_with(&tag[..n]))
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing decided yet: the output may be starting with `<think>`.
    Start,
    Reasoning,
    Content,
}

/// New text of one stream step, split.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReasoningDelta {
    pub reasoning: String,
    pub content: String,
}

/// The streaming parser. Text that may be the start of a tag is held back until the next
/// piece (or [`ReasoningParser::finish`]) resolves it, so tags never leak, however the
/// detokenizer splits them.
#[derive(Debug, Clone)]
pub struct ReasoningParser {
    state: State,
    prompt_opens: bool,
    held: String,
}

impl ReasoningParser {
    pub fn new(prompt_opens: bool) -> Self {
        Self {
            state: State::Start,
            prompt_opens,
            held: String::new(),
        }
    }

    /// Whether the stream is past `</think>` (or never had reasoning).
    pub fn in_content(&self) -> bool {
        self.state == State::Content
    }

    pub fn push(&mut self, piece: &str) -> ReasoningDelta {
        let mut out = ReasoningDelta::default();
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(piece);
        loop {
            match self.state {
                State::Start => {
                    if let Some(rest) = buf.strip_prefix(THINK_START) {
                        buf = rest.to_string();
                        self.state = State::Reasoning;
                    } else if THINK_START.starts_with(buf.as_str()) {
                        self.held = buf; // "<thi…": wait for more
                        return out;
                    } else {
                        self.state = if self.prompt_opens {
                            State::Reasoning
                        } else {
                            State::Content
                        };
                    }
                }
                State::Reasoning => {
                    if let Some(end) = buf.find(THINK_END) {
                        out.reasoning.push_str(&buf[..end]);
                        buf = buf[end + THINK_END.len()..].to_string();
                        self.state = State::Content;
                    } else {
                        let keep = partial_tag_len(&buf, THINK_END);
                        out.reasoning.push_str(&buf[..buf.len() - keep]);
                        self.held = buf[buf.len() - keep..].to_string();
                        return out;
                    }
                }
                State::Content => {
                    out.content.push_str(&buf);
                    return out;
                }
            }
        }
    }

    /// Flushes what was held back at the end of the output.
    pub fn finish(&mut self) -> ReasoningDelta {
        let held = std::mem::take(&mut self.held);
        let mut out = ReasoningDelta::default();
        match self.state {
            State::Reasoning => out.reasoning = held,
            State::Content => out.content = held,
            State::Start if self.prompt_opens => {
                self.state = State::Reasoning;
                out.reasoning = held;
            }
            State::Start => {
                self.state = State::Content;
                out.content = held;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams `text` in pieces of `step` chars; returns (reasoning, content).
    fn stream(text: &str, step: usize, prompt_opens: bool) -> (String, String) {
        let mut p = ReasoningParser::new(prompt_opens);
        let chars: Vec<char> = text.chars().collect();
        let (mut r, mut c) = (String::new(), String::new());
        for piece in chars.chunks(step) {
            let d = p.push(&piece.iter().collect::<String>());
            assert!(
                !d.reasoning.contains("think>") && !d.content.contains("think>"),
                "{d:?}"
            );
            r.push_str(&d.reasoning);
            c.push_str(&d.content);
        }
        let d = p.finish();
        r.push_str(&d.reasoning);
        c.push_str(&d.content);
        (r, c)
    }

    #[test]
    fn whole_outputs_as_vllm() {
        let s = |r: Option<&str>, c: Option<&str>| (r.map(str::to_string), c.map(str::to_string));
        assert_eq!(
            split_reasoning("<think>\nhmm\n</think>\n\nYes.", false),
            s(Some("\nhmm\n"), Some("\n\nYes."))
        );
        assert_eq!(split_reasoning("plain", false), s(None, Some("plain")));
        assert_eq!(
            split_reasoning("<think>cut short", false),
            s(None, Some("<think>cut short"))
        );
        assert_eq!(
            split_reasoning("<think>done</think>", false),
            s(Some("done"), None)
        );
        // The prompt opened the block: no <think> in the output.
        assert_eq!(
            split_reasoning("idea</think>answer", true),
            s(Some("idea"), Some("answer"))
        );
        assert_eq!(
            split_reasoning("cut short", true),
            s(Some("cut short"), None)
        );
    }

    #[test]
    fn streams_agree_with_whole_outputs() {
        for text in [
            "<think>\nLet me think: 2<3.\n</think>\n\nAnswer <b>bold</b> 你好",
            "no reasoning here, but a < sign",
            "<think></think>",
            "<thin",
            "<",
            "",
            "<think>\n\n</think>\n\n",
        ] {
            for step in [1, 2, 3, 5, 100] {
                let (r, c) = stream(text, step, false);
                let (wr, wc) = split_reasoning(text, false);
                if text.contains(THINK_END) {
                    assert_eq!(
                        (Some(r), c),
                        (wr, wc.unwrap_or_default()),
                        "{text:?} step {step}"
                    );
                } else {
                    assert_eq!((r.as_str(), c.as_str()), ("", text), "{text:?} step {step}");
                }
            }
        }
        for step in [1, 4, 100] {
            assert_eq!(
                stream("idea</think>answer", step, true),
                ("idea".into(), "answer".into())
            );
            assert_eq!(
                stream("still thinking", step, true),
                ("still thinking".into(), String::new())
            );
        }
    }

    #[test]
    fn prompt_state() {
        assert!(prompt_opens_think("<|im_start|>assistant\n<think>\n"));
        assert!(!prompt_opens_think(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ));
        assert!(!prompt_opens_think("<|im_start|>assistant\n"));
        assert!(!prompt_opens_think(
            "<|im_start|>user\nwhat is <think>?<|im_end|>\n<|im_start|>assistant\n"
        ));
        assert_eq!(partial_tag_len("abc</thi", THINK_END), 5);
        assert_eq!(partial_tag_len("abc", THINK_END), 0);
    }
}
