//! Hand-written C types of CANN's public API: handles, enums with CANN's exact values,
//! plain structs and status codes.
//!
//! Written from the documented signatures (CANN's headers are under a restrictive licence
//! and are not vendored); `cargo test --features bindgen` compares them with real headers.
//! Names follow C so that they can be grepped against CANN's documentation.

#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::{c_char, c_int, c_void};
use std::fmt;
use std::marker::{PhantomData, PhantomPinned};

// ---------------------------------------------------------------------------------------
// Plain typedefs and handles
// ---------------------------------------------------------------------------------------

/// `typedef int aclError;` — 0 is success.
pub type aclError = c_int;
/// `typedef int32_t aclnnStatus;` — 0 is success.
pub type aclnnStatus = i32;

/// `typedef void *aclrtStream;`
pub type aclrtStream = *mut c_void;
/// `typedef void *aclrtContext;`
pub type aclrtContext = *mut c_void;
/// `typedef void *aclrtEvent;`
pub type aclrtEvent = *mut c_void;
/// `typedef void *aclmdlRI;` — a captured graph (model runtime instance).
pub type aclmdlRI = *mut c_void;
/// `typedef void *aclrtTaskGrp;` — a task group recorded inside a graph capture
/// (`aclmdlRICaptureTaskGrpEnd`), whose tasks `aclmdlRICaptureTaskUpdateBegin/End` re-record.
pub type aclrtTaskGrp = *mut c_void;
/// `typedef void *HcclComm;`
pub type HcclComm = *mut c_void;

