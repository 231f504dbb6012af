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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Allocated and not yet freed: weights, KV cache, graph buffers, live activations.
    pub in_use_bytes: u64,
    /// Freed into the caching pool, still held from the driver.
    pub pool_cached_bytes: u64,
}

/// One sample of one serving NPU.
#[derive(Debug, Clone, Copy, PartialEq)]
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

/// `(name, help, value of a sample)` of every per-device gauge.
type Gauge = (&'static str, &'static str, fn(&NpuSample) -> f64);

const GAUGES: &[Gauge] = &[
    (
        "qwen3_serve_npu_hbm_used_bytes",
        "HBM in use on the NPU (all processes), as npu-smi reports it.",
        |s| s.hbm_used_bytes as f64,
    ),
    (
        "qwen3_serve_npu_hbm_total_bytes",
        "HBM capacity of the NPU.",
        |s| s.hbm_total_bytes as f64,
    ),
    (
        "qwen3_serve_npu_aicore_utilization_ratio",
        "AI Core utilisation of the NPU, 0 to 1.",
        |s| s.aicore_utilization,
    ),
    (
        "qwen3_serve_npu_aicpu_utilization_ratio",
        "AI CPU utilisation of the NPU, 0 to 1.",
        |s| s.aicpu_utilization,
    ),
    (
        "qwen3_serve_npu_temperature_celsius",
        "NPU chip temperature.",
        |s| s.temperature_celsius,
    ),
    ("qwen3_serve_npu_power_watts", "NPU power draw.", |s| {
        s.power_watts
    }),
    (
        "qwen3_serve_npu_health_status",
        "DCMI health: 0 ok, 1 minor, 2 major, 3 critical alarm, -1 device absent.",
        |s| s.health as f64,
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
                let _ = writeln!(
                    out,
                    "{name}{{{model_label},npu=\"{}\"}} {}",
                    s.npu,
                    value(s)
                );
            }
        }
        let name = PROCESS_MEMORY;
        let _ = writeln!(
            out,
            "# HELP {name} Device memory this server holds, from its allocator: in_use (weights, KV cache, graphs, live activations), pool_cached (freed into the caching pool).\n# TYPE {name} gauge"
        );
        for s in &samples {
            if let Some(m) = s.process_memory {
                for (kind, v) in [
                    ("in_use", m.in_use_bytes),
                    ("pool_cached", m.pool_cached_bytes),
                ] {
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
            power_watts: 180.5,
            health,
            fatal: health == 3 || health < 0,
            process_memory: Some(ProcessMemory {
                in_use_bytes: 1 << 30,
                pool_cached_bytes: 1 << 20,
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
            "qwen3_serve_npu_process_memory_bytes{model_name=\"m\",npu=\"0\",kind=\"in_use\"} 1073741824\n"
        ));
        assert!(t.fatal().is_none());

        t.publish(vec![sample(0, 0), sample(3, 3)]);
        let why = t.fatal().expect("fatal");
        assert!(why.contains("NPU 3"), "{why}");
        t.publish(vec![sample(0, 0), sample(3, 2)]);
        assert!(t.fatal().is_none(), "a major alarm is not fatal");
    }
}
