//! Task groups in a captured graph and their updates (`aclmdlRICaptureTaskGrp*`,
//! `aclmdlRICaptureTaskUpdate*`), and collectives replayed from a graph.

use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;
use cann_emu::harness::*;
use std::ffi::c_void;

/// `y += alpha * x` as one aclnnInplaceAdd on `stream`, alpha a host scalar.
fn axpy(s: &Session, stream: aclrtStream, y: &DevTensor, x: &DevTensor, alpha: f32) -> i32 {
    let (ops, nn) = (&s.cann.ops, &s.cann.nnop);
    let mut a = alpha;
    // SAFETY: valid descriptors and a float scalar; the workspace is null (none asked).
    unsafe {
        let al = (nn.aclCreateScalar)((&mut a as *mut f32).cast(), D::ACL_FLOAT);
        let (mut ws, mut ex) = (0u64, std::ptr::null_mut());
        let st = (ops.aclnnInplaceAddGetWorkspaceSize)(y.tensor, x.tensor, al, &mut ws, &mut ex);
        assert_eq!((st, ws), (0, 0));
        let rc = (ops.aclnnInplaceAdd)(std::ptr::null_mut(), 0, ex, stream);
        (nn.aclDestroyScalar)(al);
        rc
    }
}

fn new_stream(s: &Session) -> aclrtStream {
    let mut st = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { (s.cann.acl.aclrtCreateStream)(&mut st) }, 0);
    st
}

