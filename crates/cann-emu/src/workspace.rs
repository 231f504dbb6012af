//! Operator workspaces: the size phase 1 answers, the checks phase 2 makes on the buffer it
//! is given, and the garbage the buffer holds when the operator runs.
//!
//! Sources (README rule table, rows "Workspace ..."):
//! - AscendC tiling functions size the workspace as the system workspace
//!   (`PlatformAscendC::GetLibApiWorkSpaceSize`) plus the op's own part: CANN 8.3/9.0 Ascend C
//!   API reference "GetLibApiWorkSpaceSize" (its example sets `usrSize + sysWorkspaceSize`),
//!   and the ops-transformer / ops-nn tiling code, whose fallback constant for the system
//!   part is `SYS_WORKSPACE_SIZE = 16 * 1024 * 1024` (grouped_matmul, matmul, moe tilings).
//! - The two-phase contract ("两段式接口", ops-transformer `docs/context`): phase 1 returns
//!   `workspaceSize`; the caller allocates that many bytes of device memory and passes them
//!   to phase 2, which runs on the stream; the memory must stay valid until the op has run.
//!
//! The user parts below are modelled from what each kernel keeps per core (they are not
//! CANN's exact formulas, which depend on tiling); what matters for a caller is that they
//! are non-zero and grow with the shapes, so a workspace sized for one call is too small
//! for a larger one.

use crate::mem;
use crate::state::{bump, Fail, Res, STATS};
use ascend_sys::types::*;
use std::cell::{Cell, RefCell};

/// The system workspace AscendC kernels reserve (`GetLibApiWorkSpaceSize` on Atlas A2).
pub const SYSTEM_BYTES: u64 = 16 * 1024 * 1024;

/// Vector cores of an Atlas 800T A2 (910B): per-core scratch is sized for each.
pub const CORES: u64 = 40;

/// Operators implemented as AscendC kernels that reserve the system workspace.
const ASCENDC_OPS: &[&str] = &[
    "aclnnMatmul",
    "aclnnFusedInferAttentionScoreV2",
    "aclnnFusedInferAttentionScoreV3",
    "aclnnFusedInferAttentionScoreV4",
    "aclnnGroupedMatmulV4",
    "aclnnWeightQuantBatchMatmulV2",
    "aclnnMoeGatingTopKSoftmax",
    "aclnnMoeInitRoutingV2",
    "aclnnMoeFinalizeRoutingV2",
];

thread_local! {
    /// The user part the op being built on this thread asked for.
    static USER: Cell<u64> = const { Cell::new(0) };
    /// Device byte ranges of the tensors the op being built looked up.
    static EXTENTS: RefCell<Vec<(u64, u64)>> = const { RefCell::new(Vec::new()) };
}

/// Called at the start of every phase 1.
pub fn begin() {
    USER.with(|u| u.set(0));
    EXTENTS.with(|e| e.borrow_mut().clear());
}

/// Phase 1 of an op asks for `bytes` of its own scratch on top of the system workspace.
pub fn user(bytes: u64) {
    USER.with(|u| u.set(u.get() + bytes));
}

/// Records a tensor's device bytes (every tensor looked up by phase 1).
pub fn record_extent(start: u64, len: u64) {
    if len > 0 {
        EXTENTS.with(|e| e.borrow_mut().push((start, len)));
    }
}

/// What phase 1 of `name` answers, and the tensors' ranges, at the end of phase 1.
pub fn take(name: &str) -> (u64, Vec<(u64, u64)>) {
    let sys = if ASCENDC_OPS.contains(&name) {
        SYSTEM_BYTES
    } else {
        0
    };
    let user = USER.with(|u| u.replace(0));
    let extents = EXTENTS.with(|e| std::mem::take(&mut *e.borrow_mut()));
    (if sys > 0 { sys + user } else { 0 }, extents)
}

fn refuse(code: aclnnStatus, msg: String) -> Fail {
    bump(&STATS.workspace_violations);
    Fail::new(code, msg)
}

/// Phase 2: the buffer passed holds the size phase 1 answered, in one live allocation.
pub fn check_launch(name: &str, ws: u64, size: u64, need: u64) -> Res<()> {
    if need == 0 {
        return Ok(());
    }
    if ws == 0 {
        return Err(refuse(
            ACLNN_ERR_PARAM_NULLPTR,
            format!("{name}: workspace is null but phase 1 asked for {need} bytes"),
        ));
    }
    if size < need {
        return Err(refuse(
            ACLNN_ERR_PARAM_INVALID,
            format!("{name}: workspaceSize {size} is less than the {need} bytes phase 1 asked for"),
        ));
    }
    if !mem::is_device_addr(ws) {
        return Err(refuse(
            ACLNN_ERR_PARAM_INVALID,
            format!("{name}: workspace {ws:#x} is not device memory"),
        ));
    }
    mem::check(ws, need, name).map_err(|f| refuse(ACLNN_ERR_PARAM_INVALID, f.msg))
}

/// At execution: the workspace is still alive, overlaps none of the op's tensors, and holds
/// garbage (the kernel owns it; nothing may be left there for it or expected back).
pub fn prepare_run(name: &str, ws: u64, need: u64, extents: &[(u64, u64)]) -> Res<()> {
    if need == 0 {
        return Ok(());
    }
    if let Some(&(s, l)) = extents.iter().find(|&&(s, l)| s < ws + need && ws < s + l) {
        return Err(refuse(
            ACLNN_ERR_PARAM_INVALID,
            format!("{name}: workspace [{ws:#x}, +{need}) overlaps an operand [{s:#x}, +{l})"),
        ));
    }
    mem::with_mut(ws, need as usize, name, |b| {
        // The user part in full, the system part one word in every 256 bytes (it is large
        // and only there to catch a buffer that something else still uses).
        let user = (need - SYSTEM_BYTES.min(need)) as usize;
        let split = b.len() - user;
        for (i, c) in b[split..].iter_mut().enumerate() {
            *c = 0xA5 ^ (i as u8);
        }
        for c in b[..split].chunks_mut(256) {
            let n = c.len().min(8);
            c[..n].fill(0xA5);
        }
    })
}
