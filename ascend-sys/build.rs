//! Build script. Without the `bindgen` feature it does nothing: the crate's declarations
//! are hand-written and CANN is loaded at run time.
//!
//! With `--features bindgen` it runs bindgen on CANN's headers (`$ASCEND_SYS_HEADERS`,
//! else `$ASCEND_TOOLKIT_HOME/include`, `$ASCEND_HOME_PATH/include`, the default
//! install) and writes `$OUT_DIR/header_check.rs`, which `tests/header_check.rs` includes:
//! every hand-written function type is compared with the header's at compile time (a
//! mismatch is a compile error), and enum / constant values are compared by the test.
//! The headers are only read here; nothing from them lands in the repository.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "bindgen")]
    header_check::run();
}

#[cfg(feature = "bindgen")]
mod header_check {
    use bindgen::callbacks::{EnumVariantValue, IntKind, ParseCallbacks};
    use std::collections::BTreeSet;
    use std::env;
    use std::fmt::Write as _;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    /// Types `src/types.rs` defines by hand: bindgen must refer to them instead of
    /// generating its own, so that the function types can be compared directly.
    const HAND_TYPES: &[&str] = &[
        "aclError",
        "aclnnStatus",
        "aclrtStream",
        "aclrtContext",
        "aclrtEvent",
        "aclmdlRI",
        "HcclComm",
        "aclTensor",
        "aclScalar",
        "aclIntArray",
        "aclTensorList",
        "aclOpExecutor",
        "aclDataType",
        "aclFormat",
        "aclrtMemcpyKind",
        "aclrtMemMallocPolicy",
        "aclrtMemAttr",
        "aclmdlRICaptureMode",
        "aclmdlRICaptureStatus",
        "aclCANNPackageName",
        "aclCANNPackageVersion",
        "HcclResult",
        "HcclReduceOp",
        "HcclDataType",
        "HcclRootInfo",
        "HcclRootInfoDef",
    ];
    /// Hand-written structs whose size is compared with the header's.
    const HAND_STRUCTS: &[&str] = &["HcclRootInfo", "aclCANNPackageVersion"];
    /// aclnn operator headers to parse when present (CANN installs only; the torch-npu
    /// wheel ships none).
    const OP_HEADERS: &[&str] = &[
        "aclnn_matmul.h",
        "aclnn_rms_norm.h",
        "aclnn_add_rms_norm.h",
        "aclnn_rotary_position_embedding.h",
        "aclnn_apply_rotary_pos_emb.h",
        "aclnn_swi_glu.h",
        "aclnn_embedding.h",
        "aclnn_scatter_pa_kv_cache.h",
        "aclnn_scatter_nd_update.h",
        "aclnn_fused_infer_attention_score_v2.h",
        "aclnn_fused_infer_attention_score_v3.h",
        "aclnn_fused_infer_attention_score_v4.h",
        "aclnn_incre_flash_attention_v4.h",
        "aclnn_prompt_flash_attention_v3.h",
        "aclnn_argmax.h",
        "aclnn_topk.h",
        "aclnn_softmax.h",
        "aclnn_cast.h",
        "aclnn_moe_gating_top_k_softmax.h",
        "aclnn_moe_init_routing_v2.h",
        "aclnn_grouped_matmul_v4.h",
        "aclnn_moe_finalize_routing_v2.h",
        "aclnn_weight_quant_batch_matmul_v2.h",
        "aclnn_add.h",
        "aclnn_mul.h",
        "aclnn_index_select.h",
        "aclnn_gather.h",
        "aclnn_copy.h",
        "aclnn_bitwise_and_tensor.h",
        "aclnn_eq_scalar.h",
        "aclnn_masked_fill_scalar.h",
    ];

    /// Collects enum variants and integer macros as bindgen parses them.
    #[derive(Debug, Default)]
    struct Collect(Arc<Mutex<Vec<(String, i128)>>>);

    impl Collect {
        fn push(&self, name: &str, v: i128) {
            if let Ok(mut g) = self.0.lock() {
                g.push((name.to_string(), v));
            }
        }
    }

    impl ParseCallbacks for Collect {
        fn int_macro(&self, name: &str, value: i64) -> Option<IntKind> {
            self.push(name, value as i128);
            None
        }
        fn enum_variant_name(
            &self,
            _enum_name: Option<&str>,
            name: &str,
            value: EnumVariantValue,
        ) -> Option<String> {
            let v = match value {
                EnumVariantValue::Boolean(b) => b as i128,
                EnumVariantValue::Signed(s) => s as i128,
                EnumVariantValue::Unsigned(u) => u as i128,
            };
            self.push(name, v);
            None
        }
    }