/// Declares an opaque C struct: zero-sized, `!Send`, `!Sync`, `!Unpin`, only ever used
/// behind a pointer (the pattern the Rust nomicon recommends for opaque FFI types).
macro_rules! opaque {
    ($($(#[$m:meta])* $name:ident;)*) => {$(
        $(#[$m])*
        #[repr(C)]
        pub struct $name {
            _data: [u8; 0],
            _marker: PhantomData<(*mut u8, PhantomPinned)>,
        }
    )*};
}

opaque! {
    /// `aclTensor` (nnopbase): a view (shape, strides, offset) over device memory.
    aclTensor;
    /// `aclScalar` (nnopbase): a host scalar of some `aclDataType`.
    aclScalar;
    /// `aclIntArray` (nnopbase): a host `int64_t` array, copied at creation.
    aclIntArray;
    /// `aclTensorList` (nnopbase): a list of `aclTensor`s; destroying it destroys them.
    aclTensorList;
    /// `aclOpExecutor` (nnopbase): the plan produced by an aclnn first phase.
    aclOpExecutor;
}

// ---------------------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------------------

/// Declares a C enum as a transparent newtype with associated constants. A newtype (not a
/// Rust `enum`) because a value the library returns that this crate does not know must not
/// be undefined behaviour.
macro_rules! c_enum {
    (
        $(#[$m:meta])*
        pub struct $name:ident($repr:ty) {
            $($(#[$vm:meta])* $var:ident = $val:expr,)*
        }
    ) => {
        $(#[$m])*
        #[repr(transparent)]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $repr);

        impl $name {
            $($(#[$vm])* pub const $var: $name = $name($val);)*

            /// Every variant this crate declares, by its C name.
            pub const VARIANTS: &'static [(&'static str, i64)] =
                &[$((stringify!($var), $val as i64),)*];

            /// The C name of this value, if this crate declares it.
            pub fn name(self) -> Option<&'static str> {
                Self::VARIANTS
                    .iter()
                    .find(|(_, v)| *v == self.0 as i64)
                    .map(|(n, _)| *n)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({})", stringify!($name), self.0),
                }
            }
        }
    };
}

c_enum! {
    /// Element type of an `aclTensor` / `aclScalar` (acl_base_rt.h).
    pub struct aclDataType(c_int) {
        ACL_DT_UNDEFINED = -1,
        ACL_FLOAT = 0,
        ACL_FLOAT16 = 1,
        ACL_INT8 = 2,
        ACL_INT32 = 3,
        ACL_UINT8 = 4,
        ACL_INT16 = 6,
        ACL_UINT16 = 7,
        ACL_UINT32 = 8,
        ACL_INT64 = 9,
        ACL_UINT64 = 10,
        ACL_DOUBLE = 11,
        ACL_BOOL = 12,
        ACL_STRING = 13,
        ACL_COMPLEX64 = 16,
        ACL_COMPLEX128 = 17,
        ACL_BF16 = 27,
        ACL_INT4 = 29,
        ACL_UINT1 = 30,
        ACL_COMPLEX32 = 33,
    }
}

impl aclDataType {
    /// Bytes per element, `None` for sub-byte or variable-size types.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            Self::ACL_BOOL | Self::ACL_INT8 | Self::ACL_UINT8 => 1,
            Self::ACL_FLOAT16 | Self::ACL_BF16 | Self::ACL_INT16 | Self::ACL_UINT16 => 2,
            Self::ACL_FLOAT | Self::ACL_INT32 | Self::ACL_UINT32 | Self::ACL_COMPLEX32 => 4,
            Self::ACL_DOUBLE | Self::ACL_INT64 | Self::ACL_UINT64 | Self::ACL_COMPLEX64 => 8,
            Self::ACL_COMPLEX128 => 16,
            _ => return None,
        })
    }
}

c_enum! {
    /// Memory layout of a tensor (acl_base_rt.h). Only `ND` (and `FRACTAL_NZ` for
    /// pre-converted weights) matter for LLM serving.
    pub struct aclFormat(c_int) {
        ACL_FORMAT_UNDEFINED = -1,
        ACL_FORMAT_NCHW = 0,
        ACL_FORMAT_NHWC = 1,
        ACL_FORMAT_ND = 2,
        ACL_FORMAT_NC1HWC0 = 3,
        ACL_FORMAT_FRACTAL_Z = 4,
        ACL_FORMAT_NC1HWC0_C04 = 12,
        ACL_FORMAT_HWCN = 16,
        ACL_FORMAT_NDHWC = 27,
        ACL_FORMAT_FRACTAL_NZ = 29,
        ACL_FORMAT_NCDHW = 30,
        ACL_FORMAT_NDC1HWC0 = 32,
        ACL_FRACTAL_Z_3D = 33,
        ACL_FORMAT_NC = 35,
        ACL_FORMAT_NCL = 47,
    }
}

c_enum! {
    /// Direction of `aclrtMemcpy[Async]` (acl_rt.h).
    pub struct aclrtMemcpyKind(u32) {
        ACL_MEMCPY_HOST_TO_HOST = 0,
        ACL_MEMCPY_HOST_TO_DEVICE = 1,
        ACL_MEMCPY_DEVICE_TO_HOST = 2,
        ACL_MEMCPY_DEVICE_TO_DEVICE = 3,
        ACL_MEMCPY_DEFAULT = 4,
    }
}

c_enum! {
    /// Page policy of `aclrtMalloc` (acl_rt.h).
    pub struct aclrtMemMallocPolicy(u32) {
        ACL_MEM_MALLOC_HUGE_FIRST = 0,
        ACL_MEM_MALLOC_HUGE_ONLY = 1,
        ACL_MEM_MALLOC_NORMAL_ONLY = 2,
        ACL_MEM_MALLOC_HUGE_FIRST_P2P = 3,
        ACL_MEM_MALLOC_HUGE_ONLY_P2P = 4,
        ACL_MEM_MALLOC_NORMAL_ONLY_P2P = 5,
    }
}

c_enum! {
    /// Which memory `aclrtGetMemInfo` reports (acl_rt.h). `ACL_HBM_MEM` is device memory.
    pub struct aclrtMemAttr(u32) {
        ACL_DDR_MEM = 0,
        ACL_HBM_MEM = 1,
        ACL_DDR_MEM_HUGE = 2,
        ACL_DDR_MEM_NORMAL = 3,
        ACL_HBM_MEM_HUGE = 4,
        ACL_HBM_MEM_NORMAL = 5,
        ACL_DDR_MEM_P2P_HUGE = 6,
        ACL_DDR_MEM_P2P_NORMAL = 7,
        ACL_HBM_MEM_P2P_HUGE = 8,
        ACL_HBM_MEM_P2P_NORMAL = 9,
    }
}

c_enum! {
    /// Capture mode of `aclmdlRICaptureBegin` (acl_rt.h), as CUDA's stream capture modes.
    pub struct aclmdlRICaptureMode(u32) {
        ACL_MODEL_RI_CAPTURE_MODE_GLOBAL = 0,
        ACL_MODEL_RI_CAPTURE_MODE_THREAD_LOCAL = 1,
        ACL_MODEL_RI_CAPTURE_MODE_RELAXED = 2,
    }
}

c_enum! {
    /// Result of `aclmdlRICaptureGetInfo` (acl_rt.h).
    pub struct aclmdlRICaptureStatus(u32) {
        ACL_MODEL_RI_CAPTURE_STATUS_NONE = 0,
        ACL_MODEL_RI_CAPTURE_STATUS_ACTIVE = 1,
        ACL_MODEL_RI_CAPTURE_STATUS_INVALIDATED = 2,
    }
}

c_enum! {
    /// Package asked about by `aclsysGetCANNVersion` (acl_rt.h).
    pub struct aclCANNPackageName(u32) {
        ACL_PKG_NAME_CANN = 0,
        ACL_PKG_NAME_RUNTIME = 1,
        ACL_PKG_NAME_COMPILER = 2,
        ACL_PKG_NAME_HCCL = 3,
        ACL_PKG_NAME_TOOLKIT = 4,
        ACL_PKG_NAME_OPP = 5,
        ACL_PKG_NAME_OPP_KERNEL = 6,
        ACL_PKG_NAME_DRIVER = 7,
    }
}

c_enum! {
    /// Status of every HCCL call (hccl_types.h).
    pub struct HcclResult(u32) {
        HCCL_SUCCESS = 0,
        HCCL_E_PARA = 1,
        HCCL_E_PTR = 2,
        HCCL_E_MEMORY = 3,
        HCCL_E_INTERNAL = 4,
        HCCL_E_NOT_SUPPORT = 5,
        HCCL_E_NOT_FOUND = 6,
        HCCL_E_UNAVAIL = 7,
        HCCL_E_SYSCALL = 8,
        HCCL_E_TIMEOUT = 9,
        HCCL_E_OPEN_FILE_FAILURE = 10,
        HCCL_E_TCP_CONNECT = 11,
        HCCL_E_ROCE_CONNECT = 12,
        HCCL_E_TCP_TRANSFER = 13,
        HCCL_E_ROCE_TRANSFER = 14,
        HCCL_E_RUNTIME = 15,
        HCCL_E_DRV = 16,
        HCCL_E_PROFILING = 17,
        HCCL_E_CCE = 18,
        HCCL_E_NETWORK = 19,
        HCCL_E_AGAIN = 20,
        HCCL_E_REMOTE = 21,
        HCCL_E_SUSPENDING = 22,
    }
}

c_enum! {
    /// Reduction of `HcclAllReduce` / `HcclReduceScatter` (hccl_types.h).
    pub struct HcclReduceOp(u32) {
        HCCL_REDUCE_SUM = 0,
        HCCL_REDUCE_PROD = 1,
        HCCL_REDUCE_MAX = 2,
        HCCL_REDUCE_MIN = 3,
    }
}

c_enum! {
    /// Element type of HCCL collectives (hccl_types.h). Not ACL's numbering: BF16 is 11
    /// here and 27 in `aclDataType`; convert with [`HcclDataType::from_acl`].
    pub struct HcclDataType(u32) {
        HCCL_DATA_TYPE_INT8 = 0,
        HCCL_DATA_TYPE_INT16 = 1,
        HCCL_DATA_TYPE_INT32 = 2,
        HCCL_DATA_TYPE_FP16 = 3,
        HCCL_DATA_TYPE_FP32 = 4,
        HCCL_DATA_TYPE_INT64 = 5,
        HCCL_DATA_TYPE_UINT64 = 6,
        HCCL_DATA_TYPE_UINT8 = 7,
        HCCL_DATA_TYPE_UINT16 = 8,
        HCCL_DATA_TYPE_UINT32 = 9,
        HCCL_DATA_TYPE_FP64 = 10,
        HCCL_DATA_TYPE_BFP16 = 11,
    }
}

impl HcclDataType {
    /// The HCCL type for an ACL element type, `None` where HCCL has no equivalent.
    pub fn from_acl(dt: aclDataType) -> Option<Self> {
        Some(match dt {
            aclDataType::ACL_INT8 => Self::HCCL_DATA_TYPE_INT8,
            aclDataType::ACL_INT16 => Self::HCCL_DATA_TYPE_INT16,
            aclDataType::ACL_INT32 => Self::HCCL_DATA_TYPE_INT32,
            aclDataType::ACL_FLOAT16 => Self::HCCL_DATA_TYPE_FP16,
            aclDataType::ACL_FLOAT => Self::HCCL_DATA_TYPE_FP32,
            aclDataType::ACL_INT64 => Self::HCCL_DATA_TYPE_INT64,
            aclDataType::ACL_UINT64 => Self::HCCL_DATA_TYPE_UINT64,
            aclDataType::ACL_UINT8 => Self::HCCL_DATA_TYPE_UINT8,
            aclDataType::ACL_UINT16 => Self::HCCL_DATA_TYPE_UINT16,
            aclDataType::ACL_UINT32 => Self::HCCL_DATA_TYPE_UINT32,
            aclDataType::ACL_DOUBLE => Self::HCCL_DATA_TYPE_FP64,
            aclDataType::ACL_BF16 => Self::HCCL_DATA_TYPE_BFP16,
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Structs
// ---------------------------------------------------------------------------------------

/// `HCCL_ROOT_INFO_BYTES` (hccl_types.h).
pub const HCCL_ROOT_INFO_BYTES: usize = 4108;

/// `HcclRootInfo` (hccl_types.h): opaque bytes made by `HcclGetRootInfo` on one rank and
/// handed to every rank (by memory in one process, by TCP across hosts).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HcclRootInfo {
    pub internal: [c_char; HCCL_ROOT_INFO_BYTES],
}

impl Default for HcclRootInfo {
    fn default() -> Self {
        Self {
            internal: [0; HCCL_ROOT_INFO_BYTES],
        }
    }
}

impl fmt::Debug for HcclRootInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HcclRootInfo { .. }")
    }
}

/// `ACL_PKG_VERSION_MAX_SIZE` (acl_rt.h).
pub const ACL_PKG_VERSION_MAX_SIZE: usize = 128;
/// `ACL_PKG_VERSION_PARTS_MAX_SIZE` (acl_rt.h).
pub const ACL_PKG_VERSION_PARTS_MAX_SIZE: usize = 64;

/// `aclCANNPackageVersion` (acl_rt.h), filled by `aclsysGetCANNVersion`. Each field is a
/// NUL-terminated string.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct aclCANNPackageVersion {
    pub version: [c_char; ACL_PKG_VERSION_MAX_SIZE],
    pub majorVersion: [c_char; ACL_PKG_VERSION_PARTS_MAX_SIZE],
    pub minorVersion: [c_char; ACL_PKG_VERSION_PARTS_MAX_SIZE],
    pub releaseVersion: [c_char; ACL_PKG_VERSION_PARTS_MAX_SIZE],
    pub patchVersion: [c_char; ACL_PKG_VERSION_PARTS_MAX_SIZE],
    pub reserved: [c_char; ACL_PKG_VERSION_MAX_SIZE],
}

impl Default for aclCANNPackageVersion {
    fn default() -> Self {
        Self {
            version: [0; ACL_PKG_VERSION_MAX_SIZE],
            majorVersion: [0; ACL_PKG_VERSION_PARTS_MAX_SIZE],
            minorVersion: [0; ACL_PKG_VERSION_PARTS_MAX_SIZE],
            releaseVersion: [0; ACL_PKG_VERSION_PARTS_MAX_SIZE],
            patchVersion: [0; ACL_PKG_VERSION_PARTS_MAX_SIZE],
            reserved: [0; ACL_PKG_VERSION_MAX_SIZE],
        }
    }
}

impl aclCANNPackageVersion {
    /// The full version string (e.g. `8.3.RC1`), lossily decoded.
    pub fn version_string(&self) -> String {
        c_chars_to_string(&self.version)
    }
}

impl fmt::Debug for aclCANNPackageVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("aclCANNPackageVersion")
            .field("version", &c_chars_to_string(&self.version))
            .finish_non_exhaustive()
    }
}

