//! HCCL across threads and graph capture / replay.

use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;
use cann_emu::harness::*;
use std::ffi::c_void;
use std::sync::Arc;

struct Ptr(*mut c_void);
// SAFETY: an emulator device address, an opaque integer.
unsafe impl Send for Ptr {}

#[test]
fn collectives_across_two_rank_threads() {
    let s = Session::new().unwrap();
    let cann = Arc::new(ascend_sys::Cann::load_from([lib_dir().unwrap()]).unwrap());
    let mut root = HcclRootInfo::default();
    let h = cann.hccl().unwrap().clone();
    // SAFETY: a valid out-pointer.
    assert_eq!(
        unsafe { (h.HcclGetRootInfo)(&mut root) },
        HcclResult::HCCL_SUCCESS
    );
    let results: Vec<_> = (0..2u32)
        .map(|rank| {
            let cann = cann.clone();
            std::thread::spawn(move || {
                let (acl, h) = (&cann.acl, cann.hccl().unwrap());
                // SAFETY: plain runtime/HCCL calls with valid pointers; buffers sized for
                // each collective.
                unsafe {
                    assert_eq!((acl.aclrtSetDevice)(rank as i32), 0);
                    let mut stream = std::ptr::null_mut();
                    assert_eq!((acl.aclrtCreateStream)(&mut stream), 0);
                    let mut comm = std::ptr::null_mut();
                    assert_eq!(
                        (h.HcclCommInitRootInfo)(2, &root, rank, &mut comm),
                        HcclResult::HCCL_SUCCESS
                    );
                    let (mut sz, mut id) = (0u32, 0u32);
                    (h.HcclGetRankSize)(comm, &mut sz);
                    (h.HcclGetRankId)(comm, &mut id);
                    assert_eq!((sz, id), (2, rank));
                    let mal = |n: usize| {
                        let mut p = std::ptr::null_mut();
                        assert_eq!(
                            (acl.aclrtMalloc)(
                                &mut p,
                                n,
                                aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST
                            ),
                            0
                        );
                        Ptr(p)
                    };
                    let (send, recv, gath) = (mal(8), mal(8), mal(16));
                    let mine = bf16_bytes(&[1.5 + rank as f32, -2.0, 0.25, rank as f32 * 10.0]);
                    (acl.aclrtMemcpy)(
                        send.0,
                        8,
                        mine.as_ptr().cast(),
                        8,
                        aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
                    );
                    let bf = HcclDataType::HCCL_DATA_TYPE_BFP16;
                    assert_eq!(
                        (h.HcclAllReduce)(
                            send.0,
                            recv.0,
                            4,
                            bf,
                            HcclReduceOp::HCCL_REDUCE_SUM,
                            comm,
                            stream
                        ),
                        HcclResult::HCCL_SUCCESS
                    );
                    assert_eq!(
                        (h.HcclAllGather)(send.0, gath.0, 4, bf, comm, stream),
                        HcclResult::HCCL_SUCCESS
                    );
                    assert_eq!((h.HcclBarrier)(comm, stream), HcclResult::HCCL_SUCCESS);
                    assert_eq!((acl.aclrtSynchronizeStream)(stream), 0);
                    let mut red = [0u8; 8];
                    let mut all = [0u8; 16];
                    (acl.aclrtMemcpy)(
                        red.as_mut_ptr().cast(),
                        8,
                        recv.0,
                        8,
                        aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
                    );
                    (acl.aclrtMemcpy)(
                        all.as_mut_ptr().cast(),
                        16,
                        gath.0,
                        16,
                        aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
                    );
                    // Broadcast from rank 1, then reduce-scatter.
                    assert_eq!(
                        (h.HcclBroadcast)(send.0, 4, bf, 1, comm, stream),
                        HcclResult::HCCL_SUCCESS
                    );
                    assert_eq!(
                        (h.HcclReduceScatter)(
                            send.0,
                            recv.0,
                            2,
                            bf,
                            HcclReduceOp::HCCL_REDUCE_SUM,
                            comm,
                            stream
                        ),
                        HcclResult::HCCL_SUCCESS
                    );
                    assert_eq!((acl.aclrtSynchronizeStream)(stream), 0);
                    let mut bc = [0u8; 8];
                    let mut rs = [0u8; 4];
                    (acl.aclrtMemcpy)(
                        bc.as_mut_ptr().cast(),
                        8,
                        send.0,
                        8,
                        aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
                    );
                    (acl.aclrtMemcpy)(
                        rs.as_mut_ptr().cast(),
                        4,
                        recv.0,
                        4,
                        aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
                    );
                    for p in [send, recv, gath] {
                        assert_eq!((acl.aclrtFree)(p.0), 0);
                    }
                    assert_eq!((h.HcclCommDestroy)(comm), HcclResult::HCCL_SUCCESS);
                    assert_eq!((acl.aclrtDestroyStream)(stream), 0);
                    (
                        from_bf16(&red),
                        from_bf16(&all),
                        from_bf16(&bc),
                        from_bf16(&rs),
                    )
                }
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let r0 = [1.5f32, -2.0, 0.25, 0.0];
    let r1 = [2.5f32, -2.0, 0.25, 10.0];
    for (rank, (red, all, bc, rs)) in results.iter().enumerate() {
        let sum: Vec<f32> = r0.iter().zip(&r1).map(|(a, b)| a + b).collect();
        assert_eq!(red, &sum);
        assert_eq!(all, &[r0, r1].concat());
        assert_eq!(bc, &r1.to_vec());
        // After the broadcast both hold r1; rank r gets elements [2r, 2r+2) of 2*r1.
        assert_eq!(rs, &vec![r1[2 * rank] * 2.0, r1[2 * rank + 1] * 2.0]);
    }
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations(), st.live_comms), (0, 0, 0));
    assert_eq!(st.collectives, 10);
}

#[test]
fn hccl_rejects_bad_arguments() {
    let s = Session::new().unwrap();
    let h = s.cann.hccl().unwrap().clone();
    let mut root = HcclRootInfo::default();
    let mut comm = std::ptr::null_mut();
    // SAFETY: valid pointers; a zeroed root info was not made by HcclGetRootInfo.
    unsafe {
        assert_eq!(
            (h.HcclCommInitRootInfo)(1, &root, 0, &mut comm),
            HcclResult::HCCL_E_PARA
        );
        (h.HcclGetRootInfo)(&mut root);
        assert_eq!(
            (h.HcclCommInitRootInfo)(2, &root, 2, &mut comm),
            HcclResult::HCCL_E_PARA
        );
        assert_eq!(
            (h.HcclCommInitRootInfo)(1, &root, 0, &mut comm),
            HcclResult::HCCL_SUCCESS
        );
        // A host buffer is not device memory.
        let mut host = [0f32; 4];
        let p = host.as_mut_ptr().cast();
        assert_ne!(
            (h.HcclAllReduce)(
                p,
                p,
                4,
                HcclDataType::HCCL_DATA_TYPE_FP32,
                HcclReduceOp::HCCL_REDUCE_SUM,
                comm,
                s.stream
            ),
            HcclResult::HCCL_SUCCESS
        );
        let msg = std::ffi::CStr::from_ptr((h.HcclGetErrorString)(HcclResult::HCCL_E_PARA));
        assert!(!msg.to_bytes().is_empty());
        assert_eq!((h.HcclCommDestroy)(comm), HcclResult::HCCL_SUCCESS);
        assert_ne!((h.HcclCommDestroy)(comm), HcclResult::HCCL_SUCCESS);
    }
    let st = s.finish().unwrap();
    assert_eq!(st.bad_memcpy_kinds, 1);
    assert_eq!(st.bad_handles, 1);
}

#[test]
fn root_info_needs_a_current_device() {
    let s = Session::new().unwrap();
    let h = s.cann.hccl().unwrap().clone();
    let acl = s.cann.acl.clone();
    // A fresh thread has no device current: the root info would carry no device.
    let (no_dev, with_dev) = std::thread::spawn(move || {
        let mut root = HcclRootInfo::default();
        // SAFETY: valid out-pointer; plain runtime call.
        unsafe {
            let no_dev = (h.HcclGetRootInfo)(&mut root);
            assert_eq!((acl.aclrtSetDevice)(1), 0);
            (no_dev, (h.HcclGetRootInfo)(&mut root))
        }
    })
    .join()
    .unwrap();
    assert_eq!(no_dev, HcclResult::HCCL_E_RUNTIME);
    assert_eq!(with_dev, HcclResult::HCCL_SUCCESS);
    s.finish().unwrap();
}

#[test]
fn captured_graph_replays_reading_device_memory_at_execution() {
    let s = Session::new().unwrap();
    let acl = s.cann.acl.clone();
    let ops = s.cann.ops.clone();
    let x = s
        .upload(D::ACL_FLOAT, &[4], &f32_bytes(&[1.0, 2.0, 3.0, 4.0]))
        .unwrap();
    let y = s.upload(D::ACL_FLOAT, &[4], &f32_bytes(&[0.0; 4])).unwrap();
    let mut two = 2.0f32;
    // SAFETY: a valid float.
    let al = unsafe { (s.cann.nnop.aclCreateScalar)((&mut two as *mut f32).cast(), D::ACL_FLOAT) };
    let mut ri = std::ptr::null_mut();
    // SAFETY: live handles; the capture records y += 2 * x.
    unsafe {
        assert_eq!(
            (acl.aclmdlRICaptureBegin.unwrap())(
                s.stream,
                aclmdlRICaptureMode::ACL_MODEL_RI_CAPTURE_MODE_GLOBAL
            ),
            0
        );
        let mut st = aclmdlRICaptureStatus::ACL_MODEL_RI_CAPTURE_STATUS_NONE;
        (acl.aclmdlRICaptureGetInfo.unwrap())(s.stream, &mut st, std::ptr::null_mut());
        assert_eq!(
            st,
            aclmdlRICaptureStatus::ACL_MODEL_RI_CAPTURE_STATUS_ACTIVE
        );
        s.run_op(
            "iadd",
            |w, e| (ops.aclnnInplaceAddGetWorkspaceSize)(y.tensor, x.tensor, al, w, e),
            ops.aclnnInplaceAdd,
        )
        .unwrap();
        // Synchronising or a blocking copy while capturing is an error.
        assert_eq!(
            (acl.aclrtSynchronizeStream)(s.stream),
            ACL_ERROR_RT_STREAM_CAPTURED
        );
        let mut h = [0u8; 4];
        assert_ne!(
            (acl.aclrtMemcpy)(
                h.as_mut_ptr().cast(),
                4,
                x.ptr,
                4,
                aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST
            ),
            0
        );
        assert_eq!((acl.aclmdlRICaptureEnd.unwrap())(s.stream, &mut ri), 0);
    }
    // Nothing ran during capture.
    assert_eq!(from_f32(&s.download(y.ptr, 16).unwrap()), vec![0.0; 4]);
    // SAFETY: the graph and stream are live.
    unsafe {
        assert_eq!((acl.aclmdlRIExecuteAsync.unwrap())(ri, s.stream), 0);
    }
    assert_eq!(
        from_f32(&s.download(y.ptr, 16).unwrap()),
        vec![2.0, 4.0, 6.0, 8.0]
    );
    // New device inputs are seen by the next replay.
    let nx = f32_bytes(&[10.0, 0.0, 0.0, 0.0]);
    // SAFETY: 16 bytes into a 16-byte buffer; graph and stream live.
    unsafe {
        (acl.aclrtMemcpy)(
            x.ptr,
            16,
            nx.as_ptr().cast(),
            16,
            aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
        );
        assert_eq!((acl.aclmdlRIExecuteAsync.unwrap())(ri, s.stream), 0);
        assert_eq!((acl.aclmdlRIExecuteAsync.unwrap())(ri, s.stream), 0);
    }
    assert_eq!(
        from_f32(&s.download(y.ptr, 16).unwrap()),
        vec![42.0, 4.0, 6.0, 8.0]
    );
    // SAFETY: live handles.
    unsafe {
        assert_eq!((acl.aclmdlRIDestroy.unwrap())(ri), 0);
        (s.cann.nnop.aclDestroyScalar)(al);
    }
    for t in [x, y] {
        s.release(t).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations()), (0, 0));
    assert_eq!(st.capture_violations, 2);
    assert_eq!(st.ops_executed, 3);
}

#[test]
fn ranks_passing_different_counts_get_an_error_not_a_hang() {
    let s = Session::new().unwrap();
    let cann = Arc::new(ascend_sys::Cann::load_from([lib_dir().unwrap()]).unwrap());
    let mut root = HcclRootInfo::default();
    // SAFETY: a valid out-pointer.
    unsafe { (cann.hccl().unwrap().HcclGetRootInfo)(&mut root) };
    let rcs: Vec<i32> = (0..2u32)
        .map(|rank| {
            let cann = cann.clone();
            std::thread::spawn(move || {
                let (acl, h) = (&cann.acl, cann.hccl().unwrap());
                // SAFETY: plain calls with valid pointers; 16-byte buffers.
                unsafe {
                    (acl.aclrtSetDevice)(rank as i32);
                    let mut stream = std::ptr::null_mut();
                    (acl.aclrtCreateStream)(&mut stream);
                    let mut comm = std::ptr::null_mut();
                    (h.HcclCommInitRootInfo)(2, &root, rank, &mut comm);
                    let mut p = std::ptr::null_mut();
                    (acl.aclrtMalloc)(&mut p, 16, aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST);
                    let count = if rank == 0 { 4 } else { 2 };
                    let st = (h.HcclAllReduce)(
                        p,
                        p,
                        count,
                        HcclDataType::HCCL_DATA_TYPE_FP32,
                        HcclReduceOp::HCCL_REDUCE_SUM,
                        comm,
                        stream,
                    );
                    assert_eq!(st, HcclResult::HCCL_SUCCESS);
                    let rc = (acl.aclrtSynchronizeStream)(stream);
                    (acl.aclrtFree)(p);
                    (h.HcclCommDestroy)(comm);
                    (acl.aclrtDestroyStream)(stream);
                    rc
                }
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(rcs.iter().all(|&rc| rc != 0), "{rcs:?}");
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.exec_errors), (0, 2));
}

#[test]
fn thread_local_capture_only_blocks_the_capturing_thread() {
    let s = Session::new().unwrap();
    let acl = s.cann.acl.clone();
    let p = s.malloc(4).unwrap();
    let mut h = [0u8; 4];
    // SAFETY: live stream and a 4-byte allocation.
    unsafe {
        let mode = aclmdlRICaptureMode::ACL_MODEL_RI_CAPTURE_MODE_THREAD_LOCAL;
        assert_eq!((acl.aclmdlRICaptureBegin.unwrap())(s.stream, mode), 0);
        assert_ne!(
            (acl.aclrtMemcpy)(
                h.as_mut_ptr().cast(),
                4,
                p,
                4,
                aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST
            ),
            0
        );
    }
    let (acl2, addr) = (acl.clone(), p as usize);
    let rc = std::thread::spawn(move || {
        let mut h = [0u8; 4];
        // SAFETY: as above, from another thread bound to the same device.
        unsafe {
            (acl2.aclrtSetDevice)(0);
            (acl2.aclrtMemcpy)(
                h.as_mut_ptr().cast(),
                4,
                addr as *const c_void,
                4,
                aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_HOST,
            )
        }
    })
    .join()
    .unwrap();
    assert_eq!(
        rc, 0,
        "another thread may copy during a thread-local capture"
    );
    let mut ri = std::ptr::null_mut();
    // SAFETY: live handles.
    unsafe {
        assert_eq!((acl.aclmdlRICaptureEnd.unwrap())(s.stream, &mut ri), 0);
        assert_eq!((acl.aclmdlRIDestroy.unwrap())(ri), 0);
        (acl.aclrtFree)(p);
    }
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.capture_violations), (0, 1));
}

/// A device has 2,048 streams and every captured graph holds one (vllm-ascend's
/// `update_aclgraph_sizes`): past the budget, capture ends with
/// ACL_ERROR_RT_NO_STREAM_RESOURCE. The budget is lowered here to keep the test small.
/// Also: the per-step counters (launches, graph launches, copies, syncs) and the mode that
/// validates an operator but skips its arithmetic.
#[test]
fn stream_budget_counters_and_skipped_math() {
    let s = Session::new().unwrap();
    let acl = s.cann.acl.clone();
    let ops = s.cann.ops.clone();
    let x = s
        .upload(D::ACL_FLOAT, &[4], &f32_bytes(&[1.0, 2.0, 3.0, 4.0]))
        .unwrap();
    let y = s.upload(D::ACL_FLOAT, &[4], &f32_bytes(&[0.0; 4])).unwrap();
    let mut one = 1.0f32;
    // SAFETY: a valid float.
    let al = unsafe { (s.cann.nnop.aclCreateScalar)((&mut one as *mut f32).cast(), D::ACL_FLOAT) };
    let iadd = || {
        s.run_op(
            "iadd",
            // SAFETY: live descriptors.
            |w, e| unsafe { (ops.aclnnInplaceAddGetWorkspaceSize)(y.tensor, x.tensor, al, w, e) },
            ops.aclnnInplaceAdd,
        )
        .unwrap()
    };
    let before = cann_emu::harness::stats().unwrap();
    // The session's stream counts against the budget: 1 stream + 2 graphs fit in 3.
    std::env::set_var("CANN_EMU_STREAM_BUDGET", "3");
    let mut graphs = Vec::new();
    let mut refused = 0;
    for _ in 0..3 {
        let mut ri = std::ptr::null_mut();
        // SAFETY: live stream; the capture records one op.
        unsafe {
            assert_eq!(
                (acl.aclmdlRICaptureBegin.unwrap())(
                    s.stream,
                    aclmdlRICaptureMode::ACL_MODEL_RI_CAPTURE_MODE_RELAXED
                ),
                0
            );
            iadd();
            match (acl.aclmdlRICaptureEnd.unwrap())(s.stream, &mut ri) {
                0 => graphs.push(ri),
                ACL_ERROR_RT_NO_STREAM_RESOURCE => refused += 1,
                other => panic!("capture end: {other}"),
            }
        }
    }
    std::env::remove_var("CANN_EMU_STREAM_BUDGET");
    assert_eq!((graphs.len(), refused), (2, 1));
    // Two replays, one eager launch, one copy each way, then the math skipped.
    // SAFETY: live graphs and stream.
    unsafe {
        for &g in &graphs {
            assert_eq!((acl.aclmdlRIExecuteAsync.unwrap())(g, s.stream), 0);
        }
    }
    iadd();
    assert_eq!(
        from_f32(&s.download(y.ptr, 16).unwrap()),
        vec![3.0, 6.0, 9.0, 12.0]
    );
    std::env::set_var("CANN_EMU_SKIP_MATH", "1");
    iadd();
    let skipped = from_f32(&s.download(y.ptr, 16).unwrap());
    std::env::remove_var("CANN_EMU_SKIP_MATH");
    assert_eq!(
        skipped,
        vec![3.0, 6.0, 9.0, 12.0],
        "validated, not computed"
    );
    let st = cann_emu::harness::stats().unwrap();
    assert_eq!(st.graph_launches - before.graph_launches, 2);
    assert_eq!(
        st.op_launches - before.op_launches,
        2,
        "captured ops are not host launches"
    );
    assert_eq!(st.d2h_copies - before.d2h_copies, 2);
    assert_eq!(st.d2h_bytes - before.d2h_bytes, 32);
    assert!(st.host_syncs > before.host_syncs);
    // SAFETY: live handles, destroyed once.
    unsafe {
        for g in graphs {
            assert_eq!((acl.aclmdlRIDestroy.unwrap())(g), 0);
        }
        (s.cann.nnop.aclDestroyScalar)(al);
    }
    s.release(x).unwrap();
    s.release(y).unwrap();
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations()), (0, 0));
}
