//! nnopbase: tensor / scalar / int-array / tensor-list descriptors and executors, plus
//! the two-phase plumbing every aclnn operator shares.

use crate::dtype;
use crate::mem;
use crate::rt::{stream_of, Task};
use crate::state::{bump, drop1, lock, set_error, Fail, Handles, Res, STATS};
use ascend_sys::fns;
use ascend_sys::types::*;
use std::ffi::c_void;
use std::sync::{Arc, LazyLock, Mutex};

/// What `aclCreateTensor` was given, copied.
#[derive(Debug, Clone)]
pub struct TensorDesc {
    pub dims: Vec<i64>,
    pub strides: Vec<i64>,
    pub offset: i64,
    pub dtype: aclDataType,
    pub format: aclFormat,
    pub storage: Vec<i64>,
    pub addr: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct ScalarVal {
    pub f: f64,
}

struct Exec {
    task: Task,
    repeatable: bool,
    /// Devices of the tensors the operator was built with.
    devices: Vec<i32>,
    /// The workspace phase 1 answered, in bytes.
    workspace: u64,
    /// Device byte ranges of the operator's tensors (a workspace may overlap none).
    extents: Arc<Vec<(u64, u64)>>,
}

thread_local! {
    /// Devices of the tensors looked up by the first phase running on this thread.
    static OP_DEVICES: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Byte extents of those tensors, checked at execution when the math is skipped.
    static OP_EXTENTS: std::cell::RefCell<Vec<(u64, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct Nnop {
    tensors: Handles<TensorDesc>,
    scalars: Handles<ScalarVal>,
    arrays: Handles<Vec<i64>>,
    lists: Handles<Vec<u64>>,
    execs: Handles<Exec>,
}

static NN: LazyLock<Mutex<Nnop>> = LazyLock::new(|| {
    Mutex::new(Nnop {
        tensors: Handles::new(0x6100_0000_0000_0000),
        scalars: Handles::new(0x6200_0000_0000_0000),
        arrays: Handles::new(0x6300_0000_0000_0000),
        lists: Handles::new(0x6400_0000_0000_0000),
        execs: Handles::new(0x6500_0000_0000_0000),
    })
});

pub fn reset() {
    let mut n = lock(&NN);
    n.tensors.clear();
    n.scalars.clear();
    n.arrays.clear();
    n.lists.clear();
    n.execs.clear();
}

pub fn invalid(msg: impl Into<String>) -> Fail {
    Fail::new(ACLNN_ERR_PARAM_INVALID, msg)
}

pub fn nullptr(what: &str) -> Fail {
    Fail::new(ACLNN_ERR_PARAM_NULLPTR, format!("{what} is a null pointer"))
}

impl TensorDesc {
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|&d| d.max(0) as usize).product()
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    pub fn dim(&self, i: isize) -> i64 {
        let r = self.dims.len() as isize;
        let i = if i < 0 { i + r } else { i };
        if i < 0 || i >= r {
            return 0;
        }
        self.dims[i as usize]
    }

    fn elem_range(&self) -> (i64, i64) {
        let (mut lo, mut hi) = (self.offset, self.offset);
        for (&d, &s) in self.dims.iter().zip(&self.strides) {
            if d > 1 {
                let span = (d - 1) * s;
                if span < 0 {
                    lo += span
                } else {
                    hi += span
                }
            }
        }
        (lo, hi)
    }

    /// Device bytes `[start, start+len)` the view touches.
    pub fn byte_extent(&self) -> (u64, usize) {
        if self.numel() == 0 {
            return (self.addr, 0);
        }
        let (lo, hi) = self.elem_range();
        if self.dtype == aclDataType::ACL_INT4 {
            let start = self.addr as i64 + lo.div_euclid(2);
            let end = self.addr as i64 + hi.div_euclid(2) + 1;
            return (start as u64, (end - start) as usize);
        }
        let es = dtype::size_of(self.dtype).unwrap_or(1) as i64;
        let start = self.addr as i64 + lo * es;
        (start as u64, ((hi - lo + 1) * es) as usize)
    }

    /// Calls `f(i, offset)` for every element, `i` in row-major view order and
    /// `offset` in elements relative to `addr`.
    pub fn for_each_offset(&self, mut f: impl FnMut(usize, i64)) {
        let n = self.numel();
        if n == 0 {
            return;
        }
        let r = self.dims.len();
        if r == 0 {
            f(0, self.offset);
            return;
        }
        let inner = self.dims[r - 1];
        let inner_s = self.strides[r - 1];
        let mut idx = vec![0i64; r];
        let mut off = self.offset;
        let mut i = 0usize;
        while i < n {
            let mut o = off;
            for _ in 0..inner {
                f(i, o);
                i += 1;
                o += inner_s;
            }
            // Advance the outer dimensions.
            let mut ax = r - 1;
            loop {
                if ax == 0 {
                    return;
                }
                ax -= 1;
                idx[ax] += 1;
                off += self.strides[ax];
                if idx[ax] < self.dims[ax] {
                    break;
                }
                off -= self.strides[ax] * idx[ax];
                idx[ax] = 0;
            }
        }
    }

    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1i64;
        for (&d, &s) in self.dims.iter().zip(&self.strides).rev() {
            if d != 1 && s != expect {
                return false;
            }
            expect *= d;
        }
        true
    }

    /// Checks the view lies in one live allocation (phase 1 and again at run time).
    pub fn check_live(&self, what: &str) -> Res<()> {
        let (start, len) = self.byte_extent();
        mem::check(start, len as u64, what).map_err(|f| invalid(f.msg))
    }

    /// The view's elements converted by `conv`, in row-major order (converted under the
    /// memory lock, without an intermediate copy).
    fn read_with<T: Default + Clone>(
        &self,
        what: &str,
        conv: impl Fn(aclDataType, &[u8]) -> T,
    ) -> Res<Vec<T>> {
        let (start, len) = self.byte_extent();
        let mut out = vec![T::default(); self.numel()];
        if self.dtype == aclDataType::ACL_INT4 {
            let base = start as i64 - self.addr as i64;
            mem::with_mut(start, len, what, |bytes| {
                self.for_each_offset(|i, o| {
                    let b = bytes[(o.div_euclid(2) - base) as usize];
                    let nib = if o.rem_euclid(2) == 0 {
                        b & 0xF
                    } else {
                        b >> 4
                    };
                    let v = ((nib as i8) << 4) >> 4;
                    out[i] = conv(aclDataType::ACL_INT8, &[v as u8]);
                })
            })?;
            return Ok(out);
        }
        let es = dtype::size_of(self.dtype)
            .ok_or_else(|| invalid(format!("{what}: unsupported dtype {:?}", self.dtype)))?;
        let lo = (start - self.addr) as i64 / es as i64;
        let dt = self.dtype;
        mem::with_mut(start, len, what, |bytes| {
            self.for_each_offset(|i, o| {
                let p = ((o - lo) as usize) * es;
                out[i] = conv(dt, &bytes[p..p + es]);
            })
        })?;
        Ok(out)
    }

    pub fn read_f64(&self, what: &str) -> Res<Vec<f64>> {
        self.read_with(what, dtype::get_f64)
    }

    pub fn read_f32(&self, what: &str) -> Res<Vec<f32>> {
        if self.is_contiguous() && self.numel() > 0 {
            // Fast path (the common case, and what large weights are): one conversion
            // pass under the memory lock, no per-element dispatch.
            let (start, len) = self.byte_extent();
            let dt = self.dtype;
            let fast = matches!(
                dt,
                aclDataType::ACL_BF16 | aclDataType::ACL_FLOAT | aclDataType::ACL_FLOAT16
            );
            if fast {
                return mem::with_mut(start, len, what, |b| match dt {
                    aclDataType::ACL_BF16 => b
                        .chunks_exact(2)
                        .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                        .collect(),
                    aclDataType::ACL_FLOAT => b
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    _ => b
                        .chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                });
            }
        }
        match self.dtype {
            aclDataType::ACL_BF16 => self.read_with(what, |_, c| {
                f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)
            }),
            aclDataType::ACL_FLOAT => {
                self.read_with(what, |_, c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            }
            _ => self.read_with(what, dtype::get_f32),
        }
    }

    pub fn read_i64(&self, what: &str) -> Res<Vec<i64>> {
        self.read_with(what, dtype::get_i64)
    }

    /// Writes `vals` (row-major view order), rounding to the tensor's dtype.
    pub fn write_f64(&self, vals: &[f64], what: &str) -> Res<()> {
        self.write_with(what, |d, b, i| dtype::put_f64(d, b, vals[i]), vals.len())
    }

    pub fn write_f32(&self, vals: &[f32], what: &str) -> Res<()> {
        let dt = self.dtype;
        if self.is_contiguous()
            && vals.len() == self.numel()
            && matches!(dt, aclDataType::ACL_BF16 | aclDataType::ACL_FLOAT)
        {
            let (start, len) = self.byte_extent();
            return mem::with_mut(start, len, what, |b| {
                if dt == aclDataType::ACL_BF16 {
                    for (c, v) in b.chunks_exact_mut(2).zip(vals) {
                        c.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
                    }
                } else {
                    for (c, v) in b.chunks_exact_mut(4).zip(vals) {
                        c.copy_from_slice(&v.to_le_bytes());
                    }
                }
            });
        }
        self.write_with(
            what,
            |d, b, i| dtype::put_f64(d, b, vals[i] as f64),
            vals.len(),
        )
    }

    pub fn write_i64(&self, vals: &[i64], what: &str) -> Res<()> {
        self.write_with(what, |d, b, i| dtype::put_i64(d, b, vals[i]), vals.len())
    }

    fn write_with(
        &self,
        what: &str,
        put: impl Fn(aclDataType, &mut [u8], usize),
        n: usize,
    ) -> Res<()> {
        if n != self.numel() {
            return Err(Fail::new(
                ACLNN_ERR_INNER,
                format!("{what}: internal: {n} values for {} elements", self.numel()),
            ));
        }
        let es = dtype::size_of(self.dtype)
            .ok_or_else(|| invalid(format!("{what}: cannot write dtype {:?}", self.dtype)))?;
        let (start, len) = self.byte_extent();
        let lo = (start - self.addr) as i64 / es as i64;
        mem::with_mut(start, len, what, |buf| {
            self.for_each_offset(|i, o| {
                let p = ((o - lo) as usize) * es;
                put(self.dtype, &mut buf[p..p + es], i);
            })
        })
    }

    /// The view with dimension `ax` narrowed to the single `index` (rank kept).
    pub fn narrow1(&self, ax: usize, index: i64) -> TensorDesc {
        let mut dims = self.dims.clone();
        dims[ax] = 1;
        TensorDesc {
            dims,
            strides: self.strides.clone(),
            offset: self.offset + index * self.strides[ax],
            dtype: self.dtype,
            format: self.format,
            storage: self.storage.clone(),
            addr: self.addr,
        }
    }

    /// Checks at execution that the whole view still lies in one live allocation, for ops
    /// that read only part of it (the same check and counters as a read of all of it).
    pub fn check_live_at_run(&self, what: &str) -> Res<()> {
        let (start, len) = self.byte_extent();
        mem::check(start, len as u64, what)
    }

    /// The sub-view at `index` of dimension 0.
    pub fn index0(&self, index: i64) -> TensorDesc {
        TensorDesc {
            dims: self.dims[1..].to_vec(),
            strides: self.strides[1..].to_vec(),
            offset: self.offset + index * self.strides[0],
            dtype: self.dtype,
            format: self.format,
            storage: self.storage.clone(),
            addr: self.addr,
        }
    }
}

/// The descriptor behind a tensor handle, checked against live memory.
pub fn tensor(p: *const aclTensor, what: &str) -> Res<TensorDesc> {
    if p.is_null() {
        return Err(nullptr(what));
    }
    let t = lock(&NN).tensors.get(p as u64).cloned();
    let t = t.ok_or_else(|| {
        bump(&STATS.bad_handles);
        invalid(format!(
            "{what}: {p:p} is not a live aclTensor (destroyed?)"
        ))
    })?;
    t.check_live(what)?;
    if t.numel() > 0 {
        let (start, len) = t.byte_extent();
        crate::workspace::record_extent(start, len as u64);
        let d = mem::device_of_addr(t.addr);
        OP_EXTENTS.with(|v| v.borrow_mut().push(t.byte_extent()));
        OP_DEVICES.with(|v| {
            let mut v = v.borrow_mut();
            if !v.contains(&d) {
                v.push(d);
            }
        });
    }
    Ok(t)
}

pub fn opt_tensor(p: *const aclTensor, what: &str) -> Res<Option<TensorDesc>> {
    if p.is_null() {
        Ok(None)
    } else {
        tensor(p, what).map(Some)
    }
}

pub fn tensor_list(p: *const aclTensorList, what: &str) -> Res<Vec<TensorDesc>> {
    if p.is_null() {
        return Err(nullptr(what));
    }
    let hs = lock(&NN).lists.get(p as u64).cloned();
    let hs = hs.ok_or_else(|| {
        bump(&STATS.bad_handles);
        invalid(format!("{what}: {p:p} is not a live aclTensorList"))
    })?;
    hs.into_iter()
        .map(|h| tensor(h as *const aclTensor, what))
        .collect()
}

pub fn opt_tensor_list(p: *const aclTensorList, what: &str) -> Res<Option<Vec<TensorDesc>>> {
    if p.is_null() {
        Ok(None)
    } else {
        tensor_list(p, what).map(Some)
    }
}

pub fn int_array(p: *const aclIntArray, what: &str) -> Res<Option<Vec<i64>>> {
    if p.is_null() {
        return Ok(None);
    }
    let a = lock(&NN).arrays.get(p as u64).cloned();
    a.map(Some).ok_or_else(|| {
        bump(&STATS.bad_handles);
        invalid(format!("{what}: {p:p} is not a live aclIntArray"))
    })
}

pub fn scalar(p: *const aclScalar, what: &str) -> Res<ScalarVal> {
    if p.is_null() {
        return Err(nullptr(what));
    }
    let s = lock(&NN).scalars.get(p as u64).copied();
    s.ok_or_else(|| {
        bump(&STATS.bad_handles);
        invalid(format!("{what}: {p:p} is not a live aclScalar"))
    })
}

/// First phase shared by every operator: `build` validates and returns the work;
/// the executor keeps it until the second phase.
pub fn phase1(
    name: &'static str,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
    build: impl FnOnce() -> Res<Box<dyn Fn() -> Res<()> + Send + Sync>>,
) -> aclnnStatus {
    if ws.is_null() || ex.is_null() {
        set_error(&format!(
            "{name}GetWorkspaceSize: workspaceSize or executor is null"
        ));
        bump(&STATS.ops_rejected);
        return ACLNN_ERR_PARAM_NULLPTR;
    }
    OP_DEVICES.with(|v| v.borrow_mut().clear());
    crate::workspace::begin();
    OP_EXTENTS.with(|v| v.borrow_mut().clear());
    let built = crate::state::no_panic(name, build);
    let devices = OP_DEVICES.with(|v| std::mem::take(&mut *v.borrow_mut()));
    let op_extents = OP_EXTENTS.with(|v| std::mem::take(&mut *v.borrow_mut()));
    let (workspace, extents) = crate::workspace::take(name);
    match built {
        Ok(f) => {
            let task: Task = Arc::new(move || {
                bump(&STATS.ops_executed);
                let t0 = std::time::Instant::now();
                if crate::state::skip_math() || crate::state::faulty_op(name) {
                    // Validated at phase 1; the memory it touches must still be alive.
                    for &(start, len) in &op_extents {
                        mem::check(start, len as u64, name)?;
                    }
                    return Ok(());
                }
                let r = f().map_err(|e| Fail::new(e.code, format!("{name}: {}", e.msg)));
                crate::state::profile(name, t0.elapsed());
                r
            });
            let h = lock(&NN).execs.insert(Exec {
                task,
                repeatable: false,
                devices,
                workspace,
                extents: Arc::new(extents),
            });
            bump(&STATS.live_executors);
            // SAFETY: both checked non-null above; out-pointers per the C API.
            unsafe {
                ws.write(workspace);
                ex.write(h as *mut aclOpExecutor);
            }
            ACLNN_SUCCESS
        }
        Err(f) => {
            bump(&STATS.ops_rejected);
            set_error(&format!("{name}GetWorkspaceSize: {}", f.msg));
            f.code
        }
    }
}

/// Second phase shared by every operator: checks the workspace against what phase 1 asked
/// for (see `workspace`), queues the executor's work on the stream and frees the executor
/// unless it was marked repeatable.
pub fn phase2(
    name: &'static str,
    ws: *mut c_void,
    ws_size: u64,
    ex: *mut aclOpExecutor,
    stream: aclrtStream,
) -> aclnnStatus {
    let r = (|| -> Res<()> {
        let s = stream_of(stream, name).map_err(|f| Fail::new(ACLNN_ERR_RUNTIME_ERROR, f.msg))?;
        let task = {
            let mut nn = lock(&NN);
            let e = nn.execs.get(ex as u64).ok_or_else(|| {
                bump(&STATS.bad_handles);
                invalid(format!(
                    "{name}: executor {ex:p} is not live (already run and not repeatable, or destroyed)"
                ))
            })?;
            if let Some(d) = e.devices.iter().find(|&&d| d != s.dev) {
                bump(&STATS.cross_device);
                return Err(invalid(format!(
                    "{name}: a tensor lives on device {d} but the stream belongs to device {}",
                    s.dev
                )));
            }
            crate::workspace::check_launch(name, ws as u64, ws_size, e.workspace)?;
            let (inner, rep) = (e.task.clone(), e.repeatable);
            let (need, extents, wsa) = (e.workspace, e.extents.clone(), ws as u64);
            let task: Task = if need == 0 {
                inner
            } else {
                Arc::new(move || {
                    crate::workspace::prepare_run(name, wsa, need, &extents)?;
                    inner()
                })
            };
            if !s.is_capturing() {
                bump(&STATS.op_launches);
            }
            if !rep {
                nn.execs.remove(ex as u64);
                drop1(&STATS.live_executors);
            }
            task
        };
        s.enqueue_op(name, task);
        Ok(())
    })();
    match r {
        Ok(()) => ACLNN_SUCCESS,
        Err(f) => {
            set_error(&f.msg);
            f.code
        }
    }
}

/// Contiguous row-major strides of `dims`.
pub fn contiguous_strides(dims: &[i64]) -> Vec<i64> {
    let mut s = vec![1i64; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1].max(1);
    }
    s
}

