//! Memory copies and memsets of the ACL runtime: checked against where their pointers live,
//! run at once (blocking calls, pageable async copies) or queued on a stream.

use crate::mem;
use crate::rt::{capture_blocks_sync, current_device_opt, stream_of, sync_device};
use crate::state::{bump, code_of, Fail, Res, STATS};
use ascend_sys::fns;
use ascend_sys::types::*;
use std::ffi::c_void;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A validated copy, run now or later: host addresses are read/written at run time.
#[derive(Clone, Copy)]
struct Copy {
    dst: u64,
    src: u64,
    count: usize,
    kind: aclrtMemcpyKind,
}

fn plan_copy(
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
    what: &str,
) -> Res<Copy> {
    let (d, s) = (dst as u64, src as u64);
    if count > dest_max {
        return Err(Fail::new(
            ACL_ERROR_INVALID_PARAM,
            format!("{what}: count {count} exceeds destMax {dest_max}"),
        ));
    }
    if count > 0 && (dst.is_null() || src.is_null()) {
        return Err(Fail::new(
            ACL_ERROR_INVALID_PARAM,
            format!("{what}: null pointer"),
        ));
    }
    let (dd, sd) = (mem::is_device_addr(d), mem::is_device_addr(s));
    let kind = if kind == aclrtMemcpyKind::ACL_MEMCPY_DEFAULT {
        match (sd, dd) {
            (false, false) => aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_HOST,
            (false, true) => aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
            (true, false) => aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
            (true, true) => aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_DEVICE,
        }
    } else {
        kind
    };
    let want = match kind {
        aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_HOST => (false, false),
        aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE => (false, true),
        aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST => (true, false),
        aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_DEVICE => (true, true),
        other => {
            return Err(Fail::new(
                ACL_ERROR_INVALID_PARAM,
                format!("{what}: invalid memcpy kind {other:?}"),
            ))
        }
    };
    if (sd, dd) != want {
        bump(&STATS.bad_memcpy_kinds);
        return Err(Fail::new(
            ACL_ERROR_INVALID_PARAM,
            format!(
                "{what}: kind {kind:?} but src is {} memory and dst is {} memory",
                if sd { "device" } else { "host" },
                if dd { "device" } else { "host" }
            ),
        ));
    }
    if count > 0 {
        if sd {
            mem::check(s, count as u64, what)?;
        }
        if dd {
            mem::check(d, count as u64, what)?;
        }
    }
    Ok(Copy {
        dst: d,
        src: s,
        count,
        kind,
    })
}

/// Counts a host-issued copy between host and device (per-step figures for benchmarks).
fn count_copy(c: &Copy) {
    let (n, b) = match c.kind {
        aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE => (&STATS.h2d_copies, &STATS.h2d_bytes),
        aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST => (&STATS.d2h_copies, &STATS.d2h_bytes),
        _ => return,
    };
    bump(n);
    b.fetch_add(c.count as u64, Ordering::Relaxed);
}

fn strict_memcpy() -> bool {
    std::env::var_os("CANN_EMU_STRICT_MEMCPY").is_some_and(|v| v == "1")
}

