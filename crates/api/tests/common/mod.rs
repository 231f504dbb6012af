//! A real server on a loopback port: the router over the real engine running the engine
//! crate's fake executor (outputs scripted by a marker in the prompt), the Qwen3 tokenizer
//! and chat template fixtures, and a hand-written HTTP/1.1 client.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use qwen3_api::{
    router, serve_with, ApiConfig, AppState, ChatTemplate, ConnLimits, NpuTelemetry,
    SamplingDefaults,
};
use qwen3_engine::fake_executor::{hash_token_fn, FakeControl, FakeExecutor, TokenFn};
use qwen3_engine::{EngineConfig, EngineHandle};
use serde_json::Value;
use tokenizers::Tokenizer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const IM_END: u32 = 151_645;
pub const ENDOFTEXT: u32 = 151_643;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen3")
}

pub fn tokenizer() -> Arc<Tokenizer> {
    static TOK: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        Arc::new(
            Tokenizer::from_file(fixtures().join("tokenizer.json"))
                .unwrap_or_else(|e| panic!("fixture tokenizer: {e}")),
        )
    })
    .clone()
}

/// The structured-output compiler for the fixture tokenizer (built once: the token trie of
/// a 151k vocabulary is not free).
pub fn structured() -> Arc<qwen3_guided::Compiler> {
    static C: OnceLock<Arc<qwen3_guided::Compiler>> = OnceLock::new();
    C.get_or_init(|| {
        let tok = tokenizer();
        let vocab = tok.get_vocab_size(true);
        Arc::new(
            qwen3_guided::compiler_for(
                &fixtures().join("tokenizer.json"),
                tok,
                vocab,
                &[IM_END, ENDOFTEXT],
                qwen3_guided::CompilerLimits::default(),
            )
            .unwrap_or_else(|e| panic!("structured-output compiler: {e}")),
        )
    })
    .clone()
}

/// What the fake model says when the prompt contains `#script:<name>#`.
pub fn script(name: &str) -> &'static str {
    match name {
        "plain" => "Hello! 你好 🌍",
        "think" => "<think>\nHmm, 2<3 is true.\n</think>\n\nYes, 2 is less than 3.",
        "tool" => "<think>\nThe user wants the weather.\n</think>\n\nLet me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\",\"unit\":\"celsius\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"Europe/Paris\"}}\n</tool_call>",
        "stop" => "one two three STOP four five",
        _ => "",
    }
}

/// Token ids of a script, ending with `<|im_end|>`.
pub fn script_ids(name: &str) -> Vec<u32> {
    let tok = tokenizer();
    let mut ids = tok
        .encode(script(name), false)
        .map(|e| e.get_ids().to_vec())
        .unwrap_or_default();
    ids.push(IM_END);
    ids
}

/// The fake model: scripted by a marker in the prompt, else a hash of the history.
fn token_fn(vocab: u32) -> TokenFn {
    let tok = tokenizer();
    let fallback = hash_token_fn(vocab);
    Arc::new(move |h: &[u32], np: usize| {
        let prompt = tok.decode(&h[..np], false).unwrap_or_default();
        let name = prompt
            .split("#script:")
            .nth(1)
            .and_then(|rest| rest.split('#').next())
            .unwrap_or("");
        if script(name).is_empty() {
            // Unscripted: any id but the EOS ones, so max_tokens decides the length.
            let t = fallback(h, np);
            return if t == IM_END || t == ENDOFTEXT {
                100
            } else {
                t
            };
        }
        let ids = script_ids(name);
        ids.get(h.len() - np).copied().unwrap_or(IM_END)
    })
}

pub struct Opts {
    pub api_key: Option<String>,
    pub reasoning: bool,
    pub tools: bool,
    pub auto_tools: bool,
    pub max_model_len: usize,
    pub max_num_seqs: usize,
    pub max_waiting: usize,
    pub max_body_bytes: usize,
    pub defaults: SamplingDefaults,
    pub template: bool,
    pub limits: ConnLimits,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            api_key: None,
            reasoning: false,
            tools: false,
            auto_tools: false,
            max_model_len: 512,
            max_num_seqs: 16,
            max_waiting: 1000,
            max_body_bytes: 32 << 20,
            defaults: SamplingDefaults::default(),
            template: true,
            limits: ConnLimits::default(),
        }
    }
}

pub struct TestServer {
    pub addr: String,
    pub health: Arc<qwen3_api::Health>,
    pub engine: EngineHandle,
    pub control: Arc<FakeControl>,
    /// What the NPU sampler would publish; tests publish samples by hand.
    pub npu: Arc<NpuTelemetry>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.engine.shutdown(Duration::from_millis(10));
    }
}