/// Reads a NUL-terminated (or full) fixed C char buffer without trusting the terminator.
pub(crate) fn c_chars_to_string(buf: &[c_char]) -> String {
    // `c_char` is i8 or u8 depending on the target; `as u8` is the identity on the bits.
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---------------------------------------------------------------------------------------
// Status codes
// ---------------------------------------------------------------------------------------

/// Declares status-code constants and a name table for error messages.
macro_rules! codes {
    ($(#[$m:meta])* $table:ident: $ty:ty { $($name:ident = $val:expr,)* }) => {
        $(pub const $name: $ty = $val;)*
        $(#[$m])*
        pub const $table: &[(&str, i64)] = &[$((stringify!($name), $val as i64),)*];
    };
}

codes! {
    /// `aclError` values from acl_base_rt.h and error_codes/rt_error_codes.h that a
    /// serving engine is likely to see, by name.
    ACL_ERROR_NAMES: aclError {
        ACL_SUCCESS = 0,
        ACL_ERROR_INVALID_PARAM = 100000,
        ACL_ERROR_UNINITIALIZE = 100001,
        ACL_ERROR_REPEAT_INITIALIZE = 100002,
        ACL_ERROR_INVALID_FILE = 100003,
        ACL_ERROR_OP_NOT_FOUND = 100024,
        ACL_ERROR_OP_LOAD_FAILED = 100025,
        ACL_ERROR_UNSUPPORTED_DATA_TYPE = 100026,
        ACL_ERROR_REPEAT_FINALIZE = 100037,
        ACL_ERROR_INVALID_OPP_PATH = 148049,
        ACL_ERROR_BAD_ALLOC = 200000,
        ACL_ERROR_API_NOT_SUPPORT = 200001,
        ACL_ERROR_INVALID_DEVICE = 200002,
        ACL_ERROR_MEMORY_ADDRESS_UNALIGNED = 200003,
        ACL_ERROR_RESOURCE_NOT_MATCH = 200004,
        ACL_ERROR_INVALID_RESOURCE_HANDLE = 200005,
        ACL_ERROR_FEATURE_UNSUPPORTED = 200006,
        ACL_ERROR_STORAGE_OVER_LIMIT = 300000,
        ACL_ERROR_INTERNAL_ERROR = 500000,
        ACL_ERROR_FAILURE = 500001,
        ACL_ERROR_GE_FAILURE = 500002,
        ACL_ERROR_RT_FAILURE = 500003,
        ACL_ERROR_DRV_FAILURE = 500004,
        ACL_ERROR_RT_PARAM_INVALID = 107000,
        ACL_ERROR_RT_INVALID_DEVICEID = 107001,
        ACL_ERROR_RT_CONTEXT_NULL = 107002,
        ACL_ERROR_RT_STREAM_CONTEXT = 107003,
        ACL_ERROR_RT_ADDR_UNALIGNED = 107008,
        ACL_ERROR_RT_INVALID_HANDLE = 107017,
        ACL_ERROR_RT_WAIT_TIMEOUT = 107019,
        ACL_ERROR_RT_TASK_TIMEOUT = 107020,
        ACL_ERROR_RT_CAPTURE_DEPENDENCY = 107024,
        ACL_ERROR_RT_STREAM_CAPTURED = 107027,
        ACL_ERROR_RT_STREAM_NOT_CAPTURED = 107029,
        ACL_ERROR_RT_CAPTURE_MODE_NOT_SUPPORT = 107030,
        ACL_ERROR_RT_FEATURE_NOT_SUPPORT = 207000,
        ACL_ERROR_RT_MEMORY_ALLOCATION = 207001,
        ACL_ERROR_RT_MEMORY_FREE = 207002,
        ACL_ERROR_RT_NO_STREAM_RESOURCE = 207008,
        ACL_ERROR_RT_OVER_LIMIT = 207012,
        ACL_ERROR_RT_DEVICE_OOM = 207018,
        ACL_ERROR_RT_INTERNAL_ERROR = 507000,
        ACL_ERROR_RT_TS_ERROR = 507001,
        ACL_ERROR_RT_TASK_TYPE_NOT_SUPPORT = 507009,
        ACL_ERROR_RT_LOST_HEARTBEAT = 507010,
        ACL_ERROR_RT_MODEL_EXECUTE = 507011,
        ACL_ERROR_RT_AICORE_TIMEOUT = 507014,
        ACL_ERROR_RT_AICORE_EXCEPTION = 507015,
        ACL_ERROR_RT_AICPU_EXCEPTION = 507018,
        ACL_ERROR_RT_DEV_SETUP_ERROR = 507033,
        ACL_ERROR_RT_VECTOR_CORE_EXCEPTION = 507035,
        ACL_ERROR_RT_DEVICE_MEM_ERROR = 507053,
        ACL_ERROR_RT_DRV_INTERNAL_ERROR = 507899,
        ACL_ERROR_RT_AICPU_INTERNAL_ERROR = 507900,
    }
}

codes! {
    /// `aclnnStatus` values (nnopbase opdev/op_errno.h).
    ACLNN_STATUS_NAMES: aclnnStatus {
        ACLNN_SUCCESS = 0,
        ACLNN_ERR_PARAM_NULLPTR = 161001,
        ACLNN_ERR_PARAM_INVALID = 161002,
        ACLNN_ERR_RUNTIME_ERROR = 361001,
        ACLNN_ERR_INNER = 561000,
        ACLNN_ERR_INNER_INFERSHAPE_ERROR = 561001,
        ACLNN_ERR_INNER_TILING_ERROR = 561002,
        ACLNN_ERR_INNER_FIND_KERNEL_ERROR = 561003,
        ACLNN_ERR_INNER_CREATE_EXECUTOR = 561101,
        ACLNN_ERR_INNER_NOT_TRANS_EXECUTOR = 561102,
        ACLNN_ERR_INNER_NULLPTR = 561103,
        ACLNN_ERR_INNER_WRONG_ATTR_INFO_SIZE = 561104,
        ACLNN_ERR_INNER_KEY_CONFLICT = 561105,
        ACLNN_ERR_INNER_INVALID_IMPL_MODE = 561106,
        ACLNN_ERR_INNER_OPP_PATH_NOT_FOUND = 561107,
        ACLNN_ERR_INNER_LOAD_JSON_FAILED = 561108,
        ACLNN_ERR_INNER_JSON_VALUE_NOT_FOUND = 561109,
        ACLNN_ERR_INNER_JSON_FORMAT_INVALID = 561110,
        ACLNN_ERR_INNER_JSON_DTYPE_INVALID = 561111,
        ACLNN_ERR_INNER_OPP_KERNEL_PKG_NOT_FOUND = 561112,
    }
}

/// Every enum this crate declares with its variants, for name look-ups and for the
/// header cross-check (`--features bindgen`).
pub const ENUMS: &[(&str, &[(&str, i64)])] = &[
    ("aclDataType", aclDataType::VARIANTS),
    ("aclFormat", aclFormat::VARIANTS),
    ("aclrtMemcpyKind", aclrtMemcpyKind::VARIANTS),
    ("aclrtMemMallocPolicy", aclrtMemMallocPolicy::VARIANTS),
    ("aclrtMemAttr", aclrtMemAttr::VARIANTS),
    ("aclmdlRICaptureMode", aclmdlRICaptureMode::VARIANTS),
    ("aclmdlRICaptureStatus", aclmdlRICaptureStatus::VARIANTS),
    ("aclCANNPackageName", aclCANNPackageName::VARIANTS),
    ("HcclResult", HcclResult::VARIANTS),
    ("HcclReduceOp", HcclReduceOp::VARIANTS),
    ("HcclDataType", HcclDataType::VARIANTS),
];

/// Loose integer constants this crate declares (besides enum variants), for the header
/// cross-check.
pub const CONSTANTS: &[(&str, &[(&str, i64)])] = &[
    ("aclError", ACL_ERROR_NAMES),
    ("aclnnStatus", ACLNN_STATUS_NAMES),
    (
        "sizes",
        &[
            ("HCCL_ROOT_INFO_BYTES", HCCL_ROOT_INFO_BYTES as i64),
            ("ACL_PKG_VERSION_MAX_SIZE", ACL_PKG_VERSION_MAX_SIZE as i64),
            (
                "ACL_PKG_VERSION_PARTS_MAX_SIZE",
                ACL_PKG_VERSION_PARTS_MAX_SIZE as i64,
            ),
        ],
    ),
];

/// Name of an `aclError` code, if known.
pub fn acl_error_name(code: aclError) -> Option<&'static str> {
    lookup(ACL_ERROR_NAMES, code as i64)
}

/// Name of an `aclnnStatus` code, if known.
pub fn aclnn_status_name(status: aclnnStatus) -> Option<&'static str> {
    lookup(ACLNN_STATUS_NAMES, status as i64)
}

fn lookup(table: &[(&'static str, i64)], v: i64) -> Option<&'static str> {
    table.iter().find(|(_, x)| *x == v).map(|(n, _)| *n)
}