#[test]
fn an_update_replaces_a_groups_host_arguments_for_later_replays() {
    let s = Session::new().unwrap();
    let acl = s.cann.acl.clone();
    let (begin, end) = (
        acl.aclmdlRICaptureBegin.unwrap(),
        acl.aclmdlRICaptureEnd.unwrap(),
    );
    let (gb, ge) = (
        acl.aclmdlRICaptureTaskGrpBegin.unwrap(),
        acl.aclmdlRICaptureTaskGrpEnd.unwrap(),
    );
    let (ub, ue) = (
        acl.aclmdlRICaptureTaskUpdateBegin.unwrap(),
        acl.aclmdlRICaptureTaskUpdateEnd.unwrap(),
    );
    let exec = acl.aclmdlRIExecuteAsync.unwrap();
    let x = s
        .upload(D::ACL_FLOAT, &[2], &f32_bytes(&[1.0, 10.0]))
        .unwrap();
    let y = s.upload(D::ACL_FLOAT, &[2], &f32_bytes(&[0.0; 2])).unwrap();
    let (mut ri, mut grp) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: live stream, descriptors and out-pointers throughout.
    unsafe {
        // A group needs a capturing stream.
        assert_eq!(gb(s.stream), ACL_ERROR_RT_STREAM_NOT_CAPTURED);
        let relaxed = aclmdlRICaptureMode::ACL_MODEL_RI_CAPTURE_MODE_RELAXED;
        assert_eq!(begin(s.stream, relaxed), 0);
        // y += 1 * x (outside the group), then the group: y += 2 * x.
        assert_eq!(axpy(&s, s.stream, &y, &x, 1.0), 0);
        assert_eq!(gb(s.stream), 0);
        // An update needs a stream that is not capturing.
        assert_eq!(axpy(&s, s.stream, &y, &x, 2.0), 0);
        assert_eq!(ge(s.stream, &mut grp), 0);
        assert_eq!(ub(s.stream, grp), ACL_ERROR_RT_STREAM_CAPTURED);
        assert_eq!(end(s.stream, &mut ri), 0);
        assert_eq!(exec(ri, s.stream), 0);
    }
    assert_eq!(from_f32(&s.download(y.ptr, 8).unwrap()), vec![3.0, 30.0]);
    // SAFETY: as above.
    unsafe {
        // Re-issued with alpha 5, on the replaying stream: the next replay adds 1 + 5.
        assert_eq!(ub(s.stream, grp), 0);
        assert_eq!(axpy(&s, s.stream, &y, &x, 5.0), 0);
        assert_eq!(ue(s.stream), 0);
        assert_eq!(exec(ri, s.stream), 0);
    }
    assert_eq!(from_f32(&s.download(y.ptr, 8).unwrap()), vec![9.0, 90.0]);
    // SAFETY: as above.
    unsafe {
        // An update must issue the group's number of tasks: two instead of one.
        assert_eq!(ub(s.stream, grp), 0);
        assert_eq!(axpy(&s, s.stream, &y, &x, 1.0), 0);
        assert_eq!(axpy(&s, s.stream, &y, &x, 1.0), 0);
        assert_eq!(ue(s.stream), ACL_ERROR_RT_PARAM_INVALID);
        // A copy is not a single-operator call.
        assert_eq!(ub(s.stream, grp), 0);
        assert_eq!(
            (acl.aclrtMemsetAsync)(y.ptr, 8, 0, 8, s.stream),
            0,
            "the task is taken; the group's End refuses it"
        );
        assert_eq!(ue(s.stream), ACL_ERROR_RT_TASK_TYPE_NOT_SUPPORT);
    }
    // Neither refused update reached the graph: still 1 + 5.
    // SAFETY: as above.
    unsafe { assert_eq!(exec(ri, s.stream), 0) };
    assert_eq!(from_f32(&s.download(y.ptr, 8).unwrap()), vec![15.0, 150.0]);
    // An update queued on another stream is asynchronous: a replay not ordered after it
    // is an error when it runs.
    let other = new_stream(&s);
    // SAFETY: as above; `other` is live until destroyed here.
    unsafe {
        assert_eq!(ub(other, grp), 0);
        assert_eq!(axpy(&s, other, &y, &x, 7.0), 0);
        assert_eq!(ue(other), 0);
        assert_eq!(exec(ri, s.stream), 0);
        assert_ne!((acl.aclrtSynchronizeStream)(s.stream), 0);
        assert_eq!((acl.aclrtSynchronizeStream)(other), 0);
        assert_eq!((acl.aclrtDestroyStream)(other), 0);
        assert_eq!((acl.aclmdlRIDestroy.unwrap())(ri), 0);
        // The group died with its graph.
        assert_eq!(ub(s.stream, grp), ACL_ERROR_RT_PARAM_INVALID);
    }
    for t in [x, y] {
        s.release(t).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!(st.leaks(), 0);
    assert_eq!(st.task_updates, 2);
}

#[test]
fn a_capture_ending_inside_a_group_or_a_group_with_a_copy_is_refused() {
    let s = Session::new().unwrap();
    let acl = s.cann.acl.clone();
    let buf = s.malloc(64).unwrap();
    let relaxed = aclmdlRICaptureMode::ACL_MODEL_RI_CAPTURE_MODE_RELAXED;
    let (mut ri, mut grp): (*mut c_void, *mut c_void) =
        (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: live stream and buffer; valid out-pointers.
    unsafe {
        assert_eq!((acl.aclmdlRICaptureBegin.unwrap())(s.stream, relaxed), 0);
        assert_eq!((acl.aclmdlRICaptureTaskGrpBegin.unwrap())(s.stream), 0);
        assert_eq!((acl.aclrtMemsetAsync)(buf, 64, 0, 64, s.stream), 0);
        assert_eq!(
            (acl.aclmdlRICaptureTaskGrpEnd.unwrap())(s.stream, &mut grp),
            ACL_ERROR_RT_TASK_TYPE_NOT_SUPPORT
        );
        assert_eq!((acl.aclmdlRICaptureTaskGrpBegin.unwrap())(s.stream), 0);
        assert_eq!(
            (acl.aclmdlRICaptureEnd.unwrap())(s.stream, &mut ri),
            ACL_ERROR_RT_PARAM_INVALID
        );
        assert!(ri.is_null());
        assert_eq!((acl.aclrtFree)(buf), 0);
    }
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.live_graphs), (0, 0));
}
