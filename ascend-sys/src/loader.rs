//! Run-time loading of CANN's libraries with `libloading`.
//!
//! Nothing links against CANN at build time, so the binary starts (and runs on the CPU)
//! on machines without it; [`Cann::load`] returns [`CannError::NotFound`] there.

#![allow(non_snake_case)]

use crate::error::{AclError, AclnnError, CannError, HcclError};
use crate::fns;
use crate::types::*;
use libloading::Library;
use std::ffi::CStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One C symbol a table resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymbolInfo {
    pub name: &'static str,
    /// Loading fails without it; optional symbols are `Option<fn>` fields.
    pub required: bool,
    /// CANN release that introduced it ("~" where the release is inferred from the
    /// documentation archive rather than release notes).
    pub since: &'static str,
}

/// The opened libraries, shared by every table so that their function pointers stay
/// valid as long as any table (or a clone of one) is alive.
struct LoadedLibs {
    libs: Vec<(PathBuf, Library)>,
}

impl LoadedLibs {
    fn paths(&self, idx: &[usize]) -> Vec<PathBuf> {
        idx.iter().map(|&i| self.libs[i].0.clone()).collect()
    }
}

/// Finds `name` in the libraries `idx` (in order) as a value of type `F`.
///
/// # Safety
/// `F` must be the exact function pointer type of the C symbol `name`.
unsafe fn lookup<F: Copy>(libs: &LoadedLibs, idx: &[usize], name: &str) -> Option<F> {
    for &i in idx {
        // SAFETY: forwarded from the caller: `F` is the symbol's type.
        if let Ok(sym) = unsafe { libs.libs[i].1.get::<F>(name.as_bytes()) } {
            return Some(*sym);
        }
    }
    None
}

/// Declares a table of function pointers: required symbols as plain fields, optional
/// ones as `Option`. Field names are the C symbol names, and each field's type is the
/// alias of the same name in [`crate::fns`].
macro_rules! api_table {
    (
        $(#[$m:meta])*
        pub struct $name:ident {
            required { $($r:ident: $rsince:literal,)* }
            optional { $($o:ident: $osince:literal,)* }
        }
    ) => {
        $(#[$m])*
        #[derive(Clone)]
        pub struct $name {
            $(#[doc = concat!("`", stringify!($r), "` (CANN ", $rsince, ").")]
            pub $r: fns::$r,)*
            $(#[doc = concat!("`", stringify!($o), "`, optional (CANN ", $osince, ").")]
            pub $o: Option<fns::$o>,)*
            _libs: Arc<LoadedLibs>,
        }

        impl $name {
            /// Every symbol of this table, required ones first.
            pub const SYMBOLS: &'static [SymbolInfo] = &[
                $(SymbolInfo { name: stringify!($r), required: true, since: $rsince },)*
                $(SymbolInfo { name: stringify!($o), required: false, since: $osince },)*
            ];

            fn resolve(libs: &Arc<LoadedLibs>, idx: &[usize]) -> Result<Self, CannError> {
                Ok(Self {
                    // SAFETY: each field's type is the hand-written type of the symbol of
                    // the same name (cross-checked against headers by `--features bindgen`).
                    $($r: unsafe { lookup::<fns::$r>(libs, idx, stringify!($r)) }.ok_or_else(
                        || CannError::MissingSymbol {
                            symbol: stringify!($r),
                            since: $rsince,
                            libraries: libs.paths(idx),
                        },
                    )?,)*
                    // SAFETY: as above.
                    $($o: unsafe { lookup::<fns::$o>(libs, idx, stringify!($o)) },)*
                    _libs: Arc::clone(libs),
                })
            }

            /// Optional symbols the loaded libraries do not export.
            pub fn missing_optional(&self) -> Vec<&'static SymbolInfo> {
                #[allow(unused_mut)] // tables without optional symbols
                let mut missing = Vec::new();
                $(if self.$o.is_none() {
                    missing.extend(Self::SYMBOLS.iter().find(|s| s.name == stringify!($o)));
                })*
                missing
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let missing: Vec<&str> = self.missing_optional().iter().map(|s| s.name).collect();
                f.debug_struct(stringify!($name))
                    .field("libraries", &self._libs.libs.iter().map(|l| &l.0).collect::<Vec<_>>())
                    .field("missing_optional", &missing)
                    .finish_non_exhaustive()
            }
        }
    };
}

