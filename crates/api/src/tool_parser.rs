//! The hermes tool-call parser (vLLM's `--tool-call-parser hermes`), which Qwen3 is trained
//! for: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks become OpenAI tool
//! calls, for whole outputs and incrementally for streams.
//!
//! As vLLM: the text before the first `<tool_call>` stays content (`None` when empty), text
//! between and after calls is dropped, `arguments` is sent as JSON text written the way
//! Python's `json.dumps` writes it, and a whole output with a call that does not parse is left
//! as plain content. Streams send each call as vLLM does: first a delta with index, id, type
//! and name, then pieces of the arguments as they are generated; the pieces add up to exactly
//! the arguments a whole-output parse gives, and tag text never reaches the content.

use std::hash::{BuildHasher, Hasher};

use serde_json::Value as Json;

use crate::chat_template::python_json;
use crate::openai::{DeltaFunctionCall, DeltaToolCall, FunctionCall, ToolCall};
use crate::reasoning::partial_tag_len;

pub const TOOL_START: &str = "<tool_call>";
pub const TOOL_END: &str = "</tool_call>";

/// `chatcmpl-tool-` and 32 random hex digits, as vLLM's ids.
pub fn new_tool_call_id() -> String {
    // RandomState is seeded from the OS once per thread and bumped per instance.
    let word = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    format!("chatcmpl-tool-{:016x}{:016x}", word(), word())
}

/// The name and arguments text of one call body (the JSON between the tags).
fn parse_call_body(body: &str) -> Option<(String, String)> {
    let v: Json = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        // Some models write the arguments as JSON text already.
        Some(Json::String(s)) => s.clone(),
        Some(a) => python_json(a),
        None => "{}".into(),
    };
    Some((name, arguments))
}

/// Tool calls in a whole output: `None` when there are none (or one does not parse: then the
/// output is all content, as vLLM leaves it), else the content before the first call and the
/// calls.
pub fn parse_tool_calls(text: &str) -> Option<(Option<String>, Vec<ToolCall>)> {
    let first = text.find(TOOL_START)?;
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(s) = rest.find(TOOL_START) {
        let after = &rest[s + TOOL_START.len()..];
        let (body, next) = match after.find(TOOL_END) {
            Some(e) => (&after[..e], &after[e + TOOL_END.len()..]),
            None => (after, ""),
        };
        let (name, arguments) = parse_call_body(body)?;
        calls.push(ToolCall {
            id: new_tool_call_id(),
            kind: "function",
            function: FunctionCall { name, arguments },
        });
        rest = next;
    }
    let content = &text[..first];
    Some(((!content.is_empty()).then(|| content.to_string()), calls))
}

// ---------------------------------------------------------------------------------------------
// Incremental JSON

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

/// Rewrites one JSON value as Python's `json.dumps` would (see [`python_json`]) while its text
/// arrives, emitting only what is final: separators normalised, whitespace dropped, string
/// escapes re-encoded char by char, numbers held until they end. On a complete value the
/// output equals `python_json` of the parsed value.
#[derive(Debug, Default, Clone)]
pub struct PyJsonStreamer {
    stack: Vec<Container>,
    in_string: bool,
    /// Escape text after a backslash, while incomplete.
    escape: Option<String>,
    /// A high surrogate waiting for its low half.
    high_surrogate: Option<u16>,
    scalar: String,
    started: bool,
    done: bool,
    invalid: bool,
}

impl PyJsonStreamer {
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn is_invalid(&self) -> bool {
        self.invalid
    }

    fn push_char(c: char, out: &mut String) {
        let quoted = Json::String(c.to_string()).to_string();
        out.push_str(&quoted[1..quoted.len() - 1]);
    }

    fn flush_scalar(&mut self, out: &mut String) {
        if self.scalar.is_empty() {
            return;
        }
        match serde_json::from_str::<Json>(&self.scalar) {
            Ok(v @ (Json::Number(_) | Json::Bool(_) | Json::Null)) => {
                out.push_str(&python_json(&v))
            }
            _ => self.invalid = true,
        }
        self.scalar.clear();
        if self.stack.is_empty() {
            self.done = true;
        }
    }