unsafe fn slice<'a, T>(p: *const T, n: u64) -> Option<&'a [T]> {
    if n == 0 {
        return Some(&[]);
    }
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller passes `n` readable elements at `p` per the C API.
    Some(unsafe { std::slice::from_raw_parts(p, n as usize) })
}

#[no_mangle]
pub unsafe extern "C" fn aclCreateTensor(
    view_dims: *const i64,
    view_n: u64,
    dtype: aclDataType,
    stride: *const i64,
    offset: i64,
    format: aclFormat,
    storage_dims: *const i64,
    storage_n: u64,
    data: *mut c_void,
) -> *mut aclTensor {
    // SAFETY: forwarded C API contract.
    let Some(dims) = (unsafe { slice(view_dims, view_n) }) else {
        set_error("aclCreateTensor: viewDims is null");
        return std::ptr::null_mut();
    };
    let dims = dims.to_vec();
    if dims.iter().any(|&d| d < 0) || offset < 0 {
        set_error("aclCreateTensor: negative dimension or offset");
        return std::ptr::null_mut();
    }
    let strides = if stride.is_null() {
        contiguous_strides(&dims)
    } else {
        // SAFETY: one stride per view dimension per the C API.
        unsafe { std::slice::from_raw_parts(stride, dims.len()) }.to_vec()
    };
    // SAFETY: forwarded C API contract.
    let storage = unsafe { slice(storage_dims, storage_n) }
        .map(<[i64]>::to_vec)
        .unwrap_or_else(|| dims.clone());
    let d = TensorDesc {
        dims,
        strides,
        offset,
        dtype,
        format,
        storage,
        addr: data as u64,
    };
    let h = lock(&NN).tensors.insert(d);
    bump(&STATS.live_tensors);
    h as *mut aclTensor
}