api_table! {
    /// The ACL runtime (`libascendcl.so`): devices, contexts, streams, memory, events and
    /// graph capture.
    pub struct AclApi {
        required {
            aclInit: "7.0 or earlier",
            aclFinalize: "7.0 or earlier",
            aclGetRecentErrMsg: "7.0 or earlier",
            aclrtSetDevice: "7.0 or earlier",
            aclrtResetDevice: "7.0 or earlier",
            aclrtGetDevice: "7.0 or earlier",
            aclrtGetDeviceCount: "7.0 or earlier",
            aclrtSynchronizeDevice: "7.0 or earlier",
            aclrtCreateContext: "7.0 or earlier",
            aclrtDestroyContext: "7.0 or earlier",
            aclrtSetCurrentContext: "7.0 or earlier",
            aclrtGetCurrentContext: "7.0 or earlier",
            aclrtCreateStream: "7.0 or earlier",
            aclrtDestroyStream: "7.0 or earlier",
            aclrtSynchronizeStream: "7.0 or earlier",
            aclrtMalloc: "7.0 or earlier",
            aclrtFree: "7.0 or earlier",
            aclrtMallocHost: "7.0 or earlier",
            aclrtFreeHost: "7.0 or earlier",
            aclrtMemcpy: "7.0 or earlier",
            aclrtMemcpyAsync: "7.0 or earlier",
            aclrtMemset: "7.0 or earlier",
            aclrtMemsetAsync: "7.0 or earlier",
            aclrtGetMemInfo: "7.0 or earlier",
            aclrtCreateEvent: "7.0 or earlier",
            aclrtDestroyEvent: "7.0 or earlier",
            aclrtRecordEvent: "7.0 or earlier",
            aclrtStreamWaitEvent: "7.0 or earlier",
            aclrtSynchronizeEvent: "7.0 or earlier",
            aclrtEventElapsedTime: "7.0 or earlier",
        }
        optional {
            aclrtCreateStreamWithConfig: "7.0 or earlier",
            aclrtSynchronizeStreamWithTimeout: "7.0 or earlier",
            aclrtCreateEventWithFlag: "7.0 or earlier",
            aclrtGetVersion: "7.0 or earlier",
            aclrtGetSocName: "7.0 or earlier",
            aclsysGetCANNVersion: "~8.2",
            aclmdlRICaptureBegin: "~8.1.RC1",
            aclmdlRICaptureEnd: "~8.1.RC1",
            aclmdlRICaptureGetInfo: "~8.1.RC1",
            aclmdlRIExecuteAsync: "~8.1.RC1",
            aclmdlRIDestroy: "~8.1.RC1",
            aclmdlRICaptureTaskGrpBegin: "~8.1.RC1",
            aclmdlRICaptureTaskGrpEnd: "~8.1.RC1",
            aclmdlRICaptureTaskUpdateBegin: "~8.1.RC1",
            aclmdlRICaptureTaskUpdateEnd: "~8.1.RC1",
        }
    }
}

api_table! {
    /// nnopbase (`libnnopbase.so`): tensor descriptors and executors for aclnn calls.
    pub struct NnopApi {
        required {
            aclCreateTensor: "7.0 or earlier",
            aclCreateScalar: "7.0 or earlier",
            aclCreateIntArray: "7.0 or earlier",
            aclCreateTensorList: "7.0 or earlier",
            aclDestroyTensor: "7.0 or earlier",
            aclDestroyScalar: "7.0 or earlier",
            aclDestroyIntArray: "7.0 or earlier",
            aclDestroyTensorList: "7.0 or earlier",
        }
        optional {
            aclSetAclOpExecutorRepeatable: "~8.0.RC2",
            aclDestroyAclOpExecutor: "~8.0.RC2",
            aclSetInputTensorAddr: "~8.0.RC2",
            aclSetOutputTensorAddr: "~8.0.RC2",
            aclSetDynamicInputTensorAddr: "~8.0.RC2",
            aclSetRawTensorAddr: "~8.0.RC3",
        }
    }
}

