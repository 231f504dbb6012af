//! nnopbase descriptors with RAII, and the one helper every aclnn call goes through.

use std::ffi::c_void;
use std::sync::Arc;

use ascend_sys::fns::AclnnRun;
use ascend_sys::types::*;
use ascend_sys::Cann;
use qwen3_backend::{BackendError, Result};

use crate::mem::{DevPtr, Device};

/// Element types of device tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dt {
    BF16,
    F32,
    I32,
    I64,
    Bool,
    /// Packed or signed integer weight codes (weight-quantized matmul).
    I8,
}

impl Dt {
    pub fn size(self) -> usize {
        match self {
            Dt::BF16 => 2,
            Dt::F32 | Dt::I32 => 4,
            Dt::I64 => 8,
            Dt::Bool | Dt::I8 => 1,
        }
    }

    pub fn acl(self) -> aclDataType {
        match self {
            Dt::BF16 => aclDataType::ACL_BF16,
            Dt::F32 => aclDataType::ACL_FLOAT,
            Dt::I32 => aclDataType::ACL_INT32,
            Dt::I64 => aclDataType::ACL_INT64,
            Dt::Bool => aclDataType::ACL_BOOL,
            Dt::I8 => aclDataType::ACL_INT8,
        }
    }
}

/// Row-major strides of `shape`, in elements.
pub fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// A view over device memory: what an `aclTensor` describes.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub ptr: DevPtr,
    pub dt: Dt,
    pub shape: Vec<i64>,
    pub strides: Vec<i64>,
    /// In elements from `ptr`.
    pub offset: i64,
    /// Elements of the underlying storage (from `ptr`).
    pub storage: i64,
}

impl View {
    pub fn contiguous(ptr: DevPtr, dt: Dt, shape: &[usize]) -> Self {
        let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let n = shape.iter().product::<i64>();
        Self {
            ptr,
            dt,
            strides: contiguous_strides(&shape),
            shape,
            offset: 0,
            storage: n,
        }
    }

    /// The same storage seen with another contiguous shape (same element count).
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        let n: i64 = shape.iter().map(|&d| d as i64).product();
        if n != self.shape.iter().product::<i64>()
            || self.strides != contiguous_strides(&self.shape)
        {
            return Err(BackendError::Shape {
                op: "reshape",
                detail: format!("{:?} as {shape:?}", self.shape),
            });
        }
        let mut v = Self::contiguous(self.ptr, self.dt, shape);
        v.offset = self.offset;
        v.storage = self.storage;
        Ok(v)
    }

    /// Highest element index (exclusive) this view touches, from `ptr`.
    pub fn extent(&self) -> i64 {
        if self.shape.contains(&0) {
            return self.offset;
        }
        self.offset
            + self
                .shape
                .iter()
                .zip(&self.strides)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<i64>()
            + 1
    }
}

/// An `aclTensor`, destroyed on drop.
pub struct TensorDesc<'a> {
    pub raw: *mut aclTensor,
    cann: &'a Cann,
}

impl<'a> TensorDesc<'a> {
    pub fn new(cann: &'a Cann, v: &View) -> Result<Self> {
        if v.extent() > v.storage {
            return Err(BackendError::Shape {
                op: "aclCreateTensor",
                detail: format!("view {v:?} exceeds its storage"),
            });
        }
        let storage = [v.storage];
        // SAFETY: dims and strides arrays have `shape.len()` elements and outlive the
        // call (nnopbase copies them); the address is a live device allocation covering
        // the view's extent (checked above against the storage the caller owns).
        let raw = unsafe {
            (cann.nnop.aclCreateTensor)(
                v.shape.as_ptr(),
                v.shape.len() as u64,
                v.dt.acl(),
                v.strides.as_ptr(),
                v.offset,
                aclFormat::ACL_FORMAT_ND,
                storage.as_ptr(),
                1,
                v.ptr.0,
            )
        };
        if raw.is_null() {
            return Err(BackendError::Device(format!(
                "aclCreateTensor failed for {v:?}: {}",
                cann.acl.recent_error_message()
            )));
        }
        Ok(Self { raw, cann })
    }

    /// Gives up ownership (a tensor list destroys its members).
    fn into_raw(self) -> *mut aclTensor {
        let raw = self.raw;
        std::mem::forget(self);
        raw
    }
}

impl Drop for TensorDesc<'_> {
    fn drop(&mut self) {
        // SAFETY: created by aclCreateTensor and destroyed once.
        unsafe { (self.cann.nnop.aclDestroyTensor)(self.raw) };
    }
}

/// An `aclTensorList`, destroyed (with its members) on drop.
pub struct TensorListDesc<'a> {
    pub raw: *mut aclTensorList,
    cann: &'a Cann,
}

impl<'a> TensorListDesc<'a> {
    pub fn new(cann: &'a Cann, members: Vec<TensorDesc<'a>>) -> Result<Self> {
        let raws: Vec<*const aclTensor> = members
            .into_iter()
            .map(|t| t.into_raw() as *const aclTensor)
            .collect();
        // SAFETY: `raws` holds valid descriptors; the list takes ownership of them.
        let raw = unsafe { (cann.nnop.aclCreateTensorList)(raws.as_ptr(), raws.len() as u64) };
        if raw.is_null() {
            for r in raws {
                // SAFETY: not owned by any list since creation failed.
                unsafe { (cann.nnop.aclDestroyTensor)(r) };
            }
            return Err(BackendError::Device(format!(
                "aclCreateTensorList failed: {}",
                cann.acl.recent_error_message()
            )));
        }
        Ok(Self { raw, cann })
    }
}

