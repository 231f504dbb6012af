//! Start-up refusals of the real binary: one clear line on stderr and a failing exit, before
//! anything is loaded, even with `RUST_BACKTRACE=1`.

use std::process::Command;
use std::time::{Duration, Instant};

fn fixture() -> String {
    format!(
        "{}/../../tests/fixtures/tiny-qwen3",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs the binary with `args`; returns its stderr, checking it failed quickly.
fn refused(args: &[&str]) -> String {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_qwen3-serve"))
        .args(["--port", "0"])
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    assert!(!out.status.success(), "{args:?} started");
    assert!(start.elapsed() < Duration::from_secs(30), "{args:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !err.contains("backtrace") && !err.contains("Caused by"),
        "{err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("Error: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

#[test]
fn bad_numeric_flags_are_one_line_errors() {
    let fx = fixture();
    for (flag, value) in [
        ("--block-size", "0"),
        ("--max-model-len", "0"),
        ("--max-num-seqs", "0"),
        ("--keep-alive-timeout", "0"),
    ] {
        let e = refused(&[fx.as_str(), flag, value]);
        assert!(e.contains(flag), "{e}");
    }
}

#[test]
fn a_model_directory_without_its_tokenizer_is_refused_before_loading() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(format!("{}/{f}", fixture()), dir.path().join(f))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let path = dir.path().display().to_string();
    let e = refused(&[path.as_str(), "--device", "cpu"]);
    assert!(e.contains("no tokenizer.json"), "{e}");
}

#[test]
fn multi_node_flags_are_checked_and_the_cpu_refuses_more_than_one_node() {
    let fx = fixture();
    let e = refused(&[fx.as_str(), "--nnodes", "2", "--node-rank", "2"]);
    assert!(e.contains("--node-rank 2 is not below --nnodes 2"), "{e}");
    let e = refused(&[
        fx.as_str(),
        "--nnodes",
        "2",
        "--pipeline-parallel-size",
        "2",
    ]);
    assert!(e.contains("needs --master-addr"), "{e}");
    let e = refused(&[fx.as_str(), "--nnodes", "2", "--master-addr", "127.0.0.1"]);
    assert!(e.contains("must be equal"), "{e}");
    let e = refused(&[
        fx.as_str(),
        "--device",
        "cpu",
        "--nnodes",
        "2",
        "--pipeline-parallel-size",
        "2",
        "--master-addr",
        "127.0.0.1",
    ]);
    assert!(e.contains("CPU backend serves from one machine"), "{e}");
}