api_table! {
    /// aclnn operators, each resolved across the operator libraries in order.
    ///
    /// Required: what a dense BF16 forward pass cannot do without, all present since
    /// CANN 8.0.0. Optional: attention and KV-cache ops (which one to use depends on the
    /// release; see [`OpsApi::attention_apis`]), RoPE ops (two alternatives), MoE ops
    /// (MoE models only), weight-quantized matmul (quantized models only), ReduceSum
    /// (asymmetric grouped quantized MoE experts, and prompt logprobs), LogSoftmax with
    /// GtTensor (prompt logprobs on the device; without them the host computes them) and the
    /// W8A8 ops (W8A8 models only), BitwiseAndTensor, EqScalar and InplaceMaskedFillScalar
    /// (structured-output masks on the device; without them masked rows go to the host whole)
    /// (the releases given are the earliest we found documented, not verified on hardware).
    pub struct OpsApi {
        required {
            aclnnMatmulGetWorkspaceSize: "7.0 or earlier",
            aclnnMatmul: "7.0 or earlier",
            aclnnRmsNormGetWorkspaceSize: "8.0.RC1",
            aclnnRmsNorm: "8.0.RC1",
            aclnnAddRmsNormGetWorkspaceSize: "8.0.RC1",
            aclnnAddRmsNorm: "8.0.RC1",
            aclnnSwiGluGetWorkspaceSize: "8.0.RC1",
            aclnnSwiGlu: "8.0.RC1",
            aclnnEmbeddingGetWorkspaceSize: "7.0 or earlier",
            aclnnEmbedding: "7.0 or earlier",
            aclnnAddGetWorkspaceSize: "7.0 or earlier",
            aclnnAdd: "7.0 or earlier",
            aclnnInplaceAddGetWorkspaceSize: "7.0 or earlier",
            aclnnInplaceAdd: "7.0 or earlier",
            aclnnMulGetWorkspaceSize: "7.0 or earlier",
            aclnnMul: "7.0 or earlier",
            aclnnCastGetWorkspaceSize: "7.0 or earlier",
            aclnnCast: "7.0 or earlier",
            aclnnArgMaxGetWorkspaceSize: "7.0 or earlier",
            aclnnArgMax: "7.0 or earlier",
            aclnnTopkGetWorkspaceSize: "7.0 or earlier",
            aclnnTopk: "7.0 or earlier",
            aclnnSoftmaxGetWorkspaceSize: "7.0 or earlier",
            aclnnSoftmax: "7.0 or earlier",
            aclnnIndexSelectGetWorkspaceSize: "7.0 or earlier",
            aclnnIndexSelect: "7.0 or earlier",
            aclnnGatherGetWorkspaceSize: "7.0 or earlier",
            aclnnGather: "7.0 or earlier",
            aclnnInplaceCopyGetWorkspaceSize: "7.0 or earlier",
            aclnnInplaceCopy: "7.0 or earlier",
        }
        optional {
            aclnnRotaryPositionEmbeddingGetWorkspaceSize: "~8.1.RC1",
            aclnnRotaryPositionEmbedding: "~8.1.RC1",
            aclnnApplyRotaryPosEmbGetWorkspaceSize: "8.0.RC3",
            aclnnApplyRotaryPosEmb: "8.0.RC3",
            aclnnFusedInferAttentionScoreV2GetWorkspaceSize: "8.0.RC2",
            aclnnFusedInferAttentionScoreV2: "8.0.RC2",
            aclnnFusedInferAttentionScoreV3GetWorkspaceSize: "8.1.RC1",
            aclnnFusedInferAttentionScoreV3: "8.1.RC1",
            aclnnFusedInferAttentionScoreV4GetWorkspaceSize: "8.3.RC1",
            aclnnFusedInferAttentionScoreV4: "8.3.RC1",
            aclnnIncreFlashAttentionV4GetWorkspaceSize: "8.0.RC1",
            aclnnIncreFlashAttentionV4: "8.0.RC1",
            aclnnPromptFlashAttentionV3GetWorkspaceSize: "8.0.RC1",
            aclnnPromptFlashAttentionV3: "8.0.RC1",
            aclnnScatterPaKvCacheGetWorkspaceSize: "8.3.RC1",
            aclnnScatterPaKvCache: "8.3.RC1",
            aclnnScatterNdUpdateGetWorkspaceSize: "7.0 or earlier",
            aclnnScatterNdUpdate: "7.0 or earlier",
            aclnnMoeGatingTopKSoftmaxGetWorkspaceSize: "8.0.RC1",
            aclnnMoeGatingTopKSoftmax: "8.0.RC1",
            aclnnMoeInitRoutingV2GetWorkspaceSize: "8.0.0",
            aclnnMoeInitRoutingV2: "8.0.0",
            aclnnGroupedMatmulV4GetWorkspaceSize: "8.1.RC1",
            aclnnGroupedMatmulV4: "8.1.RC1",
            aclnnMoeFinalizeRoutingV2GetWorkspaceSize: "8.0.0",
            aclnnMoeFinalizeRoutingV2: "8.0.0",
            aclnnWeightQuantBatchMatmulV2GetWorkspaceSize: "8.0.RC1",
            aclnnWeightQuantBatchMatmulV2: "8.0.RC1",
            aclnnReduceSumGetWorkspaceSize: "7.0 or earlier",
            aclnnReduceSum: "7.0 or earlier",
            aclnnLogSoftmaxGetWorkspaceSize: "7.0 or earlier",
            aclnnLogSoftmax: "7.0 or earlier",
            aclnnGtTensorGetWorkspaceSize: "7.0 or earlier",
            aclnnGtTensor: "7.0 or earlier",
            aclnnDynamicQuantGetWorkspaceSize: "8.0.RC2",
            aclnnDynamicQuant: "8.0.RC2",
            aclnnAscendQuantV3GetWorkspaceSize: "8.0.0",
            aclnnAscendQuantV3: "8.0.0",
            aclnnQuantMatmulV4GetWorkspaceSize: "8.0.0",
            aclnnQuantMatmulV4: "8.0.0",
            aclnnBitwiseAndTensorGetWorkspaceSize: "8.0.0",
            aclnnBitwiseAndTensor: "8.0.0",
            aclnnEqScalarGetWorkspaceSize: "8.0.0",
            aclnnEqScalar: "8.0.0",
            aclnnInplaceMaskedFillScalarGetWorkspaceSize: "8.0.0",
            aclnnInplaceMaskedFillScalar: "8.0.0",
        }
    }
}

