//! The real binary on a loopback port, driven over HTTP: every endpoint, streaming and not,
//! the error cases, auth, client disconnects, CLI refusals, and SIGTERM during a stream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwen3-serve"));
    c.env("RUST_LOG", "info")
        .env_remove("ASCEND_RT_VISIBLE_DEVICES");
    c
}

/// Starts the server with `args` on a free port and waits for its "listening on" line.
fn start(args: &[&str]) -> Server {
    let mut child = bin()
        .args(["--port", "0", "--cpu-kv-cache-space", "0.05"])
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn server");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("listening on http://") {
                let rest = &line[i + "listening on http://".len()..];
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server started");
    Server { child, addr }
}

struct Resp {
    status: u16,
    headers: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `data:` payloads of an SSE body.
    fn events(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
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

fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
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
        body: String::from_utf8(body).expect("body is UTF-8"),
    }
}

fn post(addr: &str, path: &str, v: &Value) -> Resp {
    request(addr, "POST", path, &[], v.to_string().as_bytes())
}

fn get(addr: &str, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"")
}

fn error_of(r: &Resp, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    v
}

fn metric(addr: &str, name: &str) -> f64 {
    let m = get(addr, "/metrics").body;
    m.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

#[test]
fn endpoints_streaming_and_errors() {
    let srv = start(&[
        "--served-model-name",
        "Qwen3-30B",
        "--max-model-len",
        "256",
        "--max-num-seqs",
        "8",
    ]);
    let a = srv.addr.as_str();

    // The seed's curl line.
    let r = post(
        a,
        "/v1/completions",
        &json!({"model": "Qwen3-30B", "prompt": "请介绍一下你自己。", "max_tokens": 100, "temperature": 0.7}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().is_some_and(|s| s.starts_with("cmpl-")));
    assert!(v["choices"][0]["text"].is_string());
    assert!(["stop", "length"].contains(&v["choices"][0]["finish_reason"].as_str().unwrap_or("")));
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert!(r.headers.to_ascii_lowercase().contains("x-request-id"));

    // Prompt forms, n, echo, stop, logprobs, seed determinism.
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": ["Hello", "World"], "max_tokens": 3, "n": 2, "temperature": 1.0, "seed": 7}),
    );
    assert_eq!(r.json()["choices"].as_array().map(Vec::len), Some(4));
    let ids = post(a, "/tokenize", &json!({"prompt": "Hello world"})).json();
    let toks = ids["tokens"].clone();
    assert_eq!(ids["count"], 2);
    let by_ids = post(
        a,
        "/v1/completions",
        &json!({"prompt": toks, "max_tokens": 5, "temperature": 0}),
    );
    let by_text = post(
        a,
        "/v1/completions",
        &json!({"prompt": "Hello world", "max_tokens": 5, "temperature": 0}),
    );
    assert_eq!(
        by_ids.json()["choices"][0]["text"],
        by_text.json()["choices"][0]["text"]
    );
    let lists = post(
        a,
        "/v1/completions",
        &json!({"prompt": [toks.clone(), toks], "max_tokens": 2}),
    );
    assert_eq!(lists.json()["choices"].as_array().map(Vec::len), Some(2));
    let echo = post(
        a,
        "/v1/completions",
        &json!({"prompt": "Hello world", "max_tokens": 2, "echo": true}),
    )
    .json();
    assert!(echo["choices"][0]["text"]
        .as_str()
        .is_some_and(|t| t.starts_with("Hello world")));
    let lp = post(
        a,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 3, "logprobs": 2, "temperature": 0}),
    )
    .json();
    let l = &lp["choices"][0]["logprobs"];
    assert_eq!(l["tokens"].as_array().map(Vec::len), Some(3));
    assert_eq!(l["top_logprobs"][0].as_object().map(|o| o.len()), Some(2));
    let seeded = |s: u64| {
        post(
            a,
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 8, "temperature": 1.0, "seed": s}),
        )
        .json()["choices"][0]["text"]
            .clone()
    };
    assert_eq!(seeded(3), seeded(3));
    let stop_text = by_text.json()["choices"][0]["text"]
        .as_str()
        .unwrap_or("")
        .chars()
        .skip(2)
        .take(3)
        .collect::<String>();
    if !stop_text.is_empty() {
        let s = post(a, "/v1/completions", &json!({"prompt": "Hello world", "max_tokens": 5, "temperature": 0, "stop": [stop_text]})).json();
        assert_eq!(s["choices"][0]["finish_reason"], "stop", "{s}");
    }

    // Streaming completions with usage.
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let ev = r.events();
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&ev[ev.len() - 2]).expect("usage chunk");
    assert_eq!(usage["usage"]["completion_tokens"], 4);

    // Chat, streaming and not, with logprobs.
    let msgs =
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]);
    let c = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": msgs, "max_tokens": 5, "logprobs": true, "top_logprobs": 2}),
    )
    .json();
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        c["choices"][0]["logprobs"]["content"]
            .as_array()
            .map(Vec::len),
        Some(5)
    );
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": msgs, "max_completion_tokens": 3, "stream": true, "n": 2, "chat_template_kwargs": {"enable_thinking": false}}),
    );
    let ev = r.events();
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let first: Value = serde_json::from_str(&ev[0]).expect("chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(first["object"], "chat.completion.chunk");

    // Other endpoints.
    assert_eq!(get(a, "/health").status, 200);
    assert!(get(a, "/version").json()["version"].is_string());
    let m = get(a, "/v1/models").json();
    assert_eq!(m["data"][0]["id"], "Qwen3-30B");
    assert_eq!(m["data"][0]["max_model_len"], 256);
    let d = post(a, "/detokenize", &json!({"tokens": ids["tokens"]})).json();
    assert_eq!(d["prompt"], "Hello world");
    let metrics = get(a, "/metrics").body;
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        "vllm:num_preemptions_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:request_queue_time_seconds_bucket",
    ] {
        assert!(
            metrics.contains(&format!("{name}{{model_name=\"Qwen3-30B\"")),
            "missing {name}"
        );
    }

    // Errors, each in OpenAI's shape with the right status.
    error_of(
        &request(a, "POST", "/v1/completions", &[], b"{not json"),
        400,
    );
    let e = error_of(
        &post(
            a,
            "/v1/completions",
            &json!({"prompt": "x", "temperature": 5}),
        ),
        400,
    );
    assert_eq!(e["error"]["param"], "temperature");
    let long = "hello ".repeat(300);
    error_of(&post(a, "/v1/completions", &json!({"prompt": long})), 400);
    error_of(
        &post(
            a,
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": 1000}),
        ),
        400,
    );
    error_of(
        &post(
            a,
            "/v1/completions",
            &json!({"model": "nope", "prompt": "x"}),
        ),
        404,
    );
    error_of(
        &post(a, "/v1/completions", &json!({"prompt": "x", "suffix": "y"})),
        400,
    );
    error_of(
        &post(a, "/v1/completions", &json!({"prompt": "x", "best_of": 3})),
        400,
    );
    error_of(
        &post(
            a,
            "/v1/chat/completions",
            &json!({"messages": msgs, "guided_regex": "(unclosed"}),
        ),
        400,
    );
    error_of(
        &post(
            a,
            "/v1/chat/completions",
            &json!({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "tool_choice": "auto"}),
        ),
        400,
    );
    error_of(&get(a, "/v2/nothing"), 404);
    let big = vec![b' '; 33 << 20];
    error_of(&request(a, "POST", "/v1/completions", &[], &big), 413);
    let r = request(a, "GET", "/v1/models", &[("X-Request-Id", "my-id-42")], b"");
    assert!(r.headers.contains("my-id-42"), "{}", r.headers);

    // A client that disconnects mid-stream frees its request at once.
    let mut s = TcpStream::connect(a).expect("connect");
    let body =
        json!({"prompt": "Hi", "max_tokens": 200, "ignore_eos": true, "stream": true}).to_string();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).expect("send");
    let mut buf = [0u8; 512];
    let _ = s.read(&mut buf);
    drop(s);
    // Bounded wait, not a timing claim: the abort lands within two token writes, which a CI
    // machine loaded by parallel builds has been seen to stretch past 10 s.
    let t0 = Instant::now();
    while metric(a, "vllm:num_requests_running") != 0.0 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(a, "vllm:num_requests_running"), 0.0);
    assert_eq!(metric(a, "vllm:kv_cache_usage_perc"), 0.0);
    assert!(metric(a, "vllm:generation_tokens_total") < 1000.0 + 200.0);
}

