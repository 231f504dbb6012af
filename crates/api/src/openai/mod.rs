//! The OpenAI API's types, with vLLM's extras: requests (parsed field by field so every bad
//! field is a 400 naming it in `param`), their validation, and the responses and stream
//! chunks, shaped as OpenAI's (and vLLM's) are.
//!
//! Unknown request fields are ignored, as the OpenAI SDKs send fields a server may not know;
//! `null` counts as absent. Fields that would change the output but that this server does
//! not implement (beam search, ...) are refused with a clear 400 instead of being silently
//! ignored. Structured-output fields are parsed in [`structured`].

use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use crate::chat_template::normalize_messages;
use crate::error::ApiError;
use qwen3_engine::batch::SamplingParams;
use qwen3_engine::EngineRequest;

/// Most choices one request may ask for (each is a sequence in the engine).
pub const MAX_N: u32 = 128;
/// Most top logprobs per token: vLLM's default `--max-logprobs`.
pub const MAX_LOGPROBS: u32 = 20;

/// A logprobs count against `--max-logprobs`, with vLLM's wording.
fn check_logprobs(key: &str, what: &str, n: Option<u32>, max: u32) -> Result<(), ApiError> {
    match n {
        Some(n) if n > max => Err(ApiError::invalid(
            key,
            format!(
                "Requested {what} logprobs of {n}, which is greater than max allowed: {max} \
                 (`{key}`; the server's --max-logprobs)"
            ),
        )),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Request parsing

#[cfg(test)]
thread_local! {
    /// The field names parsers read, for the test that keeps the OpenAPI schemas in step.
    pub(crate) static READ_FIELDS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A request body as a JSON object whose fields are taken one by one.
pub struct Fields {
    obj: Map<String, Json>,
}

impl Fields {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        match serde_json::from_slice::<Json>(body) {
            Ok(Json::Object(obj)) => Ok(Self { obj }),
            Ok(_) => Err(ApiError::bad_request(
                "the request body must be a JSON object",
            )),
            Err(e) => Err(ApiError::bad_request(format!(
                "the request body is not valid JSON: {e}"
            ))),
        }
    }

    pub fn from_map(obj: Map<String, Json>) -> Self {
        Self { obj }
    }

    /// The raw value of a field; `null` is absent. A float with no fractional part becomes
    /// an integer, as pydantic's lax mode (and so vLLM) takes `"max_tokens": 4.0` for 4;
    /// float fields read integers unchanged.
    pub fn raw(&mut self, key: &str) -> Option<Json> {
        #[cfg(test)]
        READ_FIELDS.with(|r| r.borrow_mut().push(key.to_string()));
        self.obj
            .remove(key)
            .filter(|v| !v.is_null())
            .map(|v| match v.as_f64() {
                Some(x) if v.is_f64() && x.fract() == 0.0 && x.abs() < 9.007e15 => {
                    Json::from(x as i64)
                }
                _ => v,
            })
    }

    pub fn opt<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, ApiError> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| ApiError::invalid(key, format!("invalid `{key}`: {e}"))),
        }
    }

    pub fn req<T: DeserializeOwned>(&mut self, key: &str) -> Result<T, ApiError> {
        self.opt(key)?
            .ok_or_else(|| ApiError::invalid(key, format!("`{key}` is required")))
    }

    /// Refuses a field that is present (and not `null`, `false`, or `default`).
    fn refuse(&mut self, key: &str, what: &str, allowed: &[Json]) -> Result<(), ApiError> {
        match self.raw(key) {
            Some(v) if !allowed.contains(&v) => Err(ApiError::unsupported(key, what)),
            _ => Ok(()),
        }
    }
}

fn check_range(
    key: &str,
    v: Option<f32>,
    ok: impl Fn(f32) -> bool,
    range: &str,
) -> Result<(), ApiError> {
    match v {
        Some(x) if !ok(x) => Err(ApiError::invalid(
            key,
            format!("`{key}` must be in {range}, got {x}"),
        )),
        _ => Ok(()),
    }
}

/// An integer seed of either sign (vLLM accepts negative seeds); kept as its 64 bits.
fn parse_seed(f: &mut Fields) -> Result<Option<u64>, ApiError> {
    match f.raw("seed") {
        None => Ok(None),
        Some(Json::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|i| i as u64))
            .map(Some)
            .ok_or_else(|| ApiError::invalid("seed", "`seed` must be an integer")),
        Some(_) => Err(ApiError::invalid("seed", "`seed` must be an integer")),
    }
}

