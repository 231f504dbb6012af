//! What launching qwen3-serve's own AscendC kernels (`kernels/`) takes on this device: the
//! library's launch table, the SoC's core spec for their tilings, a tiling struct copied to
//! the device, and a launch's status as a typed error.

use ascend_sys::KernelsApi;
use qwen3_backend::{BackendError, Result};
use qwen3_kernels::CoreSpec;

use crate::desc::Dt;
use crate::mem::dev_err;
use crate::{unsupported, AscendBackend, AscendTensor};

/// The kernels library's launch table, or why `--attention-backend custom` cannot run.
pub(crate) fn kernels_api(cann: &ascend_sys::Cann) -> Result<&KernelsApi> {
    let api = cann.kernels.as_ref().ok_or_else(|| {
        unsupported(
            "--attention-backend custom: libqwen3_ascendc_kernels.so not found beside CANN's libraries (build it with kernels/build-atlas.sh)",
        )
    })?;
    for (name, present) in [
        (
            "aclrtlaunch_chunked_prefill_attention",
            api.aclrtlaunch_chunked_prefill_attention.is_some(),
        ),
        (
            "aclrtlaunch_paged_decode_attention",
            api.aclrtlaunch_paged_decode_attention.is_some(),
        ),
        (
            "aclrtlaunch_paged_decode_merge",
            api.aclrtlaunch_paged_decode_merge.is_some(),
        ),
    ] {
        if !present {
            return Err(unsupported(&format!(
                "--attention-backend custom: libqwen3_ascendc_kernels.so lacks {name}"
            )));
        }
    }
    Ok(api)
}

/// Vector cores of the SoC CANN reports (910B3/B4: 20 AI cores, 40 vector; else 910B1/B2's 48).
pub(crate) fn core_spec(soc: Option<&str>) -> CoreSpec {
    match soc {
        Some(s) if s.contains("910B3") || s.contains("910B4") => CoreSpec::ASCEND_910B3,
        _ => CoreSpec::ASCEND_910B2,
    }
}

/// A `#[repr(C)]` tiling struct of plain `u32`/`f32` fields (no padding).
pub(crate) trait Tiling: Copy {}
impl Tiling for qwen3_kernels::QkNormRopeCacheTiling {}
impl Tiling for qwen3_kernels::PagedDecodeTiling {}
impl Tiling for qwen3_kernels::ChunkedPrefillTiling {}

impl AscendBackend {
    pub(crate) fn kernel_cores(&self) -> CoreSpec {
        core_spec(self.cann_ref().soc_name().as_deref())
    }

    /// The tiling's bytes in device memory, where the kernel reads it.
    pub(crate) fn upload_tiling<T: Tiling>(&self, t: &T) -> Result<AscendTensor> {
        // SAFETY: `Tiling` structs are `#[repr(C)]` runs of 4-byte fields without padding, so
        // all `size_of::<T>()` bytes are initialised.
        let bytes = unsafe {
            std::slice::from_raw_parts((t as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec();
        let words = bytes.len() / 4;
        self.upload_bytes(bytes, Dt::I32, &[words])
    }

    /// The status a launch stub returned, as an error naming it (a launch counts as an
    /// operator launch in `host_calls`).
    pub(crate) fn launched(&self, stub: &'static str, rc: u32) -> Result<()> {
        if rc == 0 {
            crate::host_calls::bump(crate::host_calls::Counter::Op);
            return Ok(());
        }
        Err(dev_err(ascend_sys::AclError::new(
            stub,
            rc as i32,
            self.cann_ref().acl.recent_error_message(),
        )))
    }
}

/// A launch stub the library lacks (checked at start-up; here for the type system).
pub(crate) fn missing(stub: &'static str) -> BackendError {
    BackendError::Device(format!("{stub} missing from the kernels library"))
}