#[no_mangle]
pub unsafe extern "C" fn aclCreateScalar(value: *mut c_void, dtype: aclDataType) -> *mut aclScalar {
    let Some(es) = dtype::size_of(dtype) else {
        set_error("aclCreateScalar: unsupported dtype");
        return std::ptr::null_mut();
    };
    if value.is_null() {
        set_error("aclCreateScalar: value is null");
        return std::ptr::null_mut();
    }
    // SAFETY: `value` points to one value of `dtype` per the C API.
    let b = unsafe { std::slice::from_raw_parts(value as *const u8, es) };
    let f = dtype::get_f64(dtype, b);
    let h = lock(&NN).scalars.insert(ScalarVal { f });
    bump(&STATS.live_scalars);
    h as *mut aclScalar
}

#[no_mangle]
pub unsafe extern "C" fn aclCreateIntArray(value: *const i64, size: u64) -> *mut aclIntArray {
    // SAFETY: forwarded C API contract.
    let Some(v) = (unsafe { slice(value, size) }) else {
        set_error("aclCreateIntArray: value is null");
        return std::ptr::null_mut();
    };
    let h = lock(&NN).arrays.insert(v.to_vec());
    bump(&STATS.live_int_arrays);
    h as *mut aclIntArray
}

#[no_mangle]
pub unsafe extern "C" fn aclCreateTensorList(
    value: *const *const aclTensor,
    size: u64,
) -> *mut aclTensorList {
    // SAFETY: forwarded C API contract.
    let Some(v) = (unsafe { slice(value, size) }) else {
        set_error("aclCreateTensorList: value is null");
        return std::ptr::null_mut();
    };
    let hs: Vec<u64> = v.iter().map(|&p| p as u64).collect();
    let mut nn = lock(&NN);
    if let Some(bad) = hs.iter().find(|&&h| nn.tensors.get(h).is_none()) {
        drop(nn);
        bump(&STATS.bad_handles);
        set_error(&format!(
            "aclCreateTensorList: {bad:#x} is not a live aclTensor"
        ));
        return std::ptr::null_mut();
    }
    let h = nn.lists.insert(hs);
    bump(&STATS.live_tensor_lists);
    h as *mut aclTensorList
}

