//! Compares the hand-written declarations with CANN's headers (feature `bindgen`).
//!
//! `build.rs` runs bindgen on the headers and generates `$OUT_DIR/header_check.rs`:
//! one `check_fn!` per hand-declared function found in the headers, which fails to
//! *compile* when the argument count or types differ (pointer const-ness is ignored: it
//! differs between CANN releases and does not change the ABI), plus tables of the
//! headers' enum / constant values and struct sizes that the tests below compare.
//! Run it with `scripts/check-headers.sh` or
//! `ASCEND_SYS_HEADERS=<dir with acl/acl.h> cargo test -p ascend-sys --features bindgen`.

#![cfg(feature = "bindgen")]

use ascend_sys::types::*;
use std::ffi::c_void;

/// Canonical form of a type for ABI comparison: `*const T` and `*mut T` both become
/// `*mut Canon(T)`; every other type is itself.
#[allow(dead_code)] // unused when no header group was parsed
trait Canon {
    type C;
}

macro_rules! canon_self {
    ($($t:ty),* $(,)?) => {$(impl Canon for $t { type C = $t; })*};
}

canon_self!(
    (),
    bool,
    i8,
    u8,
    i16,
    u16,
    i32,
    u32,
    i64,
    u64,
    f32,
    f64,
    isize,
    usize,
    c_void,
    aclTensor,
    aclScalar,
    aclIntArray,
    aclTensorList,
    aclOpExecutor,
    aclDataType,
    aclFormat,
    aclrtMemcpyKind,
    aclrtMemMallocPolicy,
    aclrtMemAttr,
    aclmdlRICaptureMode,
    aclmdlRICaptureStatus,
    aclCANNPackageName,
    aclCANNPackageVersion,
    HcclResult,
    HcclReduceOp,
    HcclDataType,
    HcclRootInfo,
);

impl<T: Canon> Canon for *const T {
    type C = *mut T::C;
}
impl<T: Canon> Canon for *mut T {
    type C = *mut T::C;
}

macro_rules! canon_fn {
    ($($a:ident),*) => {
        impl<R: Canon, $($a: Canon),*> Canon for unsafe extern "C" fn($($a),*) -> R {
            type C = unsafe extern "C" fn($($a::C),*) -> R::C;
        }
    };
}
macro_rules! canon_fns {
    () => { canon_fn!(); };
    ($h:ident $(, $t:ident)*) => { canon_fn!($h $(, $t)*); canon_fns!($($t),*); };
}
canon_fns!(
    A01, A02, A03, A04, A05, A06, A07, A08, A09, A10, A11, A12, A13, A14, A15, A16, A17, A18, A19,
    A20, A21, A22, A23, A24, A25, A26, A27, A28, A29, A30, A31, A32, A33, A34, A35, A36, A37, A38,
    A39, A40, A41, A42, A43, A44, A45, A46, A47, A48, A49, A50
);

/// Compiles only if the hand-written type `H` and the header's type `G` have the same
/// canonical form.
#[allow(dead_code)]
fn same_fn<H: Canon, G: Canon<C = H::C>>(_header: &Result<G, ::libloading::Error>) {}

#[allow(unused_macros)]
macro_rules! check_fn {
    ($group:ident, $name:ident) => {
        same_fn::<ascend_sys::fns::$name, _>(&$group.$name)
    };
}

mod generated {
    #[allow(unused_imports)]
    use super::*;
    include!(concat!(env!("OUT_DIR"), "/header_check.rs"));
}

