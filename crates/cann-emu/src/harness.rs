//! Finds the built `libcann_emu.so`, exposes it under CANN's library names and reads
//! the emulator's counters through it (never through this rlib's own statics: the
//! cdylib loaded by `dlopen` is a separate copy of the state).

use crate::{CannEmuResetFn, CannEmuStats, CannEmuStatsFn};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Names under which the emulator is exposed; glibc loads one copy for all of them.
pub const LIB_NAMES: &[&str] = &[
    "libascendcl.so",
    "libnnopbase.so",
    "libopapi.so",
    "libhccl.so",
    "libdcmi.so",
    "libqwen3_ascendc_kernels.so",
];

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("libcann_emu.so not found near {0} (build the qwen3-cann-emu package first)")]
    NotBuilt(PathBuf),
    #[error("cannot prepare the emulator directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open {path}: {source}")]
    Load {
        path: PathBuf,
        source: libloading::Error,
    },
}

/// The built `libcann_emu.so`: the newest of `target/<profile>/deps/libcann_emu*.so` and
/// `target/<profile>/libcann_emu.so`, found from the running test executable.
pub fn library_path() -> Result<PathBuf, HarnessError> {
    if let Some(p) = std::env::var_os("CANN_EMU_LIB") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|source| HarnessError::Io {
        path: PathBuf::from("current_exe"),
        source,
    })?;
    // `cargo test` rebuilds `deps/libcann_emu.so` but does not refresh the copy in
    // `target/<profile>/` (only `cargo build` does): take the newest candidate.
    let mut dirs = Vec::new();
    if let Some(deps) = exe.parent() {
        dirs.push(deps.to_path_buf());
        if let Some(profile) = deps.parent() {
            dirs.push(profile.to_path_buf());
        }
    }
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for d in &dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let is_lib = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libcann_emu") && n.ends_with(".so"));
            if !is_lib {
                continue;
            }
            let Ok(t) = e.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                best = Some((t, p));
            }
        }
    }
    if let Some((_, p)) = best {
        return Ok(p);
    }
    Err(HarnessError::NotBuilt(exe))
}