pub async fn start(o: Opts) -> TestServer {
    let tok = tokenizer();
    let vocab = tok.get_vocab_size(true) as u32;
    let config = EngineConfig {
        block_size: 16,
        num_blocks: 1024,
        max_num_seqs: o.max_num_seqs,
        max_num_batched_tokens: 1024,
        max_model_len: o.max_model_len,
        enable_prefix_caching: true,
        enable_chunked_prefill: true,
        max_waiting_requests: o.max_waiting,
        eos_token_ids: vec![IM_END, ENDOFTEXT],
        async_scheduling: false,
    };
    let fake = FakeExecutor::new(config.block_size, config.num_blocks, vocab)
        .with_token_fn(token_fn(vocab));
    let control = fake.control();
    let structured = structured();
    let core = qwen3_engine::EngineCore::new(config, Box::new(fake), tok.clone())
        .unwrap_or_else(|e| panic!("engine: {e}"))
        .with_structured(Arc::clone(&structured));
    let engine = EngineHandle::start_core(core).unwrap_or_else(|e| panic!("engine: {e}"));
    let template = o.template.then(|| {
        ChatTemplate::from_model_dir(&fixtures()).unwrap_or_else(|e| panic!("template: {e}"))
    });
    let npu = Arc::new(NpuTelemetry::default());
    let health = Arc::new(qwen3_api::Health::default());
    let state = Arc::new(AppState {
        config: ApiConfig {
            served_model_names: vec!["qwen3-test".into(), "alias".into()],
            model_root: fixtures().display().to_string(),
            max_model_len: o.max_model_len,
            api_key: o.api_key,
            reasoning_parser: o.reasoning,
            tool_parser: o.tools,
            enable_auto_tool_choice: o.auto_tools,
            defaults: o.defaults,
            max_body_bytes: o.max_body_bytes,
            default_seed: None,
            max_logprobs: qwen3_api::openai::MAX_LOGPROBS,
        },
        engine: engine.clone(),
        tokenizer: tok,
        template,
        npu: Arc::clone(&npu),
        health: health.clone(),
        structured: Some(structured),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_with(listener, router(state), o.limits, async move {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        health,
        engine,
        control,
        npu,
        stop: Some(stop),
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// The `data:` payloads of an SSE body; checks the framing (`data: x\n\n`).
    pub fn events(&self) -> Vec<String> {
        assert_eq!(self.status, 200, "{}", self.body);
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("text/event-stream")),
            "{}",
            self.headers
        );
        let mut out = Vec::new();
        for block in self.body.split("\n\n").filter(|b| !b.is_empty()) {
            let data = block
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad event {block:?}"));
            assert!(!data.contains('\n'), "multi-line event {block:?}");
            out.push(data.to_string());
        }
        out
    }

    /// The JSON events before `[DONE]`, which must come last.
    pub fn chunks(&self) -> Vec<Value> {
        let ev = self.events();
        assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{ev:?}");
        ev[..ev.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap_or_else(|x| panic!("{x}: {e}")))
            .collect()
    }

    /// Asserts an OpenAI-shaped error with this status; returns `error`.
    pub fn error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        let e = v["error"].clone();
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e
    }
}

fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&rest[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = pos + 2;
        out.extend_from_slice(&rest[start..(start + size).min(rest.len())]);
        rest = &rest[(start + size + 2).min(rest.len())..];
    }
    out
}

pub fn head(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: usize,
) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {body_len}\r\n");
    if body_len > 0 {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let head = head(addr, method, path, headers, body.len());
    s.write_all(head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    // The server may answer (413) before reading everything.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "timed out reading {method} {path}");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let headers = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[(split + 4).min(raw.len())..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Resp {
        status,
        headers,
        body: String::from_utf8(body).unwrap_or_else(|e| panic!("body is not UTF-8: {e}")),
    }
}

pub async fn post(addr: &str, path: &str, v: &Value) -> Resp {
    request(addr, "POST", path, &[], v.to_string().as_bytes()).await
}

pub async fn get(addr: &str, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"").await
}

/// A sample of a Prometheus metric (first line starting with `prefix`).
pub async fn metric(addr: &str, prefix: &str) -> f64 {
    let m = get(addr, "/metrics").await.body;
    m.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

pub fn user(text: &str) -> Value {
    serde_json::json!([{"role": "user", "content": text}])
}
