//! Chat templates from a model's `tokenizer_config.json` (or `chat_template.jinja`), rendered
//! with minijinja the way transformers renders them with Jinja2, so prompts are byte-identical.

use std::path::Path;

use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("the model has no chat template (tokenizer_config.json has no chat_template and there is no chat_template.jinja)")]
    Missing,
    #[error("reading the chat template: {0}")]
    Io(String),
    #[error("the chat template does not compile: {0}")]
    Compile(String),
    #[error("rendering the chat template failed: {0}")]
    Render(String),
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// Python's `json.dumps(v, ensure_ascii=False)`: `", "` and `": "` separators, keys in order.
pub fn python_json(v: &Json) -> String {
    let mut out = String::new();
    write_python_json(v, &mut out);
    out
}

fn write_python_json(v: &Json, out: &mut String) {
    match v {
        Json::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_python_json(x, out);
            }
            out.push(']');
        }
        Json::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                write_python_json(x, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn tojson(v: Value) -> Result<String, Error> {
    let j: Json = serde_json::to_value(&v)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(python_json(&j))
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(fmt: String) -> String {
    // Only the formats chat templates use for "today's date"; UTC.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days = secs.div_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
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
    fmt.replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", MONTHS[(m as usize).saturating_sub(1) % 12])
        .replace("%b", &MONTHS[(m as usize).saturating_sub(1) % 12][..3])
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

fn token_text(v: Option<&Json>) -> String {
    match v {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        // transformers compiles templates with trim_blocks and lstrip_blocks on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template of a model directory: `chat_template.jinja`, else tokenizer_config.json's
    /// `chat_template` (a string, or a list of named templates of which "default" is used).
    pub fn from_model_dir(dir: &Path) -> Result<Self, TemplateError> {
        let cfg: Json = match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| TemplateError::Io(e.to_string()))?,
            Err(_) => Json::Null,
        };
        let source = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Ok(s) => s,
            Err(_) => match cfg.get("chat_template") {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .ok_or(TemplateError::Missing)?
                    .to_string(),
                _ => return Err(TemplateError::Missing),
            },
        };
        Self::new(
            &source,
            &token_text(cfg.get("bos_token")),
            &token_text(cfg.get("eos_token")),
        )
    }

    /// Renders `messages` (OpenAI shape; normalised as vLLM does) with optional tools and extra
    /// template variables (`chat_template_kwargs`, e.g. `enable_thinking`).
    pub fn render(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        kwargs: &serde_json::Map<String, Json>,
    ) -> Result<String, TemplateError> {
        let messages: Vec<Json> = messages.iter().map(normalise_message).collect();
        let mut ctx = serde_json::Map::new();
        for (k, v) in kwargs {
            ctx.insert(k.clone(), v.clone());
        }
        ctx.insert("messages".into(), Json::Array(messages));
        ctx.insert(
            "tools".into(),
            tools.map_or(Json::Null, |t| Json::Array(t.to_vec())),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(add_generation_prompt),
        );
        ctx.insert("bos_token".into(), Json::String(self.bos_token.clone()));
        ctx.insert("eos_token".into(), Json::String(self.eos_token.clone()));
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        tmpl.render(Value::from_serialize(Json::Object(ctx)))
            .map_err(|e| TemplateError::Render(describe(&e)))
    }
}

fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// vLLM's normalisation before rendering: text parts joined with newlines, tool-call
/// arguments given as JSON strings parsed into objects.
fn normalise_message(m: &Json) -> Json {
    let mut m = m.clone();
    if let Some(obj) = m.as_object_mut() {
        if let Some(Json::Array(parts)) = obj.get("content") {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .collect();
            obj.insert("content".into(), Json::String(texts.join("\n")));
        }
        if let Some(Json::Array(calls)) = obj.get_mut("tool_calls") {
            for call in calls {
                if let Some(f) = call.get_mut("function") {
                    if let Some(Json::String(args)) = f.get("arguments") {
                        if let Ok(parsed) = serde_json::from_str::<Json>(args) {
                            f["arguments"] = parsed;
                        }
                    }
                }
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_separators_and_order() {
        let v: Json =
            serde_json::from_str(r#"{"b": 1, "a": [1, "x"], "c": {"d": "é"}}"#).unwrap_or_default();
        assert_eq!(
            python_json(&v),
            r#"{"b": 1, "a": [1, "x"], "c": {"d": "é"}}"#
        );
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