fn parse_stop(f: &mut Fields) -> Result<Vec<String>, ApiError> {
    let stop = match f.raw("stop") {
        None => Vec::new(),
        Some(Json::String(s)) => vec![s],
        Some(Json::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Json::String(s) => Ok(s),
                _ => Err(ApiError::invalid(
                    "stop",
                    "`stop` must be a string or a list of strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "`stop` must be a string or a list of strings",
            ))
        }
    };
    // An empty stop string would match at once; OpenAI ignores them.
    Ok(stop.into_iter().filter(|s| !s.is_empty()).collect())
}

/// The sampling and stopping fields both endpoints share, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingRequest {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: Option<f32>,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    pub n: u32,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub include_stop_str_in_output: bool,
    pub ignore_eos: bool,
    pub min_tokens: u32,
    pub skip_special_tokens: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// vLLM's `prompt_logprobs`: top logprobs per prompt token besides its own.
    pub prompt_logprobs: Option<u32>,
    /// `response_format`, `structured_outputs` or a `guided_*` field (compiled by the route).
    pub structured: Option<StructuredRequest>,
    /// vLLM's `return_token_ids`: the prompt's and each choice's token ids in the response.
    pub return_token_ids: bool,
    /// vLLM's `return_tokens_as_token_ids`: logprobs name tokens `token_id:N`.
    pub return_tokens_as_token_ids: bool,
}

impl Default for SamplingRequest {
    fn default() -> Self {
        Self {
            temperature: None,
            top_p: None,
            top_k: None,
            min_p: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: None,
            logit_bias: Vec::new(),
            seed: None,
            n: 1,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            include_stop_str_in_output: false,
            ignore_eos: false,
            min_tokens: 0,
            skip_special_tokens: true,
            stream: false,
            include_usage: false,
            prompt_logprobs: None,
            structured: None,
            return_token_ids: false,
            return_tokens_as_token_ids: false,
        }
    }
}

