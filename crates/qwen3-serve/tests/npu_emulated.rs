//! The real binary on the emulated CANN (crates/cann-emu, found through LD_LIBRARY_PATH as a
//! real installation would be): `--device npu` and `--device auto` pick the NPU and give the
//! CPU's greedy text, the server answers on it, `doctor` passes (as text and as JSON), and
//! two processes serve one model as two pipeline stages.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn fixture() -> String {
    format!(
        // Real Qwen3's head_dim 128: the BF16 runs go through fused attention, whose TND
        // layout takes head_dim 64/128/192 only.
        "{}/../../tests/fixtures/tiny-qwen3-hd128",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The binary with CANN's environment pointing at the emulator only.
fn bin_on_emulator() -> Command {
    let dir = cann_emu::harness::lib_dir().expect("emulator built");
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwen3-serve"));
    c.env("RUST_LOG", "info")
        .env("LD_LIBRARY_PATH", &dir)
        .env("CANN_EMU_DEVICES", "2")
        // Emulated HBM is host memory the KV cache really takes: keep it small.
        .env("CANN_EMU_HBM_BYTES", (256u64 << 20).to_string())
        .env_remove("ASCEND_TOOLKIT_HOME")
        .env_remove("ASCEND_HOME_PATH")
        .env_remove("ASCEND_RT_VISIBLE_DEVICES");
    c
}

fn generate(device: &str, extra: &[&str]) -> (String, String) {
    let fixture = fixture();
    let out = bin_on_emulator()
        .args(["generate", &fixture, "--prompt", "The capital of France is"])
        .args(["--max-tokens", "12", "--ignore-eos", "--device", device])
        .args(["--cpu-kv-cache-space", "0.05", "--max-model-len", "1024"])
        .args(extra)
        .output()
        .expect("run generate");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{device}: {stderr}");
    (String::from_utf8_lossy(&out.stdout).to_string(), stderr)
}

#[test]
fn npu_and_auto_pick_the_emulated_npu_and_match_the_cpu() {
    // F32 weights: the NPU keeps K/V in F32 and the text must equal the CPU's exactly.
    let (cpu, _) = generate("cpu", &["--dtype", "float32"]);
    let (npu, log) = generate("npu", &["--dtype", "float32"]);
    assert!(log.contains("device: npu [0]"), "{log}");
    assert!(log.contains("KV cache:"), "{log}");
    assert_eq!(npu, cpu);
    assert!(!cpu.trim().is_empty());
    let (eager, log) = generate("npu", &["--dtype", "float32", "--enforce-eager"]);
    assert!(log.contains("decode graphs off"), "{log}");
    assert_eq!(eager, cpu);

    let (auto, log) = generate(
        "auto",
        &["--dtype", "float32", "--tensor-parallel-size", "2"],
    );
    assert!(log.contains("device: npu [0, 1]"), "{log}");
    assert_eq!(auto, cpu);

    // BF16 (the default) runs through fused attention; it must run and give text.
    let (bf16, log) = generate("npu", &[]);
    assert!(log.contains("device: npu"), "{log}");
    assert!(!bf16.trim().is_empty());
}

#[test]
fn npu_refuses_more_ranks_than_devices() {
    let fixture = fixture();
    let out = bin_on_emulator()
        .args(["generate", &fixture, "--prompt", "x", "--device", "npu"])
        .args(["--tensor-parallel-size", "4"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs 4 NPUs, but CANN sees 2"), "{err}");
}

/// A free loopback port for a node 0's rendezvous.
fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port().to_string()
}

/// `generate` as node `rank` of two, meeting at `port`.
fn node(model: &str, rank: &str, port: &str, extra: &[&str]) -> Command {
    let model = format!(
        "{}/../../tests/fixtures/{model}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut c = bin_on_emulator();
    c.args(["generate", &model, "--prompt", "x", "--device", "npu"])
        .args(["--nnodes", "2", "--pipeline-parallel-size", "2"])
        .args(["--node-rank", rank, "--master-addr", "127.0.0.1"])
        .args(["--master-port", port])
        // The emulated HBM (256 MiB) holds a KV cache for short sequences only.
        .args(["--max-model-len", "256"])
        .args(extra);
    c
}

fn failed_with(out: std::process::Output) -> String {
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn npu_nodes_stop_in_bounded_time_when_the_other_never_comes() {
    let t0 = std::time::Instant::now();
    let port = free_port();
    let quick = ["--rendezvous-timeout", "2"];
    let err = failed_with(
        node("tiny-qwen3-hd128", "0", &port, &quick)
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("node 0 waited 2s and 0 of 1 other nodes joined"),
        "{err}"
    );
    // Set by the server itself, as HCCL reads them, before any communicator is made.
    assert!(
        err.contains("HCCL_CONNECT_TIMEOUT=600 (the multi-node default)"),
        "{err}"
    );
    assert!(
        err.contains("HCCL_EXEC_TIMEOUT=300 (the multi-node default)"),
        "{err}"
    );
    let err = failed_with(
        node("tiny-qwen3-hd128", "1", &port, &quick)
            .output()
            .unwrap(),
    );
    assert!(err.contains("node 1 could not reach node 0"), "{err}");
    // 2 s each plus start-up; a hang would be the 600 s default.
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
}

#[test]
fn npu_node_0_refuses_another_model_and_meets_the_right_node() {
    let port = free_port();
    let node0 = node(
        "tiny-qwen3-hd128",
        "0",
        &port,
        &["--rendezvous-timeout", "120"],
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("node 0");
    let err = failed_with(node("tiny-qwen3", "1", &port, &[]).output().unwrap());
    assert!(
        err.contains("node 0 refused this node: it serves another model"),
        "{err}"
    );
    // Node 0 kept waiting: the right node joins, runs its stage headless while node 0
    // generates, and exits when node 0 is done.
    let extra = ["--hccl-connect-timeout", "900"];
    let out = node("tiny-qwen3-hd128", "1", &port, &extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("HCCL_CONNECT_TIMEOUT=900 (--hccl-connect-timeout)"),
        "{err}"
    );
    // The fixture's 2 decoder layers: one per node.
    assert!(
        err.contains("pipeline stage 1 of 2: decoder layers 1..2 of 2"),
        "{err}"
    );
    assert!(err.contains("node 0 stopped the group; exiting"), "{err}");
    let out = node0.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("refused node 1"), "{err}");
    assert!(err.contains("all 2 nodes met"), "{err}");
    // Node 0 generated through both stages.
    assert!(
        !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "{err}"
    );
}

#[test]
fn serves_completions_on_the_npu() {
    let fixture = fixture();
    let mut child = bin_on_emulator()
        .args([fixture.as_str(), "--device", "npu", "--port", "0"])
        .args(["--served-model-name", "tiny-qwen3"])
        .args(["--max-model-len", "1024", "--max-num-seqs", "4"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("listening on http://") {
                let rest = &line[i + "listening on http://".len()..];
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("server started");
    let body = r#"{"model":"tiny-qwen3","prompt":"Hello","max_tokens":5,"temperature":0}"#;
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let _ = child.kill();
    let _ = child.wait();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\"completion_tokens\":5"), "{raw}");
}

#[test]
fn doctor_passes_on_the_emulator_and_fails_clearly_without_cann() {
    let dir = cann_emu::harness::lib_dir().expect("emulator built");
    // Quick: the real-shape layer checks' weights would not fit the 256 MiB emulated HBM
    // (crates/backend-ascend/tests/e2e_doctor.rs runs them).
    let out = bin_on_emulator()
        .args(["doctor", "--quick", "--cann-dir"])
        .arg(&dir)
        .output()
        .expect("run doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("doctor: OK") && text.contains("ok   attention"),
        "{text}"
    );

    let empty = std::env::temp_dir().join(format!("no-cann-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("dir");
    let out = Command::new(env!("CARGO_BIN_EXE_qwen3-serve"))
        .args(["doctor", "--cann-dir"])
        .arg(&empty)
        .output()
        .expect("run doctor");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CANN: not usable"), "{text}");
}

#[test]
fn npu_without_cann_fails_clearly_and_auto_falls_back_to_the_cpu() {
    let empty = std::env::temp_dir().join(format!("no-cann-npu-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("dir");
    let run = |device: &str| {
        Command::new(env!("CARGO_BIN_EXE_qwen3-serve"))
            .args([
                "generate",
                &fixture(),
                "--prompt",
                "Hi",
                "--max-tokens",
                "2",
            ])
            .args(["--device", device, "--cpu-kv-cache-space", "0.05"])
            .args(["--max-model-len", "256"])
            .env("LD_LIBRARY_PATH", &empty)
            .env_remove("ASCEND_TOOLKIT_HOME")
            .env_remove("ASCEND_HOME_PATH")
            .env_remove("ASCEND_RT_VISIBLE_DEVICES")
            .output()
            .expect("run")
    };
    let out = run("npu");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--device npu: CANN could not be used") && err.contains("libascendcl.so"),
        "{err}"
    );
    let out = run("auto");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("device: cpu (auto: no usable CANN"), "{err}");
}

#[test]
fn npu_refuses_kv_blocks_fused_attention_cannot_take() {
    let out = bin_on_emulator()
        // BF16 asked for: under `--dtype auto` the bundled model (head_dim 32) runs in F32 on
        // the NPU, whose attention takes any block size.
        .args([
            "--device",
            "npu",
            "--dtype",
            "bfloat16",
            "--block-size",
            "16",
            "--port",
            "0",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("KV blocks of 128 or 512"), "{err}");
}

#[test]
fn doctor_json_is_the_whole_report_and_an_error_object_without_cann() {
    let dir = cann_emu::harness::lib_dir().expect("emulator built");
    let out = bin_on_emulator()
        .args(["doctor", "--json", "--quick", "--cann-dir"])
        .arg(&dir)
        .output()
        .expect("run doctor --json");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // stdout is the JSON object alone: logs go to stderr.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["errors"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["device_count"], 2, "{v:#}");
    assert_eq!(v["devices"].as_array().map(Vec::len), Some(2), "{v:#}");
    assert!(v["cann_version"].is_string(), "{v:#}");
    assert!(v["runtime_version"].is_array(), "{v:#}");
    let api = v["attention_api"].as_str().unwrap_or_default();
    assert!(api.starts_with("FiaV") && api.contains("TND"), "{v:#}");
    assert!(v["workspace"]["bytes"].is_u64(), "{v:#}");
    assert!(v["host_staging_bytes"].as_u64().unwrap_or(0) > 0, "{v:#}");
    let checks = v["checks"].as_array().expect("checks");
    for op in [
        "upload",
        "linear f32",
        "linear bf16",
        "rms norms",
        "rope",
        "silu/add/select",
        "embedding",
        "attention",
        "moe",
        "sample",
        "attention f32",
        "sliding window",
    ] {
        let c = checks
            .iter()
            .find(|c| c["op"] == op)
            .unwrap_or_else(|| panic!("no check {op}: {v:#}"));
        assert_eq!(c["passed"], true, "{c:#}");
        assert!(c["max_error"].as_f64().unwrap_or(f64::NAN) <= c["bound"].as_f64().unwrap());
        assert_eq!(c["shape"], "small", "{c:#}");
    }

    // A wrong op (the emulator's fault switch skips RmsNorm's arithmetic): the report says
    // which check failed, and the exit status says it too.
    let out = bin_on_emulator()
        .env("CANN_EMU_FAULT_OP", "aclnnRmsNorm")
        .args(["doctor", "--json", "--quick", "--cann-dir"])
        .arg(&dir)
        .output()
        .expect("run doctor --json with a faulty op");
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["ok"], false, "{v:#}");
    let norms = v["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["op"] == "rms norms"))
        .unwrap_or_else(|| panic!("no rms norms check: {v:#}"));
    assert_eq!(norms["passed"], false, "{norms:#}");

    let empty = std::env::temp_dir().join(format!("no-cann-json-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("dir");
    let out = Command::new(env!("CARGO_BIN_EXE_qwen3-serve"))
        .args(["doctor", "--json", "--cann-dir"])
        .arg(&empty)
        .output()
        .expect("run doctor --json");
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["ok"], false, "{v:#}");
    let err = v["errors"][0].as_str().unwrap_or_default();
    assert!(err.starts_with("CANN not usable"), "{v:#}");
}

// Serving one model across two processes, as two nodes would: each with 2 emulated NPUs,
// tensor parallel 2 × pipeline parallel 2 (layer 0 on node 0, layer 1 on node 1, hidden
// states over the emulated HCCL's cross-process send/receive). The API on node 0 gives
// transformers' greedy tokens; killing node 1 mid-stream ends the stream with an error and
// turns /health to 503, within HCCL's execution timeout, with no hang.

const FIXTURE: &str = "tiny-qwen3-hd128";
/// HCCL's execution timeout in these runs: how long a dead peer may hold a transfer.
const EXEC_TIMEOUT_S: u64 = 5;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// `qwen3-serve MODEL` as node `rank` of two, TP 2 each, on 2 emulated NPUs.
fn api_node(rank: &str, port: &str) -> Command {
    let mut c = bin_on_emulator();
    c.arg(fixtures().join(FIXTURE))
        .args(["--device", "npu", "--port", "0", "--served-model-name", "m"])
        // F32: the goldens are transformers' F32 greedy tokens (1e-3 parity path).
        .args(["--dtype", "float32", "--max-model-len", "256"])
        .args([
            "--tensor-parallel-size",
            "2",
            "--pipeline-parallel-size",
            "2",
        ])
        .args([
            "--nnodes",
            "2",
            "--node-rank",
            rank,
            "--master-addr",
            "127.0.0.1",
        ])
        .args(["--master-port", port, "--rendezvous-timeout", "120"])
        .args(["--hccl-exec-timeout", &EXEC_TIMEOUT_S.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Kills the process when dropped, so a failing test leaves none behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts both nodes; node 0's API address once it listens.
fn start_api_nodes() -> (Proc, Proc, String, std::sync::mpsc::Receiver<String>) {
    let port = free_port();
    let mut n0 = Proc(api_node("0", &port).spawn().expect("node 0"));
    let mut n1 = Proc(api_node("1", &port).spawn().expect("node 1"));
    let (tx, rx) = std::sync::mpsc::channel();
    for (name, p) in [("node0", &mut n0), ("node1", &mut n1)] {
        let err = p.0.stderr.take().expect("stderr");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(format!("{name}: {line}"));
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut log = String::new();
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        log.push_str(&line);
        log.push('\n');
        if let Some(i) = line.find("listening on http://") {
            let rest = &line[i + "listening on http://".len()..];
            let addr = rest.split_whitespace().next().unwrap_or("").to_string();
            return (n0, n1, addr, rx);
        }
    }
    panic!("node 0 never listened:\n{log}");
}

fn request_on(addr: &str, method: &str, path: &str, body: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    s
}

/// Status and body (chunked framing left in: the tests search it).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut raw = String::new();
    let _ = request_on(addr, method, path, body).read_to_string(&mut raw);
    common::status_and_body(&raw)
}

#[test]
fn tp2_by_pp2_over_two_processes_gives_the_goldens_and_a_dead_node_ends_cleanly() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("goldens/{FIXTURE}.json")))
            .expect("goldens"),
    )
    .expect("golden json");
    let (_n0, mut n1, addr, log) = start_api_nodes();
    assert_eq!(http(&addr, "GET", "/health", "").0, 200);

    // Every case at once, so that steps batch several sequences across the stages.
    let cases: Vec<Value> = golden["cases"].as_array().expect("cases").clone();
    let runs: Vec<_> = cases
        .iter()
        .filter(|c| c["config_overrides"].is_null())
        .map(|c| {
            let (addr, name) = (addr.clone(), c["name"].to_string());
            let want: Vec<u32> = serde_json::from_value(c["greedy_ids"].clone()).expect("ids");
            let body = json!({
                "model": "m", "prompt": c["prompt_ids"], "max_tokens": want.len(),
                "temperature": 0, "ignore_eos": true, "return_token_ids": true
            })
            .to_string();
            std::thread::spawn(move || {
                let (status, body) = http(&addr, "POST", "/v1/completions", &body);
                (name, want, status, body)
            })
        })
        .collect();
    assert!(runs.len() >= 3, "{} cases", runs.len());
    for r in runs {
        let (name, want, status, body) = r.join().expect("request thread");
        assert_eq!(status, 200, "{name}: {body}");
        let start = body.find('{').expect("json body");
        let end = body.rfind('}').expect("json body");
        let v: Value = serde_json::from_str(&body[start..=end]).expect("json");
        let got: Vec<u32> =
            serde_json::from_value(v["choices"][0]["token_ids"].clone()).expect("token_ids");
        assert_eq!(got, want, "{name}");
    }

    // A long stream; node 1 dies once it has started.
    let body = json!({
        "model": "m", "prompt": "Hello", "max_tokens": 200, "temperature": 0,
        "ignore_eos": true, "stream": true
    })
    .to_string();
    let mut s = request_on(&addr, "POST", "/v1/completions", &body);
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while raw.windows(5).filter(|w| w == b"data:").count() < 3 {
        let n = s.read(&mut buf).expect("stream");
        assert!(n > 0, "{}", String::from_utf8_lossy(&raw));
        raw.extend(&buf[..n]);
    }
    let killed = Instant::now();
    n1.0.kill().expect("kill node 1");
    let _ = n1.0.wait();
    let seen = raw.len();
    // The stream must end (no hang), with an error.
    let _ = s.read_to_end(&mut raw);
    let ended = killed.elapsed();
    let after = String::from_utf8_lossy(&raw[seen..]).to_string();
    assert!(after.contains("\"error\""), "{after}");
    assert!(after.contains("pipeline node 1"), "{after}");
    assert!(after.contains("[DONE]"), "{after}");
    // The node's death shows within HCCL's execution timeout (plus scheduling slack).
    let bound = Duration::from_secs(EXEC_TIMEOUT_S + 30);
    assert!(ended < bound, "the stream took {ended:?} to end");
    let mut health = 0;
    while killed.elapsed() < bound {
        health = http(&addr, "GET", "/health", "").0;
        if health == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines: Vec<String> = log.try_iter().collect();
    assert_eq!(health, 503, "{}", lines.join("\n"));
}