static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// A directory (one per process) holding a copy of the emulator and `libascendcl.so`,
/// `libnnopbase.so`, `libopapi.so`, `libhccl.so` and `libdcmi.so` as symlinks to it, for
/// `ascend_sys::Cann::load_from([dir])` and `ascend_sys::dcmi::Dcmi::load_from(&[dir])`.
pub fn lib_dir() -> Result<PathBuf, HarnessError> {
    // Held while the directory is made: test threads start concurrently.
    let mut cached = DIR.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = cached.as_ref() {
        return Ok(d.clone());
    }
    let lib = library_path()?;
    let lib = lib.canonicalize().map_err(|source| HarnessError::Io {
        path: lib.clone(),
        source,
    })?;
    remove_stale_dirs();
    let dir = std::env::temp_dir().join(format!("cann-emu-{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HarnessError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    // A private copy: another cargo command sharing the target directory may rebuild
    // (rewrite) the original while this process loads it.
    let copy = dir.join("libcann_emu.so");
    let tmp = dir.join("libcann_emu.so.tmp");
    std::fs::copy(&lib, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &copy).map_err(io(&copy))?;
    for name in LIB_NAMES {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&copy, &link).map_err(io(&link))?;
    }
    *cached = Some(dir.clone());
    Ok(dir)
}

/// Removes the directories (each holding a copy of the library) of test processes that
/// have exited, so that repeated test runs do not fill the temp directory.
fn remove_stale_dirs() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cann-emu-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The emulator's test-only entry points, opened from the shared library.
pub struct EmuLib {
    stats: CannEmuStatsFn,
    reset: CannEmuResetFn,
    _lib: libloading::Library,
}

static LIB: OnceLock<Result<EmuLib, String>> = OnceLock::new();

fn emu_lib() -> Result<&'static EmuLib, String> {
    LIB.get_or_init(|| {
        let dir = lib_dir().map_err(|e| e.to_string())?;
        let path = dir.join("libascendcl.so");
        // SAFETY: the emulator's initialisers only set up Rust statics.
        let lib = unsafe { libloading::Library::new(&path) }
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // SAFETY: both symbols are exported by this crate with exactly these types.
        let (stats, reset) = unsafe {
            let s = *lib
                .get::<CannEmuStatsFn>(b"cannEmuStats")
                .map_err(|e| e.to_string())?;
            let r = *lib
                .get::<CannEmuResetFn>(b"cannEmuReset")
                .map_err(|e| e.to_string())?;
            (s, r)
        };
        Ok(EmuLib {
            stats,
            reset,
            _lib: lib,
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The emulator's counters.
pub fn stats() -> Result<CannEmuStats, String> {
    let lib = emu_lib()?;
    let mut s = CannEmuStats::default();
    // SAFETY: `s` is a valid, writable CannEmuStats.
    unsafe { (lib.stats)(&mut s) };
    Ok(s)
}

/// Drops every emulator resource and zeroes its counters.
pub fn reset() -> Result<(), String> {
    (emu_lib()?.reset)();
    Ok(())
}

static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// Serialises tests of one process that share the emulator (its counters are global):
/// hold the guard for the whole test, then `reset()` at its start.
pub fn exclusive() -> MutexGuard<'static, ()> {
    EXCLUSIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A test session on the emulator: the process-wide guard, a fresh emulator state,
/// CANN loaded from the emulator, `aclInit`, device 0 set and one stream.
pub struct Session {
    pub cann: ascend_sys::Cann,
    pub stream: ascend_sys::types::aclrtStream,
    /// Workspaces of the operators `run_op` launched, freed by `finish`.
    workspaces: std::cell::RefCell<Vec<*mut std::ffi::c_void>>,
    /// Page-locked host buffers from `pinned`, freed by `finish`.
    pinned: std::cell::RefCell<Vec<*mut std::ffi::c_void>>,
    _guard: MutexGuard<'static, ()>,
}

/// A device buffer with a contiguous tensor descriptor over it.
pub struct DevTensor {
    pub ptr: *mut std::ffi::c_void,
    pub bytes: usize,
    pub tensor: *mut ascend_sys::types::aclTensor,
    pub dims: Vec<i64>,
}

impl Session {
    pub fn new() -> Result<Self, String> {
        let guard = exclusive();
        reset()?;
        let dir = lib_dir().map_err(|e| e.to_string())?;
        let cann = ascend_sys::Cann::load_from([dir]).map_err(|e| e.to_string())?;
        // SAFETY: plain ACL calls with valid arguments.
        unsafe {
            cann.check((cann.acl.aclInit)(std::ptr::null()), "aclInit")
                .map_err(|e| e.to_string())?;
            cann.check((cann.acl.aclrtSetDevice)(0), "aclrtSetDevice")
                .map_err(|e| e.to_string())?;
        }
        let mut stream = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        cann.check(
            unsafe { (cann.acl.aclrtCreateStream)(&mut stream) },
            "aclrtCreateStream",
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            cann,
            stream,
            workspaces: std::cell::RefCell::new(Vec::new()),
            pinned: std::cell::RefCell::new(Vec::new()),
            _guard: guard,
        })
    }

    pub fn malloc(&self, bytes: usize) -> Result<*mut std::ffi::c_void, String> {
        let mut p = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        let rc = unsafe {
            (self.cann.acl.aclrtMalloc)(
                &mut p,
                bytes,
                ascend_sys::types::aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST,
            )
        };
        self.cann
            .check(rc, "aclrtMalloc")
            .map_err(|e| e.to_string())?;
        Ok(p)
    }

    /// Copies `data` to a new device buffer and describes it as a contiguous tensor.
    pub fn upload(
        &self,
        dtype: ascend_sys::types::aclDataType,
        dims: &[i64],
        data: &[u8],
    ) -> Result<DevTensor, String> {
        let ptr = self.malloc(data.len().max(1))?;
        if !data.is_empty() {
            // SAFETY: `ptr` holds at least `data.len()` bytes; `data` is readable.
            let rc = unsafe {
                (self.cann.acl.aclrtMemcpy)(
                    ptr,
                    data.len(),
                    data.as_ptr().cast(),
                    data.len(),
                    ascend_sys::types::aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
                )
            };
            self.cann
                .check(rc, "aclrtMemcpy")
                .map_err(|e| e.to_string())?;
        }
        let tensor = self.describe(ptr, dtype, dims, None, 0)?;
        Ok(DevTensor {
            ptr,
            bytes: data.len(),
            tensor,
            dims: dims.to_vec(),
        })
    }

    /// A tensor descriptor over `ptr` (contiguous strides when `strides` is `None`).
    // `ptr` is a device address: opaque to the host and never dereferenced here.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn describe(
        &self,
        ptr: *mut std::ffi::c_void,
        dtype: ascend_sys::types::aclDataType,
        dims: &[i64],
        strides: Option<&[i64]>,
        offset: i64,
    ) -> Result<*mut ascend_sys::types::aclTensor, String> {
        let mut st = vec![1i64; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            st[i] = st[i + 1] * dims[i + 1].max(1);
        }
        let st = strides.map(<[i64]>::to_vec).unwrap_or(st);
        // SAFETY: arrays of the stated lengths.
        let t = unsafe {
            (self.cann.nnop.aclCreateTensor)(
                dims.as_ptr(),
                dims.len() as u64,
                dtype,
                st.as_ptr(),
                offset,
                ascend_sys::types::aclFormat::ACL_FORMAT_ND,
                dims.as_ptr(),
                dims.len() as u64,
                ptr,
            )
        };
        if t.is_null() {
            return Err("aclCreateTensor returned null".into());
        }
        Ok(t)
    }

    /// Waits for the stream, then copies `bytes` bytes back from `ptr`.
    // `ptr` is a device address, checked by the emulator, never dereferenced by the host.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn download(&self, ptr: *mut std::ffi::c_void, bytes: usize) -> Result<Vec<u8>, String> {
        self.sync()?;
        let mut v = vec![0u8; bytes];
        // SAFETY: `v` holds `bytes` writable bytes.
        let rc = unsafe {
            (self.cann.acl.aclrtMemcpy)(
                v.as_mut_ptr().cast(),
                bytes,
                ptr,
                bytes,
                ascend_sys::types::aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
            )
        };
        self.cann
            .check(rc, "aclrtMemcpy")
            .map_err(|e| e.to_string())?;
        Ok(v)
    }

    pub fn sync(&self) -> Result<(), String> {
        // SAFETY: a live stream.
        let rc = unsafe { (self.cann.acl.aclrtSynchronizeStream)(self.stream) };
        self.cann
            .check(rc, "aclrtSynchronizeStream")
            .map_err(|e| e.to_string())
    }

    /// Destroys the tensor descriptor and frees the buffer.
    pub fn release(&self, t: DevTensor) -> Result<(), String> {
        // SAFETY: live handles made by this session.
        unsafe {
            self.cann
                .check_nn(
                    (self.cann.nnop.aclDestroyTensor)(t.tensor),
                    "aclDestroyTensor",
                )
                .map_err(|e| e.to_string())?;
            self.cann
                .check((self.cann.acl.aclrtFree)(t.ptr), "aclrtFree")
                .map_err(|e| e.to_string())
        }
    }

    /// Runs a two-phase operator: `phase1` gets the workspace and executor out-pointers.
    pub fn run_op(
        &self,
        name: &str,
        phase1: impl FnOnce(*mut u64, *mut *mut ascend_sys::types::aclOpExecutor) -> i32,
        phase2: ascend_sys::fns::AclnnRun,
    ) -> Result<(), String> {
        let mut ws = 0u64;
        let mut ex = std::ptr::null_mut();
        let st = phase1(&mut ws, &mut ex);
        if st != 0 {
            return Err(format!(
                "{name} phase 1: {st}: {}",
                self.cann.acl.recent_error_message()
            ));
        }
        let wp = self.workspace(ws)?;
        // SAFETY: an executor from phase 1, a workspace of `ws` bytes and a live stream.
        let st = unsafe { phase2(wp, ws, ex, self.stream) };
        if st != 0 {
            return Err(format!(
                "{name} phase 2: {st}: {}",
                self.cann.acl.recent_error_message()
            ));
        }
        Ok(())
    }

    /// Page-locked (`aclrtMallocHost`, 64-byte-aligned) host memory holding `init`, for
    /// asynchronous copies; lives until `finish`.
    pub fn pinned(&self, init: &[u8]) -> Result<*mut u8, String> {
        let mut p = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        let rc = unsafe { (self.cann.acl.aclrtMallocHost)(&mut p, init.len().max(1)) };
        self.cann
            .check(rc, "aclrtMallocHost")
            .map_err(|e| e.to_string())?;
        // SAFETY: `p` holds at least `init.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(init.as_ptr(), p.cast::<u8>(), init.len()) };
        self.pinned.borrow_mut().push(p);
        Ok(p.cast())
    }

    /// A device workspace of `bytes` (null for 0) that lives until `finish` (an op runs
    /// when the stream does, after the call that launched it).
    pub fn workspace(&self, bytes: u64) -> Result<*mut std::ffi::c_void, String> {
        if bytes == 0 {
            return Ok(std::ptr::null_mut());
        }
        let p = self.malloc(bytes as usize)?;
        self.workspaces.borrow_mut().push(p);
        Ok(p)
    }

    /// Destroys the stream and returns the counters.
    pub fn finish(self) -> Result<CannEmuStats, String> {
        self.sync()?;
        for p in self.pinned.take() {
            // SAFETY: allocated by `pinned`; the stream has run every copy that used it.
            let rc = unsafe { (self.cann.acl.aclrtFreeHost)(p) };
            self.cann
                .check(rc, "aclrtFreeHost")
                .map_err(|e| e.to_string())?;
        }
        for p in self.workspaces.take() {
            // SAFETY: allocated by `run_op`; the stream has run every op that used it.
            let rc = unsafe { (self.cann.acl.aclrtFree)(p) };
            self.cann
                .check(rc, "aclrtFree")
                .map_err(|e| e.to_string())?;
        }
        // SAFETY: the session's live stream.
        let rc = unsafe { (self.cann.acl.aclrtDestroyStream)(self.stream) };
        self.cann
            .check(rc, "aclrtDestroyStream")
            .map_err(|e| e.to_string())?;
        stats()
    }
}

/// Host helpers for tests: f32 <-> bf16 / f32 bytes.
pub fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect()
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn from_bf16(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

pub fn from_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn from_i64(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

pub fn from_i32(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Rounds through bf16, as the device stores results.
pub fn bf16_round(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}
