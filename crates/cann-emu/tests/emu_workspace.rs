//! Operator workspaces (README rules "Workspace ..."): phase 1 answers a real, non-zero size
//! for AscendC ops, phase 2 refuses a missing or short buffer, and at execution the buffer
//! must still be alive and overlap none of the op's tensors.

use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;
use cann_emu::harness::*;

/// A [m, k] x [k, n] BF16 matmul's tensors (ones, so every output is k).
fn matmul_fx(s: &Session, m: usize, k: usize, n: usize) -> [DevTensor; 3] {
    let a = s
        .upload(
            D::ACL_BF16,
            &[m as i64, k as i64],
            &bf16_bytes(&vec![1.0; m * k]),
        )
        .unwrap();
    let b = s
        .upload(
            D::ACL_BF16,
            &[k as i64, n as i64],
            &bf16_bytes(&vec![1.0; k * n]),
        )
        .unwrap();
    let o = s
        .upload(D::ACL_BF16, &[m as i64, n as i64], &vec![0u8; m * n * 2])
        .unwrap();
    [a, b, o]
}

/// Phase 1 of the matmul: (status, workspace size, executor).
fn phase1(s: &Session, fx: &[DevTensor; 3]) -> (i32, u64, *mut aclOpExecutor) {
    let (mut ws, mut ex) = (0u64, std::ptr::null_mut());
    // SAFETY: live descriptors and valid out-pointers.
    let st = unsafe {
        (s.cann.ops.aclnnMatmulGetWorkspaceSize)(
            fx[0].tensor,
            fx[1].tensor,
            fx[2].tensor,
            1,
            &mut ws,
            &mut ex,
        )
    };
    (st, ws, ex)
}

fn release(s: Session, fx: [DevTensor; 3]) -> cann_emu::CannEmuStats {
    for t in fx {
        s.release(t).unwrap();
    }
    s.finish().unwrap()
}

#[test]
fn matmul_asks_for_a_workspace_that_grows_with_its_shapes() {
    let s = Session::new().unwrap();
    let small = matmul_fx(&s, 2, 8, 8);
    let (st, ws_small, ex) = phase1(&s, &small);
    assert_eq!(st, 0);
    // The 16 MiB system workspace AscendC kernels reserve, plus the op's own part.
    assert!(ws_small > 16 << 20, "{ws_small}");
    // SAFETY: an executor from phase 1.
    unsafe { (s.cann.nnop.aclDestroyAclOpExecutor.unwrap())(ex) };
    let big = matmul_fx(&s, 64, 8, 4096);
    let (st, ws_big, ex) = phase1(&s, &big);
    assert_eq!(st, 0);
    assert!(ws_big > ws_small, "{ws_big} vs {ws_small}");
    // SAFETY: as above.
    unsafe { (s.cann.nnop.aclDestroyAclOpExecutor.unwrap())(ex) };
    for t in small {
        s.release(t).unwrap();
    }
    let st = release(s, big);
    assert_eq!((st.leaks(), st.violations()), (0, 0), "{st:?}");
}

#[test]
fn phase2_refuses_a_missing_or_short_workspace() {
    let s = Session::new().unwrap();
    let fx = matmul_fx(&s, 2, 8, 8);
    let (st, ws, ex) = phase1(&s, &fx);
    assert_eq!(st, 0);
    let run = s.cann.ops.aclnnMatmul;
    // SAFETY: the executor from phase 1 (a refused launch leaves it live); the buffers are
    // device allocations of the stated sizes.
    unsafe {
        assert_eq!(
            run(std::ptr::null_mut(), ws, ex, s.stream),
            ACLNN_ERR_PARAM_NULLPTR
        );
        let short = s.workspace(ws).unwrap();
        assert_eq!(run(short, ws - 1, ex, s.stream), ACLNN_ERR_PARAM_INVALID);
        // A size that claims enough over a buffer that holds less.
        let half = s.workspace(ws / 2).unwrap();
        assert_eq!(run(half, ws, ex, s.stream), ACLNN_ERR_PARAM_INVALID);
        assert!(s.cann.acl.recent_error_message().contains("out-of-bounds"));
        assert_eq!(run(short, ws, ex, s.stream), 0);
    }
    s.sync().unwrap();
    let out = from_bf16(&s.download(fx[2].ptr, fx[2].bytes).unwrap());
    assert!(out.iter().all(|&v| v == 8.0), "{out:?}");
    let st = release(s, fx);
    // Null, short, and the half buffer (which also counts as an out-of-bounds access).
    assert_eq!(st.workspace_violations, 3, "{st:?}");
    assert_eq!(st.oob_accesses, 1, "{st:?}");
    assert_eq!(st.leaks(), 0);
}