    struct Group {
        name: &'static str,
        /// Headers to include, relative to the include root, or absolute.
        headers: Vec<PathBuf>,
    }

    #[derive(Default)]
    struct Output {
        report: Vec<(String, String, String)>,
        modules: String,
        consts: Vec<(String, String, i128)>,
        sizes: Vec<(String, String)>,
        checked: Vec<(String, String)>,
        header_fns: Vec<(String, String)>,
        check_body: String,
    }

    pub fn run() {
        for var in [
            "ASCEND_SYS_HEADERS",
            "ASCEND_TOOLKIT_HOME",
            "ASCEND_HOME_PATH",
            "LIBCLANG_PATH",
        ] {
            println!("cargo:rerun-if-env-changed={var}");
        }
        println!("cargo:rerun-if-changed=src/fns.rs");
        println!("cargo:rerun-if-changed=src/types.rs");

        let out_dir = match env::var_os("OUT_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                println!("cargo:warning=OUT_DIR not set; header check disabled");
                return;
            }
        };
        let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_default();
        let hand_fns = scan_hand_fns(&manifest_dir.join("src").join("fns.rs"));
        if hand_fns.is_empty() {
            println!("cargo:warning=no `pub type` declarations found in src/fns.rs");
        }
        let mut out = Output::default();
        match find_root() {
            None => out.report.push((
                "headers".into(),
                "missing".into(),
                "no CANN headers: set ASCEND_SYS_HEADERS (a dir holding acl/acl.h) or \
                 ASCEND_TOOLKIT_HOME (see scripts/check-headers.sh)"
                    .into(),
            )),
            Some(root) => {
                println!("cargo:rerun-if-changed={}", root.display());
                for group in groups(&root) {
                    run_group(&root, &group, &hand_fns, &out_dir, &mut out);
                }
            }
        }
        let code = render(&out, &hand_fns);
        if let Err(e) = fs::write(out_dir.join("header_check.rs"), code) {
            println!("cargo:warning=cannot write header_check.rs: {e}");
        }
    }

    fn find_root() -> Option<PathBuf> {
        let mut candidates = Vec::new();
        if let Some(d) = env::var_os("ASCEND_SYS_HEADERS").filter(|v| !v.is_empty()) {
            candidates.push(PathBuf::from(d));
        }
        for var in ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"] {
            if let Some(d) = env::var_os(var).filter(|v| !v.is_empty()) {
                candidates.push(PathBuf::from(d).join("include"));
            }
        }
        candidates.push(PathBuf::from(
            "/usr/local/Ascend/ascend-toolkit/latest/include",
        ));
        candidates
            .into_iter()
            .find(|c| c.join("acl").join("acl.h").is_file())
    }

    fn groups(root: &Path) -> Vec<Group> {
        let mut v = vec![Group {
            name: "acl",
            headers: vec![PathBuf::from("acl/acl.h")],
        }];
        // CANN installs: include/hccl/hccl.h; the torch-npu wheel: third_party/hccl/inc/hccl.
        for h in ["hccl/hccl.h", "third_party/hccl/inc/hccl/hccl.h"] {
            if root.join(h).is_file() {
                v.push(Group {
                    name: "hccl",
                    headers: vec![PathBuf::from(h)],
                });
                break;
            }
        }
        let meta = PathBuf::from("aclnn/acl_meta.h");
        if root.join(&meta).is_file() {
            let mut headers = vec![meta];
            // Status codes (#defines), where the installation ships nnopbase's opdev headers.
            let errno = PathBuf::from("aclnn/opdev/op_errno.h");
            if root.join(&errno).is_file() {
                headers.push(errno);
            }
            for h in OP_HEADERS {
                for dir in ["aclnnop", "aclnnop/level2"] {
                    let p = Path::new(dir).join(h);
                    if root.join(&p).is_file() {
                        headers.push(p);
                        break;
                    }
                }
            }
            v.push(Group {
                name: "aclnn",
                headers,
            });
        }
        v
    }

    fn clang_args(root: &Path) -> Vec<String> {
        let mut args = vec!["-x".into(), "c++".into(), "-std=c++14".into()];
        for sub in ["", "aclnnop", "aclnn", "acl"] {
            let d = if sub.is_empty() {
                root.to_path_buf()
            } else {
                root.join(sub)
            };
            if d.is_dir() {
                args.push(format!("-I{}", d.display()));
            }
        }
        args
    }

    fn regex_escape(s: &str) -> String {
        let mut o = String::new();
        for c in s.chars() {
            if "\\.+*?()|[]{}^$".contains(c) {
                o.push('\\');
            }
            o.push(c);
        }
        o
    }

    fn run_group(
        root: &Path,
        group: &Group,
        hand_fns: &[String],
        out_dir: &Path,
        out: &mut Output,
    ) {
        let mut wrapper = String::new();
        for h in &group.headers {
            let _ = writeln!(wrapper, "#include \"{}\"", root.join(h).display());
        }
        let wrapper_path = out_dir.join(format!("{}_wrapper.hpp", group.name));
        if let Err(e) = fs::write(&wrapper_path, wrapper) {
            out.report
                .push((group.name.into(), "failed".into(), e.to_string()));
            return;
        }
        let canon = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        let wrapper_str = wrapper_path.display().to_string();

        // Pass 1: everything under the include root, for values and struct sizes.
        let collected = Arc::new(Mutex::new(Vec::new()));
        let values = bindgen::Builder::default()
            .header(wrapper_str.clone())
            .clang_args(clang_args(root))
            .allowlist_file(format!("{}/.*", regex_escape(&root.display().to_string())))
            .allowlist_file(format!("{}/.*", regex_escape(&canon.display().to_string())))
            .prepend_enum_name(false)
            .ignore_functions()
            .layout_tests(false)
            .generate_comments(false)
            .parse_callbacks(Box::new(Collect(Arc::clone(&collected))))
            .generate();
        let values = match values {
            Ok(b) => b.to_string(),
            Err(e) => {
                out.report.push((
                    group.name.into(),
                    "failed".into(),
                    format!("bindgen (values) failed: {e}"),
                ));
                return;
            }
        };

        // Pass 2: only the functions declared by hand, referring to the hand types.
        let mut fns = bindgen::Builder::default()
            .header(wrapper_str)
            .clang_args(clang_args(root))
            .dynamic_library_name("HeaderFns")
            .layout_tests(false)
            .generate_comments(false)
            .raw_line("#[allow(unused_imports)] use ascend_sys::types::*;")
            .raw_line("#[allow(dead_code)] pub type HcclRootInfoDef = HcclRootInfo;");
        for f in hand_fns {
            fns = fns.allowlist_function(f);
        }
        for t in HAND_TYPES {
            fns = fns.blocklist_type(t);
        }
        let fns = match fns.generate() {
            Ok(b) => b.to_string(),
            Err(e) => {
                out.report.push((
                    group.name.into(),
                    "failed".into(),
                    format!("bindgen (functions) failed: {e}"),
                ));
                return;
            }
        };

        let g = group.name;
        let values_file = format!("{g}_values.rs");
        let fns_file = format!("{g}_fns.rs");
        for (file, text) in [(&values_file, &values), (&fns_file, &fns)] {
            if let Err(e) = fs::write(out_dir.join(file), text) {
                out.report.push((g.into(), "failed".into(), e.to_string()));
                return;
            }
        }
        let allow = "#[allow(non_camel_case_types, non_upper_case_globals, non_snake_case, \
                     dead_code, unused_imports, improper_ctypes, clippy::all)]";
        let _ = writeln!(
            out.modules,
            "{allow}\npub mod {g}_values {{ include!(concat!(env!(\"OUT_DIR\"), \"/{values_file}\")); }}\n\
             {allow}\npub mod {g}_fns {{ include!(concat!(env!(\"OUT_DIR\"), \"/{fns_file}\")); }}"
        );

        // Values: enum variants and macros from the callbacks, `const` variables from the
        // generated text (bindgen has no callback for those).
        if let Ok(list) = collected.lock() {
            for (n, v) in list.iter() {
                out.consts.push((g.into(), n.clone(), *v));
            }
        }
        for (n, v) in scan_consts(&values) {
            out.consts.push((g.into(), n, v));
        }
        let declared = scan_type_names(&values);
        for s in HAND_STRUCTS {
            if declared.contains(*s) {
                out.sizes.push((s.to_string(), format!("{g}_values::{s}")));
            }
        }

        // Functions: the fields of the generated dynamic-library struct.
        let found = scan_fn_fields(&fns);
        for f in &found {
            out.header_fns.push((g.into(), f.clone()));
            if hand_fns.contains(f) {
                out.checked.push((g.into(), f.clone()));
                let _ = writeln!(out.check_body, "    check_fn!({g}, {f});");
            }
        }
        out.report.push((
            g.into(),
            "ok".into(),
            format!(
                "{} headers, {} functions compared, {} values",
                group.headers.len(),
                out.checked.iter().filter(|(gg, _)| gg == g).count(),
                out.consts.iter().filter(|(gg, _, _)| gg == g).count()
            ),
        ));
    }

    /// `pub type NAME =` aliases of src/fns.rs: the symbols declared by hand.
    fn scan_hand_fns(path: &Path) -> Vec<String> {
        let text = fs::read_to_string(path).unwrap_or_default();
        let mut v: Vec<String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub type "))
            .filter_map(|rest| rest.split([' ', '=']).next())
            .filter(|n| n.starts_with("acl") || n.starts_with("Hccl"))
            .map(str::to_string)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// `pub const NAME: TYPE = INTEGER;` lines of bindgen output.
    fn scan_consts(text: &str) -> Vec<(String, i128)> {
        let mut v = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("pub const ") else {
                continue;
            };
            let Some((name, rest)) = rest.split_once(':') else {
                continue;
            };
            let Some((_, value)) = rest.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_end_matches(';').trim();
            if let Some(n) = parse_int(value) {
                v.push((name.trim().to_string(), n));
            }
        }
        v
    }

    fn parse_int(s: &str) -> Option<i128> {
        let (neg, s) = match s.strip_prefix('-') {
            Some(r) => (true, r.trim()),
            None => (false, s),
        };
        let s = s.trim_end_matches(|c: char| c.is_ascii_alphabetic() && c != 'x');
        let n = if let Some(h) = s.strip_prefix("0x") {
            i128::from_str_radix(h, 16).ok()?
        } else {
            s.parse::<i128>().ok()?
        };
        Some(if neg { -n } else { n })
    }

    /// Names of `pub struct NAME` and `pub type NAME` in bindgen output.
    fn scan_type_names(text: &str) -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        for line in text.lines() {
            let l = line.trim();
            for prefix in ["pub struct ", "pub type "] {
                if let Some(rest) = l.strip_prefix(prefix) {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    set.insert(name);
                }
            }
        }
        set
    }

    /// `pub NAME: Result<` fields of the dynamic-library struct (the type may be on the
    /// next line, depending on the formatter).
    fn scan_fn_fields(text: &str) -> Vec<String> {
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let mut v = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) = line.strip_prefix("pub ") else {
                continue;
            };
            let Some((name, ty)) = rest.split_once(':') else {
                continue;
            };
            let ty = match ty.trim() {
                "" => lines.get(i + 1).copied().unwrap_or(""),
                t => t,
            };
            let is_ident = name.chars().all(|c| c.is_alphanumeric() || c == '_');
            if is_ident && ty.starts_with("Result<") {
                v.push(name.to_string());
            }
        }
        v.sort();
        v.dedup();
        v
    }

    fn render(out: &Output, hand_fns: &[String]) -> String {
        let mut s = String::from("// @generated by ascend-sys/build.rs (feature `bindgen`).\n");
        s.push_str(&out.modules);
        s.push_str("pub const GROUPS: &[(&str, &str, &str)] = &[\n");
        for (g, st, d) in &out.report {
            let _ = writeln!(s, "    ({g:?}, {st:?}, {d:?}),");
        }
        s.push_str("];\npub const HEADER_VALUES: &[(&str, &str, i128)] = &[\n");
        for (g, n, v) in &out.consts {
            let _ = writeln!(s, "    ({g:?}, {n:?}, {v}),");
        }
        s.push_str("];\npub const HEADER_SIZES: &[(&str, usize)] = &[\n");
        for (n, path) in &out.sizes {
            let _ = writeln!(s, "    ({n:?}, ::core::mem::size_of::<{path}>()),");
        }
        s.push_str("];\npub const HEADER_FNS: &[(&str, &str)] = &[\n");
        for (g, f) in &out.header_fns {
            let _ = writeln!(s, "    ({g:?}, {f:?}),");
        }
        s.push_str("];\npub const CHECKED_FNS: &[(&str, &str)] = &[\n");
        for (g, f) in &out.checked {
            let _ = writeln!(s, "    ({g:?}, {f:?}),");
        }
        s.push_str("];\npub const HAND_FNS: &[&str] = &[\n");
        for f in hand_fns {
            let _ = writeln!(s, "    {f:?},");
        }
        s.push_str("];\n");
        // Never called: type-checking this body is the comparison.
        let params: Vec<String> = out
            .report
            .iter()
            .filter(|(_, st, _)| st == "ok")
            .map(|(g, _, _)| format!("{g}: &{g}_fns::HeaderFns"))
            .collect();
        let _ = writeln!(
            s,
            "#[allow(dead_code, unused_variables)]\nfn fn_type_checks({}) {{",
            params.join(", ")
        );
        s.push_str(&out.check_body);
        s.push_str("}\n");
        s
    }
}
