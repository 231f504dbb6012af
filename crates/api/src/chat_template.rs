//! Chat templates from a model's `chat_template.jinja` or `tokenizer_config.json`, rendered
//! with minijinja the way transformers renders them with Jinja2 (`apply_chat_template`), so
//! prompts are byte-identical: the same globals (`messages`, `tools`, `add_generation_prompt`,
//! the special tokens, any `chat_template_kwargs` such as `enable_thinking`), the same helpers
//! (`raise_exception`, `strftime_now`, Python's `tojson`), Python string methods (pycompat),
//! and `trim_blocks` + `lstrip_blocks`, which transformers turns on.

use std::path::Path;

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::{Map, Value as Json};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("the model has no chat template (tokenizer_config.json has no chat_template and there is no chat_template.jinja)")]
    Missing,
    #[error("reading the chat template: {0}")]
    Io(String),
    #[error("the chat template does not compile: {0}")]
    Compile(String),
    #[error("{0}")]
    InvalidMessages(String),
    #[error("rendering the chat template failed: {0}")]
    Render(String),
}

pub struct ChatTemplate {
    env: Environment<'static>,
    /// bos_token, eos_token, ... as transformers' `special_tokens_map` passes them (only those
    /// the tokenizer sets).
    special_tokens: Map<String, Json>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special_tokens", &self.special_tokens)
            .finish_non_exhaustive()
    }
}

/// How a template is applied besides the messages.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions<'a> {
    pub tools: Option<&'a [Json]>,
    pub add_generation_prompt: bool,
    /// Leave the final (assistant) message open so the model continues it (transformers'
    /// `continue_final_message`).
    pub continue_final_message: bool,
    /// `chat_template_kwargs`: extra template variables (`enable_thinking`, ...).
    pub kwargs: Option<&'a Map<String, Json>>,
}

// ---------------------------------------------------------------------------------------------
// Python's json.dumps

/// Options of Python's `json.dumps` that transformers' `tojson` filter exposes.
#[derive(Debug, Clone, Default)]
pub struct PyJsonOptions {
    pub indent: Option<String>,
    pub sort_keys: bool,
    pub ensure_ascii: bool,
    /// (item, key) separators; Python's default is `(", ", ": ")`, or `(",", ": ")` with an
    /// indent.
    pub separators: Option<(String, String)>,
}

/// Python's `json.dumps(v, ensure_ascii=False)`: `", "` and `": "` separators, keys in order.
pub fn python_json(v: &Json) -> String {
    python_json_with(v, &PyJsonOptions::default())
}

pub fn python_json_with(v: &Json, o: &PyJsonOptions) -> String {
    let mut out = String::new();
    let (item, key) = match &o.separators {
        Some((i, k)) => (i.as_str(), k.as_str()),
        None if o.indent.is_some() => (",", ": "),
        None => (", ", ": "),
    };
    write_py(v, o, item, key, 0, &mut out);
    out
}

