//! Errors: loading CANN, and failed ACL / aclnn / HCCL calls.

use crate::types::{aclError, acl_error_name, aclnnStatus, aclnn_status_name, HcclResult};
use std::fmt;
use std::path::PathBuf;

/// The hint every "CANN not found" message carries: most failures on an Atlas machine
/// are an environment that was not set up.
pub const SET_ENV_HINT: &str = "source the CANN environment first, e.g. \
`source /usr/local/Ascend/ascend-toolkit/set_env.sh` (or `<cann>/set_env.sh`), which sets \
ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH and LD_LIBRARY_PATH";

/// A failure to find or load CANN's libraries or symbols.
#[derive(Debug, thiserror::Error)]
pub enum CannError {
    /// No usable copy of a library was found.
    #[error(
        "CANN library {library} not found; searched {}{}; {hint}",
        fmt_dirs(searched),
        fmt_attempts(attempts),
        hint = SET_ENV_HINT
    )]
    NotFound {
        /// File name looked for, e.g. `libascendcl.so`.
        library: String,
        /// Directories considered, in order (including ones that do not exist).
        searched: Vec<PathBuf>,
        /// Files that exist but failed to load, with the loader's message.
        attempts: Vec<(PathBuf, String)>,
    },
    /// A symbol the crate cannot work without is missing from every library searched.
    #[error(
        "required symbol `{symbol}` not found in {}; it was introduced in CANN {since}: \
         the installed CANN is older, or its operator packages (opp/ops) are incomplete",
        fmt_dirs(libraries)
    )]
    MissingSymbol {
        symbol: &'static str,
        /// CANN version that introduced it.
        since: &'static str,
        /// Libraries searched, in order.
        libraries: Vec<PathBuf>,
    },
    /// HCCL was asked for but is not usable; the reason was recorded at load time.
    #[error("HCCL is not available: {0}")]
    HcclUnavailable(String),
}

fn fmt_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "nothing (no directory configured)".to_string();
    }
    let v: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    format!("[{}]", v.join(", "))
}

fn fmt_attempts(attempts: &[(PathBuf, String)]) -> String {
    if attempts.is_empty() {
        return String::new();
    }
    let v: Vec<String> = attempts
        .iter()
        .map(|(p, e)| format!("{}: {e}", p.display()))
        .collect();
    format!("; found but failed to load: {}", v.join("; "))
}

/// A failed ACL runtime call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed with aclError {code}{}{}", fmt_name(*name), fmt_msg(message))]
pub struct AclError {
    /// The C function that failed.
    pub call: &'static str,
    pub code: aclError,
    /// The code's C name, where this crate knows it.
    pub name: Option<&'static str>,
    /// `aclGetRecentErrMsg()` at the time of the failure (empty if none).
    pub message: String,
}

impl AclError {
    pub fn new(call: &'static str, code: aclError, message: String) -> Self {
        Self {
            call,
            code,
            name: acl_error_name(code),
            message,
        }
    }
}

/// A failed aclnn call (either phase) or nnopbase call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed with aclnnStatus {status}{}{}", fmt_name(*name), fmt_msg(message))]
pub struct AclnnError {
    pub call: &'static str,
    pub status: aclnnStatus,
    pub name: Option<&'static str>,
    /// `aclGetRecentErrMsg()` at the time of the failure (aclnn reports its details there).
    pub message: String,
}

impl AclnnError {
    pub fn new(call: &'static str, status: aclnnStatus, message: String) -> Self {
        Self {
            call,
            status,
            name: aclnn_status_name(status),
            message,
        }
    }
}

/// A failed HCCL call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed with HcclResult {}{}{}", code.0, fmt_name(code.name()), fmt_msg(message))]
pub struct HcclError {
    pub call: &'static str,
    pub code: HcclResult,
    /// `HcclGetErrorString(code)` (and `aclGetRecentErrMsg()` where it adds something).
    pub message: String,
}

fn fmt_name(name: Option<&'static str>) -> String {
    name.map(|n| format!(" ({n})")).unwrap_or_default()
}

fn fmt_msg(msg: &str) -> String {
    let m = msg.trim();
    if m.is_empty() {
        String::new()
    } else {
        format!(": {m}")
    }
}

impl fmt::Display for crate::loader::SymbolInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, CANN {})",
            self.name,
            if self.required {
                "required"
            } else {
                "optional"
            },
            self.since
        )
    }
}
