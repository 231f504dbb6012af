//! aclnnLogSoftmax and aclnnGtTensor of the emulator against naive references written here,
//! and the refusals their CANN pages list.

use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;
use cann_emu::harness::*;

fn zeros(s: &Session, dt: D, dims: &[i64]) -> DevTensor {
    let n: i64 = dims.iter().product();
    let es = dt.element_size().unwrap();
    s.upload(dt, dims, &vec![0u8; n as usize * es]).unwrap()
}

fn done(s: Session, ts: Vec<DevTensor>) {
    for t in ts {
        s.release(t).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations()), (0, 0), "{st:?}");
}

/// log(exp(x_i) / sum_j exp(x_j)) over `n` consecutive values, in f64.
fn log_softmax_ref(x: &[f32]) -> Vec<f64> {
    let z: f64 = x.iter().map(|&v| (v as f64).exp()).sum();
    x.iter().map(|&v| v as f64 - z.ln()).collect()
}

#[test]
fn log_softmax_along_either_axis_and_into_a_wider_type() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (ws, run) = (
        ops.aclnnLogSoftmaxGetWorkspaceSize.unwrap(),
        ops.aclnnLogSoftmax.unwrap(),
    );
    // Large values: a naive exp would overflow f32; the op subtracts the maximum first.
    let x = [1.0f32, 2.0, 3.0, 90.0, 95.0, 100.0];
    let tx = s.upload(D::ACL_FLOAT, &[2, 3], &f32_bytes(&x)).unwrap();
    let to = zeros(&s, D::ACL_FLOAT, &[2, 3]);
    // SAFETY: live descriptors.
    s.run_op(
        "last axis",
        |w, e| unsafe { ws(tx.tensor, -1, to.tensor, w, e) },
        run,
    )
    .unwrap();
    let got = from_f32(&s.download(to.ptr, to.bytes).unwrap());
    let want: Vec<f64> = x.chunks(3).flat_map(log_softmax_ref).collect();
    for (g, w) in got.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
    // Along the first axis (columns of the [2, 3] matrix).
    // SAFETY: live descriptors.
    s.run_op(
        "first axis",
        |w, e| unsafe { ws(tx.tensor, 0, to.tensor, w, e) },
        run,
    )
    .unwrap();
    let got = from_f32(&s.download(to.ptr, to.bytes).unwrap());
    for c in 0..3 {
        let want = log_softmax_ref(&[x[c], x[3 + c]]);
        assert!((got[c] as f64 - want[0]).abs() < 1e-5);
        assert!((got[3 + c] as f64 - want[1]).abs() < 1e-5);
    }
    // BFLOAT16 in, FLOAT out: a type BFLOAT16 converts to, not rounded back to BFLOAT16.
    let xb: Vec<f32> = [0.5f32, -1.25, 2.0, 0.0]
        .iter()
        .map(|&v| bf16_round(v))
        .collect();
    let tb = s.upload(D::ACL_BF16, &[4], &bf16_bytes(&xb)).unwrap();
    let tbo = zeros(&s, D::ACL_FLOAT, &[4]);
    // SAFETY: live descriptors.
    s.run_op(
        "bf16 to f32",
        |w, e| unsafe { ws(tb.tensor, 0, tbo.tensor, w, e) },
        run,
    )
    .unwrap();
    let got = from_f32(&s.download(tbo.ptr, tbo.bytes).unwrap());
    for (g, w) in got.iter().zip(log_softmax_ref(&xb)) {
        assert!((*g as f64 - w).abs() < 1e-6);
    }
    // Refusals on the page: null self/out (161001); dim outside self's dimensions, a type
    // not supported, out's shape not self's (161002).
    let ti = zeros(&s, D::ACL_INT32, &[2, 3]);
    let tw = zeros(&s, D::ACL_FLOAT, &[3, 2]);
    let cases: [(&str, *mut aclTensor, i64, *mut aclTensor, i32); 6] = [
        ("dim", tx.tensor, 2, to.tensor, 161002),
        ("dim negative", tx.tensor, -3, to.tensor, 161002),
        ("int self", ti.tensor, 1, to.tensor, 161002),
        ("int out", tx.tensor, 1, ti.tensor, 161002),
        ("shape", tx.tensor, 1, tw.tensor, 161002),
        ("null", tx.tensor, 1, std::ptr::null_mut(), 161001),
    ];
    for (what, a, dim, o, want) in cases {
        let (mut w, mut e) = (0u64, std::ptr::null_mut());
        // SAFETY: live descriptors (or null where the case says so).
        let st = unsafe { ws(a, dim, o, &mut w, &mut e) };
        assert_eq!(st, want, "{what}");
    }
    done(s, vec![tx, to, tb, tbo, ti, tw]);
}