fn write_py(v: &Json, o: &PyJsonOptions, item: &str, key: &str, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v {
        Json::Array(a) if a.is_empty() => out.push_str("[]"),
        Json::Object(m) if m.is_empty() => out.push_str("{}"),
        Json::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item);
                }
                newline(out, level + 1);
                write_py(x, o, item, key, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Json::Object(m) => {
            out.push('{');
            let mut entries: Vec<(&String, &Json)> = m.iter().collect();
            if o.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item);
                }
                newline(out, level + 1);
                write_py_str(k, o.ensure_ascii, out);
                out.push_str(key);
                write_py(x, o, item, key, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        Json::String(s) => write_py_str(s, o.ensure_ascii, out),
        Json::Number(n) => match (n.is_f64(), n.as_f64()) {
            (true, Some(f)) => out.push_str(&py_float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Null => out.push_str("null"),
    }
}

/// A JSON string as Python writes it (the same escapes as serde_json; with `ensure_ascii`,
/// non-ASCII as `\uXXXX`, surrogate pairs beyond the BMP).
pub fn write_py_str(s: &str, ensure_ascii: bool, out: &mut String) {
    let quoted = Json::String(s.to_string()).to_string();
    if !ensure_ascii {
        out.push_str(&quoted);
        return;
    }
    for c in quoted.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for exponents in
/// [-4, 16), else scientific with a signed two-digit exponent (`1e-05`, `1e+16`).
pub fn py_float_repr(f: f64) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN".into()
        } else if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{f:e}"); // e.g. "-1.2345e2"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let s = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!(
            "{sign}{m}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Template functions and filters

fn template_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// which, unlike Jinja's, does not HTML-escape.
fn tojson(v: Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent.or(kwargs.get::<Option<Value>>("indent")?) {
        None => None,
        Some(i) if i.is_none() => None,
        Some(i) => Some(match i.as_i64() {
            Some(n) => " ".repeat(usize::try_from(n).unwrap_or(0)),
            None => i
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| template_error("tojson: indent must be an int or a string"))?,
        }),
    };
    let separators = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(s) if s.len() == 2 => Some((s[0].clone(), s[1].clone())),
        Some(_) => {
            return Err(template_error(
                "tojson: separators must be a pair of strings",
            ))
        }
        None => None,
    };
    let opts = PyJsonOptions {
        indent,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        separators,
    };
    kwargs.assert_all_used()?;
    let j: Json = serde_json::to_value(&v).map_err(|e| template_error(format!("tojson: {e}")))?;
    Ok(Value::from_safe_string(python_json_with(&j, &opts)))
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(template_error(msg))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Python's `datetime.now().strftime(fmt)`, in UTC, for the codes chat templates use.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(&fmt, secs)
}