#[test]
fn api_key_and_queue_bound() {
    let srv = start(&[
        "--api-key",
        "sekrit",
        "--max-num-seqs",
        "1",
        "--max-waiting-requests",
        "1",
    ]);
    let a = srv.addr.as_str();
    error_of(&get(a, "/v1/models"), 401);
    error_of(
        &request(
            a,
            "GET",
            "/v1/models",
            &[("Authorization", "Bearer wrong")],
            b"",
        ),
        401,
    );
    assert_eq!(
        request(
            a,
            "GET",
            "/v1/models",
            &[("Authorization", "Bearer sekrit")],
            b""
        )
        .status,
        200
    );
    assert_eq!(get(a, "/health").status, 200);
    assert_eq!(get(a, "/metrics").status, 200);
    // One running, one waiting: a third concurrent request is turned away with 429.
    let addr = srv.addr.clone();
    let body = json!({"prompt": "Hi", "max_tokens": 300, "ignore_eos": true}).to_string();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                request(
                    &addr,
                    "POST",
                    "/v1/completions",
                    &[("Authorization", "Bearer sekrit")],
                    body.as_bytes(),
                )
                .status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
}

#[test]
fn the_seed_command_line_and_its_refusals() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-qwen3"
    );
    // The deployment guide's line, binary swapped, on the fixture, on the CPU.
    let srv = start(&[
        fixture,
        "--host",
        "127.0.0.1",
        "--served-model-name",
        "Qwen3-30B",
        "--tensor-parallel-size",
        "2",
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "4096",
        "--max-num-seqs",
        "32",
        "--gpu-memory-utilization",
        "0.9",
        "--enable-prefix-caching",
        "--enable-chunked-prefill",
        "--download-dir",
        "/tmp/qwen3-serve-cache",
        "--device",
        "cpu",
    ]);
    let r = post(
        &srv.addr,
        "/v1/completions",
        &json!({"model": "Qwen3-30B", "prompt": "请介绍一下你自己。", "max_tokens": 8}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    drop(srv);

    let out = bin()
        .args([fixture, "--max-model-len", "256000", "--device", "cpu"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--rope-scaling") && err.contains("40960"),
        "{err}"
    );

    let srv = start(&[
        fixture,
        "--max-model-len",
        "256000",
        "--device",
        "cpu",
        "--cpu-kv-cache-space",
        "0.5",
        "--rope-scaling",
        r#"{"rope_type":"yarn","factor":8.0,"original_max_position_embeddings":32768}"#,
    ]);
    assert_eq!(
        get(&srv.addr, "/v1/models").json()["data"][0]["max_model_len"],
        256000
    );
    drop(srv);

    let out = bin()
        .args([fixture, "--tensor-parallel-size", "4", "--device", "npu"])
        .env("ASCEND_RT_VISIBLE_DEVICES", "0,1")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tensor-parallel-size 4") && err.contains("only 2"),
        "{err}"
    );

    let out = bin()
        .args([fixture, "--tensor-parallel-size", "3", "--device", "cpu"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("must divide"));

    let out = bin().args(["--max-num-seq", "3"]).output().expect("run");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--max-num-seqs"),
        "suggestion"
    );
}

#[cfg(unix)]
#[test]
fn sigterm_during_a_stream_ends_it_cleanly_and_exits_0() {
    let mut srv = start(&["--shutdown-grace-seconds", "1"]);
    let addr = srv.addr.clone();
    let client = std::thread::spawn(move || {
        post(
            &addr,
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 5000, "ignore_eos": true, "stream": true}),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let pid = srv.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = srv.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "did not exit within the grace period"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let r = client.join().expect("client");
    let ev = r.events();
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{}", r.body);
}

#[test]
fn bench_serve_against_the_server_writes_consistent_json() {
    let srv = start(&["--max-num-seqs", "4"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-qwen3/tokenizer.json"
    );
    let out = bin()
        .args([
            "bench",
            "serve",
            "--base-url",
            &format!("http://{}", srv.addr),
            "--tokenizer",
            tok,
        ])
        .args([
            "--random-input-len",
            "24",
            "--random-output-len",
            "8",
            "--random-range-ratio",
            "0.5",
        ])
        .args([
            "--num-prompts",
            "12",
            "--request-rate",
            "100",
            "--max-concurrency",
            "6",
            "--ignore-eos",
        ])
        .args([
            "--save-result",
            "--result-filename",
            "r.json",
            "--disable-tqdm",
            "--result-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("bench serve");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for label in [
        "Successful requests:",
        "Output token throughput (tok/s):",
        "Median TTFT (ms):",
        "P99 TPOT (ms):",
        "Mean ITL (ms):",
        "P90 E2EL (ms):",
    ] {
        assert!(stdout.contains(label), "missing {label}");
    }
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).expect("json"))
            .expect("parse");
    assert_eq!(
        r["completed"].as_u64().unwrap_or(0) + r["failed"].as_u64().unwrap_or(0),
        12
    );
    assert_eq!(r["completed"], 12);
    let outs: u64 = r["output_lens"]
        .as_array()
        .expect("lens")
        .iter()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(r["total_output_tokens"].as_u64(), Some(outs));
    let ins: Vec<u64> = r["input_lens"]
        .as_array()
        .expect("lens")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(r["total_input_tokens"].as_u64(), Some(ins.iter().sum()));
    assert!(ins.iter().all(|&n| (12..=36).contains(&n)), "{ins:?}");
    for k in ["ttft", "tpot", "itl", "e2el"] {
        let (m, p9, p99) = (
            r[format!("median_{k}_ms")].as_f64(),
            r[format!("p90_{k}_ms")].as_f64(),
            r[format!("p99_{k}_ms")].as_f64(),
        );
        assert!(m <= p9 && p9 <= p99, "{k}: {m:?} {p9:?} {p99:?}");
    }
    // 12 requests at 100 req/s (Poisson) take some tens of milliseconds to send at least.
    assert!(r["duration"].as_f64().unwrap_or(0.0) > 0.02);
}

#[test]
fn server_seed_makes_unseeded_requests_reproducible() {
    let run = || {
        let srv = start(&["--seed", "5"]);
        let body =
            json!({"prompt": "Hi", "max_tokens": 12, "temperature": 1.0, "top_k": 0, "top_p": 1.0});
        let a = post(&srv.addr, "/v1/completions", &body).json()["choices"][0]["text"].clone();
        let b = post(&srv.addr, "/v1/completions", &body).json()["choices"][0]["text"].clone();
        (a, b)
    };
    let (a1, b1) = run();
    let (a2, b2) = run();
    assert_eq!((&a1, &b1), (&a2, &b2));
}

/// transformers' prompt logprobs of the dense fixture (goldens/prompt_logprobs.json).
fn prompt_golden(case: &str) -> (Vec<u64>, Vec<f64>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/goldens/prompt_logprobs.json"
    );
    let g: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("goldens"))
        .expect("goldens json");
    let c = &g["models"]["tiny-qwen3"][case];
    let ids = c["prompt_ids"].as_array().expect("ids").iter();
    let lps = c["logprobs"].as_array().expect("logprobs").iter();
    (
        ids.filter_map(Value::as_u64).collect(),
        lps.filter_map(Value::as_f64).collect(),
    )
}