impl Drop for TensorListDesc<'_> {
    fn drop(&mut self) {
        // SAFETY: created by aclCreateTensorList and destroyed once.
        unsafe { (self.cann.nnop.aclDestroyTensorList)(self.raw) };
    }
}

/// An `aclIntArray` (host values copied at creation), destroyed on drop.
pub struct IntArrayDesc<'a> {
    pub raw: *mut aclIntArray,
    cann: &'a Cann,
}

impl<'a> IntArrayDesc<'a> {
    pub fn new(cann: &'a Cann, values: &[i64]) -> Result<Self> {
        // SAFETY: `values` is valid for its length; nnopbase copies it.
        let raw = unsafe { (cann.nnop.aclCreateIntArray)(values.as_ptr(), values.len() as u64) };
        if raw.is_null() {
            return Err(BackendError::Device(format!(
                "aclCreateIntArray failed: {}",
                cann.acl.recent_error_message()
            )));
        }
        Ok(Self { raw, cann })
    }
}

impl Drop for IntArrayDesc<'_> {
    fn drop(&mut self) {
        // SAFETY: created by aclCreateIntArray and destroyed once.
        unsafe { (self.cann.nnop.aclDestroyIntArray)(self.raw) };
    }
}

/// An `aclScalar`, destroyed on drop.
pub struct ScalarDesc<'a> {
    pub raw: *mut aclScalar,
    cann: &'a Cann,
}

impl<'a> ScalarDesc<'a> {
    pub fn f32(cann: &'a Cann, v: f32) -> Result<Self> {
        let mut v = v;
        Self::new(
            cann,
            (&mut v as *mut f32).cast::<c_void>(),
            aclDataType::ACL_FLOAT,
        )
    }

    pub fn i32(cann: &'a Cann, v: i32) -> Result<Self> {
        let mut v = v;
        Self::new(
            cann,
            (&mut v as *mut i32).cast::<c_void>(),
            aclDataType::ACL_INT32,
        )
    }

    fn new(cann: &'a Cann, value: *mut c_void, dt: aclDataType) -> Result<Self> {
        // SAFETY: `value` points to one valid value of `dt` for the call; nnopbase copies it.
        let raw = unsafe { (cann.nnop.aclCreateScalar)(value, dt) };
        if raw.is_null() {
            return Err(BackendError::Device(format!(
                "aclCreateScalar failed: {}",
                cann.acl.recent_error_message()
            )));
        }
        Ok(Self { raw, cann })
    }
}

impl Drop for ScalarDesc<'_> {
    fn drop(&mut self) {
        // SAFETY: created by aclCreateScalar and destroyed once.
        unsafe { (self.cann.nnop.aclDestroyScalar)(self.raw) };
    }
}

pub type Phase1<'f> = dyn FnOnce(*mut u64, *mut *mut aclOpExecutor) -> aclnnStatus + 'f;

/// Runs one aclnn operator: phase 1 (validation, workspace size), the device's shared
/// workspace, phase 2 on the device's stream. Statuses become [`BackendError::Device`] with
/// the runtime's message.
///
/// The stream runs in order, so the next op that uses the shared workspace runs after this
/// one is done with it.
pub fn launch(
    dev: &Arc<Device>,
    name: &'static str,
    phase1: Box<Phase1<'_>>,
    phase2: AclnnRun,
) -> Result<()> {
    dev.bind()?;
    if dev.skip_launch() {
        // Replaying a captured step: this op's work is in the segment graph.
        return Ok(());
    }
    let cann = &dev.cann;
    let mut ws = 0u64;
    let mut ex: *mut aclOpExecutor = std::ptr::null_mut();
    let st = phase1(&mut ws, &mut ex);
    cann.check_nn(st, name)
        .map_err(|e| BackendError::Device(e.to_string()))?;
    if ex.is_null() {
        return Err(BackendError::Device(format!("{name} returned no executor")));
    }
    let workspace = if ws > 0 {
        Some(dev.workspace(ws as usize)?)
    } else {
        None
    };
    let wp = workspace.as_ref().map_or(std::ptr::null_mut(), |b| b.ptr.0);
    // SAFETY: the executor came from phase 1 just now; the workspace holds `ws` bytes; the
    // stream is the device's. The executor is consumed by this call.
    let st = unsafe { phase2(wp, ws, ex, dev.stream.0) };
    crate::host_calls::bump(crate::host_calls::Counter::Op);
    cann.check_nn(st, name)
        .map_err(|e| BackendError::Device(e.to_string()))
}

/// The C string aclnn wants for layout / mode arguments (`char *`, not written to).
pub fn c_string(s: &str) -> std::ffi::CString {
    // Only called with literals, which hold no NUL.
    std::ffi::CString::new(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_and_extent() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<i64>::new());
        let v = View::contiguous(DevPtr(std::ptr::null_mut()), Dt::F32, &[2, 3, 4]);
        assert_eq!(v.extent(), 24);
        // A transposed view of a [4, 6] matrix.
        let t = View {
            shape: vec![6, 4],
            strides: vec![1, 6],
            ..View::contiguous(DevPtr(std::ptr::null_mut()), Dt::BF16, &[4, 6])
        };
        assert_eq!(t.extent(), 24);
        let r = v.reshape(&[6, 4]).unwrap();
        assert_eq!(r.strides, vec![4, 1]);
        assert!(t.reshape(&[24]).is_err());
        assert!(v.reshape(&[5]).is_err());
    }
}
