//! The emulated ACL runtime: loading, memory checks, deferred streams, events.

use ascend_sys::types::*;
use cann_emu::harness::{self, Session};
use std::ffi::c_void;

#[test]
fn cdylib_is_built_and_loads_through_ascend_sys() {
    let dir = harness::lib_dir().unwrap();
    for n in harness::LIB_NAMES {
        assert!(dir.join(n).exists(), "{n} missing");
    }
    let s = Session::new().unwrap();
    let mut n = 0u32;
    // SAFETY: valid out-pointer.
    unsafe {
        s.cann
            .check((s.cann.acl.aclrtGetDeviceCount)(&mut n), "count")
    }
    .unwrap();
    assert_eq!(n, 2);
    assert_eq!(s.cann.cann_version().as_deref(), Some("8.3.RC1"));
    assert!(s.cann.hccl.is_some());
    // The optional ops the backend uses are all exported.
    let missing: Vec<&str> = s.cann.missing_optional().iter().map(|m| m.name).collect();
    for want in [
        "aclmdlRICaptureBegin",
        "aclnnFusedInferAttentionScoreV4",
        "aclnnScatterPaKvCache",
        "aclnnMoeInitRoutingV2",
        "aclnnWeightQuantBatchMatmulV2",
        "aclnnReduceSum",
    ] {
        assert!(!missing.contains(&want), "{want} not exported");
    }
    let st = s.finish().unwrap();
    assert_eq!(st.leaks(), 0);
}

#[test]
fn memcpy_roundtrip_and_mem_info() {
    let s = Session::new().unwrap();
    let (mut free0, mut total) = (0usize, 0usize);
    // SAFETY: valid out-pointers.
    unsafe { (s.cann.acl.aclrtGetMemInfo)(aclrtMemAttr::ACL_HBM_MEM, &mut free0, &mut total) };
    let p = s.malloc(1000).unwrap();
    let mut free1 = 0usize;
    // SAFETY: valid out-pointers.
    unsafe { (s.cann.acl.aclrtGetMemInfo)(aclrtMemAttr::ACL_HBM_MEM, &mut free1, &mut total) };
    assert_eq!(free0 - free1, 1000);
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    // SAFETY: buffers of the stated sizes.
    let rc = unsafe {
        (s.cann.acl.aclrtMemcpy)(
            p,
            1000,
            data.as_ptr().cast(),
            1000,
            aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
        )
    };
    assert_eq!(rc, 0);
    assert_eq!(s.download(p, 1000).unwrap(), data);
    // Device pointers are not host addresses.
    assert!(p as u64 >= 0x4000_0000_0000_0000);
    // SAFETY: live allocation.
    assert_eq!(unsafe { (s.cann.acl.aclrtFree)(p) }, 0);
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations()), (0, 0));
}

#[test]
fn double_free_oob_wrong_kind_and_leaks_are_reported() {
    let s = Session::new().unwrap();
    let acl = &s.cann.acl;
    let p = s.malloc(64).unwrap();
    let host = [0u8; 128];
    // Out of bounds: 128 bytes into a 64-byte allocation.
    // SAFETY: the emulator checks device ranges; host buffer is 128 bytes.
    let rc = unsafe {
        (acl.aclrtMemcpy)(
            p,
            128,
            host.as_ptr().cast(),
            128,
            aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
        )
    };
    assert_ne!(rc, 0);
    assert!(
        acl.recent_error_message().contains("out-of-bounds"),
        "{}",
        acl.recent_error_message()
    );
    // Wrong kind: device source declared as host.
    let mut back = [0u8; 16];
    // SAFETY: as above.
    let rc = unsafe {
        (acl.aclrtMemcpy)(
            back.as_mut_ptr().cast(),
            16,
            p,
            16,
            aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
        )
    };
    assert_ne!(rc, 0);
    // SAFETY: live, then freed allocation.
    unsafe {
        assert_eq!((acl.aclrtFree)(p), 0);
        assert_ne!((acl.aclrtFree)(p), 0, "double free must fail");
    }
    // Use after free.
    // SAFETY: as above.
    let rc = unsafe {
        (acl.aclrtMemcpy)(
            back.as_mut_ptr().cast(),
            16,
            p,
            16,
            aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
        )
    };
    assert_ne!(rc, 0);
    assert!(acl.recent_error_message().contains("use after free"));
    // A leak: allocated, never freed; a descriptor never destroyed.
    let leaked = s.malloc(32).unwrap();
    let _t = s
        .describe(leaked, aclDataType::ACL_FLOAT, &[8], None, 0)
        .unwrap();
    let st = s.finish().unwrap();
    assert_eq!(st.oob_accesses, 1);
    assert_eq!(st.bad_memcpy_kinds, 1);
    assert_eq!(st.double_frees, 1);
    assert_eq!(st.use_after_free, 1);
    assert_eq!(st.live_allocs, 1);
    assert_eq!(st.live_tensors, 1);
}