    fn string_char(&mut self, c: char, out: &mut String) {
        if let Some(esc) = &mut self.escape {
            esc.push(c);
            let decoded = match esc.as_str() {
                "\"" => Some('"'),
                "\\" => Some('\\'),
                "/" => Some('/'),
                "b" => Some('\u{8}'),
                "f" => Some('\u{c}'),
                "n" => Some('\n'),
                "r" => Some('\r'),
                "t" => Some('\t'),
                e if e.starts_with('u') && e.len() < 5 => return,
                e if e.starts_with('u') => {
                    let Ok(unit) = u16::from_str_radix(&e[1..], 16) else {
                        self.invalid = true;
                        return;
                    };
                    self.escape = None;
                    match (self.high_surrogate.take(), unit) {
                        (None, 0xD800..=0xDBFF) => {
                            self.high_surrogate = Some(unit);
                            return;
                        }
                        (Some(hi), 0xDC00..=0xDFFF) => {
                            let cp = 0x10000
                                + ((u32::from(hi) - 0xD800) << 10)
                                + (u32::from(unit) - 0xDC00);
                            Self::push_char(char::from_u32(cp).unwrap_or('\u{FFFD}'), out);
                        }
                        (hi, u) => {
                            if hi.is_some() {
                                out.push('\u{FFFD}');
                            }
                            Self::push_char(
                                char::from_u32(u32::from(u)).unwrap_or('\u{FFFD}'),
                                out,
                            );
                        }
                    }
                    return;
                }
                _ => {
                    self.invalid = true;
                    return;
                }
            };
            self.escape = None;
            if self.high_surrogate.take().is_some() {
                out.push('\u{FFFD}');
            }
            if let Some(d) = decoded {
                Self::push_char(d, out);
            }
            return;
        }
        match c {
            '\\' => self.escape = Some(String::new()),
            '"' => {
                if self.high_surrogate.take().is_some() {
                    out.push('\u{FFFD}');
                }
                self.in_string = false;
                out.push('"');
                if self.stack.is_empty() {
                    self.done = true;
                }
            }
            c => {
                if self.high_surrogate.take().is_some() {
                    out.push('\u{FFFD}');
                }
                Self::push_char(c, out);
            }
        }
    }

    /// Feeds more text; returns the canonical text it completes. Text after the end of the
    /// value is ignored (see [`PyJsonStreamer::is_done`]).
    pub fn feed(&mut self, text: &str) -> String {
        let mut out = String::new();
        for c in text.chars() {
            if self.done || self.invalid {
                break;
            }
            if self.in_string {
                self.string_char(c, &mut out);
                continue;
            }
            match c {
                c if c.is_whitespace() => self.flush_scalar(&mut out),
                '"' | '{' | '[' if !self.scalar.is_empty() => self.invalid = true,
                '"' => {
                    self.started = true;
                    self.in_string = true;
                    out.push('"');
                }
                '{' | '[' => {
                    self.started = true;
                    self.stack.push(if c == '{' {
                        Container::Object
                    } else {
                        Container::Array
                    });
                    out.push(c);
                }
                '}' | ']' | ',' | ':' => {
                    self.flush_scalar(&mut out);
                    if self.done || self.invalid {
                        break; // a top-level scalar ended at the enclosing text's delimiter
                    }
                    match c {
                        ',' if !self.stack.is_empty() => out.push_str(", "),
                        ':' if self.stack.last() == Some(&Container::Object) => out.push_str(": "),
                        '}' | ']' => {
                            let want = if c == '}' {
                                Container::Object
                            } else {
                                Container::Array
                            };
                            if self.stack.pop() != Some(want) {
                                self.invalid = true;
                                break;
                            }
                            out.push(c);
                            if self.stack.is_empty() {
                                self.done = true;
                            }
                        }
                        _ => self.invalid = true,
                    }
                }
                c => {
                    self.started = true;
                    self.scalar.push(c);
                }
            }
        }
        if self.invalid {
            return String::new();
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Streams

/// Where a body's top-level `"name"` and `"arguments"` are, as far as it has arrived.
#[derive(Debug, Default, PartialEq)]
struct BodyScan {
    name: Option<String>,
    /// Byte offset where the arguments value starts.
    args_start: Option<usize>,
}

/// A complete JSON string starting at `i` (which holds `"`): its value and the offset after.
fn scan_string(body: &str, i: usize) -> Option<(String, usize)> {
    let bytes = body.as_bytes();
    let mut j = i + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 2,
            b'"' => {
                let s: String = serde_json::from_str(&body[i..=j]).ok()?;
                return Some((s, j + 1));
            }
            _ => j += 1,
        }
    }
    None
}

fn scan_body(body: &str) -> BodyScan {
    let mut scan = BodyScan::default();
    let bytes = body.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    if bytes.get(i) != Some(&b'{') {
        return scan;
    }
    i += 1;
    loop {
        i = skip_ws(i);
        match bytes.get(i) {
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(b'"') => {}
            _ => return scan,
        }
        let Some((key, next)) = scan_string(body, i) else {
            return scan;
        };
        i = skip_ws(next);
        if bytes.get(i) != Some(&b':') {
            return scan;
        }
        i = skip_ws(i + 1);
        if i >= bytes.len() {
            return scan;
        }
        match key.as_str() {
            "name" if bytes[i] == b'"' => {
                let Some((name, next)) = scan_string(body, i) else {
                    return scan;
                };
                scan.name = Some(name);
                i = next;
            }
            "arguments" | "parameters" => {
                scan.args_start = Some(i);
                return scan;
            }
            // Anything else first: the call is sent whole when it ends.
            _ => return scan,
        }
    }
}

#[derive(Debug)]
struct CallState {
    index: usize,
    id: String,
    body: String,
    name_sent: bool,
    args_start: Option<usize>,
    /// Bytes of `body` fed to the streamer.
    fed: usize,
    streamer: PyJsonStreamer,
    /// Arguments sent so far; None once streaming them is given up (sent whole at the end).
    args_sent: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before any call: text is content.
    Text,
    InCall,
    /// After a call: text is dropped, further calls are parsed.
    Between,
}

/// What one stream step adds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ToolDelta {
    pub content: String,
    pub tool_calls: Vec<DeltaToolCall>,
}