#[test]
fn echo_logprobs_and_prompt_logprobs_match_transformers() {
    // F32 weights and compute: transformers' log-softmax within 1e-4 (as the model tests).
    let srv = start(&[
        "--dtype",
        "float32",
        "--max-model-len",
        "256",
        "--max-num-batched-tokens",
        "16",
    ]);
    let a = srv.addr.as_str();
    let (long, long_lp) = prompt_golden("long");
    let (english, english_lp) = prompt_golden("english");
    let close = |got: &Value, want: f64, what: &str| {
        let g = got.as_f64().unwrap_or_else(|| panic!("{what}: {got}"));
        assert!((g - want).abs() < 1e-4, "{what}: {g} vs {want}");
    };

    // lm-evaluation-harness's loglikelihood request: batched token-id prompts, echo, one
    // logprob, one generated token; and the prompt-only form, max_tokens 0.
    for max_tokens in [1usize, 0] {
        let r = post(
            a,
            "/v1/completions",
            &json!({"prompt": [long, english], "echo": true, "logprobs": 1,
                    "max_tokens": max_tokens, "temperature": 0}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        for (i, (ids, want)) in [(&long, &long_lp), (&english, &english_lp)]
            .iter()
            .enumerate()
        {
            let c = &v["choices"][i];
            let lp = &c["logprobs"];
            let n = ids.len() + max_tokens;
            assert_eq!(
                lp["token_logprobs"].as_array().map(Vec::len),
                Some(n),
                "{c}"
            );
            assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
            for (p, w) in want.iter().enumerate() {
                close(
                    &lp["token_logprobs"][p + 1],
                    *w,
                    &format!("choice {i} token {}", p + 1),
                );
                let top = lp["top_logprobs"][p + 1].as_object().expect("top");
                assert!((1..=2).contains(&top.len()), "{top:?}");
            }
            let offsets: Vec<u64> = lp["text_offset"]
                .as_array()
                .expect("offsets")
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            assert_eq!(offsets.len(), n);
            assert_eq!(offsets[0], 0);
            assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
            let tokens: String = lp["tokens"].as_array().expect("tokens")[..ids.len()]
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(
                c["text"].as_str().is_some_and(|t| t.starts_with(&tokens)),
                "{c}"
            );
            if max_tokens == 0 {
                assert_eq!(c["text"].as_str(), Some(tokens.as_str()));
                assert_eq!(c["finish_reason"], "length");
            }
            assert!(c.get("prompt_logprobs").is_none(), "only when asked for");
        }
        let gen = v["usage"]["completion_tokens"].as_u64();
        assert_eq!(gen, Some(2 * max_tokens as u64));
    }

    // Streamed: the echo chunk carries the prompt's logprobs, then the generated token's.
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": english, "echo": true, "logprobs": 1, "max_tokens": 1,
                "stream": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk"))
        .collect();
    let echo = &chunks[0]["choices"][0]["logprobs"];
    assert_eq!(
        echo["token_logprobs"].as_array().map(Vec::len),
        Some(english.len())
    );
    assert!(echo["token_logprobs"][0].is_null());
    for (p, w) in english_lp.iter().enumerate() {
        close(
            &echo["token_logprobs"][p + 1],
            *w,
            &format!("streamed token {}", p + 1),
        );
    }
    let gen: usize = chunks[1..]
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["token_logprobs"].as_array())
        .map(Vec::len)
        .sum();
    assert_eq!(gen, 1, "{chunks:?}");

    // vLLM's prompt_logprobs: null first, then token id -> {logprob, rank, decoded_token}.
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": english, "prompt_logprobs": 3, "max_tokens": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let pl = r.json()["choices"][0]["prompt_logprobs"].clone();
    let pl = pl.as_array().expect("prompt_logprobs");
    assert_eq!(pl.len(), english.len());
    assert!(pl[0].is_null());
    for (p, w) in english_lp.iter().enumerate() {
        let m = pl[p + 1].as_object().expect("a map");
        let own = &m[&english[p + 1].to_string()];
        close(&own["logprob"], *w, &format!("prompt_logprobs {}", p + 1));
        assert!(own["rank"].as_u64().is_some_and(|r| r >= 1), "{own}");
        assert!(own["decoded_token"].is_string());
        assert!((3..=4).contains(&m.len()), "{m:?}");
        let ranks: Vec<u64> = m.values().filter_map(|e| e["rank"].as_u64()).collect();
        for k in 1..=3 {
            assert!(ranks.contains(&k), "{ranks:?}");
        }
    }

    // Chat: the templated prompt's, at the top level.
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "prompt_logprobs": 0,
                "max_tokens": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let n = v["usage"]["prompt_tokens"].as_u64().expect("usage") as usize;
    let pl = v["prompt_logprobs"].as_array().expect("prompt_logprobs");
    assert_eq!(pl.len(), n);
    assert!(
        pl[0].is_null()
            && pl[1..]
                .iter()
                .all(|m| m.as_object().is_some_and(|m| m.len() == 1))
    );

    // Limits, as vLLM's.
    for (body, param) in [
        (json!({"prompt": "x", "logprobs": 21}), "logprobs"),
        (
            json!({"prompt": "x", "prompt_logprobs": 21}),
            "prompt_logprobs",
        ),
        (
            json!({"prompt": "x", "prompt_logprobs": 1, "stream": true}),
            "prompt_logprobs",
        ),
        (json!({"prompt": "x", "max_tokens": 0}), "max_tokens"),
    ] {
        let e = error_of(&post(a, "/v1/completions", &body), 400);
        assert_eq!(e["error"]["param"], param, "{e}");
    }
    let e = error_of(
        &post(
            a,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Hi"}], "logprobs": true,
                    "top_logprobs": 21}),
        ),
        400,
    );
    assert_eq!(e["error"]["param"], "top_logprobs", "{e}");
}