api_table! {
    /// HCCL collectives (`libhccl.so`).
    pub struct HcclApi {
        required {
            HcclGetRootInfo: "7.0 or earlier",
            HcclCommInitRootInfo: "7.0 or earlier",
            HcclCommInitAll: "7.0 or earlier",
            HcclAllReduce: "7.0 or earlier",
            HcclAllGather: "7.0 or earlier",
            HcclReduceScatter: "7.0 or earlier",
            HcclBroadcast: "7.0 or earlier",
            HcclBarrier: "7.0 or earlier",
            HcclSend: "7.0 or earlier",
            HcclRecv: "7.0 or earlier",
            HcclCommDestroy: "7.0 or earlier",
            HcclGetRankSize: "7.0 or earlier",
            HcclGetRankId: "7.0 or earlier",
            HcclGetErrorString: "7.0 or earlier",
        }
        optional {}
    }
}

api_table! {
    /// qwen3-serve's own AscendC kernels (`libqwen3_ascendc_kernels.so`, built from
    /// `kernels/` by `kernels/build-atlas.sh`): the launch stubs, each optional.
    pub struct KernelsApi {
        required {}
        optional {
            aclrtlaunch_qk_norm_rope_cache: "n/a: qwen3-serve kernels/",
            aclrtlaunch_paged_decode_attention: "n/a: qwen3-serve kernels/",
            aclrtlaunch_paged_decode_merge: "n/a: qwen3-serve kernels/",
            aclrtlaunch_chunked_prefill_attention: "n/a: qwen3-serve kernels/",
        }
    }
}

/// An attention API the loaded operator library offers (see [`OpsApi::attention_apis`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionApi {
    /// `aclnnFusedInferAttentionScoreV4` (CANN 8.3.RC1+).
    FiaV4,
    /// `aclnnFusedInferAttentionScoreV3` (CANN 8.1.RC1+).
    FiaV3,
    /// `aclnnFusedInferAttentionScoreV2` (CANN 8.0.RC2+).
    FiaV2,
    /// `aclnnIncreFlashAttentionV4` (decode) with `aclnnPromptFlashAttentionV3` (prefill).
    IfaV4PfaV3,
}