/// Sampling defaults from the model's generation_config.json (vLLM's
/// `--generation-config auto`), used where a request is silent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl SamplingRequest {
    pub fn parse(f: &mut Fields) -> Result<Self, ApiError> {
        let temperature = f.opt::<f32>("temperature")?;
        check_range(
            "temperature",
            temperature,
            |x| (0.0..=2.0).contains(&x),
            "[0, 2]",
        )?;
        let top_p = f.opt::<f32>("top_p")?;
        check_range("top_p", top_p, |x| x > 0.0 && x <= 1.0, "(0, 1]")?;
        let top_k = f.opt::<i64>("top_k")?;
        if let Some(k) = top_k {
            if k < -1 || k > i64::from(u32::MAX) {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("`top_k` must be -1 or 0 (disabled) or a positive count, got {k}"),
                ));
            }
        }
        let min_p = f.opt::<f32>("min_p")?;
        check_range("min_p", min_p, |x| (0.0..=1.0).contains(&x), "[0, 1]")?;
        let presence_penalty = f.opt::<f32>("presence_penalty")?;
        check_range(
            "presence_penalty",
            presence_penalty,
            |x| (-2.0..=2.0).contains(&x),
            "[-2, 2]",
        )?;
        let frequency_penalty = f.opt::<f32>("frequency_penalty")?;
        check_range(
            "frequency_penalty",
            frequency_penalty,
            |x| (-2.0..=2.0).contains(&x),
            "[-2, 2]",
        )?;
        let repetition_penalty = f.opt::<f32>("repetition_penalty")?;
        check_range(
            "repetition_penalty",
            repetition_penalty,
            |x| x > 0.0 && x <= 2.0,
            "(0, 2]",
        )?;
        let mut logit_bias = Vec::new();
        for (k, v) in f
            .opt::<Map<String, Json>>("logit_bias")?
            .unwrap_or_default()
        {
            let id: u32 = k.trim().parse().map_err(|_| {
                ApiError::invalid(
                    "logit_bias",
                    format!("`logit_bias` key {k:?} is not a token id"),
                )
            })?;
            let bias = v
                .as_f64()
                .filter(|b| (-100.0..=100.0).contains(b))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "logit_bias",
                        "`logit_bias` values must be numbers in [-100, 100]",
                    )
                })?;
            logit_bias.push((id, bias as f32));
        }
        let seed = parse_seed(f)?;
        let n = f.opt::<u32>("n")?.unwrap_or(1);
        if n == 0 || n > MAX_N {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be between 1 and {MAX_N}, got {n}"),
            ));
        }
        let stop = parse_stop(f)?;
        let stream = f.opt::<bool>("stream")?.unwrap_or(false);
        let include_usage = match f.opt::<Map<String, Json>>("stream_options")? {
            None => false,
            Some(_) if !stream => {
                return Err(ApiError::invalid(
                    "stream_options",
                    "`stream_options` can only be given when `stream` is true",
                ))
            }
            Some(o) => o
                .get("include_usage")
                .and_then(Json::as_bool)
                .unwrap_or(false),
        };
        // vLLM extras that need machinery this server does not have.
        f.refuse("use_beam_search", "beam search", &[Json::Bool(false)])?;
        let prompt_logprobs = f.opt::<u32>("prompt_logprobs")?;
        if prompt_logprobs.is_some() && stream {
            // As vLLM: prompt logprobs are only returned whole.
            return Err(ApiError::invalid(
                "prompt_logprobs",
                "`prompt_logprobs` are not available when `stream` is true",
            ));
        }
        let structured = parse_structured(f)?;
        let return_token_ids = f.opt::<bool>("return_token_ids")?.unwrap_or(false);
        let _user = f.opt::<String>("user")?;
        Ok(Self {
            temperature,
            top_p,
            top_k,
            min_p,
            presence_penalty: presence_penalty.unwrap_or(0.0),
            frequency_penalty: frequency_penalty.unwrap_or(0.0),
            repetition_penalty,
            logit_bias,
            seed,
            n,
            stop,
            stop_token_ids: f.opt("stop_token_ids")?.unwrap_or_default(),
            include_stop_str_in_output: f.opt("include_stop_str_in_output")?.unwrap_or(false),
            ignore_eos: f.opt("ignore_eos")?.unwrap_or(false),
            min_tokens: f.opt("min_tokens")?.unwrap_or(0),
            skip_special_tokens: f.opt("skip_special_tokens")?.unwrap_or(true),
            stream,
            include_usage,
            prompt_logprobs,
            structured,
            return_token_ids,
            return_tokens_as_token_ids: f
                .opt::<bool>("return_tokens_as_token_ids")?
                .unwrap_or(false),
        })
    }

    /// The engine request for one choice (id and prompt are filled in by the caller).
    /// Fields the request leaves out take the model's defaults, then OpenAI's.
    pub fn engine_request(
        &self,
        defaults: &SamplingDefaults,
        max_tokens: Option<u32>,
        logprobs: Option<u32>,
    ) -> Result<EngineRequest, ApiError> {
        if let Some(max) = max_tokens {
            if self.min_tokens > max {
                return Err(ApiError::invalid(
                    "min_tokens",
                    format!(
                        "`min_tokens` ({}) is larger than `max_tokens` ({max})",
                        self.min_tokens
                    ),
                ));
            }
        }
        let top_k = self.top_k.or(defaults.top_k).unwrap_or(0);
        Ok(EngineRequest {
            request_id: String::new(),
            prompt_token_ids: Vec::new(),
            sampling: SamplingParams {
                temperature: self.temperature.or(defaults.temperature).unwrap_or(1.0),
                top_p: self.top_p.or(defaults.top_p).unwrap_or(1.0),
                top_k: u32::try_from(top_k).unwrap_or(0),
                min_p: self.min_p.or(defaults.min_p).unwrap_or(0.0),
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                repetition_penalty: self
                    .repetition_penalty
                    .or(defaults.repetition_penalty)
                    .unwrap_or(1.0),
                logit_bias: self.logit_bias.clone(),
                seed: self.seed,
                logprobs,
                prompt_logprobs: self.prompt_logprobs,
                // Set by the route once the constraint has compiled.
                structured: None,
            },
            max_tokens,
            min_tokens: self.min_tokens,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            ignore_eos: self.ignore_eos,
            include_stop_str_in_output: self.include_stop_str_in_output,
            skip_special_tokens: self.skip_special_tokens,
        })
    }
}

/// vLLM's `best_of`: only 1 (beam-less sampling of several and keeping the best is not
/// implemented).
fn parse_best_of(f: &mut Fields) -> Result<(), ApiError> {
    match f.opt::<u32>("best_of")? {
        None | Some(1) => Ok(()),
        Some(_) => Err(ApiError::unsupported("best_of", "`best_of` other than 1")),
    }
}

fn parse_max_tokens(f: &mut Fields, key: &str) -> Result<Option<u32>, ApiError> {
    match f.opt::<u32>(key)? {
        Some(0) => Err(ApiError::invalid(
            key,
            format!("`{key}` must be at least 1"),
        )),
        m => Ok(m),
    }
}

/// `prompt` of /v1/completions.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

