//! Serving one model across two processes on the emulated CANN, as two nodes would: each
//! with 2 emulated NPUs, tensor parallel 2 × pipeline parallel 2 (layer 0 on node 0, layer
//! 1 on node 1, hidden states over the emulated HCCL's cross-process send/receive). The API
//! on node 0 gives transformers' greedy tokens; killing node 1 mid-stream ends the stream
//! with an error and turns /health to 503, within HCCL's execution timeout, with no hang.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const FIXTURE: &str = "tiny-qwen3-hd128";
/// HCCL's execution timeout in these runs: how long a dead peer may hold a transfer.
const EXEC_TIMEOUT_S: u64 = 5;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// `qwen3-serve MODEL` as node `rank` of two, TP 2 each, on 2 emulated NPUs.
fn node(rank: &str, port: &str) -> Command {
    let dir = cann_emu::harness::lib_dir().expect("emulator built");
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwen3-serve"));
    c.env("RUST_LOG", "info")
        .env("LD_LIBRARY_PATH", &dir)
        .env("CANN_EMU_DEVICES", "2")
        .env("CANN_EMU_HBM_BYTES", (256u64 << 20).to_string())
        .env_remove("ASCEND_TOOLKIT_HOME")
        .env_remove("ASCEND_HOME_PATH")
        .env_remove("ASCEND_RT_VISIBLE_DEVICES")
        .arg(fixtures().join(FIXTURE))
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
fn start() -> (Proc, Proc, String, std::sync::mpsc::Receiver<String>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let mut n0 = Proc(node("0", &port).spawn().expect("node 0"));
    let mut n1 = Proc(node("1", &port).spawn().expect("node 1"));
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

fn request(addr: &str, method: &str, path: &str, body: &str) -> TcpStream {
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
    let _ = request(addr, method, path, body).read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

#[test]
fn tp2_by_pp2_over_two_processes_gives_the_goldens_and_a_dead_node_ends_cleanly() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("goldens/{FIXTURE}.json")))
            .expect("goldens"),
    )
    .expect("golden json");
    let (_n0, mut n1, addr, log) = start();
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
    let mut s = request(&addr, "POST", "/v1/completions", &body);
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