impl OpsApi {
    /// Attention APIs whose both phases are exported, newest first.
    ///
    /// Exported is not the same as callable with this crate's signature: FIA V4 gained
    /// `learnableSinkOptional` between the 8.3.RC1 alpha builds and 8.3.RC1, so a caller
    /// that may meet pre-release CANN builds should also check [`Cann::cann_version`].
    pub fn attention_apis(&self) -> Vec<AttentionApi> {
        let mut v = Vec::new();
        if self
            .aclnnFusedInferAttentionScoreV4GetWorkspaceSize
            .is_some()
            && self.aclnnFusedInferAttentionScoreV4.is_some()
        {
            v.push(AttentionApi::FiaV4);
        }
        if self
            .aclnnFusedInferAttentionScoreV3GetWorkspaceSize
            .is_some()
            && self.aclnnFusedInferAttentionScoreV3.is_some()
        {
            v.push(AttentionApi::FiaV3);
        }
        if self
            .aclnnFusedInferAttentionScoreV2GetWorkspaceSize
            .is_some()
            && self.aclnnFusedInferAttentionScoreV2.is_some()
        {
            v.push(AttentionApi::FiaV2);
        }
        if self.aclnnIncreFlashAttentionV4GetWorkspaceSize.is_some()
            && self.aclnnIncreFlashAttentionV4.is_some()
            && self.aclnnPromptFlashAttentionV3GetWorkspaceSize.is_some()
            && self.aclnnPromptFlashAttentionV3.is_some()
        {
            v.push(AttentionApi::IfaV4PfaV3);
        }
        v
    }
}

