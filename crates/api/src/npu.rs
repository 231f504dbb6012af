//! NPU telemetry shared between the sampler (which the binary runs on a background task)
//! and the HTTP side: `/metrics` renders the latest samples, `/health` turns 503 while a
//! serving device reports a fatal health state.
//!
//! Names: `qwen3_serve_npu_*`, base units (bytes, ratios 0-1, °C, W) as Prometheus'
//! naming conventions ask; no colon, which the conventions reserve for recording rules
//! (vLLM's own `vllm:*` names are kept as they are for dashboard compatibility), and a
//! prefix of our own so they clash neither with `vllm:*` nor with Huawei's npu-exporter
//! (`npu_chip_info_*`) running beside the server.

use std::fmt::Write;
use std::sync::RwLock;

/// The process's own device memory on one NPU, from the backend's allocator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Bytes by `kind` label, as the backend names its kinds (on Ascend: `weights`,
    /// `kv_cache`, `graphs`, `activations`, and `pool_cached` for buffers freed into the
    /// caching pool); together, every byte the process holds from the driver.
    pub by_kind: Vec<(&'static str, u64)>,
}

/// One sample of one serving NPU.
#[derive(Debug, Clone, PartialEq)]
pub struct NpuSample {
    /// Logical id (ACL's numbering, as in ASCEND_RT_VISIBLE_DEVICES).
    pub npu: i32,
    pub hbm_used_bytes: u64,
    pub hbm_total_bytes: u64,
    /// 0-1.
    pub aicore_utilization: f64,
    /// 0-1.
    pub aicpu_utilization: f64,
    pub temperature_celsius: f64,
    /// The chip's own throttling temperature, where its DCMI reports one.
    pub throttle_temperature_celsius: Option<f64>,
    pub power_watts: f64,
    /// DCMI's health code: 0 ok, 1 minor, 2 major, 3 critical alarm; -1 device absent.
    pub health: i64,
    /// The device cannot serve (critical alarm or gone).
    pub fatal: bool,
    /// None where the backend has no pool on this device (e.g. another rank's process).
    pub process_memory: Option<ProcessMemory>,
}

#[derive(Debug, Default)]
struct Inner {
    samples: Vec<NpuSample>,
}

/// The latest samples; empty (and `/health` unaffected) when nothing samples NPUs.
#[derive(Debug, Default)]
pub struct NpuTelemetry {
    inner: RwLock<Inner>,
}

/// `(name, help, value of a sample)` of every per-device gauge (None: no series).
type Gauge = (&'static str, &'static str, fn(&NpuSample) -> Option<f64>);

const GAUGES: &[Gauge] = &[
    (
        "qwen3_serve_npu_hbm_used_bytes",
        "HBM in use on the NPU (all processes), as npu-smi reports it.",
        |s| Some(s.hbm_used_bytes as f64),
    ),
    (
        "qwen3_serve_npu_hbm_total_bytes",
        "HBM capacity of the NPU.",
        |s| Some(s.hbm_total_bytes as f64),
    ),
    (
        "qwen3_serve_npu_aicore_utilization_ratio",
        "AI Core utilisation of the NPU, 0 to 1.",
        |s| Some(s.aicore_utilization),
    ),
    (
        "qwen3_serve_npu_aicpu_utilization_ratio",
        "AI CPU utilisation of the NPU, 0 to 1.",
        |s| Some(s.aicpu_utilization),
    ),
    (
        "qwen3_serve_npu_temperature_celsius",
        "NPU chip temperature.",
        |s| Some(s.temperature_celsius),
    ),
    (
        "qwen3_serve_npu_throttle_temperature_celsius",
        "Temperature at which the NPU throttles itself (its DCMI thermal threshold); absent where the driver does not report it.",
        |s| s.throttle_temperature_celsius,
    ),
    ("qwen3_serve_npu_power_watts", "NPU power draw.", |s| {
        Some(s.power_watts)
    }),
    (
        "qwen3_serve_npu_health_status",
        "DCMI health: 0 ok, 1 minor, 2 major, 3 critical alarm, -1 device absent.",
        |s| Some(s.health as f64),
    ),
];

const PROCESS_MEMORY: &str = "qwen3_serve_npu_process_memory_bytes";

/// Names of every metric this module renders (for tests and the dashboard check).
pub fn metric_names() -> impl Iterator<Item = &'static str> {
    GAUGES
        .iter()
        .map(|g| g.0)
        .chain(std::iter::once(PROCESS_MEMORY))
}