/// The u32 at a page-locked host buffer.
fn read4(p: *mut u8) -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: `p` is a live 4-byte buffer from `Session::pinned`.
    unsafe { std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), 4) };
    u32::from_le_bytes(b)
}

#[test]
fn async_copies_are_deferred_until_synchronise() {
    let s = Session::new().unwrap();
    let acl = &s.cann.acl;
    let p = s.malloc(4).unwrap();
    let one = 1u32.to_le_bytes();
    // Async copies go through page-locked memory (from pageable memory they would run
    // at once, see pageable_async_copies_complete_before_returning).
    let two = s.pinned(&2u32.to_le_bytes()).unwrap();
    let out = s.pinned(&[0u8; 4]).unwrap();
    // SAFETY: buffers live until the synchronisation below.
    unsafe {
        assert_eq!(
            (acl.aclrtMemcpy)(
                p,
                4,
                one.as_ptr().cast(),
                4,
                aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE
            ),
            0
        );
        assert_eq!(
            (acl.aclrtMemcpyAsync)(
                p,
                4,
                two.cast_const().cast(),
                4,
                aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
                s.stream
            ),
            0
        );
        assert_eq!(
            (acl.aclrtMemcpyAsync)(
                out.cast(),
                4,
                p,
                4,
                aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
                s.stream
            ),
            0
        );
    }
    assert_eq!(
        read4(out),
        0,
        "an async D2H is not visible before synchronising"
    );
    s.sync().unwrap();
    assert_eq!(read4(out), 2);
    // Memset async, then an event.
    let mut ev = std::ptr::null_mut();
    // SAFETY: valid handles and out-pointers.
    unsafe {
        assert_eq!((acl.aclrtMemsetAsync)(p, 4, 7, 4, s.stream), 0);
        assert_eq!((acl.aclrtCreateEvent)(&mut ev), 0);
        assert_eq!((acl.aclrtRecordEvent)(ev, s.stream), 0);
        assert_eq!((acl.aclrtSynchronizeEvent)(ev), 0);
        assert_eq!((acl.aclrtDestroyEvent)(ev), 0);
    }
    let mut host = [0u8; 4];
    // SAFETY: a sync copy of 4 bytes.
    unsafe {
        (acl.aclrtMemcpy)(
            host.as_mut_ptr().cast(),
            4,
            p as *const c_void,
            4,
            aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
        )
    };
    assert_eq!(host, [7; 4]);
    // SAFETY: live allocation.
    unsafe { (acl.aclrtFree)(p) };
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations()), (0, 0));
}

#[test]
fn malloc_is_capped_and_needs_a_device() {
    let s = Session::new().unwrap();
    let mut p = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    let rc = unsafe {
        (s.cann.acl.aclrtMalloc)(
            &mut p,
            1 << 40,
            aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST,
        )
    };
    assert_eq!(rc, ACL_ERROR_RT_MEMORY_ALLOCATION);
    let acl = s.cann.acl.clone();
    std::thread::spawn(move || {
        let mut p = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        let rc = unsafe {
            (acl.aclrtMalloc)(&mut p, 16, aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST)
        };
        assert_eq!(
            rc, ACL_ERROR_RT_CONTEXT_NULL,
            "a thread without a device cannot allocate"
        );
    })
    .join()
    .unwrap();
    s.finish().unwrap();
}

