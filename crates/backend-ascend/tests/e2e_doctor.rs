//! `doctor` on the emulated CANN: versions and devices are reported, every backend op agrees
//! with the CPU backend on small shapes, and a real Qwen3-8B layer and a Qwen3-30B-A3B MoE
//! layer (real per-layer dims; fewer experts and tokens, to bound the test's time and memory)
//! agree under their BF16 bounds, each timed with device events.

mod common;

use common::Emu;
use qwen3_backend_ascend::doctor::{
    doctor_with, DoctorOptions, DoctorReport, LayerDims, MlpDims, RealShapes,
};

/// Real per-layer dims; 16 of Qwen3-30B-A3B's 128 experts (still top-8: its 128 would be
/// 1.2 GiB of BF16 weights per backend), a 3-token prefill and one decode whose context
/// crosses a block boundary.
fn test_shapes() -> RealShapes {
    let mut moe = LayerDims::qwen3_30b_a3b();
    moe.mlp = MlpDims::Moe {
        experts: 16,
        top_k: 8,
        intermediate: 768,
    };
    RealShapes {
        layers: vec![LayerDims::qwen3_8b(), moe],
        prefill: 3,
        decode_contexts: vec![130],
    }
}

fn options() -> DoctorOptions {
    DoctorOptions {
        real_shapes: Some(test_shapes()),
    }
}

#[test]
fn doctor_passes_every_op_check_on_the_emulator() {
    let emu = Emu::new();
    let report = doctor_with(&emu.cann, &options());
    eprintln!("{report}");
    assert!(report.device_count >= 1, "{report}");
    assert_eq!(report.devices.len(), report.device_count as usize);
    assert!(report
        .devices
        .iter()
        .all(|d| d.total_bytes > 0 && d.free_bytes <= d.total_bytes));
    assert!(!report.checks.is_empty());
    for c in &report.checks {
        assert!(
            c.passed,
            "{}: {:?} (max error {})",
            c.op, c.error, c.max_error
        );
    }
    // The attention API in use, and why (CANN 8.3+: fused attention, TND, paged).
    let line = report.attention_api.clone().unwrap_or_default();
    assert!(
        line.contains("layout TND") && line.contains("8.3.RC1"),
        "{line}"
    );
    // The op checks' matmuls and fused attention asked the emulator for workspace (its
    // 16 MiB system part at least), served by one shared buffer.
    let ws = report.workspace.expect("workspace stats");
    assert!(ws.bytes >= 16 << 20, "{ws:?}");
    assert!(report.to_string().contains("Op workspace:"), "{report}");
    assert!(report.ok(), "{report}");
    assert!(report.to_string().ends_with("doctor: OK"));
    assert_real_shape_report(&report);
    emu.assert_clean();
}

/// Every check, small or real, says what it ran; the real ones carry their shapes, a bound
/// and the device time their events measured; the JSON `doctor --json` prints has them all.
fn assert_real_shape_report(report: &DoctorReport) {
    let real: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.op.starts_with("Qwen3-"))
        .collect();
    // Qwen3-8B: 8 checks (norm, q/k/v, q/k norm + rope, attention, o, add-norm, mlp, layer);
    // Qwen3-30B-A3B: the same with router and experts for the mlp.
    assert_eq!(real.len(), 17, "{report}");
    for c in &real {
        assert!(c.passed, "{c:?}");
        assert!(c.bound > 0.0 && c.max_error <= c.bound, "{c:?}");
        assert!(c.device_us.is_some_and(|us| us > 0.0), "{c:?}");
    }
    let shape = |op: &str| {
        real.iter()
            .find(|c| c.op == op)
            .map(|c| c.shape.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        shape("Qwen3-8B q/k/v proj"),
        "[4,4096] x [4096+1024+1024,4096]"
    );
    assert_eq!(
        shape("Qwen3-8B write_kv + attention"),
        "q 32x128, kv 8x128, block 128, contexts 3/130"
    );
    assert_eq!(
        shape("Qwen3-8B mlp"),
        "[4,4096] x gate/up [2x12288,4096], down [4096,12288]"
    );
    assert_eq!(
        shape("Qwen3-30B-A3B moe experts"),
        "[4,2048], 16 experts top-8, intermediate 768"
    );
    let json = serde_json::to_value(report).expect("report as JSON");
    let checks = json["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), report.checks.len());
    for c in checks {
        for key in [
            "op",
            "shape",
            "passed",
            "max_error",
            "bound",
            "device_us",
            "error",
        ] {
            assert!(c.get(key).is_some(), "{key} missing in {c}");
        }
    }
    let layer = checks
        .iter()
        .find(|c| c["op"] == "Qwen3-8B whole layer")
        .expect("8B layer check");
    assert!(layer["device_us"].as_f64().is_some_and(|us| us > 0.0));
    let text = report.to_string();
    assert!(
        text.contains("Qwen3-30B-A3B whole layer") && text.contains(" us "),
        "{text}"
    );
}

/// A wrong op fails its check: the emulator's fault switch skips RmsNorm's arithmetic (its
/// output keeps what the buffer held), and the real-shape norm checks and the layers that
/// use it fail while the matmuls still pass.
#[test]
fn a_wrong_op_fails_its_real_shape_check() {
    let emu = Emu::new();
    // The exclusive emulator guard is held: no other test reads the environment now.
    std::env::set_var("CANN_EMU_FAULT_OP", "aclnnRmsNorm");
    let report = doctor_with(&emu.cann, &options());
    std::env::remove_var("CANN_EMU_FAULT_OP");
    let check = |op: &str| {
        report
            .checks
            .iter()
            .find(|c| c.op == op)
            .cloned()
            .unwrap_or_else(|| panic!("no check {op}: {report}"))
    };
    for op in ["Qwen3-8B rms_norm", "Qwen3-8B whole layer"] {
        let c = check(op);
        assert!(!c.passed && c.error.is_none(), "{c:?}");
        assert!(c.max_error > c.bound, "{c:?}");
    }
    assert!(check("Qwen3-8B q/k/v proj").passed);
    assert!(check("Qwen3-30B-A3B router").passed);
    assert!(!report.ok());
    assert!(report.to_string().contains("FAIL Qwen3-8B rms_norm"));
}
