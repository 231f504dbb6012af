//! Loader tests: on a machine without CANN (the normal case for CI), and against small
//! stand-in libraries compiled here with the system C compiler (skipped without one).

use ascend_sys::types::*;
use ascend_sys::{AclApi, AttentionApi, Cann, CannError, HcclApi, NnopApi, OpsApi};
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn load_from_empty_dir_is_not_found_with_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Cann::load_from([dir.path()]).expect_err("no CANN in an empty dir");
    let msg = err.to_string();
    match &err {
        CannError::NotFound {
            library, searched, ..
        } => {
            assert_eq!(library, "libascendcl.so");
            assert_eq!(searched, &vec![dir.path().to_path_buf()]);
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(msg.contains("set_env.sh"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
}

#[test]
fn load_from_environment_never_panics() {
    match Cann::load() {
        Ok(cann) => eprintln!("CANN found: {:?}", cann.libraries()),
        Err(e @ CannError::NotFound { .. }) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(msg.contains("libascendcl.so"), "{msg}");
            assert!(msg.contains("set_env.sh"), "{msg}");
            assert!(msg.contains("<dynamic loader default path>"), "{msg}");
        }
        // An installed but incomplete CANN is a legitimate outcome too.
        Err(e) => eprintln!("CANN present but unusable: {e}"),
    }
    // Default search order: environment roots first, install prefix always considered.
    let dirs = Cann::search_dirs();
    assert!(dirs.contains(&PathBuf::from(
        "/usr/local/Ascend/ascend-toolkit/latest/lib64"
    )));
}

#[test]
fn unloadable_library_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("libascendcl.so"), b"not an ELF file").expect("write");
    let err = Cann::load_from([dir.path()]).expect_err("garbage library");
    let msg = err.to_string();
    assert!(msg.contains("found but failed to load"), "{msg}");
    match err {
        CannError::NotFound { attempts, .. } => assert_eq!(attempts.len(), 1),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[test]
fn enums_have_cann_values() {
    assert_eq!(aclDataType::ACL_BF16.0, 27);
    assert_eq!(aclDataType::ACL_INT4.0, 29);
    assert_eq!(aclFormat::ACL_FORMAT_ND.0, 2);
    assert_eq!(aclFormat::ACL_FORMAT_FRACTAL_NZ.0, 29);
    assert_eq!(aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST.0, 2);
    assert_eq!(aclrtMemAttr::ACL_HBM_MEM.0, 1);
    assert_eq!(HcclDataType::HCCL_DATA_TYPE_BFP16.0, 11);
    assert_eq!(
        HcclDataType::from_acl(aclDataType::ACL_BF16),
        Some(HcclDataType::HCCL_DATA_TYPE_BFP16)
    );
    assert_eq!(HcclDataType::from_acl(aclDataType::ACL_INT4), None);
    assert_eq!(std::mem::size_of::<HcclRootInfo>(), 4108);
    assert_eq!(
        std::mem::size_of::<aclCANNPackageVersion>(),
        128 * 2 + 64 * 4
    );
    assert_eq!(format!("{:?}", aclDataType(27)), "ACL_BF16");
    assert_eq!(format!("{:?}", aclDataType(99)), "aclDataType(99)");
    assert_eq!(aclDataType::ACL_BF16.element_size(), Some(2));
    assert_eq!(
        acl_error_name(207001),
        Some("ACL_ERROR_RT_MEMORY_ALLOCATION")
    );
    assert_eq!(aclnn_status_name(161002), Some("ACLNN_ERR_PARAM_INVALID"));
}

// ---------------------------------------------------------------------------------------
// Stand-in libraries
// ---------------------------------------------------------------------------------------

/// Behaviour of a few symbols, with their real signatures; every other symbol is a stub
/// returning 0 (never called with arguments, except the aclnn second phases, which get
/// their real four-argument signature).
const ACL_SPECIALS: &str = r#"
#include <stdint.h>
#include <string.h>
const char *aclGetRecentErrMsg(void) { return "EE9999: emulated runtime failure"; }
int aclrtGetDeviceCount(uint32_t *count) { *count = 2; return 0; }
int aclrtGetVersion(int32_t *a, int32_t *b, int32_t *c) { *a = 1; *b = 2; *c = 3; return 0; }
int aclsysGetCANNVersion(int name, char *ver) { (void)name; strcpy(ver, "8.3.RC1"); return 0; }
const char *aclrtGetSocName(void) { return "Ascend910B2"; }
"#;
const HCCL_SPECIALS: &str = r#"
const char *HcclGetErrorString(int code) { return code == 9 ? "timeout (emulated)" : "other"; }
"#;

fn cc_available() -> bool {
    Command::new("cc")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Compiles `dir/lib` exporting `symbols` (minus those `specials` defines), with aclnn
/// second phases returning `run_ret`.
fn stub_lib(dir: &Path, lib: &str, symbols: &[&str], specials: &str, run_ret: i32) {
    let mut src = String::from("#include <stdint.h>\n");
    src.push_str(specials);
    for s in symbols {
        if specials.contains(&format!(" {s}(")) || specials.contains(&format!("*{s}(")) {
            continue;
        }
        let is_run = s.starts_with("aclnn") && !s.ends_with("GetWorkspaceSize");
        if is_run {
            src.push_str(&format!(
                "int {s}(void *w, uint64_t n, void *e, void *st) {{ (void)w; (void)n; (void)e; (void)st; return {run_ret}; }}\n"
            ));
        } else {
            src.push_str(&format!("int {s}(void) {{ return 0; }}\n"));
        }
    }
    let c = dir.join(format!("{lib}.c"));
    std::fs::write(&c, src).expect("write stub source");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join(lib))
        .arg(&c)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn names(table: &[ascend_sys::SymbolInfo], omit: &[&str]) -> Vec<&'static str> {
    table
        .iter()
        .map(|s| s.name)
        .filter(|n| !omit.contains(n))
        .collect()
}

/// A classic single-directory install: libascendcl, libnnopbase, libopapi, libhccl.
fn classic_install(dir: &Path, omit: &[&str]) {
    stub_lib(
        dir,
        "libascendcl.so",
        &names(AclApi::SYMBOLS, omit),
        ACL_SPECIALS,
        0,
    );
    stub_lib(dir, "libnnopbase.so", &names(NnopApi::SYMBOLS, omit), "", 0);
    stub_lib(dir, "libopapi.so", &names(OpsApi::SYMBOLS, omit), "", 0);
    stub_lib(
        dir,
        "libhccl.so",
        &names(HcclApi::SYMBOLS, omit),
        HCCL_SPECIALS,
        0,
    );
}

macro_rules! require_cc {
    () => {
        if !cc_available() {
            eprintln!("skipped: no C compiler (`cc`) to build stand-in libraries");
            return;
        }
    };
}

#[test]
fn emulated_install_loads_everything() {
    require_cc!();
    let dir = tempfile::tempdir().expect("tempdir");
    classic_install(dir.path(), &[]);
    let cann = Cann::load_from([dir.path()]).expect("load stand-in CANN");

    assert_eq!(cann.libraries().len(), 4, "{:?}", cann.libraries());
    assert!(
        cann.missing_optional().is_empty(),
        "{:?}",
        cann.missing_optional()
    );
    assert_eq!(
        cann.ops.attention_apis(),
        vec![
            AttentionApi::FiaV4,
            AttentionApi::FiaV3,
            AttentionApi::FiaV2,
            AttentionApi::IfaV4PfaV3
        ]
    );
    assert!(cann.acl.aclmdlRICaptureBegin.is_some());
    assert!(cann.hccl.is_some());

    let mut n = 0u32;
    // SAFETY: the stand-in writes one u32.
    let rc = unsafe { (cann.acl.aclrtGetDeviceCount)(&mut n) };
    cann.check(rc, "aclrtGetDeviceCount").expect("success code");
    assert_eq!(n, 2);
    assert_eq!(cann.cann_version().as_deref(), Some("8.3.RC1"));
    assert_eq!(cann.runtime_version(), Some((1, 2, 3)));
    assert_eq!(cann.soc_name().as_deref(), Some("Ascend910B2"));

    let e = cann.check(207001, "aclrtMalloc").expect_err("failure code");
    let msg = e.to_string();
    assert!(
        msg.contains("aclrtMalloc failed with aclError 207001"),
        "{msg}"
    );
    assert!(msg.contains("ACL_ERROR_RT_MEMORY_ALLOCATION"), "{msg}");
    assert!(msg.contains("emulated runtime failure"), "{msg}");

    let e = cann
        .check_nn(161002, "aclnnMatmulGetWorkspaceSize")
        .expect_err("failure status");
    assert_eq!(e.name, Some("ACLNN_ERR_PARAM_INVALID"));
    assert!(e.to_string().contains("emulated runtime failure"));

    let e = cann
        .check_hccl(HcclResult::HCCL_E_TIMEOUT, "HcclAllReduce")
        .expect_err("failure result");
    let msg = e.to_string();
    assert!(msg.contains("HCCL_E_TIMEOUT"), "{msg}");
    assert!(msg.contains("timeout (emulated)"), "{msg}");
    assert!(cann
        .check_hccl(HcclResult::HCCL_SUCCESS, "HcclAllReduce")
        .is_ok());

    // SAFETY: the stand-in second phase ignores its arguments.
    let st = unsafe {
        (cann.ops.aclnnMatmul)(
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    assert_eq!(st, 0);

    // Tables keep their libraries alive on their own.
    let ops = cann.ops.clone();
    drop(cann);
    // SAFETY: as above.
    let st = unsafe {
        (ops.aclnnSoftmax)(
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    assert_eq!(st, 0);
}

#[test]
fn missing_required_symbol_names_symbol_libraries_and_version() {
    require_cc!();
    let dir = tempfile::tempdir().expect("tempdir");
    classic_install(dir.path(), &["aclnnRmsNormGetWorkspaceSize"]);
    let err = Cann::load_from([dir.path()]).expect_err("RmsNorm missing");
    let msg = err.to_string();
    match err {
        CannError::MissingSymbol {
            symbol,
            since,
            libraries,
        } => {
            assert_eq!(symbol, "aclnnRmsNormGetWorkspaceSize");
            assert_eq!(since, "8.0.RC1");
            assert_eq!(libraries, vec![dir.path().join("libopapi.so")]);
        }
        other => panic!("expected MissingSymbol, got {other:?}"),
    }
    assert!(msg.contains("CANN 8.0.RC1"), "{msg}");
    assert!(msg.contains("libopapi.so"), "{msg}");
}

#[test]
fn split_operator_libraries_and_missing_optionals() {
    require_cc!();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let no_capture = [
        "aclmdlRICaptureBegin",
        "aclmdlRICaptureEnd",
        "aclmdlRICaptureGetInfo",
        "aclmdlRIExecuteAsync",
        "aclmdlRIDestroy",
    ];
    stub_lib(
        d,
        "libascendcl.so",
        &names(AclApi::SYMBOLS, &no_capture),
        ACL_SPECIALS,
        0,
    );
    stub_lib(d, "libnnopbase.so", &names(NnopApi::SYMBOLS, &[]), "", 0);
    // The newer layout: one operator library per ops repository, no libopapi.so.
    let ops = names(
        OpsApi::SYMBOLS,
        &[
            "aclnnFusedInferAttentionScoreV4GetWorkspaceSize",
            "aclnnFusedInferAttentionScoreV4",
        ],
    );
    let transformer = |n: &&str| {
        ["Attention", "Moe", "Rotary", "Grouped", "ScatterPa"]
            .iter()
            .any(|k| n.contains(k))
    };
    let nn = |n: &&str| {
        [
            "Matmul",
            "Norm",
            "SwiGlu",
            "Softmax",
            "Index",
            "Gather",
            "Embedding",
        ]
        .iter()
        .any(|k| n.contains(k))
    };
    let (t, rest): (Vec<&str>, Vec<&str>) = ops.into_iter().partition(transformer);
    let (n, m): (Vec<&str>, Vec<&str>) = rest.into_iter().partition(nn);
    stub_lib(d, "libopapi_transformer.so", &t, "", 0);
    stub_lib(d, "libopapi_nn.so", &n, "", 0);
    stub_lib(d, "libopapi_math.so", &m, "", 0);

    let cann = Cann::load_from([d]).expect("split layout loads");
    assert!(cann
        .ops
        .aclnnFusedInferAttentionScoreV4GetWorkspaceSize
        .is_none());
    assert_eq!(
        cann.ops.attention_apis(),
        vec![
            AttentionApi::FiaV3,
            AttentionApi::FiaV2,
            AttentionApi::IfaV4PfaV3
        ]
    );
    assert!(cann.acl.aclmdlRICaptureBegin.is_none());
    let missing: Vec<&str> = cann.missing_optional().iter().map(|s| s.name).collect();
    assert!(
        missing.contains(&"aclnnFusedInferAttentionScoreV4"),
        "{missing:?}"
    );
    assert!(missing.contains(&"aclmdlRICaptureBegin"), "{missing:?}");
    assert_eq!(missing.len(), 7, "{missing:?}");

    // No libhccl.so: HCCL is absent, not an error.
    assert!(cann.hccl.is_none());
    let msg = cann.hccl().expect_err("no hccl").to_string();
    assert!(msg.contains("libhccl.so"), "{msg}");
}

#[test]
fn custom_operator_library_fills_gaps_but_does_not_shadow() {
    require_cc!();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let fia4 = [
        "aclnnFusedInferAttentionScoreV4GetWorkspaceSize",
        "aclnnFusedInferAttentionScoreV4",
    ];
    classic_install(d, &fia4);
    let mut cust = fia4.to_vec();
    cust.push("aclnnMatmul");
    stub_lib(d, "libcust_opapi.so", &cust, "", 7);

    let cann = Cann::load_from([d]).expect("load");
    assert!(cann.ops.aclnnFusedInferAttentionScoreV4.is_some());
    // SAFETY: stand-in second phases ignore their arguments.
    let (builtin, custom) = unsafe {
        let null = std::ptr::null_mut();
        (
            (cann.ops.aclnnMatmul)(null, 0, null.cast(), null),
            cann.ops
                .aclnnFusedInferAttentionScoreV4
                .map(|f| f(null, 0, null.cast(), null)),
        )
    };
    assert_eq!(
        builtin, 0,
        "built-in operator must win over the custom package"
    );
    assert_eq!(custom, Some(7));
}

#[test]
fn tables_are_shareable_across_rank_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Cann>();
    assert_send_sync::<AclApi>();
    assert_send_sync::<OpsApi>();
    assert_send_sync::<HcclApi>();
    assert_send_sync::<CannError>();
}
