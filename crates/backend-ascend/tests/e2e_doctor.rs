//! `doctor` on the emulated CANN: versions and devices are reported, and every backend op
//! agrees with the CPU backend on small shapes.

mod common;

use common::Emu;
use qwen3_backend_ascend::doctor::doctor;

#[test]
fn doctor_passes_every_op_check_on_the_emulator() {
    let emu = Emu::new();
    let report = doctor(&emu.cann);
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
    emu.assert_clean();
}