fn report() -> String {
    generated::GROUPS
        .iter()
        .map(|(g, st, d)| format!("{g}: {st} ({d})"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn headers_were_parsed() {
    eprintln!("{}", report());
    assert!(
        generated::GROUPS.iter().all(|(_, st, _)| *st == "ok"),
        "header groups not parsed:\n{}",
        report()
    );
    assert!(
        generated::GROUPS.iter().any(|(g, _, _)| *g == "acl"),
        "acl/acl.h was not parsed:\n{}",
        report()
    );
}

#[test]
fn function_types_match() {
    // The comparison itself happened at compile time; here: it was not vacuous, and
    // what it could not cover is listed.
    for (g, st, _) in generated::GROUPS.iter().filter(|(_, st, _)| *st == "ok") {
        let n = generated::CHECKED_FNS
            .iter()
            .filter(|(gg, _)| gg == g)
            .count();
        eprintln!("{g} ({st}): {n} function types compared");
        assert!(n > 0, "no function of group {g} was compared");
    }
    let unverified: Vec<&str> = generated::HAND_FNS
        .iter()
        .copied()
        .filter(|f| !generated::CHECKED_FNS.iter().any(|(_, c)| c == f))
        .collect();
    let mut names: Vec<&str> = generated::HEADER_FNS.iter().map(|(_, f)| *f).collect();
    names.sort_unstable();
    names.dedup();
    let distinct_header_fns = names.len();
    eprintln!(
        "{} of {} hand-declared functions compared ({} distinct functions parsed); \
         not in the parsed headers: {unverified:?}",
        generated::HAND_FNS.len() - unverified.len(),
        generated::HAND_FNS.len(),
        distinct_header_fns
    );
    // ACL and HCCL headers declare every ACL/HCCL symbol this crate uses.
    for (group, prefix_ok) in [
        (
            "acl",
            // `aclrtlaunch_<kernel>` are the stubs CANN's `ascendc_library` generates for our
            // own kernels (`kernels/`), declared from their sources, not from CANN's headers.
            (|f: &str| {
                (f.starts_with("aclrt") && !f.starts_with("aclrtlaunch_"))
                    || f.starts_with("aclmdl")
                    || f.starts_with("aclInit")
                    || f.starts_with("aclFinalize")
                    || f.starts_with("aclGetRecent")
                    || f.starts_with("aclsys")
            }) as fn(&str) -> bool,
        ),
        (
            "hccl",
            (|f: &str| f.starts_with("Hccl")) as fn(&str) -> bool,
        ),
    ] {
        if generated::GROUPS
            .iter()
            .any(|(g, st, _)| *g == group && *st == "ok")
        {
            let missing: Vec<&&str> = unverified.iter().filter(|f| prefix_ok(f)).collect();
            assert!(
                missing.is_empty(),
                "{group} headers lack declarations for {missing:?} (renamed or removed?)"
            );
        }
    }
}

#[test]
fn enum_and_constant_values_match() {
    let header = |name: &str| {
        generated::HEADER_VALUES
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(_, _, v)| *v)
    };
    let mut mismatches = Vec::new();
    let mut unverified = Vec::new();
    let mut compared = 0usize;
    let tables = ENUMS.iter().chain(CONSTANTS.iter());
    for (table, variants) in tables {
        let mut found = 0usize;
        for (name, value) in variants.iter() {
            match header(name) {
                Some(h) if h == *value as i128 => found += 1,
                Some(h) => mismatches.push(format!("{table}::{name}: hand {value}, header {h}")),
                None => unverified.push(format!("{table}::{name}")),
            }
        }
        compared += found;
        eprintln!(
            "{table}: {found}/{} values found in headers",
            variants.len()
        );
    }
    eprintln!("not in the parsed headers: {unverified:?}");
    assert!(mismatches.is_empty(), "value mismatches: {mismatches:#?}");
    assert!(compared > 0, "no value was compared:\n{}", report());
    // Every enum of a parsed group must be present (not just consistent).
    let acl_parsed = generated::GROUPS
        .iter()
        .any(|(g, st, _)| *g == "acl" && *st == "ok");
    let hccl_parsed = generated::GROUPS
        .iter()
        .any(|(g, st, _)| *g == "hccl" && *st == "ok");
    for (table, variants) in ENUMS {
        let parsed = if table.starts_with("Hccl") {
            hccl_parsed
        } else {
            acl_parsed
        };
        if parsed {
            let missing: Vec<&str> = variants
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| header(n).is_none())
                .collect();
            assert!(
                missing.is_empty(),
                "{table}: {missing:?} not in these headers (an older CANN without them, or renamed)"
            );
        }
    }
}

#[test]
fn struct_sizes_match() {
    for (name, header_size) in generated::HEADER_SIZES {
        let hand = match *name {
            "HcclRootInfo" => std::mem::size_of::<HcclRootInfo>(),
            "aclCANNPackageVersion" => std::mem::size_of::<aclCANNPackageVersion>(),
            other => panic!("unexpected struct {other}"),
        };
        eprintln!("{name}: hand {hand} bytes, header {header_size} bytes");
        assert_eq!(hand, *header_size, "size of {name}");
    }
}