fn destroyed(ok: bool, what: &str, p: u64) -> aclnnStatus {
    if ok || p == 0 {
        return ACLNN_SUCCESS;
    }
    bump(&STATS.bad_handles);
    set_error(&format!("{what}: {p:#x} is not live (destroyed twice?)"));
    ACLNN_ERR_PARAM_INVALID
}

#[no_mangle]
pub extern "C" fn aclDestroyTensor(t: *const aclTensor) -> aclnnStatus {
    let ok = lock(&NN).tensors.remove(t as u64).is_some();
    if ok {
        drop1(&STATS.live_tensors);
    }
    destroyed(ok, "aclDestroyTensor", t as u64)
}

#[no_mangle]
pub extern "C" fn aclDestroyScalar(s: *const aclScalar) -> aclnnStatus {
    let ok = lock(&NN).scalars.remove(s as u64).is_some();
    if ok {
        drop1(&STATS.live_scalars);
    }
    destroyed(ok, "aclDestroyScalar", s as u64)
}

#[no_mangle]
pub extern "C" fn aclDestroyIntArray(a: *const aclIntArray) -> aclnnStatus {
    let ok = lock(&NN).arrays.remove(a as u64).is_some();
    if ok {
        drop1(&STATS.live_int_arrays);
    }
    destroyed(ok, "aclDestroyIntArray", a as u64)
}