#[derive(Debug)]
pub struct ToolStreamParser {
    phase: Phase,
    held: String,
    call: Option<CallState>,
    /// Calls sent (the next call's index).
    sent: usize,
    /// With `parallel_tool_calls: false`, only the first call is kept.
    max_calls: usize,
}

impl ToolStreamParser {
    pub fn new(parallel_tool_calls: bool) -> Self {
        Self {
            phase: Phase::Text,
            held: String::new(),
            call: None,
            sent: 0,
            max_calls: if parallel_tool_calls { usize::MAX } else { 1 },
        }
    }

    /// Whether any tool call was sent (the finish reason is then "tool_calls").
    pub fn called(&self) -> bool {
        self.sent > 0
    }

    pub fn push(&mut self, piece: &str) -> ToolDelta {
        let mut out = ToolDelta::default();
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(piece);
        loop {
            match self.phase {
                Phase::Text | Phase::Between => {
                    if let Some(p) = buf.find(TOOL_START) {
                        if self.phase == Phase::Text {
                            out.content.push_str(&buf[..p]);
                        }
                        self.call = Some(CallState {
                            index: self.sent,
                            id: new_tool_call_id(),
                            body: String::new(),
                            name_sent: false,
                            args_start: None,
                            fed: 0,
                            streamer: PyJsonStreamer::default(),
                            args_sent: Some(String::new()),
                        });
                        buf = buf[p + TOOL_START.len()..].to_string();
                        self.phase = Phase::InCall;
                    } else {
                        let keep = partial_tag_len(&buf, TOOL_START);
                        if self.phase == Phase::Text {
                            out.content.push_str(&buf[..buf.len() - keep]);
                        }
                        self.held = buf[buf.len() - keep..].to_string();
                        return out;
                    }
                }
                Phase::InCall => {
                    let Some(call) = self.call.as_mut() else {
                        self.phase = Phase::Between;
                        continue;
                    };
                    call.body.push_str(&buf);
                    match call.body.find(TOOL_END) {
                        Some(e) => {
                            buf = call.body[e + TOOL_END.len()..].to_string();
                            call.body.truncate(e);
                            self.end_call(&mut out, true);
                        }
                        None => {
                            let visible = call.body.len() - partial_tag_len(&call.body, TOOL_END);
                            if self.sent < self.max_calls {
                                progress(call, visible, &mut out);
                            }
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Ends the output: an unclosed call is parsed as it stands.
    pub fn finish(&mut self) -> ToolDelta {
        let mut out = ToolDelta::default();
        let held = std::mem::take(&mut self.held);
        match self.phase {
            Phase::Text => out.content = held,
            Phase::Between => {}
            Phase::InCall => self.end_call(&mut out, false),
        }
        out
    }

    /// Sends what is left of the current call once its text is complete (`closed`: it ended
    /// with `</tool_call>`).
    fn end_call(&mut self, out: &mut ToolDelta, closed: bool) {
        let Some(call) = self.call.take() else {
            return;
        };
        self.phase = Phase::Between;
        if self.sent >= self.max_calls {
            return;
        }
        match parse_call_body(&call.body) {
            Some((name, arguments)) if !call.name_sent => {
                out.tool_calls.push(DeltaToolCall {
                    index: call.index,
                    id: Some(call.id),
                    kind: Some("function"),
                    function: DeltaFunctionCall {
                        name: Some(name),
                        arguments: Some(arguments),
                    },
                });
                self.sent += 1;
            }
            Some((_, arguments)) => {
                let sent = call.args_sent.unwrap_or_default();
                match arguments.strip_prefix(sent.as_str()) {
                    Some(rest) if !rest.is_empty() => push_args(out, call.index, rest.to_string()),
                    Some(_) => {}
                    None => tracing::warn!(
                        streamed = sent,
                        parsed = arguments,
                        "streamed tool-call arguments differ from the parsed ones"
                    ),
                }
                self.sent += 1;
            }
            None if call.name_sent => {
                // Already announced: it stays a (broken) call.
                tracing::warn!(body = call.body, "a streamed tool call is not valid JSON");
                self.sent += 1;
            }
            None if self.sent == 0 => {
                // Not a call after all: the text is content, as a whole-output parse leaves it.
                out.content.push_str(TOOL_START);
                out.content.push_str(&call.body);
                if closed {
                    out.content.push_str(TOOL_END);
                }
                self.phase = Phase::Text;
            }
            None => {}
        }
    }
}

fn push_args(out: &mut ToolDelta, index: usize, args: String) {
    // Several pieces of the same call in one step go into one delta.
    if let Some(last) = out.tool_calls.last_mut().filter(|d| d.index == index) {
        last.function
            .arguments
            .get_or_insert_with(String::new)
            .push_str(&args);
        return;
    }
    out.tool_calls.push(DeltaToolCall {
        index,
        id: None,
        kind: None,
        function: DeltaFunctionCall {
            name: None,
            arguments: Some(args),
        },
    });
}

/// Sends the name once it is complete, then the arguments as far as they are final.
fn progress(call: &mut CallState, visible: usize, out: &mut ToolDelta) {
    let body = &call.body[..visible];
    if !call.name_sent {
        let scan = scan_body(body);
        let Some(name) = scan.name else {
            return;
        };
        call.args_start = scan.args_start;
        call.name_sent = true;
        out.tool_calls.push(DeltaToolCall {
            index: call.index,
            id: Some(call.id.clone()),
            kind: Some("function"),
            function: DeltaFunctionCall {
                name: Some(name),
                arguments: None,
            },
        });
    }
    if call.args_start.is_none() {
        call.args_start = scan_body(body).args_start;
    }
    let (Some(start), Some(sent)) = (call.args_start, call.args_sent.as_mut()) else {
        return;
    };
    if body[start..].starts_with('"') {
        // Arguments given as JSON text: sent whole when the call ends.
        call.args_sent = None;
        return;
    }
    let from = call.fed.max(start);
    if from >= visible {
        return;
    }
    let piece = call.streamer.feed(&body[from..visible]);
    call.fed = visible;
    if call.streamer.is_invalid() {
        return;
    }
    if !piece.is_empty() {
        sent.push_str(&piece);
        push_args(out, call.index, piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams `text` in pieces of `step` chars; returns content and the calls put together.
    fn stream(text: &str, step: usize) -> (String, Vec<(String, String)>) {
        let has_calls = parse_tool_calls(text).is_some();
        let mut p = ToolStreamParser::new(true);
        let chars: Vec<char> = text.chars().collect();
        let mut content = String::new();
        let mut calls: Vec<(String, String, String)> = Vec::new();
        let mut deltas = chars
            .chunks(step)
            .map(|c| p.push(&c.iter().collect::<String>()))
            .collect::<Vec<_>>();
        deltas.push(p.finish());
        for d in deltas {
            assert!(
                !has_calls || !d.content.contains('<'),
                "tag leaked: {:?}",
                d.content
            );
            content.push_str(&d.content);
            for tc in d.tool_calls {
                if tc.index == calls.len() {
                    let id = tc.id.clone().unwrap_or_default();
                    assert!(id.starts_with("chatcmpl-tool-") && id.len() == 46, "{tc:?}");
                    assert_eq!(tc.kind, Some("function"));
                    let name = tc.function.name.clone().unwrap_or_default();
                    calls.push((id, name, String::new()));
                } else {
                    assert!(tc.id.is_none() && tc.function.name.is_none(), "{tc:?}");
                }
                calls[tc.index]
                    .2
                    .push_str(tc.function.arguments.as_deref().unwrap_or(""));
            }
        }
        (content, calls.into_iter().map(|(_, n, a)| (n, a)).collect())
    }

    fn whole(text: &str) -> (String, Vec<(String, String)>) {
        match parse_tool_calls(text) {
            None => (text.to_string(), Vec::new()),
            Some((c, calls)) => (
                c.unwrap_or_default(),
                calls
                    .into_iter()
                    .map(|c| (c.function.name, c.function.arguments))
                    .collect(),
            ),
        }
    }

    #[test]
    fn whole_outputs() {
        let t = "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\",\"days\":[1,2.50]}}\n</tool_call>\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
        let (content, calls) = parse_tool_calls(t).unwrap_or_default();
        assert_eq!(content.as_deref(), Some("Sure.\n"));
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].function.name, "get_weather");
        // json.dumps spacing, as vLLM sends it.
        assert_eq!(
            calls[0].function.arguments,
            r#"{"city": "Paris", "days": [1, 2.5]}"#
        );
        assert_eq!(calls[1].function.arguments, "{}");
        assert_ne!(calls[0].id, calls[1].id);
        assert!(parse_tool_calls("<tool_call>not json</tool_call>").is_none());
        assert!(parse_tool_calls("no calls").is_none());
        let (content, calls) =
            parse_tool_calls("<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}")
                .unwrap_or_default();
        assert_eq!((content, calls.len()), (None, 1));
    }

    #[test]
    fn streams_agree_with_whole_outputs() {
        for text in [
            "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par\\u00eds \\ud83d\\ude00 \\\"q\\\"\",\"n\":[1, -2.5e3, true, null], \"o\": {}}}\n</tool_call>\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
            "<tool_call>{\"arguments\": {\"x\": 1}, \"name\": \"late_name\"}</tool_call>",
            "<tool_call>{\"name\": \"s\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>",
            "<tool_call>{\"name\": \"unclosed\", \"arguments\": {\"x\": [1, 2]}}",
            "just text with < and <tool and </tool_call>",
            "<tool_call>not json</tool_call> tail",
            "text then <tool_cal",
        ] {
            let want = whole(text);
            for step in [1, 2, 3, 7, 1000] {
                assert_eq!(stream(text, step), want, "{text:?} step {step}");
            }
        }
    }

    #[test]
    fn names_come_first_then_arguments_piece_by_piece() {
        let mut p = ToolStreamParser::new(true);
        let d = p.push("<tool_call>\n{\"name\": \"get_weather\", \"arg");
        assert_eq!(d.tool_calls.len(), 1);
        assert_eq!(
            d.tool_calls[0].function.name.as_deref(),
            Some("get_weather")
        );
        assert_eq!(d.tool_calls[0].function.arguments, None);
        let d = p.push("uments\": {\"ci");
        assert_eq!(d.tool_calls.len(), 1);
        assert_eq!(d.tool_calls[0].id, None);
        assert_eq!(d.tool_calls[0].function.arguments.as_deref(), Some("{\"ci"));
        let d = p.push("ty\":\"Par");
        assert_eq!(
            d.tool_calls[0].function.arguments.as_deref(),
            Some("ty\": \"Par")
        );
        let d = p.push("is\"}}\n</tool_call>");
        assert_eq!(d.tool_calls[0].function.arguments.as_deref(), Some("is\"}"));
        assert!(p.called());
        assert_eq!(p.finish(), ToolDelta::default());
        let mut p = ToolStreamParser::new(false);
        let d = p.push("<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>");
        assert_eq!(d.tool_calls.len(), 1);
    }

    #[test]
    fn json_streamer_matches_python_json() {
        // (text fed, the value it holds)
        for (text, value) in [
            (
                r#"{"a":1,"b":[true,false,null,-0.5,1e-7],"c":{"d":"x\ny\\"},"e":[]}"#,
                None,
            ),
            (
                r#"  [ 1 , "two" , { } ]  trailing"#,
                Some(r#"[1, "two", {}]"#),
            ),
            (r#""just a string""#, None),
            ("42}", Some("42")),
        ] {
            let v: Json = serde_json::from_str(value.unwrap_or(text)).unwrap_or_default();
            for step in [1, 2, 5, 100] {
                let mut s = PyJsonStreamer::default();
                let chars: Vec<char> = text.chars().collect();
                let out: String = chars
                    .chunks(step)
                    .map(|c| s.feed(&c.iter().collect::<String>()))
                    .collect();
                assert!(s.is_done(), "{text}");
                assert_eq!(out, python_json(&v), "{text} step {step}");
            }
        }
        let mut s = PyJsonStreamer::default();
        assert_eq!(s.feed("{\"a\": tru"), "{\"a\": ");
        assert_eq!(s.feed("e}"), "true}");
        let mut s = PyJsonStreamer::default();
        s.feed("{\"a\" ] ");
        assert!(s.is_invalid());
    }
}