fn run_copy(c: Copy, what: &str) -> Res<()> {
    if c.count == 0 {
        return Ok(());
    }
    match c.kind {
        aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE => {
            // SAFETY: the caller keeps `count` readable host bytes at `src` until the copy
            // runs (immediately, or at the stream's synchronisation for async copies).
            let b = unsafe { std::slice::from_raw_parts(c.src as *const u8, c.count) };
            mem::write(c.dst, b, what)
        }
        aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST => {
            let b = mem::read(c.src, c.count, what)?;
            // SAFETY: as above, `count` writable host bytes at `dst`.
            unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), c.dst as *mut u8, c.count) };
            Ok(())
        }
        aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_DEVICE => mem::copy_d2d(c.dst, c.src, c.count, what),
        _ => {
            // SAFETY: both host ranges valid per the C API; `copy` allows overlap.
            unsafe { std::ptr::copy(c.src as *const u8, c.dst as *mut u8, c.count) };
            Ok(())
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn aclrtMemcpy(
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
) -> aclError {
    code_of((|| {
        let c = plan_copy(dst, dest_max, src, count, kind, "aclrtMemcpy")?;
        count_copy(&c);
        if c.kind != aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_HOST {
            bump(&STATS.host_syncs);
            // A blocking copy waits for the device's queued work (the contract the backend
            // relies on). CANN's documentation only calls aclrtMemcpy synchronous to the
            // host, so CANN_EMU_STRICT_MEMCPY=1 drops the implicit wait: code that reads
            // results without synchronising its stream then sees stale data.
            let dev = current_device_opt();
            capture_blocks_sync(dev, "aclrtMemcpy")?;
            if !strict_memcpy() {
                sync_device(dev)?;
            }
        }
        run_copy(c, "aclrtMemcpy")
    })())
}

#[no_mangle]
pub unsafe extern "C" fn aclrtMemcpyAsync(
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
    stream: aclrtStream,
) -> aclError {
    code_of((|| {
        let what = "aclrtMemcpyAsync";
        let c = plan_copy(dst, dest_max, src, count, kind, what)?;
        // Rule memcpy-async-align: CANN 8.3.RC1 aclrtMemcpyAsync, constraints for every
        // model: "源地址和目的地址都必须64字节对齐" (source and destination 64-byte aligned).
        // No error code is documented: the generic ACL_ERROR_INVALID_PARAM.
        if c.count > 0 && (c.src % 64 != 0 || c.dst % 64 != 0) {
            bump(&STATS.misaligned_copies);
            return Err(Fail::new(
                ACL_ERROR_INVALID_PARAM,
                format!(
                    "{what}: src {:#x} and dst {:#x} must both be 64-byte aligned",
                    c.src, c.dst
                ),
            ));
        }
        let s = stream_of(stream, what)?;
        if !s.is_capturing() {
            count_copy(&c);
        }
        // Rule memcpy-async-pageable: CANN 8.3.RC1 aclrtMemcpyAsync, function description:
        // with host memory that is not page-locked (not from aclrtMallocHost) the call
        // "在内存复制任务完成后才返回" (returns only when the copy is done); and
        // aclmdlRICaptureBegin (8.5/9.0) lists such copies among the unsafe functions a
        // capture mode restricts. So: the stream runs up to and including the copy before
        // the call returns, and a capturing stream (which cannot run it now) refuses it.
        let host = match c.kind {
            aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE => Some(c.src),
            aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST => Some(c.dst),
            _ => None,
        };
        let pageable = host.is_some_and(|h| c.count > 0 && !mem::is_pinned(h as usize, c.count));
        if pageable {
            bump(&STATS.pageable_async_copies);
            bump(&STATS.host_syncs);
            capture_blocks_sync(Some(s.dev), what)?;
            if s.is_capturing() {
                bump(&STATS.capture_violations);
                return Err(Fail::new(
                    ACL_ERROR_RT_STREAM_CAPTURED,
                    format!("{what}: a copy from pageable host memory cannot be captured"),
                ));
            }
            s.enqueue(Arc::new(move || run_copy(c, what)));
            return s.flush();
        }
        s.enqueue(Arc::new(move || run_copy(c, what)));
        Ok(())
    })())
}

fn plan_memset(p: *mut c_void, max: usize, count: usize, what: &str) -> Res<u64> {
    if count > max {
        return Err(Fail::new(
            ACL_ERROR_INVALID_PARAM,
            format!("{what}: count {count} exceeds maxCount {max}"),
        ));
    }
    let a = p as u64;
    if !mem::is_device_addr(a) {
        bump(&STATS.bad_memcpy_kinds);
        return Err(Fail::new(
            ACL_ERROR_INVALID_PARAM,
            format!("{what}: {a:#x} is not a device address"),
        ));
    }
    mem::check(a, count as u64, what)?;
    Ok(a)
}

#[no_mangle]
pub extern "C" fn aclrtMemset(p: *mut c_void, max: usize, value: i32, count: usize) -> aclError {
    code_of((|| {
        let a = plan_memset(p, max, count, "aclrtMemset")?;
        let dev = current_device_opt();
        capture_blocks_sync(dev, "aclrtMemset")?;
        sync_device(dev)?;
        mem::with_mut(a, count, "aclrtMemset", |b| b.fill(value as u8))
    })())
}

#[no_mangle]
pub extern "C" fn aclrtMemsetAsync(
    p: *mut c_void,
    max: usize,
    value: i32,
    count: usize,
    stream: aclrtStream,
) -> aclError {
    code_of((|| {
        let a = plan_memset(p, max, count, "aclrtMemsetAsync")?;
        let s = stream_of(stream, "aclrtMemsetAsync")?;
        s.enqueue(Arc::new(move || {
            mem::with_mut(a, count, "aclrtMemsetAsync", |b| b.fill(value as u8))
        }));
        Ok(())
    })())
}

const _: fns::aclrtMemcpy = aclrtMemcpy;
const _: fns::aclrtMemcpyAsync = aclrtMemcpyAsync;
const _: fns::aclrtMemset = aclrtMemset;
const _: fns::aclrtMemsetAsync = aclrtMemsetAsync;