impl NpuTelemetry {
    /// Replaces the samples with a new round.
    pub fn publish(&self, samples: Vec<NpuSample>) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        g.samples = samples;
    }

    pub fn samples(&self) -> Vec<NpuSample> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.samples.clone()
    }

    /// Why the server cannot serve, when a serving NPU reported a fatal state.
    pub fn fatal(&self) -> Option<String> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.samples.iter().find(|s| s.fatal).map(|s| {
            format!(
                "NPU {} reports a fatal health state (DCMI health {})",
                s.npu, s.health
            )
        })
    }

    /// Appends the Prometheus exposition of the latest samples (nothing without samples).
    pub fn render(&self, model_label: &str, out: &mut String) {
        let samples = self.samples();
        if samples.is_empty() {
            return;
        }
        for (name, help, value) in GAUGES {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for s in &samples {
                if let Some(v) = value(s) {
                    let _ = writeln!(out, "{name}{{{model_label},npu=\"{}\"}} {v}", s.npu);
                }
            }
        }
        let name = PROCESS_MEMORY;
        let _ = writeln!(
            out,
            "# HELP {name} Device memory this server holds, by kind, from its allocator: weights, kv_cache, graphs (captured decode graphs), activations (pool buffers in use), pool_cached (freed into the caching pool); their sum is what it holds from the driver.\n# TYPE {name} gauge"
        );
        for s in &samples {
            if let Some(m) = &s.process_memory {
                for &(kind, v) in &m.by_kind {
                    let _ = writeln!(
                        out,
                        "{name}{{{model_label},npu=\"{}\",kind=\"{kind}\"}} {v}",
                        s.npu
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(npu: i32, health: i64) -> NpuSample {
        NpuSample {
            npu,
            hbm_used_bytes: 3 << 30,
            hbm_total_bytes: 64 << 30,
            aicore_utilization: 0.42,
            aicpu_utilization: 0.05,
            temperature_celsius: 55.0,
            throttle_temperature_celsius: Some(95.0),
            power_watts: 180.5,
            health,
            fatal: health == 3 || health < 0,
            process_memory: Some(ProcessMemory {
                by_kind: vec![("weights", 1 << 30), ("pool_cached", 1 << 20)],
            }),
        }
    }

    #[test]
    fn renders_every_metric_per_device_and_reports_fatal() {
        let t = NpuTelemetry::default();
        let mut out = String::new();
        t.render("model_name=\"m\"", &mut out);
        assert!(out.is_empty());
        assert!(t.fatal().is_none());

        t.publish(vec![sample(0, 0), sample(3, 1)]);
        t.render("model_name=\"m\"", &mut out);
        for name in metric_names() {
            for npu in [0, 3] {
                assert!(
                    out.contains(&format!("{name}{{model_name=\"m\",npu=\"{npu}\"")),
                    "{name} npu {npu}: {out}"
                );
            }
        }
        assert!(out.contains("qwen3_serve_npu_power_watts{model_name=\"m\",npu=\"3\"} 180.5\n"));
        assert!(out.contains(
            "qwen3_serve_npu_process_memory_bytes{model_name=\"m\",npu=\"0\",kind=\"weights\"} 1073741824\n"
        ));
        assert!(t.fatal().is_none());

        // A driver without the thermal threshold: that series only is missing.
        let mut s3 = sample(3, 0);
        s3.throttle_temperature_celsius = None;
        out.clear();
        t.publish(vec![sample(0, 0), s3]);
        t.render("model_name=\"m\"", &mut out);
        assert!(out.contains(
            "qwen3_serve_npu_throttle_temperature_celsius{model_name=\"m\",npu=\"0\"} 95\n"
        ));
        assert!(!out
            .contains("qwen3_serve_npu_throttle_temperature_celsius{model_name=\"m\",npu=\"3\"}"));
        assert!(out.contains("qwen3_serve_npu_temperature_celsius{model_name=\"m\",npu=\"3\"}"));

        t.publish(vec![sample(0, 0), sample(3, 3)]);
        let why = t.fatal().expect("fatal");
        assert!(why.contains("NPU 3"), "{why}");
        t.publish(vec![sample(0, 0), sample(3, 2)]);
        assert!(t.fatal().is_none(), "a major alarm is not fatal");
    }
}