#[test]
fn a_workspace_freed_before_the_stream_runs_is_caught() {
    let s = Session::new().unwrap();
    let fx = matmul_fx(&s, 2, 8, 8);
    let (st, ws, ex) = phase1(&s, &fx);
    assert_eq!(st, 0);
    let mut w = std::ptr::null_mut();
    // SAFETY: valid out-pointer; the executor from phase 1; the workspace is freed while
    // the op is still queued (the misuse under test).
    unsafe {
        assert_eq!(
            (s.cann.acl.aclrtMalloc)(
                &mut w,
                ws as usize,
                aclrtMemMallocPolicy::ACL_MEM_MALLOC_HUGE_FIRST
            ),
            0
        );
        assert_eq!((s.cann.ops.aclnnMatmul)(w, ws, ex, s.stream), 0);
        assert_eq!((s.cann.acl.aclrtFree)(w), 0);
    }
    let err = s.sync().unwrap_err();
    assert!(err.contains("use after free"), "{err}");
    let st = release(s, fx);
    assert_eq!(st.use_after_free, 1, "{st:?}");
}

#[test]
fn a_workspace_overlapping_an_operand_is_refused_at_run_time() {
    let s = Session::new().unwrap();
    let fx = matmul_fx(&s, 2, 8, 8);
    let (st, ws, ex) = phase1(&s, &fx);
    assert_eq!(st, 0);
    // One allocation holding both the workspace and, at its end, the output.
    let buf = s.workspace(ws + 64).unwrap();
    let out = s
        .describe(buf, D::ACL_BF16, &[2, 8], None, (ws / 2) as i64 - 8)
        .unwrap();
    // SAFETY: live descriptors; the executor from phase 1 is replaced by one writing `out`.
    unsafe {
        (s.cann.nnop.aclDestroyAclOpExecutor.unwrap())(ex);
        let (mut ws2, mut ex2) = (0u64, std::ptr::null_mut());
        assert_eq!(
            (s.cann.ops.aclnnMatmulGetWorkspaceSize)(
                fx[0].tensor,
                fx[1].tensor,
                out,
                1,
                &mut ws2,
                &mut ex2
            ),
            0
        );
        assert_eq!(ws2, ws);
        assert_eq!((s.cann.ops.aclnnMatmul)(buf, ws, ex2, s.stream), 0);
        (s.cann.nnop.aclDestroyTensor)(out);
    }
    let err = s.sync().unwrap_err();
    assert!(err.contains("overlaps an operand"), "{err}");
    let st = release(s, fx);
    assert_eq!(st.workspace_violations, 1, "{st:?}");
}

#[test]
fn elementwise_ops_need_no_workspace() {
    let s = Session::new().unwrap();
    let x = s.upload(D::ACL_BF16, &[4], &bf16_bytes(&[1.0; 4])).unwrap();
    let o = s.upload(D::ACL_BF16, &[4], &[0u8; 8]).unwrap();
    let (mut ws, mut ex) = (7u64, std::ptr::null_mut());
    // SAFETY: live descriptors; a null workspace of size 0 is what phase 1 asked for.
    unsafe {
        assert_eq!(
            (s.cann.ops.aclnnSoftmaxGetWorkspaceSize)(x.tensor, 0, o.tensor, &mut ws, &mut ex),
            0
        );
        assert_eq!(ws, 0);
        assert_eq!(
            (s.cann.ops.aclnnSoftmax)(std::ptr::null_mut(), 0, ex, s.stream),
            0
        );
    }
    s.sync().unwrap();
    s.release(x).unwrap();
    s.release(o).unwrap();
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations()), (0, 0), "{st:?}");
}