#[test]
fn an_operator_on_another_devices_stream_is_refused() {
    let s = Session::new().unwrap();
    let x = s
        .upload(
            aclDataType::ACL_FLOAT,
            &[4],
            &cann_emu::harness::f32_bytes(&[1.0; 4]),
        )
        .unwrap();
    let y = s.upload(aclDataType::ACL_FLOAT, &[4], &[0u8; 16]).unwrap();
    let ops = s.cann.ops.clone();
    let (mut ws, mut ex) = (0, std::ptr::null_mut());
    // SAFETY: live descriptors.
    assert_eq!(
        unsafe { (ops.aclnnSoftmaxGetWorkspaceSize)(x.tensor, 0, y.tensor, &mut ws, &mut ex) },
        0
    );
    // A stream of device 1, made on another thread.
    let acl = s.cann.acl.clone();
    let stream1 = std::thread::spawn(move || {
        let mut st = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        unsafe {
            assert_eq!((acl.aclrtSetDevice)(1), 0);
            assert_eq!((acl.aclrtCreateStream)(&mut st), 0);
        }
        st as usize
    })
    .join()
    .unwrap();
    // SAFETY: a live executor and stream.
    let st = unsafe { (ops.aclnnSoftmax)(std::ptr::null_mut(), 0, ex, stream1 as aclrtStream) };
    assert_eq!(st, ACLNN_ERR_PARAM_INVALID);
    assert!(s.cann.acl.recent_error_message().contains("device 0"));
    // SAFETY: live handles.
    unsafe {
        (s.cann.acl.aclrtDestroyStream)(stream1 as aclrtStream);
        (s.cann.nnop.aclDestroyAclOpExecutor.unwrap())(ex);
    }
    s.release(x).unwrap();
    s.release(y).unwrap();
    let st = s.finish().unwrap();
    assert_eq!(st.cross_device, 1);
    assert_eq!(st.leaks(), 0);
}

#[test]
fn stream_wait_event_orders_two_streams_and_errors_are_per_thread() {
    let s = Session::new().unwrap();
    let acl = s.cann.acl.clone();
    let p = s.malloc(4).unwrap();
    let v = s.pinned(&9u32.to_le_bytes()).unwrap();
    let out = s.pinned(&[0u8; 4]).unwrap();
    let (mut s2, mut e0, mut e1) = (
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    );
    // SAFETY: valid handles and buffers that live until the synchronisation below.
    unsafe {
        assert_eq!((acl.aclrtCreateStream)(&mut s2), 0);
        assert_eq!((acl.aclrtCreateEvent)(&mut e0), 0);
        assert_eq!((acl.aclrtCreateEvent)(&mut e1), 0);
        assert_eq!((acl.aclrtRecordEvent)(e0, s.stream), 0);
        assert_eq!(
            (acl.aclrtMemcpyAsync)(
                p,
                4,
                v.cast_const().cast(),
                4,
                aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
                s.stream
            ),
            0
        );
        assert_eq!((acl.aclrtRecordEvent)(e1, s.stream), 0);
        // Stream 2 reads after waiting for stream 1's event.
        assert_eq!((acl.aclrtStreamWaitEvent)(s2, e1), 0);
        assert_eq!(
            (acl.aclrtMemcpyAsync)(
                out.cast(),
                4,
                p,
                4,
                aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
                s2
            ),
            0
        );
        assert_eq!((acl.aclrtSynchronizeStream)(s2), 0);
        assert_eq!(read4(out), 9);
        let mut ms = -1f32;
        assert_eq!((acl.aclrtEventElapsedTime)(&mut ms, e0, e1), 0);
        assert!(ms >= 0.0);
        for e in [e0, e1] {
            assert_eq!((acl.aclrtDestroyEvent)(e), 0);
        }
        assert_eq!((acl.aclrtDestroyStream)(s2), 0);
        // An error message is this thread's only.
        assert_ne!((acl.aclrtFree)(0x1234usize as *mut c_void), 0);
        assert!(!acl.recent_error_message().is_empty());
    }
    let acl2 = acl.clone();
    let other = std::thread::spawn(move || acl2.recent_error_message())
        .join()
        .unwrap();
    assert!(other.is_empty(), "{other}");
    // SAFETY: live allocation.
    unsafe { (acl.aclrtFree)(p) };
    let st = s.finish().unwrap();
    assert_eq!(st.leaks(), 0);
    assert_eq!((st.live_streams, st.live_events), (0, 0));
    assert_eq!(st.invalid_frees, 1);
}

#[test]
fn strict_memcpy_does_not_wait_for_queued_work() {
    let s = Session::new().unwrap();
    let acl = s.cann.acl.clone();
    let p = s.malloc(4).unwrap();
    let new = s.pinned(&5u32.to_le_bytes()).unwrap();
    let mut out = [0u8; 4];
    std::env::set_var("CANN_EMU_STRICT_MEMCPY", "1");
    // SAFETY: buffers live until the synchronisation below.
    unsafe {
        assert_eq!(
            (acl.aclrtMemcpyAsync)(
                p,
                4,
                new.cast_const().cast(),
                4,
                aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
                s.stream
            ),
            0
        );
        assert_eq!(
            (acl.aclrtMemcpy)(
                out.as_mut_ptr().cast(),
                4,
                p,
                4,
                aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST
            ),
            0
        );
    }
    assert_eq!(
        u32::from_le_bytes(out),
        0,
        "the queued write has not run yet"
    );
    s.sync().unwrap();
    // SAFETY: as above.
    unsafe {
        (acl.aclrtMemcpy)(
            out.as_mut_ptr().cast(),
            4,
            p,
            4,
            aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
        )
    };
    std::env::remove_var("CANN_EMU_STRICT_MEMCPY");
    assert_eq!(u32::from_le_bytes(out), 5);
    // SAFETY: live allocation.
    unsafe { (acl.aclrtFree)(p) };
    assert_eq!(s.finish().unwrap().leaks(), 0);
}

