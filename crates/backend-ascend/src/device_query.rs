//! What the ACL runtime says about the machine's NPUs before any backend is opened: how many
//! there are and how much HBM each has free, for picking the device and sizing the KV cache.
//! The binary asks here instead of calling ACL itself, so CANN stays below the model crate.

use ascend_sys::types::{aclrtMemAttr, ACL_ERROR_REPEAT_INITIALIZE};
pub use ascend_sys::{AclError, Cann, CannError};

/// A device query that failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceQueryError {
    #[error(transparent)]
    Acl(#[from] AclError),
    #[error("the thread querying NPU memory panicked")]
    Panicked,
}

/// One device's HBM as the driver sees it (pool caches count as used).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeviceMemory {
    pub device: i32,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// NPUs the loaded CANN reports, initialising ACL if nothing has yet.
pub fn device_count(cann: &Cann) -> Result<u32, DeviceQueryError> {
    // SAFETY: a null config path is allowed; a repeated init is reported and tolerated.
    let rc = unsafe { (cann.acl.aclInit)(std::ptr::null()) };
    if rc != ACL_ERROR_REPEAT_INITIALIZE {
        cann.check(rc, "aclInit")?;
    }
    let mut n = 0u32;
    // SAFETY: valid out-pointer.
    cann.check(
        unsafe { (cann.acl.aclrtGetDeviceCount)(&mut n) },
        "aclrtGetDeviceCount",
    )?;
    Ok(n)
}

/// The HBM of each of `devices`.
///
/// Runs on a thread of its own: setting a device changes the calling thread's current
/// context, which must stay the backend's on threads that launch work.
pub fn device_memory(cann: &Cann, devices: &[i32]) -> Result<Vec<DeviceMemory>, DeviceQueryError> {
    std::thread::scope(|s| {
        s.spawn(|| devices.iter().map(|&d| memory_here(cann, d)).collect())
            .join()
            .map_err(|_| DeviceQueryError::Panicked)?
    })
}

fn memory_here(cann: &Cann, device: i32) -> Result<DeviceMemory, DeviceQueryError> {
    // SAFETY: plain call; ACL checks the id and reports an invalid one.
    cann.check(
        unsafe { (cann.acl.aclrtSetDevice)(device) },
        "aclrtSetDevice",
    )?;
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: valid out-pointers.
    cann.check(
        unsafe { (cann.acl.aclrtGetMemInfo)(aclrtMemAttr::ACL_HBM_MEM, &mut free, &mut total) },
        "aclrtGetMemInfo",
    )?;
    Ok(DeviceMemory {
        device,
        free_bytes: free as u64,
        total_bytes: total as u64,
    })
}
