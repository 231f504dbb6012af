//! Raw FFI to CANN — the ACL runtime, nnopbase, the aclnn operators and HCCL — resolved
//! at run time with `libloading`, so that a binary built with this crate starts on
//! machines without CANN.
//!
//! * [`types`]: hand-written `#[repr(C)]` handles, enums (with CANN's exact values),
//!   structs and status codes.
//! * [`fns`]: one `unsafe extern "C" fn` type per C symbol, named as the symbol.
//! * [`Cann`]: the loaded function tables ([`AclApi`], [`NnopApi`], [`OpsApi`],
//!   [`HcclApi`]); required symbols are plain fields, optional ones `Option`s, so a
//!   backend picks e.g. the fused-attention version by what the library exports.
//! * `check` helpers turn status codes into [`AclError`] / [`AclnnError`] / [`HcclError`]
//!   with the runtime's own message.
//! * [`dcmi`]: the optional device-management library (`libdcmi.so`) `npu-smi` uses.
//!
//! The declarations are written by hand from CANN's documented signatures: the headers
//! are under a licence that forbids vendoring them. `cargo test --features bindgen` (see
//! `scripts/check-headers.sh`) compares every declaration with real headers.
//!
//! ```no_run
//! use ascend_sys::{Cann, types::*};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cann = Cann::load()?; // CannError::NotFound on a machine without CANN
//! // SAFETY: a null config path is allowed.
//! cann.check(unsafe { (cann.acl.aclInit)(std::ptr::null()) }, "aclInit")?;
//! let mut n = 0u32;
//! // SAFETY: valid out-pointer.
//! cann.check(unsafe { (cann.acl.aclrtGetDeviceCount)(&mut n) }, "aclrtGetDeviceCount")?;
//! # Ok(()) }
//! ```

pub mod dcmi;
pub mod error;
pub mod fns;
mod loader;
pub mod types;

pub use error::{AclError, AclnnError, CannError, HcclError, SET_ENV_HINT};
pub use loader::{AclApi, AttentionApi, Cann, HcclApi, KernelsApi, NnopApi, OpsApi, SymbolInfo};
