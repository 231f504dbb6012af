//! Compiles the AscendC kernels in `kernels/ascendc` with the system C++ compiler against our
//! CPU implementation of the AscendC API (`kernels/sim`), as CANN's CPU debug mode would, and
//! with the `atlas` feature also builds them for the NPU with CANN's toolchain.

use std::path::PathBuf;

fn main() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("../../kernels");
    let sim = root.join("sim");
    let ascendc = root.join("ascendc");
    println!("cargo:rerun-if-changed={}", root.display());
    let sources = [
        sim.join("sim_core.cpp"),
        sim.join("launch.cpp"),
        sim.join("rule_kernels.cpp"),
        ascendc.join("qk_norm_rope_cache.cpp"),
        ascendc.join("paged_decode_attention.cpp"),
        ascendc.join("chunked_prefill_attention.cpp"),
        ascendc.join("tiling_layout.cpp"),
    ];
    // Optimised even in debug builds: the tests run whole attention layers through the sim.
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .debug(false)
        .include(&sim)
        .include(&ascendc)
        .files(&sources)
        .warnings(true)
        .extra_warnings(true)
        .compile("qwen3_ascendc_sim");

    if std::env::var_os("CARGO_FEATURE_ATLAS").is_some() {
        let status = std::process::Command::new("bash")
            .arg(root.join("build-atlas.sh"))
            .arg(PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("atlas"))
            .status()
            .expect("running kernels/build-atlas.sh");
        assert!(
            status.success(),
            "kernels/build-atlas.sh failed (needs CANN: $ASCEND_TOOLKIT_HOME)"
        );
    }
}
