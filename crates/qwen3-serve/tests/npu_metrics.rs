//! NPU telemetry of the real binary on the emulated CANN and DCMI: /metrics shows, per
//! serving NPU, the readings the emulator was set to; a device switched to a fatal health
//! state turns /health to 503 within one sampling interval (and back once it recovers);
//! without libdcmi.so the server serves and says once why there are no NPU metrics.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn fixture() -> String {
    format!(
        "{}/../../tests/fixtures/tiny-qwen3-hd128",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The server on the CANN libraries of `lib_dir`, its address and its log so far.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(lib_dir: &Path, envs: &[(&str, &str)], extra: &[&str]) -> Server {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwen3-serve"));
    c.env("RUST_LOG", "info")
        .env("LD_LIBRARY_PATH", lib_dir)
        .env("CANN_EMU_DEVICES", "2")
        .env("CANN_EMU_HBM_BYTES", (256u64 << 20).to_string())
        .env_remove("ASCEND_TOOLKIT_HOME")
        .env_remove("ASCEND_HOME_PATH")
        .env_remove("ASCEND_RT_VISIBLE_DEVICES")
        .env_remove("CANN_EMU_DCMI_READINGS");
    for (k, v) in envs {
        c.env(k, v);
    }
    let mut child = c
        .args([fixture().as_str(), "--device", "npu", "--port", "0"])
        .args([
            "--served-model-name",
            "tiny-qwen3",
            "--max-model-len",
            "1024",
            // Full decode graphs at TP 2 for every size up to 64 would fill the emulated
            // 256 MiB HBM before the KV cache; a few sizes are enough here.
            "--max-num-seqs",
            "8",
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("listening on http://") {
                let rest = &line[i + "listening on http://".len()..];
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            let mut g = sink.lock().unwrap_or_else(|p| p.into_inner());
            g.push_str(&line);
            g.push('\n');
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(180)) {
        Ok(a) => a,
        Err(_) => panic!("server did not start: {}", log.lock().expect("log")),
    };
    Server { child, addr, log }
}

/// (status, body) of `GET path`.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    common::status_and_body(&raw)
}

/// The value of the sample line starting with `series` (name and labels).
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Polls `f` every 50 ms until it is true or `limit` passes; returns the time it took.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn npu_metrics_show_the_emulated_readings_and_fatal_health_turns_health_503() {
    let dir = cann_emu::harness::lib_dir().expect("emulator built");
    let readings = tempfile::NamedTempFile::new().expect("readings file");
    let set = |text: &str| std::fs::write(readings.path(), text).expect("write readings");
    set(
        "0 hbm_total_mb=65536 hbm_used_mb=30000 aicore=37 aicpu=4 temp=66 power_dw=1805 health=0 throttle_temp=88\n\
         1 hbm_total_mb=65536 hbm_used_mb=31000 aicore=55 aicpu=6 temp=71 power_dw=2101 health=1 throttle_temp=91\n",
    );
    let path = readings.path().display().to_string();
    let srv = serve(
        &dir,
        &[("CANN_EMU_DCMI_READINGS", path.as_str())],
        &[
            "--tensor-parallel-size",
            "2",
            "--npu-metrics-interval-seconds",
            "1",
        ],
    );
    let a = &srv.addr;
    let log = srv.log.lock().expect("log").clone();
    assert!(log.contains("NPU metrics: sampling NPU [0, 1]"), "{log}");

    // The sampler's first round lands right after start.
    let mut m = String::new();
    wait_until(Duration::from_secs(10), || {
        m = get(a, "/metrics").1;
        m.contains("qwen3_serve_npu_health_status")
    })
    .unwrap_or_else(|| panic!("no NPU metrics: {m}"));
    let l = |npu: u32| format!("{{model_name=\"tiny-qwen3\",npu=\"{npu}\"}}");
    let expect = [
        ("qwen3_serve_npu_hbm_total_bytes", [65536.0 * 1048576.0; 2]),
        (
            "qwen3_serve_npu_hbm_used_bytes",
            [30000.0 * 1048576.0, 31000.0 * 1048576.0],
        ),
        ("qwen3_serve_npu_aicore_utilization_ratio", [0.37, 0.55]),
        ("qwen3_serve_npu_aicpu_utilization_ratio", [0.04, 0.06]),
        ("qwen3_serve_npu_temperature_celsius", [66.0, 71.0]),
        ("qwen3_serve_npu_throttle_temperature_celsius", [88.0, 91.0]),
        ("qwen3_serve_npu_power_watts", [180.5, 210.1]),
        ("qwen3_serve_npu_health_status", [0.0, 1.0]),
    ];
    for (name, want) in expect {
        for npu in 0..2u32 {
            let series = format!("{name}{}", l(npu));
            let got = value(&m, &series).unwrap_or_else(|| panic!("{series} missing: {m}"));
            // Exact up to the f64 division of DCMI's integer units (percent, 0.1 W).
            assert!((got - want[npu as usize]).abs() < 1e-9, "{series}: {got}");
        }
    }
    // The process's own memory by kind, from the backend's allocator: every kind is
    // exported, and each rank holds its weight shard and KV cache (the exact bytes per kind
    // are checked in backend-ascend's e2e_mem_kinds).
    for npu in 0..2u32 {
        for kind in [
            "weights",
            "kv_cache",
            "graphs",
            "activations",
            "pool_cached",
        ] {
            let series = format!(
                "qwen3_serve_npu_process_memory_bytes{{model_name=\"tiny-qwen3\",npu=\"{npu}\",kind=\"{kind}\"}}"
            );
            let got = value(&m, &series).unwrap_or_else(|| panic!("{series} missing: {m}"));
            if matches!(kind, "weights" | "kv_cache") {
                assert!(got > 0.0, "{series}: {got}");
            }
        }
    }
    assert_eq!(get(a, "/health").0, 200);

    // NPU 1 raises a critical alarm: /health turns 503 within one interval (1 s) plus the
    // time a round takes; 3 s leaves room for a loaded CI machine.
    set("1 health=3\n");
    let took = wait_until(Duration::from_secs(3), || get(a, "/health").0 == 503)
        .unwrap_or_else(|| panic!("/health stayed 200: {}", get(a, "/metrics").1));
    eprintln!("/health turned 503 after {took:?}");
    let (_, body) = get(a, "/health");
    assert!(body.contains("NPU 1"), "{body}");
    set("");
    wait_until(Duration::from_secs(3), || get(a, "/health").0 == 200)
        .expect("/health back to 200 once the alarm clears");
}

#[test]
fn without_dcmi_the_server_serves_and_logs_one_line() {
    // The emulator's CANN libraries without libdcmi.so.
    let emu = cann_emu::harness::lib_dir().expect("emulator built");
    let dir = tempfile::tempdir().expect("dir");
    for name in [
        "libascendcl.so",
        "libnnopbase.so",
        "libopapi.so",
        "libhccl.so",
    ] {
        std::os::unix::fs::symlink(emu.join("libcann_emu.so"), dir.path().join(name))
            .expect("symlink");
    }
    let srv = serve(dir.path(), &[], &[]);
    let (status, _) = get(&srv.addr, "/health");
    assert_eq!(status, 200);
    let (_, m) = get(&srv.addr, "/metrics");
    assert!(m.contains("vllm:num_requests_running"), "{m}");
    assert!(!m.contains("qwen3_serve_npu_"), "{m}");
    let log = srv.log.lock().expect("log").clone();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("NPU metrics")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("libdcmi.so not found"), "{log}");
}