pub fn strftime(fmt: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let tod = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (tod / 3600, tod / 60 % 60, tod % 60);
    let month = MONTHS[(m as usize + 11) % 12];
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = WEEKDAYS[(days + 3).rem_euclid(7) as usize];
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut code = chars.next();
        // glibc's "%-d": no padding.
        let unpadded = code == Some('-');
        if unpadded {
            code = chars.next();
        }
        let num = |v: i64, w: usize| {
            if unpadded {
                v.to_string()
            } else {
                format!("{v:0w$}")
            }
        };
        match code {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&num(y.rem_euclid(100), 2)),
            Some('m') => out.push_str(&num(i64::from(m), 2)),
            Some('d') => out.push_str(&num(i64::from(d), 2)),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('j') => out.push_str(&num(yday, 3)),
            Some('H') => out.push_str(&num(hh, 2)),
            Some('I') => out.push_str(&num((hh + 11) % 12 + 1, 2)),
            Some('M') => out.push_str(&num(mm, 2)),
            Some('S') => out.push_str(&num(ss, 2)),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(month),
            Some('b') | Some('h') => out.push_str(&month[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('F') => out.push_str(&format!("{y}-{m:02}-{d:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------------
// Messages

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// vLLM's message preparation for templates that take string content: text parts joined with
/// newlines, `null` content as "", tool-call arguments given as JSON text parsed into objects
/// (empty as `{}`), `developer` treated as `system`; only the fields vLLM passes on are kept.
/// Errors say what is wrong with which message.
pub fn normalize_messages(messages: &[Json]) -> Result<Vec<Json>, String> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| normalize_message(m).map_err(|e| format!("messages[{i}]: {e}")))
        .collect()
}

fn normalize_message(m: &Json) -> Result<Json, String> {
    let obj = m.as_object().ok_or("a message must be an object")?;
    let role = obj
        .get("role")
        .and_then(Json::as_str)
        .ok_or("a message needs a string `role`")?;
    if !ROLES.contains(&role) {
        return Err(format!(
            "unknown role {role:?} (expected one of system, developer, user, assistant, tool)"
        ));
    }
    let role = if role == "developer" { "system" } else { role };
    let content = match obj.get("content") {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(s)) => s.clone(),
        Some(Json::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in parts {
                match p {
                    Json::String(s) => texts.push(s.as_str()),
                    Json::Object(o) => {
                        let kind = o.get("type").and_then(Json::as_str).unwrap_or("text");
                        match (kind, o.get("text").and_then(Json::as_str)) {
                            ("text" | "input_text" | "output_text", Some(t)) => texts.push(t),
                            ("text" | "input_text" | "output_text", None) => {
                                return Err("a text content part needs a string `text`".into())
                            }
                            (other, _) => {
                                return Err(format!(
                                    "content parts of type {other:?} are not supported (this model takes text only)"
                                ))
                            }
                        }
                    }
                    _ => return Err("content parts must be objects".into()),
                }
            }
            texts.join("\n")
        }
        Some(_) => {
            return Err("`content` must be a string, null or a list of content parts".into())
        }
    };
    let mut out = Map::new();
    out.insert("role".into(), Json::from(role));
    out.insert("content".into(), Json::from(content));
    if let Some(name) = obj.get("name").and_then(Json::as_str) {
        out.insert("name".into(), Json::from(name));
    }
    if role == "assistant" {
        if let Some(calls) = obj.get("tool_calls").filter(|c| !c.is_null()) {
            let calls = calls.as_array().ok_or("`tool_calls` must be a list")?;
            let calls = calls
                .iter()
                .map(normalize_tool_call)
                .collect::<Result<Vec<_>, _>>()?;
            out.insert("tool_calls".into(), Json::Array(calls));
        }
        // Earlier turns' reasoning, for templates that show it (vLLM sets both names).
        if let Some(r) = obj
            .get("reasoning_content")
            .or_else(|| obj.get("reasoning"))
            .filter(|r| !r.is_null())
        {
            let r = r.as_str().ok_or("`reasoning_content` must be a string")?;
            out.insert("reasoning_content".into(), Json::from(r));
            out.insert("reasoning".into(), Json::from(r));
        }
    }
    if role == "tool" {
        if let Some(id) = obj.get("tool_call_id").and_then(Json::as_str) {
            out.insert("tool_call_id".into(), Json::from(id));
        }
    }
    Ok(Json::Object(out))
}

fn normalize_tool_call(call: &Json) -> Result<Json, String> {
    let mut call = call
        .as_object()
        .cloned()
        .ok_or("a tool call must be an object")?;
    let function = call
        .get_mut("function")
        .and_then(Json::as_object_mut)
        .ok_or("a tool call needs a `function` object")?;
    if !function.get("name").is_some_and(Json::is_string) {
        return Err("a tool call's function needs a string `name`".into());
    }
    let args = match function.remove("arguments") {
        None | Some(Json::Null) => Json::Object(Map::new()),
        Some(Json::String(s)) if s.trim().is_empty() => Json::Object(Map::new()),
        Some(Json::String(s)) => serde_json::from_str(&s)
            .map_err(|e| format!("tool call arguments are not valid JSON: {e}"))?,
        Some(other) => other,
    };
    function.insert("arguments".into(), args);
    Ok(Json::Object(call))
}

/// The text of a content value for `continue_final_message`: a string, or the last text part.
fn final_text(m: &Json) -> Option<String> {
    match m.get("content")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(parts) => parts
            .iter()
            .rev()
            .find_map(|p| p.get("text")?.as_str().map(str::to_string)),
        _ => None,
    }
}

fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

fn describe(e: &Error) -> String {
    let mut s = match e.detail() {
        Some(d) => d.to_string(),
        None => e.to_string(),
    };
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl ChatTemplate {
    /// A template from its source, with no special tokens.
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // transformers compiles templates with trim_blocks and lstrip_blocks on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Python string and dict methods (.startswith, .split, .strip, .items, ...).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TemplateError::Compile(describe(&e)))?;
        Ok(Self {
            env,
            special_tokens: Map::new(),
        })
    }

    /// Sets a special-token variable (`bos_token`, `eos_token`, ...).
    pub fn with_special_token(mut self, name: &str, value: Json) -> Self {
        self.special_tokens.insert(name.to_string(), value);
        self
    }

    /// The template of a model directory: `chat_template.jinja`, else tokenizer_config.json's
    /// `chat_template` (a string, or a list of named templates of which "default" is used),
    /// with the special tokens tokenizer_config.json sets.
    pub fn from_model_dir(dir: &Path) -> Result<Self, TemplateError> {
        let cfg: Json = match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| TemplateError::Io(format!("tokenizer_config.json: {e}")))?,
            Err(_) => Json::Null,
        };
        let source = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Ok(s) => s,
            Err(_) => match cfg.get("chat_template") {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Json::as_str)
                    .ok_or(TemplateError::Missing)?
                    .to_string(),
                _ => return Err(TemplateError::Missing),
            },
        };
        let mut t = Self::new(&source)?;
        for name in [
            "bos_token",
            "eos_token",
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
        ] {
            if let Some(text) = token_text(cfg.get(name)) {
                t = t.with_special_token(name, Json::from(text));
            }
        }
        if let Some(Json::Array(extra)) = cfg.get("additional_special_tokens") {
            let extra: Vec<Json> = extra
                .iter()
                .filter_map(|v| token_text(Some(v)))
                .map(Json::from)
                .collect();
            t = t.with_special_token("additional_special_tokens", Json::Array(extra));
        }
        Ok(t)
    }

    /// Renders `messages` (OpenAI shape; normalised as vLLM does) with optional tools and extra
    /// template variables (`chat_template_kwargs`, e.g. `enable_thinking`).
    pub fn render(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        kwargs: &Map<String, Json>,
    ) -> Result<String, TemplateError> {
        self.render_with(
            messages,
            &RenderOptions {
                tools,
                add_generation_prompt,
                continue_final_message: false,
                kwargs: Some(kwargs),
            },
        )
    }

    pub fn render_with(
        &self,
        messages: &[Json],
        o: &RenderOptions<'_>,
    ) -> Result<String, TemplateError> {
        let messages = normalize_messages(messages).map_err(TemplateError::InvalidMessages)?;
        let mut ctx = self.special_tokens.clone();
        // Request kwargs cannot replace what the server sets below.
        for (k, v) in o.kwargs.into_iter().flatten() {
            ctx.insert(k.clone(), v.clone());
        }
        let final_message = if o.continue_final_message {
            Some(messages.last().and_then(final_text).ok_or_else(|| {
                TemplateError::InvalidMessages(
                    "continue_final_message: the final message has no text".into(),
                )
            })?)
        } else {
            None
        };
        ctx.insert("messages".into(), Json::Array(messages));
        ctx.insert(
            "tools".into(),
            o.tools.map_or(Json::Null, |t| Json::Array(t.to_vec())),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(o.add_generation_prompt),
        );
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError::Render(describe(&e)))?;
        let rendered = tmpl
            .render(Value::from_serialize(Json::Object(ctx)))
            .map_err(|e| TemplateError::Render(describe(&e)))?;
        match final_message {
            Some(m) => continue_final(rendered, &m),
            None => Ok(rendered),
        }
    }
}