impl Prompt {
    fn parse(v: Json) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::invalid(
                "prompt",
                "`prompt` must be a string, a list of strings, a list of token ids or a list of \
                 lists of token ids",
            )
        };
        let p = match v {
            Json::String(s) => Prompt::Text(s),
            Json::Array(items) if items.is_empty() => {
                return Err(ApiError::invalid("prompt", "`prompt` is empty"))
            }
            Json::Array(items) => match &items[0] {
                Json::String(_) => {
                    Prompt::Texts(serde_json::from_value(Json::Array(items)).map_err(|_| bad())?)
                }
                Json::Number(_) => {
                    Prompt::Ids(serde_json::from_value(Json::Array(items)).map_err(|_| bad())?)
                }
                Json::Array(_) => {
                    Prompt::IdLists(serde_json::from_value(Json::Array(items)).map_err(|_| bad())?)
                }
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        let empty = match &p {
            Prompt::Text(_) => false,
            Prompt::Texts(t) => t.is_empty(),
            Prompt::Ids(ids) => ids.is_empty(),
            Prompt::IdLists(l) => l.is_empty() || l.iter().any(Vec::is_empty),
        };
        if empty {
            return Err(ApiError::invalid("prompt", "`prompt` is empty"));
        }
        Ok(p)
    }
}

/// POST /v1/completions.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    /// 0 only with `echo`: return the prompt alone.
    pub max_tokens: u32,
    pub logprobs: Option<u32>,
    pub echo: bool,
    /// vLLM's extra: add the tokenizer's special tokens (BOS) to text prompts.
    pub add_special_tokens: bool,
    pub sampling: SamplingRequest,
}

impl CompletionRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let mut f = Fields::parse(body)?;
        let model = f.opt("model")?;
        let prompt = Prompt::parse(
            f.raw("prompt")
                .ok_or_else(|| ApiError::invalid("prompt", "`prompt` is required"))?,
        )?;
        // 0 is allowed with `echo`: the prompt alone (with its logprobs), as vLLM does.
        let max_tokens = f.opt::<u32>("max_tokens")?.unwrap_or(16);
        let logprobs = f.opt::<u32>("logprobs")?;
        let echo = f.opt::<bool>("echo")?.unwrap_or(false);
        if max_tokens == 0 && !echo {
            return Err(ApiError::invalid(
                "max_tokens",
                "`max_tokens` must be at least 1 (0 only with `echo`)",
            ));
        }
        parse_best_of(&mut f)?;
        if f.raw("suffix").is_some() {
            return Err(ApiError::unsupported("suffix", "`suffix` (insertion)"));
        }
        let add_special_tokens = f.opt::<bool>("add_special_tokens")?.unwrap_or(true);
        let sampling = SamplingRequest::parse(&mut f)?;
        Ok(Self {
            model,
            prompt,
            max_tokens,
            logprobs,
            echo,
            add_special_tokens,
            sampling,
        })
    }
}

impl CompletionRequest {
    /// The logprobs counts against the server's `--max-logprobs`.
    pub fn check_limits(&self, max_logprobs: u32) -> Result<(), ApiError> {
        check_logprobs("logprobs", "sample", self.logprobs, max_logprobs)?;
        check_logprobs(
            "prompt_logprobs",
            "prompt",
            self.sampling.prompt_logprobs,
            max_logprobs,
        )
    }
}

/// `tool_choice` of /v1/chat/completions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Function(String),
}

/// POST /v1/chat/completions.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: Option<String>,
    /// Normalised for the template: text parts joined, tool-call arguments parsed.
    pub messages: Vec<Json>,
    pub max_tokens: Option<u32>,
    /// `Some(top_logprobs)` when `logprobs` is true.
    pub logprobs: Option<u32>,
    pub tools: Option<Vec<Json>>,
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: bool,
    pub chat_template_kwargs: Map<String, Json>,
    pub add_generation_prompt: bool,
    pub continue_final_message: bool,
    pub sampling: SamplingRequest,
}

fn tool_name(tool: &Json) -> Option<&str> {
    tool.get("function")?.get("name")?.as_str()
}