/// Destroys the list and the tensors it holds, as nnopbase does.
#[no_mangle]
pub extern "C" fn aclDestroyTensorList(l: *const aclTensorList) -> aclnnStatus {
    let mut nn = lock(&NN);
    let Some(hs) = nn.lists.remove(l as u64) else {
        drop(nn);
        return destroyed(false, "aclDestroyTensorList", l as u64);
    };
    drop1(&STATS.live_tensor_lists);
    for h in hs {
        if nn.tensors.remove(h).is_some() {
            drop1(&STATS.live_tensors);
        }
    }
    ACLNN_SUCCESS
}

#[no_mangle]
pub extern "C" fn aclSetAclOpExecutorRepeatable(ex: *mut aclOpExecutor) -> aclnnStatus {
    let mut nn = lock(&NN);
    match nn.execs.get_mut(ex as u64) {
        Some(e) => {
            e.repeatable = true;
            ACLNN_SUCCESS
        }
        None => {
            drop(nn);
            destroyed(false, "aclSetAclOpExecutorRepeatable", ex as u64)
        }
    }
}

#[no_mangle]
pub extern "C" fn aclDestroyAclOpExecutor(ex: *mut aclOpExecutor) -> aclnnStatus {
    let ok = lock(&NN).execs.remove(ex as u64).is_some();
    if ok {
        drop1(&STATS.live_executors);
    }
    destroyed(ok, "aclDestroyAclOpExecutor", ex as u64)
}

const _: fns::aclCreateTensor = aclCreateTensor;
const _: fns::aclCreateScalar = aclCreateScalar;
const _: fns::aclCreateIntArray = aclCreateIntArray;
const _: fns::aclCreateTensorList = aclCreateTensorList;
const _: fns::aclDestroyTensor = aclDestroyTensor;
const _: fns::aclDestroyScalar = aclDestroyScalar;
const _: fns::aclDestroyIntArray = aclDestroyIntArray;
const _: fns::aclDestroyTensorList = aclDestroyTensorList;
const _: fns::aclSetAclOpExecutorRepeatable = aclSetAclOpExecutorRepeatable;
const _: fns::aclDestroyAclOpExecutor = aclDestroyAclOpExecutor;