/// Cuts the rendering after the final message's text, as transformers does.
fn continue_final(rendered: String, message: &str) -> Result<String, TemplateError> {
    let loc = rendered.rfind(message.trim()).ok_or_else(|| {
        TemplateError::InvalidMessages(
            "continue_final_message: the final message does not appear in the rendered chat".into(),
        )
    })?;
    let lead = message.trim_start();
    let end = if rendered[loc..].starts_with(lead) && lead.len() == message.len() {
        loc + lead.len()
    } else {
        loc + message.trim().len()
    };
    Ok(rendered[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, messages: Json, kwargs: Json) -> Result<String, TemplateError> {
        let t = ChatTemplate::new(src)?.with_special_token("eos_token", json!("</s>"));
        let kw = kwargs.as_object().cloned().unwrap_or_default();
        t.render(
            messages.as_array().map_or(&[][..], Vec::as_slice),
            None,
            true,
            &kw,
        )
    }

    #[test]
    fn python_json_matches_json_dumps() {
        let v: Json = serde_json::from_str(r#"{"b": 1, "a": [1, "x", 1.5, 1e-5, 1e16, 100.0, -0.25], "c": {"d": "é\n\"", "e": []}}"#)
            .unwrap_or_default();
        // What Python's json.dumps(v, ensure_ascii=False) writes.
        assert_eq!(
            python_json(&v),
            r#"{"b": 1, "a": [1, "x", 1.5, 1e-05, 1e+16, 100.0, -0.25], "c": {"d": "é\n\"", "e": []}}"#
        );
        let o = PyJsonOptions {
            indent: Some("  ".into()),
            sort_keys: true,
            ensure_ascii: true,
            separators: None,
        };
        // json.dumps(v, indent=2, sort_keys=True, ensure_ascii=True)
        assert_eq!(
            python_json_with(&json!({"z": [1, {}], "a": "é😀"}), &o),
            "{\n  \"a\": \"\\u00e9\\ud83d\\ude00\",\n  \"z\": [\n    1,\n    {}\n  ]\n}"
        );
        for (f, want) in [
            (0.0001, "0.0001"),
            (123456789.125, "123456789.125"),
            (1e15, "1000000000000000.0"),
            (2.5e-7, "2.5e-07"),
            (-1.0, "-1.0"),
        ] {
            assert_eq!(py_float_repr(f), want);
        }
    }

    #[test]
    fn python_methods_filters_and_loop_helpers() {
        let src = "{% for m in messages %}{{ m.content.strip().split(',')|tojson }}|{{ m.content.startswith(' a') }}|{{ loop.previtem is defined }}{% endfor %}{{ eos_token }}{{ tools|tojson(indent=2) }}";
        let out = render(
            src,
            json!([{"role": "user", "content": " a,b "}, {"role": "user", "content": "c"}]),
            json!({}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // Jinja2 prints Python booleans as True/False.
        assert_eq!(out, "[\"a\", \"b\"]|True|False[\"c\"]|False|True</s>null");
    }

    #[test]
    fn trim_and_lstrip_blocks_as_transformers() {
        let src = "{% for m in messages %}\n  {% if m.role == 'user' %}\nU:{{ m.content }}\n  {% endif %}\n{% endfor %}\n";
        let out = render(
            src,
            json!([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]),
            json!({}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, "U:x\nU:y\n");
    }

    #[test]
    fn kwargs_raise_exception_and_strftime() {
        let src = "{% if enable_thinking is defined and enable_thinking is false %}off{% endif %}{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}";
        assert_eq!(
            render(
                src,
                json!([{"role": "user", "content": "x"}]),
                json!({"enable_thinking": false})
            )
            .ok()
            .as_deref(),
            Some("off")
        );
        let e = render(src, json!([{"role": "system", "content": "x"}]), json!({}));
        assert!(
            matches!(&e, Err(TemplateError::Render(m)) if m.contains("first must be user")),
            "{e:?}"
        );
        // 2024-02-29 13:05:09 UTC, a Thursday.
        assert_eq!(
            strftime(
                "%Y-%m-%d %H:%M:%S %a %A %b %B %j %-d %d %y %%",
                1_709_211_909
            ),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 29 29 24 %"
        );
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(days_from_civil(2026, 1, 1), 20_454);
    }

    #[test]
    fn messages_are_normalised_as_vllm_does() {
        let m = normalize_messages(&[
            json!({"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "extra": 1}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}, {"type": "function", "function": {"name": "g", "arguments": ""}}]}),
            json!({"role": "tool", "content": "r", "tool_call_id": "c1"}),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m[0], json!({"role": "system", "content": "a\nb"}));
        assert_eq!(m[1]["content"], "");
        assert_eq!(
            m[1]["tool_calls"][0]["function"]["arguments"],
            json!({"x": 1})
        );
        assert_eq!(m[1]["tool_calls"][1]["function"]["arguments"], json!({}));
        assert_eq!(
            m[2],
            json!({"role": "tool", "content": "r", "tool_call_id": "c1"})
        );
        for bad in [
            json!("hi"),
            json!({"content": "x"}),
            json!({"role": "robot", "content": "x"}),
            json!({"role": "user", "content": 5}),
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}),
            json!({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}),
        ] {
            assert!(
                normalize_messages(std::slice::from_ref(&bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn continue_final_message_cuts_after_the_text() {
        let src = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}";
        let t = ChatTemplate::new(src).unwrap_or_else(|e| panic!("{e}"));
        let msgs = [
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": "Once upon"}),
        ];
        let o = RenderOptions {
            continue_final_message: true,
            ..RenderOptions::default()
        };
        assert_eq!(
            t.render_with(&msgs, &o).ok().as_deref(),
            Some("<user>hi</s><assistant>Once upon")
        );
    }

    #[test]
    fn bad_templates_are_errors_not_panics() {
        assert!(matches!(
            ChatTemplate::new("{% for %}"),
            Err(TemplateError::Compile(_))
        ));
        let e = render(
            "{{ messages[0].content.nosuchmethod() }}",
            json!([{"role": "user", "content": "x"}]),
            json!({}),
        );
        assert!(matches!(e, Err(TemplateError::Render(_))), "{e:?}");
    }
}