impl ChatRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let mut f = Fields::parse(body)?;
        let model = f.opt("model")?;
        let messages: Vec<Json> = f.req("messages")?;
        if messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty",
            ));
        }
        let messages =
            normalize_messages(&messages).map_err(|e| ApiError::invalid("messages", e))?;
        let max_tokens = match parse_max_tokens(&mut f, "max_completion_tokens")? {
            Some(m) => Some(m),
            None => parse_max_tokens(&mut f, "max_tokens")?,
        };
        let logprobs = f.opt::<bool>("logprobs")?.unwrap_or(false);
        let top_logprobs = f.opt::<u32>("top_logprobs")?;
        if top_logprobs.is_some() && !logprobs {
            return Err(ApiError::invalid(
                "top_logprobs",
                "when using `top_logprobs`, `logprobs` must be set to true",
            ));
        }
        let mut tools = f.opt::<Vec<Json>>("tools")?;
        for t in tools.iter().flatten() {
            let parameters = t.get("function").and_then(|f| f.get("parameters"));
            if parameters.is_some_and(|p| !p.is_object() && !p.is_null()) {
                return Err(ApiError::invalid(
                    "tools",
                    "a tool's `function.parameters` must be a JSON Schema object",
                ));
            }
            if tool_name(t).is_none() {
                return Err(ApiError::invalid(
                    "tools",
                    "each tool must be {\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": ...}}",
                ));
            }
        }
        // As vLLM: tools without tool_choice mean "auto"; "required" with no tools is "none".
        let tool_choice = match f.raw("tool_choice") {
            None if tools.as_ref().is_some_and(|t| !t.is_empty()) => ToolChoice::Auto,
            None => ToolChoice::None,
            Some(Json::String(s)) if s == "none" => ToolChoice::None,
            Some(Json::String(s)) if s == "auto" || s == "required" => {
                if tools.is_none() {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "when using `tool_choice`, `tools` must be set",
                    ));
                }
                if tools.as_ref().is_some_and(Vec::is_empty) {
                    tools = None;
                    ToolChoice::None
                } else if s == "auto" {
                    ToolChoice::Auto
                } else {
                    ToolChoice::Required
                }
            }
            Some(Json::Object(o)) => {
                let name = o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Json::as_str)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "tool_choice",
                            "a named `tool_choice` is {\"type\": \"function\", \"function\": {\"name\": \"my_function\"}}",
                        )
                    })?;
                if !tools.iter().flatten().any(|t| tool_name(t) == Some(name)) {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("the tool {name:?} named in `tool_choice` is not among `tools`"),
                    ));
                }
                ToolChoice::Function(name.to_string())
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "`tool_choice` must be \"none\", \"auto\", \"required\" or a named function",
                ))
            }
        };
        let parallel_tool_calls = f.opt::<bool>("parallel_tool_calls")?.unwrap_or(true);
        let chat_template_kwargs: Map<String, Json> =
            f.opt("chat_template_kwargs")?.unwrap_or_default();
        if chat_template_kwargs
            .get("enable_thinking")
            .is_some_and(|v| !v.is_boolean() && !v.is_null())
        {
            return Err(ApiError::invalid(
                "chat_template_kwargs",
                "`chat_template_kwargs.enable_thinking` must be true or false",
            ));
        }
        // As completions: `echo` must be a boolean; echoing the last message is not done.
        if f.opt::<bool>("echo")?.unwrap_or(false) {
            return Err(ApiError::unsupported("echo", "`echo` in chat"));
        }
        parse_best_of(&mut f)?;
        let add_generation_prompt = f.opt::<bool>("add_generation_prompt")?.unwrap_or(true);
        let continue_final_message = f.opt::<bool>("continue_final_message")?.unwrap_or(false);
        if add_generation_prompt && continue_final_message {
            return Err(ApiError::invalid(
                "continue_final_message",
                "`continue_final_message` needs `add_generation_prompt` set to false",
            ));
        }
        f.refuse("chat_template", "a chat template given in the request", &[])?;
        let sampling = SamplingRequest::parse(&mut f)?;
        Ok(Self {
            model,
            messages,
            max_tokens,
            logprobs: logprobs.then(|| top_logprobs.unwrap_or(0)),
            tools,
            tool_choice,
            parallel_tool_calls,
            chat_template_kwargs,
            add_generation_prompt,
            continue_final_message,
            sampling,
        })
    }
}

impl ChatRequest {
    /// The logprobs counts against the server's `--max-logprobs`.
    pub fn check_limits(&self, max_logprobs: u32) -> Result<(), ApiError> {
        check_logprobs("top_logprobs", "sample", self.logprobs, max_logprobs)?;
        check_logprobs(
            "prompt_logprobs",
            "prompt",
            self.sampling.prompt_logprobs,
            max_logprobs,
        )
    }
}

mod response;
mod structured;
pub use response::*;
use structured::parse_structured;
pub use structured::StructuredRequest;

#[cfg(test)]
mod tests;