/// 64-byte-aligned pageable host memory (not from aclrtMallocHost).
#[repr(align(64))]
struct Pageable([u8; 64]);

#[test]
fn misaligned_async_copies_are_refused() {
    let s = Session::new().unwrap();
    let acl = s.cann.acl.clone();
    let p = s.malloc(128).unwrap();
    let host = s.pinned(&[1u8; 128]).unwrap();
    // SAFETY: live buffers of 128 bytes; the offsets stay inside them.
    unsafe {
        let h2d = aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE;
        let src = host.add(8).cast_const().cast();
        assert_eq!(
            (acl.aclrtMemcpyAsync)(p, 64, src, 64, h2d, s.stream),
            ACL_ERROR_INVALID_PARAM
        );
        assert!(acl.recent_error_message().contains("64-byte aligned"));
        let dst = p.cast::<u8>().add(32).cast();
        let src = host.cast_const().cast();
        assert_eq!(
            (acl.aclrtMemcpyAsync)(dst, 64, src, 64, h2d, s.stream),
            ACL_ERROR_INVALID_PARAM
        );
        // Aligned on both sides: fine.
        let dst = p.cast::<u8>().add(64).cast();
        assert_eq!((acl.aclrtMemcpyAsync)(dst, 64, src, 64, h2d, s.stream), 0);
    }
    s.sync().unwrap();
    // SAFETY: live allocation.
    unsafe { (acl.aclrtFree)(p) };
    let st = s.finish().unwrap();
    assert_eq!(st.misaligned_copies, 2, "{st:?}");
    assert_eq!(st.leaks(), 0);
}

#[test]
fn pageable_async_copies_complete_before_returning() {
    let s = Session::new().unwrap();
    let acl = s.cann.acl.clone();
    let p = s.malloc(64).unwrap();
    let mut out = Pageable([0; 64]);
    // SAFETY: live buffers of 64 bytes.
    unsafe {
        assert_eq!((acl.aclrtMemsetAsync)(p, 64, 7, 64, s.stream), 0);
        let d2h = aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST;
        let dst = out.0.as_mut_ptr().cast();
        assert_eq!((acl.aclrtMemcpyAsync)(dst, 64, p, 64, d2h, s.stream), 0);
    }
    // No synchronisation: the queued memset and the copy have run.
    assert!(out.0.iter().all(|&b| b == 7), "{:?}", out.0);
    // A capturing stream cannot run it now: refused, in any capture mode.
    let begin = acl.aclmdlRICaptureBegin.unwrap();
    let end = acl.aclmdlRICaptureEnd.unwrap();
    let mut ri = std::ptr::null_mut();
    // SAFETY: the session's stream; buffers as above.
    unsafe {
        let relaxed = aclmdlRICaptureMode::ACL_MODEL_RI_CAPTURE_MODE_RELAXED;
        assert_eq!(begin(s.stream, relaxed), 0);
        let h2d = aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE;
        let src = out.0.as_ptr().cast();
        assert_eq!(
            (acl.aclrtMemcpyAsync)(p, 64, src, 64, h2d, s.stream),
            ACL_ERROR_RT_STREAM_CAPTURED
        );
        // From page-locked memory it is captured like any task.
        let pinned = s.pinned(&[3u8; 64]).unwrap().cast_const().cast();
        assert_eq!((acl.aclrtMemcpyAsync)(p, 64, pinned, 64, h2d, s.stream), 0);
        assert_eq!(end(s.stream, &mut ri), 0);
        assert_eq!((acl.aclmdlRIDestroy.unwrap())(ri), 0);
        (acl.aclrtFree)(p);
    }
    let st = s.finish().unwrap();
    assert_eq!(st.capture_violations, 1, "{st:?}");
    assert_eq!(st.pageable_async_copies, 2, "{st:?}");
    assert_eq!(st.leaks(), 0);
}
