//! The backend obeys what a 910B's fused attention (layout TND, paged KV) accepts: it
//! refuses a BF16 KV cache of a head dim or block size the op refuses, and on a CANN older
//! than 8.3 it attends as matmul + softmax over an F32 cache, which `doctor` reports; it uses
//! FIA V4 only when a start-up call through it agrees with V3 and the CPU.

mod common;

use std::sync::Arc;

use ascend_sys::AttentionApi;
use common::Emu;
use qwen3_backend::{Backend, KvCacheShape};
use qwen3_backend_ascend::doctor::doctor;
use qwen3_backend_ascend::{AscendBackend, AscendOptions, AttentionPath};

fn shape(head_dim: usize, block_size: usize) -> KvCacheShape {
    KvCacheShape {
        num_layers: 1,
        num_blocks: 2,
        block_size,
        num_kv_heads: 2,
        head_dim,
    }
}

#[test]
fn bf16_kv_cache_refuses_what_fused_attention_refuses() {
    let emu = Emu::new();
    let b = AscendBackend::open(Arc::clone(&emu.cann), 0).expect("device 0");
    assert!(matches!(b.attention_path(), AttentionPath::Fused { .. }));
    for (d, bs, want) in [
        (32, 128, "head_dim 32"),
        (256, 128, "head_dim 256"),
        (128, 64, "block size 64"),
    ] {
        let err = b
            .alloc_kv_cache(shape(d, bs))
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(want), "{d}/{bs}: {err}");
    }
    for (d, bs) in [(64, 128), (128, 512), (192, 1024)] {
        drop(b.alloc_kv_cache(shape(d, bs)).expect("accepted"));
    }
    // The F32 cache's matmul + softmax attention takes any head dim.
    let opts = AscendOptions {
        kv_cache_f32: true,
        ..AscendOptions::default()
    };
    let f = AscendBackend::with_options(Arc::clone(&emu.cann), 0, opts).expect("device 0");
    assert!(matches!(f.attention_path(), AttentionPath::EagerF32 { .. }));
    drop(
        f.alloc_kv_cache(shape(32, 16))
            .expect("F32 cache, any shape"),
    );
    drop((b, f));
    let s = emu.stats();
    assert_eq!((s.leaks(), s.violations()), (0, 0), "{s:?}");
}

#[test]
fn cann_before_8_3_attends_over_an_f32_cache_and_doctor_says_why() {
    let emu = Emu::new();
    std::env::set_var("CANN_EMU_VERSION", "8.2.RC1");
    let b = AscendBackend::open(Arc::clone(&emu.cann), 0);
    let report = doctor(&emu.cann);
    std::env::remove_var("CANN_EMU_VERSION");
    let b = b.expect("device 0");
    match b.attention_path() {
        AttentionPath::EagerF32 { why } => assert!(why.contains("8.2.RC1"), "{why}"),
        p => panic!("fused attention on CANN 8.2: {p:?}"),
    }
    drop(b);
    eprintln!("{report}");
    let line = report.attention_api.clone().unwrap_or_default();
    assert!(
        line.contains("F32 KV cache") && line.contains("predates"),
        "{line}"
    );
    assert!(report.ok(), "{report}");
    emu.assert_clean();
}

/// FIA V4 is used only when one call through it agrees with V3 and the CPU: an emulated V4
/// whose calling convention drifted (the softmax scale lands elsewhere) is caught at start-up,
/// the backend attends through V3, and `doctor` says so.
#[test]
fn fia_v4_is_used_only_when_its_self_check_agrees() {
    let emu = Emu::new();
    let b = AscendBackend::open(Arc::clone(&emu.cann), 0).expect("device 0");
    assert_eq!(b.attention_api(), Some(AttentionApi::FiaV4));
    let c = b.fia_v4_check().expect("the check ran");
    assert!(c.use_v4, "{}", c.detail);
    drop(b);
    std::env::set_var("CANN_EMU_FIA_V4_DRIFT", "1");
    let b = AscendBackend::open(Arc::clone(&emu.cann), 0);
    let report = doctor(&emu.cann);
    std::env::remove_var("CANN_EMU_FIA_V4_DRIFT");
    let b = b.expect("device 0");
    assert_eq!(b.attention_api(), Some(AttentionApi::FiaV3));
    let c = b.fia_v4_check().expect("the check ran");
    assert!(!c.use_v4 && c.detail.contains("differs"), "{}", c.detail);
    assert!(
        matches!(
            b.attention_path(),
            AttentionPath::Fused {
                api: AttentionApi::FiaV3,
                ..
            }
        ),
        "{:?}",
        b.attention_path()
    );
    drop(b);
    let line = report.attention_api.clone().unwrap_or_default();
    assert!(
        line.contains("FiaV3") && line.contains("self-check"),
        "{line}"
    );
    assert!(report.ok(), "{report}");
    emu.assert_clean();
}