impl AclApi {
    /// `aclGetRecentErrMsg()` as a string (empty when the runtime has none).
    pub fn recent_error_message(&self) -> String {
        // SAFETY: no preconditions; returns NULL or a NUL-terminated string owned by the
        // runtime that stays valid until the next ACL call on this thread.
        let p = unsafe { (self.aclGetRecentErrMsg)() };
        if p.is_null() {
            return String::new();
        }
        // SAFETY: non-null and NUL-terminated per the API contract above.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// Turns an `aclError` into a `Result`, with the runtime's recent error message.
    pub fn check(&self, code: aclError, call: &'static str) -> Result<(), AclError> {
        if code == ACL_SUCCESS {
            Ok(())
        } else {
            Err(AclError::new(call, code, self.recent_error_message()))
        }
    }

    /// Turns an `aclnnStatus` into a `Result`; aclnn reports its details through
    /// `aclGetRecentErrMsg` too.
    pub fn check_nn(&self, status: aclnnStatus, call: &'static str) -> Result<(), AclnnError> {
        if status == ACLNN_SUCCESS {
            Ok(())
        } else {
            Err(AclnnError::new(call, status, self.recent_error_message()))
        }
    }
}

impl HcclApi {
    /// `HcclGetErrorString(code)` as a string.
    pub fn error_string(&self, code: HcclResult) -> String {
        // SAFETY: no preconditions; returns NULL or a static NUL-terminated string.
        let p = unsafe { (self.HcclGetErrorString)(code) };
        if p.is_null() {
            return String::new();
        }
        // SAFETY: non-null and NUL-terminated per the API contract.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// Turns an `HcclResult` into a `Result`, with `HcclGetErrorString`.
    pub fn check(&self, code: HcclResult, call: &'static str) -> Result<(), HcclError> {
        if code == HcclResult::HCCL_SUCCESS {
            Ok(())
        } else {
            Err(HcclError {
                call,
                code,
                message: self.error_string(code),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------
// Library search
// ---------------------------------------------------------------------------------------

const ACL_LIB: &str = "libascendcl.so";
const NNOP_LIB: &str = "libnnopbase.so";
const HCCL_LIB: &str = "libhccl.so";
/// qwen3-serve's own kernels, looked for beside CANN's libraries; optional.
const KERNELS_LIB: &str = "libqwen3_ascendc_kernels.so";
/// Operator libraries in resolution order: the monolithic library of CANN ≤ 8.3, the
/// per-repository split of newer releases, then feature libraries of older layouts.
/// Any other `libopapi_*.so` found comes after these, and `libcust_opapi.so` (custom
/// operators) last, so that a custom package cannot shadow a built-in operator.
const OP_LIBS: &[&str] = &[
    "libopapi.so",
    "libopapi_math.so",
    "libopapi_nn.so",
    "libopapi_transformer.so",
];
const OP_FEATURE_LIBS: &[&str] = &["libaclnn_ops_infer.so", "libaclnn_math.so"];
const CUST_OP_LIB: &str = "libcust_opapi.so";
/// Where the CANN installer puts the toolkit when no environment is set.
const DEFAULT_TOOLKIT: &str = "/usr/local/Ascend/ascend-toolkit/latest";
/// Shown in `searched` for the dynamic loader's own search (ld.so.cache, /usr/lib, ...).
const DEFAULT_LOADER: &str = "<dynamic loader default path>";

/// Where to look for libraries.
#[derive(Debug, Clone, Default)]
struct Search {
    dirs: Vec<PathBuf>,
    /// Directories holding `libcust_opapi.so` (from `ASCEND_CUSTOM_OPP_PATH`).
    custom_dirs: Vec<PathBuf>,
    /// Fall back to `dlopen("libX.so")` with the loader's own search path.
    default_loader: bool,
}

/// The library directories below one CANN root (`ASCEND_TOOLKIT_HOME` and the like).
fn root_lib_dirs(root: &Path) -> [PathBuf; 3] {
    [
        root.join("lib64"),
        root.join("aarch64-linux").join("lib64"),
        root.join("x86_64-linux").join("lib64"),
    ]
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn dedup(dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::with_capacity(dirs.len());
    for d in dirs {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

impl Search {
    fn from_env() -> Self {
        let mut dirs = Vec::new();
        for var in ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"] {
            if let Some(root) = env_path(var) {
                dirs.extend(root_lib_dirs(&root));
            }
        }
        if let Some(ld) = std::env::var_os("LD_LIBRARY_PATH") {
            dirs.extend(std::env::split_paths(&ld).filter(|p| !p.as_os_str().is_empty()));
        }
        dirs.extend(root_lib_dirs(Path::new(DEFAULT_TOOLKIT)));
        let custom_dirs = std::env::var_os("ASCEND_CUSTOM_OPP_PATH")
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(|p| p.join("op_api").join("lib"))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            dirs: dedup(dirs),
            custom_dirs,
            default_loader: true,
        }
    }

    fn searched(&self) -> Vec<PathBuf> {
        let mut v = self.dirs.clone();
        if self.default_loader {
            v.push(PathBuf::from(DEFAULT_LOADER));
        }
        v
    }
}

/// Opens a library, running its initialisers.
fn open(path: &Path) -> Result<Library, libloading::Error> {
    // SAFETY: loading runs the library's ELF initialisers; these are CANN's own
    // libraries (or a test stand-in) found where CANN's environment points.
    unsafe { Library::new(path) }
}

/// Opens the first loadable `name`, trying `prefer` first, then `dirs`, then (if
/// allowed) the dynamic loader's default search.
fn open_first(
    name: &str,
    prefer: Option<&Path>,
    dirs: &[PathBuf],
    search: &Search,
) -> Result<(PathBuf, Library), CannError> {
    let mut attempts = Vec::new();
    let candidates = prefer.into_iter().chain(dirs.iter().map(PathBuf::as_path));
    for dir in candidates {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        match open(&path) {
            Ok(lib) => return Ok((path, lib)),
            Err(e) => attempts.push((path, e.to_string())),
        }
    }
    if search.default_loader {
        if let Ok(lib) = open(Path::new(name)) {
            return Ok((PathBuf::from(name), lib));
        }
    }
    Err(CannError::NotFound {
        library: name.to_string(),
        searched: search.searched(),
        attempts,
    })
}

/// Names of `libopapi_*.so` files in `dirs` other than the well-known ones, sorted.
fn other_op_libs(dirs: &[PathBuf]) -> Vec<String> {
    let mut names = Vec::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("libopapi_")
                && name.ends_with(".so")
                && !OP_LIBS.contains(&name.as_str())
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
    }
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------
// Cann
// ---------------------------------------------------------------------------------------

/// Every CANN entry point the engine uses, resolved from the installed libraries.
///
/// Function pointers stay valid while any table (or a clone) is alive: each holds the
/// libraries it came from.
#[derive(Clone)]
pub struct Cann {
    pub acl: AclApi,
    pub nnop: NnopApi,
    pub ops: OpsApi,
    /// `None` when `libhccl.so` is absent or incomplete; [`Cann::hccl`] says why.
    pub hccl: Option<HcclApi>,
    /// qwen3-serve's own AscendC kernels, when their library was found.
    pub kernels: Option<KernelsApi>,
    hccl_unavailable: String,
    libraries: Vec<PathBuf>,
}

impl fmt::Debug for Cann {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cann")
            .field("libraries", &self.libraries)
            .field("acl", &self.acl)
            .field("nnop", &self.nnop)
            .field("ops", &self.ops)
            .field("hccl", &self.hccl.as_ref().map(|_| "loaded"))
            .finish()
    }
}

impl Cann {
    /// Loads CANN from `ASCEND_TOOLKIT_HOME` / `ASCEND_HOME_PATH` (their `lib64`,
    /// `aarch64-linux/lib64`, `x86_64-linux/lib64`), then `LD_LIBRARY_PATH`, then the
    /// default install prefix, then the dynamic loader's own search path. Custom operator
    /// packages are found through `ASCEND_CUSTOM_OPP_PATH`.
    ///
    /// Never panics on a machine without CANN: returns [`CannError::NotFound`].
    pub fn load() -> Result<Self, CannError> {
        Self::load_with(&Search::from_env())
    }

    /// Loads only from `dirs` (no environment, no default loader path): for pointing at a
    /// particular installation or at a test stand-in library.
    pub fn load_from<I, P>(dirs: I) -> Result<Self, CannError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        let dirs = dedup(dirs.into_iter().map(|p| p.as_ref().to_path_buf()).collect());
        Self::load_with(&Search {
            custom_dirs: dirs.clone(),
            dirs,
            default_loader: false,
        })
    }

    /// The directories [`Cann::load`] would search, in order.
    pub fn search_dirs() -> Vec<PathBuf> {
        Search::from_env().dirs
    }

    fn load_with(search: &Search) -> Result<Self, CannError> {
        let mut libs: Vec<(PathBuf, Library)> = Vec::new();

        let (acl_path, acl_lib) = open_first(ACL_LIB, None, &search.dirs, search)?;
        // Sibling libraries come from the same installation as libascendcl.so first.
        let home = acl_path.parent().map(Path::to_path_buf);
        let home = home.as_deref().filter(|p| !p.as_os_str().is_empty());
        libs.push((acl_path, acl_lib));
        let acl_idx = vec![0];

        libs.push(open_first(NNOP_LIB, home, &search.dirs, search)?);
        let nnop_lib_idx = libs.len() - 1;

        let mut op_idx = Vec::new();
        let mut op_names: Vec<String> = OP_LIBS.iter().map(|s| s.to_string()).collect();
        let mut scan_dirs: Vec<PathBuf> = home.map(Path::to_path_buf).into_iter().collect();
        scan_dirs.extend(search.dirs.iter().cloned());
        op_names.extend(other_op_libs(&scan_dirs));
        op_names.extend(OP_FEATURE_LIBS.iter().map(|s| s.to_string()));
        let no_default = Search {
            default_loader: false,
            ..search.clone()
        };
        for name in &op_names {
            if let Ok(found) = open_first(name, home, &search.dirs, &no_default) {
                libs.push(found);
                op_idx.push(libs.len() - 1);
            }
        }
        if op_idx.is_empty() {
            // Nothing in the directories: let the loader search for the classic library.
            libs.push(open_first(OP_LIBS[0], None, &[], search).map_err(|_| {
                CannError::NotFound {
                    library: format!("{} (or libopapi_*.so)", OP_LIBS[0]),
                    searched: search.searched(),
                    attempts: Vec::new(),
                }
            })?);
            op_idx.push(libs.len() - 1);
        }
        let mut cust_dirs = search.custom_dirs.clone();
        cust_dirs.extend(search.dirs.iter().cloned());
        if let Ok(found) = open_first(CUST_OP_LIB, None, &dedup(cust_dirs), &no_default) {
            libs.push(found);
            op_idx.push(libs.len() - 1);
        }

        let hccl_found = open_first(HCCL_LIB, home, &search.dirs, search);
        let hccl_idx = match hccl_found {
            Ok(found) => {
                libs.push(found);
                Ok(vec![libs.len() - 1])
            }
            Err(e) => Err(e.to_string()),
        };

        let kernels_idx = open_first(KERNELS_LIB, home, &search.dirs, &no_default)
            .ok()
            .map(|found| {
                libs.push(found);
                vec![libs.len() - 1]
            });

        let libraries: Vec<PathBuf> = libs.iter().map(|(p, _)| p.clone()).collect();
        let shared = Arc::new(LoadedLibs { libs });

        let acl = AclApi::resolve(&shared, &acl_idx)?;
        // nnopbase symbols are re-exported through the operator libraries' dependencies,
        // so those are a fallback when an old libnnopbase lacks one.
        let mut nnop_idx = vec![nnop_lib_idx];
        nnop_idx.extend(op_idx.iter().copied());
        let nnop = NnopApi::resolve(&shared, &nnop_idx)?;
        let ops = OpsApi::resolve(&shared, &op_idx)?;
        // HCCL problems do not fail the load: one-device serving does not need it.
        let (hccl, hccl_unavailable) = match hccl_idx {
            Ok(idx) => match HcclApi::resolve(&shared, &idx) {
                Ok(api) => (Some(api), String::new()),
                Err(e) => (None, e.to_string()),
            },
            Err(reason) => (None, reason),
        };

        let kernels = match kernels_idx {
            Some(idx) => Some(KernelsApi::resolve(&shared, &idx)?),
            None => None,
        };

        Ok(Self {
            acl,
            nnop,
            ops,
            hccl,
            kernels,
            hccl_unavailable,
            libraries,
        })
    }

    /// The HCCL table, or why it is unavailable.
    pub fn hccl(&self) -> Result<&HcclApi, CannError> {
        self.hccl
            .as_ref()
            .ok_or_else(|| CannError::HcclUnavailable(self.hccl_unavailable.clone()))
    }

    /// Paths of the libraries loaded, in load order.
    pub fn libraries(&self) -> &[PathBuf] {
        &self.libraries
    }

    /// Optional symbols (all tables) that the loaded libraries do not export.
    pub fn missing_optional(&self) -> Vec<&'static SymbolInfo> {
        let mut v = self.acl.missing_optional();
        v.extend(self.nnop.missing_optional());
        v.extend(self.ops.missing_optional());
        v
    }

    /// See [`AclApi::check`].
    pub fn check(&self, code: aclError, call: &'static str) -> Result<(), AclError> {
        self.acl.check(code, call)
    }

    /// See [`AclApi::check_nn`].
    pub fn check_nn(&self, status: aclnnStatus, call: &'static str) -> Result<(), AclnnError> {
        self.acl.check_nn(status, call)
    }

    /// [`HcclApi::check`], with the ACL runtime's recent message appended (HCCL failures
    /// often originate in the runtime).
    pub fn check_hccl(&self, code: HcclResult, call: &'static str) -> Result<(), HcclError> {
        let hccl = match self.hccl.as_ref() {
            Some(h) => h,
            None => {
                return if code == HcclResult::HCCL_SUCCESS {
                    Ok(())
                } else {
                    Err(HcclError {
                        call,
                        code,
                        message: self.acl.recent_error_message(),
                    })
                };
            }
        };
        hccl.check(code, call).map_err(|mut e| {
            let recent = self.acl.recent_error_message();
            if !recent.trim().is_empty() {
                e.message = format!("{}; runtime: {}", e.message, recent.trim());
            }
            e
        })
    }

    /// The CANN release (e.g. `8.3.RC1`) from `aclsysGetCANNVersion`, where exported.
    pub fn cann_version(&self) -> Option<String> {
        let f = self.acl.aclsysGetCANNVersion?;
        let mut v = aclCANNPackageVersion::default();
        // SAFETY: `v` is a valid, writable aclCANNPackageVersion; no other preconditions.
        let rc = unsafe { f(aclCANNPackageName::ACL_PKG_NAME_CANN, &mut v) };
        let s = v.version_string();
        (rc == ACL_SUCCESS && !s.is_empty()).then_some(s)
    }

    /// The ACL runtime's (major, minor, patch) from `aclrtGetVersion`, where exported.
    pub fn runtime_version(&self) -> Option<(i32, i32, i32)> {
        let f = self.acl.aclrtGetVersion?;
        let (mut a, mut b, mut c) = (0, 0, 0);
        // SAFETY: three valid out-pointers; no other preconditions.
        let rc = unsafe { f(&mut a, &mut b, &mut c) };
        (rc == ACL_SUCCESS).then_some((a, b, c))
    }

    /// The SoC name (e.g. `Ascend910B2`) from `aclrtGetSocName`, where exported; the
    /// runtime may only know it after `aclInit`.
    pub fn soc_name(&self) -> Option<String> {
        let f = self.acl.aclrtGetSocName?;
        // SAFETY: no preconditions; returns NULL or a static NUL-terminated string.
        let p = unsafe { f() };
        if p.is_null() {
            return None;
        }
        // SAFETY: non-null and NUL-terminated per the API contract.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        (!s.is_empty()).then_some(s)
    }
}
