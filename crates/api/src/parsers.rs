//! Output parsers: Qwen3's `<think>…</think>` reasoning and hermes `<tool_call>` blocks, for
//! whole texts and for streams (which re-parse the accumulated text and emit what is new,
//! holding back a tail that may be the start of a tag).

use serde_json::Value as Json;

const THINK_START: &str = "<think>";
const THINK_END: &str = "</think>";
const TOOL_START: &str = "<tool_call>";
const TOOL_END: &str = "</tool_call>";

/// A tool call as OpenAI returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

/// Splits `(reasoning, content)` as vLLM's qwen3 reasoning parser: without `</think>` the
/// whole text is content.
pub fn split_reasoning(text: &str) -> (Option<String>, String) {
    let Some(end) = text.find(THINK_END) else {
        return (None, text.to_string());
    };
    let before = &text[..end];
    let reasoning = before.strip_prefix(THINK_START).unwrap_or(before);
    let content = &text[end + THINK_END.len()..];
    (Some(reasoning.to_string()), content.to_string())
}

fn new_call_id(n: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("chatcmpl-tool-{:x}{n:02x}", nanos & 0xffff_ffff_ffff)
}

fn parse_call(body: &str, n: usize) -> Option<ToolCall> {
    let v: Json = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        Some(Json::String(s)) => s.clone(),
        Some(a) => a.to_string(),
        None => "{}".into(),
    };
    Some(ToolCall {
        id: new_call_id(n),
        name,
        arguments,
    })
}

/// Hermes tool calls: `(content before the first call, calls)`. Unparseable calls leave the
/// text as content, as vLLM does.
pub fn split_tool_calls(text: &str) -> (String, Vec<ToolCall>) {
    let Some(first) = text.find(TOOL_START) else {
        return (text.to_string(), Vec::new());
    };
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(s) = rest.find(TOOL_START) {
        let after = &rest[s + TOOL_START.len()..];
        let (body, next) = match after.find(TOOL_END) {
            Some(e) => (&after[..e], &after[e + TOOL_END.len()..]),
            None => (after, ""),
        };
        match parse_call(body, calls.len()) {
            Some(c) => calls.push(c),
            None => return (text.to_string(), Vec::new()),
        }
        rest = next;
    }
    (text[..first].to_string(), calls)
}

/// Length of the longest suffix of `text` that is a proper prefix of `tag`.
fn partial_tag_len(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| text.len() >= n && tag.is_char_boundary(n) && text.ends_with(&tag[..n]))
        .unwrap_or(0)
}

/// What a stream has emitted so far, to turn re-parses into deltas.
#[derive(Debug, Default)]
pub struct StreamParser {
    pub reasoning: bool,
    pub tools: bool,
    text: String,
    sent_reasoning: usize,
    sent_content: usize,
    sent_calls: usize,
    pub saw_tool_call: bool,
}

/// New pieces for one chunk.
#[derive(Debug, Default, PartialEq)]
pub struct Delta {
    pub reasoning: String,
    pub content: String,
    pub tool_calls: Vec<(usize, ToolCall)>,
}

impl StreamParser {
    pub fn new(reasoning: bool, tools: bool) -> Self {
        Self {
            reasoning,
            tools,
            ..Self::default()
        }
    }

    /// Adds generated text; `last` flushes anything held back.
    pub fn push(&mut self, piece: &str, last: bool) -> Delta {
        self.text.push_str(piece);
        let text = self.text.as_str();
        let mut out = Delta::default();
        // Reasoning: from a leading <think> up to </think>.
        let mut content_start = 0;
        if self.reasoning && (text.starts_with(THINK_START) || THINK_START.starts_with(text)) {
            let body_start = THINK_START.len().min(text.len());
            match text.find(THINK_END) {
                Some(end) => {
                    out.reasoning = text[body_start..end]
                        .get(self.sent_reasoning..)
                        .unwrap_or_default()
                        .to_string();
                    self.sent_reasoning = end - body_start;
                    content_start = end + THINK_END.len();
                }
                None => {
                    if text.len() < THINK_START.len() && !last {
                        return out; // still possibly "<thi…"
                    }
                    let hold = if last {
                        0
                    } else {
                        partial_tag_len(text, THINK_END)
                    };
                    let upto = text.len() - hold;
                    if upto > body_start {
                        out.reasoning = text[body_start..upto]
                            .get(self.sent_reasoning..)
                            .unwrap_or_default()
                            .to_string();
                        self.sent_reasoning = upto - body_start;
                    }
                    return out;
                }
            }
        }
        let content = &text[content_start..];
        let (visible, calls) = if self.tools {
            match content.find(TOOL_START) {
                Some(p) => {
                    self.saw_tool_call = true;
                    let (_, calls) = split_tool_calls(&content[p..]);
                    // Only calls whose closing tag arrived are complete (or all, at the end).
                    let closed = content[p..].matches(TOOL_END).count();
                    let n = if last {
                        calls.len()
                    } else {
                        closed.min(calls.len())
                    };
                    (&content[..p], calls.into_iter().take(n).collect::<Vec<_>>())
                }
                None => {
                    let hold = if last {
                        0
                    } else {
                        partial_tag_len(content, TOOL_START)
                    };
                    (&content[..content.len() - hold], Vec::new())
                }
            }
        } else {
            (content, Vec::new())
        };
        out.content = visible
            .get(self.sent_content..)
            .unwrap_or_default()
            .to_string();
        self.sent_content = self.sent_content.max(visible.len());
        for (i, c) in calls.into_iter().enumerate().skip(self.sent_calls) {
            out.tool_calls.push((i, c));
            self.sent_calls = i + 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_split() {
        assert_eq!(
            split_reasoning("<think>\nhmm\n</think>\n\nYes."),
            (Some("\nhmm\n".into()), "\n\nYes.".into())
        );
        assert_eq!(split_reasoning("plain"), (None, "plain".into()));
    }

    #[test]
    fn tool_calls_split() {
        let t = "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let (content, calls) = split_tool_calls(t);
        assert_eq!(content, "Sure.\n");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, r#"{"city":"Paris"}"#);
        let (content, calls) = split_tool_calls("<tool_call>not json</tool_call>");
        assert!(calls.is_empty());
        assert_eq!(content, "<tool_call>not json</tool_call>");
    }

    #[test]
    fn streaming_matches_whole_parse() {
        let text = "<think>\nLet me think.\n</think>\n\nAnswer <tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>";
        for step in [1, 2, 3, 5, 7] {
            let mut p = StreamParser::new(true, true);
            let (mut r, mut c, mut calls) = (String::new(), String::new(), Vec::new());
            let chars: Vec<char> = text.chars().collect();
            let pieces: Vec<String> = chars.chunks(step).map(|c| c.iter().collect()).collect();
            for (i, piece) in pieces.iter().enumerate() {
                let d = p.push(piece, i + 1 == pieces.len());
                assert!(!d.content.contains('<'), "tag leaked: {:?}", d.content);
                r.push_str(&d.reasoning);
                c.push_str(&d.content);
                calls.extend(d.tool_calls);
            }
            assert_eq!(r, "\nLet me think.\n", "step {step}");
            assert_eq!(c, "\n\nAnswer ", "step {step}");
            assert_eq!(calls.len(), 1);
            assert_eq!(calls[0].1.name, "f");
        }
    }
}
