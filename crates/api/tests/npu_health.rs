//! The HTTP side of NPU telemetry: /metrics carries the published NPU samples next to the
//! engine's `vllm:*` series, and /health answers 503 while a serving NPU is in a fatal
//! state, 200 again once it recovers.

mod common;

use common::*;
use qwen3_api::{NpuSample, ProcessMemory};

fn sample(npu: i32, health: i64) -> NpuSample {
    NpuSample {
        npu,
        hbm_used_bytes: 10 << 30,
        hbm_total_bytes: 64 << 30,
        aicore_utilization: 0.73,
        aicpu_utilization: 0.02,
        throttle_temperature_celsius: Some(95.0),
        temperature_celsius: 61.0,
        power_watts: 212.3,
        health,
        fatal: health == 3,
        process_memory: Some(ProcessMemory {
            by_kind: vec![("weights", 5 << 30), ("pool_cached", 64 << 20)],
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npu_metrics_and_fatal_health() {
    let srv = start(Opts::default()).await;
    let a = &srv.addr;
    // Nothing published (CPU, or no DCMI): no NPU series, healthy.
    let m = get(a, "/metrics").await.body;
    assert!(!m.contains("qwen3_serve_npu_"), "{m}");
    assert_eq!(get(a, "/health").await.status, 200);

    srv.npu.publish(vec![sample(0, 0), sample(1, 1)]);
    let m = get(a, "/metrics").await.body;
    assert!(m.contains("vllm:num_requests_running{model_name=\"qwen3-test\"}"));
    for name in qwen3_api::npu::metric_names() {
        for npu in 0..2 {
            let series = format!("{name}{{model_name=\"qwen3-test\",npu=\"{npu}\"");
            assert!(m.contains(&series), "{series}: {m}");
        }
    }
    assert_eq!(
        metric(
            a,
            "qwen3_serve_npu_aicore_utilization_ratio{model_name=\"qwen3-test\",npu=\"1\"}"
        )
        .await,
        0.73
    );
    assert_eq!(get(a, "/health").await.status, 200, "a minor alarm serves");

    srv.npu.publish(vec![sample(0, 0), sample(1, 3)]);
    let e = get(a, "/health").await.error(503);
    assert!(e["message"].as_str().unwrap_or("").contains("NPU 1"), "{e}");

    srv.npu.publish(vec![sample(0, 0), sample(1, 0)]);
    assert_eq!(get(a, "/health").await.status, 200);
}
