//! ascend-sys's DCMI bindings on the emulated DCMI: enumeration and the logical-id mapping,
//! readings that follow the emulated runtime's memory, and readings set through
//! `CANN_EMU_DCMI_READINGS`.

use ascend_sys::dcmi::{Dcmi, DcmiHealth};
use ascend_sys::Cann;
use cann_emu::harness;

#[test]
fn dcmi_maps_logical_ids_and_reports_what_it_was_set_to() {
    let _guard = harness::exclusive();
    harness::reset().expect("reset");
    let dir = harness::lib_dir().expect("emulator built");
    let dcmi = Dcmi::load_from(&[&dir]).expect("DCMI from the emulator");

    // Two emulated devices (the default): card c holds logical id 1 - c.
    let chips = dcmi.chips().expect("chips");
    assert_eq!(chips.len(), 2, "{chips:?}");
    let chip1 = dcmi.chip(1).expect("logical 1");
    assert_eq!((chip1.card_id, chip1.device_id), (0, 0));
    assert!(dcmi.chip(7).is_err());

    // HBM used follows what the runtime holds on that device (and only that device).
    let cann = Cann::load_from([&dir]).expect("CANN");
    let before = dcmi.read(chip1).expect("read");
    assert_eq!(before.hbm_total_bytes, 4 << 30);
    // SAFETY: plain ACL calls on the emulator with valid out-pointers.
    let ptr = unsafe {
        assert_eq!((cann.acl.aclInit)(std::ptr::null()), 0);
        assert_eq!((cann.acl.aclrtSetDevice)(1), 0);
        let mut p = std::ptr::null_mut();
        let policy = ascend_sys::types::aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST;
        assert_eq!((cann.acl.aclrtMalloc)(&mut p, 64 << 20, policy), 0);
        p
    };
    let after = dcmi.read(chip1).expect("read");
    assert_eq!(after.hbm_used_bytes - before.hbm_used_bytes, 64 << 20);
    let other = dcmi.read(dcmi.chip(0).expect("logical 0")).expect("read");
    assert_eq!(other.hbm_used_bytes, 0);
    // SAFETY: `ptr` came from aclrtMalloc above.
    assert_eq!(unsafe { (cann.acl.aclrtFree)(ptr) }, 0);

    // Readings from the file, in DCMI's units (MB, 0.1 W).
    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(
        file.path(),
        "1 hbm_total_mb=65536 hbm_used_mb=60000 aicore=37 aicpu=5 temp=71 power_dw=2805 health=2\n",
    )
    .expect("write");
    std::env::set_var("CANN_EMU_DCMI_READINGS", file.path());
    let r = dcmi.read(chip1).expect("read");
    assert_eq!(r.hbm_total_bytes, 65536 << 20);
    assert_eq!(r.hbm_used_bytes, 60000 << 20);
    assert_eq!((r.aicore_util, r.aicpu_util, r.temperature_c), (37, 5, 71));
    assert!((r.power_w - 280.5).abs() < 1e-9, "{}", r.power_w);
    assert_eq!(r.health, DcmiHealth::Major);
    assert!(!r.health.is_fatal());
    std::fs::write(file.path(), "1 health=3\n").expect("write");
    assert!(dcmi.read(chip1).expect("read").health.is_fatal());

    // The chip's thermal thresholds (DCMI_THERMAL_THRESHOLD_ID): set, and absent.
    std::fs::write(file.path(), "1 throttle_temp=88 reset_temp=102\n").expect("write");
    assert_eq!(
        dcmi.thermal_thresholds(chip1).expect("thresholds"),
        (88, 102)
    );
    std::fs::write(file.path(), "1 throttle_temp=none\n").expect("write");
    assert!(dcmi.thermal_thresholds(chip1).is_err());
    std::env::remove_var("CANN_EMU_DCMI_READINGS");
}
