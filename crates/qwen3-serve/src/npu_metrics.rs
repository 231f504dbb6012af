//! The NPU sampler: reads the serving NPUs through DCMI (what `npu-smi` shows) and the
//! backend's allocator on a thread of its own at a fixed interval — never per scrape and
//! never on the engine thread — and publishes the round to the [`NpuTelemetry`] that
//! /metrics and /health read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use qwen3_api::{NpuSample, NpuTelemetry, ProcessMemory};
use qwen3_backend_ascend::telemetry::{Dcmi, DcmiChip, DcmiHealth};
use tracing::{info, warn};

/// ACL device id → logical id: ACL numbers only the devices ASCEND_RT_VISIBLE_DEVICES
/// lists, in its order; DCMI numbers all of them.
fn logical_ids(acl_devices: &[i32]) -> Vec<(i32, i32)> {
    let visible: Option<Vec<i32>> = std::env::var("ASCEND_RT_VISIBLE_DEVICES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect());
    acl_devices
        .iter()
        .map(|&d| {
            let logic = visible
                .as_ref()
                .and_then(|v| v.get(d as usize).copied())
                .unwrap_or(d);
            (d, logic)
        })
        .collect()
}

/// Starts sampling `acl_devices` every `interval`; the returned telemetry stays empty on
/// the CPU, with a zero interval, or without DCMI (one log line says why).
pub fn start(acl_devices: &[i32], interval: Duration) -> Arc<NpuTelemetry> {
    let telemetry = Arc::new(NpuTelemetry::default());
    if acl_devices.is_empty() {
        return telemetry;
    }
    if interval.is_zero() {
        info!("NPU metrics off (--npu-metrics-interval-seconds 0)");
        return telemetry;
    }
    let dcmi = match Dcmi::load() {
        Ok(d) => d,
        Err(e) => {
            info!("NPU metrics off: {e}");
            return telemetry;
        }
    };
    let chips: Result<Vec<(i32, DcmiChip)>, _> = logical_ids(acl_devices)
        .into_iter()
        .map(|(acl, logic)| dcmi.chip(logic).map(|c| (acl, c)))
        .collect();
    let chips = match chips {
        Ok(c) => c,
        Err(e) => {
            info!("NPU metrics off: {} loaded, but {e}", dcmi.path().display());
            return telemetry;
        }
    };
    info!(
        "NPU metrics: sampling NPU {:?} through {} every {}s",
        chips.iter().map(|(_, c)| c.logic_id).collect::<Vec<_>>(),
        dcmi.path().display(),
        interval.as_secs_f64()
    );
    let out = Arc::clone(&telemetry);
    let spawned = std::thread::Builder::new()
        .name("npu-metrics".into())
        .spawn(move || sample_forever(&dcmi, &chips, &out, interval));
    if let Err(e) = spawned {
        warn!("NPU metrics off: cannot start the sampler thread: {e}");
    }
    telemetry
}

fn sample_forever(dcmi: &Dcmi, chips: &[(i32, DcmiChip)], out: &NpuTelemetry, interval: Duration) {
    // Logged once per device while its reads keep failing, again after it recovers.
    let mut failing: HashMap<i32, bool> = HashMap::new();
    loop {
        let pools = pool_by_device();
        let mut round = Vec::with_capacity(chips.len());
        for &(acl, chip) in chips {
            match dcmi.read(chip) {
                Ok(r) => {
                    failing.insert(chip.logic_id, false);
                    // Static per chip, but cheap; a driver without it gives no series.
                    let throttle = dcmi.thermal_thresholds(chip).ok().map(|t| f64::from(t.0));
                    round.push(NpuSample {
                        npu: chip.logic_id,
                        hbm_used_bytes: r.hbm_used_bytes,
                        hbm_total_bytes: r.hbm_total_bytes,
                        aicore_utilization: f64::from(r.aicore_util) / 100.0,
                        aicpu_utilization: f64::from(r.aicpu_util) / 100.0,
                        temperature_celsius: f64::from(r.temperature_c),
                        throttle_temperature_celsius: throttle,
                        power_watts: r.power_w,
                        health: match r.health {
                            DcmiHealth::Absent(_) => -1,
                            h => i64::from(h.code()),
                        },
                        fatal: r.health.is_fatal(),
                        process_memory: pools.get(&acl).cloned(),
                    });
                }
                Err(e) => {
                    if !failing.insert(chip.logic_id, true).unwrap_or(false) {
                        warn!("NPU {}: DCMI read failed: {e}", chip.logic_id);
                    }
                }
            }
        }
        out.publish(round);
        std::thread::sleep(interval);
    }
}

/// The backend's bytes by kind, and its pool's cached bytes, summed per ACL device id.
fn pool_by_device() -> HashMap<i32, ProcessMemory> {
    let mut m: HashMap<i32, ProcessMemory> = HashMap::new();
    for (dev, s) in qwen3_backend_ascend::mem::open_pool_stats() {
        let kinds = s
            .by_kind
            .iter()
            .map(|(k, b)| (k.label(), b))
            .chain(std::iter::once(("pool_cached", s.bytes_cached)));
        let e = m.entry(dev).or_default();
        if e.by_kind.is_empty() {
            e.by_kind = kinds.collect();
        } else {
            for ((_, sum), (_, b)) in e.by_kind.iter_mut().zip(kinds) {
                *sum += b;
            }
        }
    }
    m
}