#[test]
fn gt_tensor_broadcasts_and_writes_any_out_type() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (ws, run) = (
        ops.aclnnGtTensorGetWorkspaceSize.unwrap(),
        ops.aclnnGtTensor.unwrap(),
    );
    // Each row against one value of its own ([2, 4] > [2, 1]); equal is not greater.
    let x = [0.5f32, 2.0, -1.0, 1.0, 3.0, 3.0, 2.5, 4.0];
    let y = [1.0f32, 3.0];
    let tx = s.upload(D::ACL_FLOAT, &[2, 4], &f32_bytes(&x)).unwrap();
    let ty = s.upload(D::ACL_FLOAT, &[2, 1], &f32_bytes(&y)).unwrap();
    let to = zeros(&s, D::ACL_FLOAT, &[2, 4]);
    // SAFETY: live descriptors.
    s.run_op(
        "f32 out",
        |w, e| unsafe { ws(tx.tensor, ty.tensor, to.tensor, w, e) },
        run,
    )
    .unwrap();
    assert_eq!(
        from_f32(&s.download(to.ptr, to.bytes).unwrap()),
        vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    );
    // BFLOAT16 against FLOAT (deduced to FLOAT), BOOL out, broadcast along the first axis.
    let xb: Vec<f32> = [1.0f32, 2.0, 3.0].iter().map(|&v| bf16_round(v)).collect();
    let tb = s.upload(D::ACL_BF16, &[1, 3], &bf16_bytes(&xb)).unwrap();
    let tc = s
        .upload(D::ACL_FLOAT, &[2, 1], &f32_bytes(&[1.5, 0.5]))
        .unwrap();
    let tbo = zeros(&s, D::ACL_BOOL, &[2, 3]);
    // SAFETY: live descriptors.
    s.run_op(
        "bool out",
        |w, e| unsafe { ws(tb.tensor, tc.tensor, tbo.tensor, w, e) },
        run,
    )
    .unwrap();
    assert_eq!(
        s.download(tbo.ptr, tbo.bytes).unwrap(),
        vec![0u8, 1, 1, 1, 1, 1]
    );
    // INT64 pairs compare as integers (values above 2^53 stay distinct).
    let big = [(1i64 << 53) + 1, 5];
    let tl = s.upload(D::ACL_INT64, &[2], &i64_bytes(&big)).unwrap();
    let tr = s
        .upload(D::ACL_INT64, &[2], &i64_bytes(&[1 << 53, 5]))
        .unwrap();
    let tlo = zeros(&s, D::ACL_INT32, &[2]);
    // SAFETY: live descriptors.
    s.run_op(
        "int64",
        |w, e| unsafe { ws(tl.tensor, tr.tensor, tlo.tensor, w, e) },
        run,
    )
    .unwrap();
    assert_eq!(
        from_i32(&s.download(tlo.ptr, tlo.bytes).unwrap()),
        vec![1, 0]
    );
    // Refusals on the page: null inputs/out (161001); types that do not deduce, shapes that
    // do not broadcast, out's shape not the broadcast one (161002).
    let ti = zeros(&s, D::ACL_INT32, &[2, 1]);
    let t3 = zeros(&s, D::ACL_FLOAT, &[3]);
    let tsmall = zeros(&s, D::ACL_FLOAT, &[2, 1]);
    let cases: [(&str, *mut aclTensor, *mut aclTensor, *mut aclTensor, i32); 5] = [
        ("float with int", tx.tensor, ti.tensor, to.tensor, 161002),
        ("no broadcast", tx.tensor, t3.tensor, to.tensor, 161002),
        ("out shape", tx.tensor, ty.tensor, tsmall.tensor, 161002),
        (
            "null other",
            tx.tensor,
            std::ptr::null_mut(),
            to.tensor,
            161001,
        ),
        (
            "null out",
            tx.tensor,
            ty.tensor,
            std::ptr::null_mut(),
            161001,
        ),
    ];
    for (what, a, b, o, want) in cases {
        let (mut w, mut e) = (0u64, std::ptr::null_mut());
        // SAFETY: live descriptors (or null where the case says so).
        let st = unsafe { ws(a, b, o, &mut w, &mut e) };
        assert_eq!(st, want, "{what}");
    }
    done(
        s,
        vec![tx, ty, to, tb, tc, tbo, tl, tr, tlo, ti, t3, tsmall],
    );
}
