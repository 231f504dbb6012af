//! aclnnBitwiseAndTensor, aclnnEqScalar and aclnnInplaceMaskedFillScalar of the emulator,
//! chained as the backend masks logits with a packed bitmask, against a naive reference
//! written here; and the refusals their CANN pages list.

use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;
use cann_emu::harness::*;

fn zeros(s: &Session, dt: D, dims: &[i64]) -> DevTensor {
    let n: i64 = dims.iter().product();
    let es = dt.element_size().unwrap();
    s.upload(dt, dims, &vec![0u8; n as usize * es]).unwrap()
}

fn scalar_i32(s: &Session, v: i32) -> *mut aclScalar {
    let mut v = v;
    // SAFETY: a valid i32; nnopbase copies it.
    unsafe { (s.cann.nnop.aclCreateScalar)((&mut v as *mut i32).cast(), D::ACL_INT32) }
}

fn scalar_f32(s: &Session, v: f32) -> *mut aclScalar {
    let mut v = v;
    // SAFETY: a valid f32; nnopbase copies it.
    unsafe { (s.cann.nnop.aclCreateScalar)((&mut v as *mut f32).cast(), D::ACL_FLOAT) }
}

fn destroy_scalar(s: &Session, p: *mut aclScalar) {
    // SAFETY: made by aclCreateScalar, destroyed once.
    unsafe { (s.cann.nnop.aclDestroyScalar)(p) };
}

/// Logit `t` of row `r` kept when bit `t % 32` of word `t / 32` is set, else -inf.
fn masked_ref(x: &[f32], words: &[u32], vocab: usize) -> Vec<f32> {
    let w = vocab / 32;
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let (r, t) = (i / vocab, i % vocab);
            if words[r * w + t / 32] >> (t % 32) & 1 == 1 {
                v
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect()
}

#[test]
fn a_packed_bitmask_expands_and_masks_logits() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let band = (
        ops.aclnnBitwiseAndTensorGetWorkspaceSize.unwrap(),
        ops.aclnnBitwiseAndTensor.unwrap(),
    );
    let eq = (
        ops.aclnnEqScalarGetWorkspaceSize.unwrap(),
        ops.aclnnEqScalar.unwrap(),
    );
    let fill = (
        ops.aclnnInplaceMaskedFillScalarGetWorkspaceSize.unwrap(),
        ops.aclnnInplaceMaskedFillScalar.unwrap(),
    );
    let (rows, vocab) = (3usize, 96usize);
    let nw = vocab / 32;
    // Bit 31 (a negative INT32), all, none, and scattered bits.
    let words: [u32; 9] = [
        0x8000_0001,
        u32::MAX,
        0,
        0,
        0x0F0F_00F0,
        0x8000_0000,
        0x1234_5678,
        0xFFFF_0000,
        0x0000_0002,
    ];
    let x: Vec<f32> = (0..rows * vocab)
        .map(|i| ((i * 37) % 101) as f32 / 7.0 - 5.0)
        .collect();
    let wi: Vec<i32> = words.iter().map(|&w| w as i32).collect();
    let bits: Vec<i32> = (0..32).map(|b| (1u32 << b) as i32).collect();
    let tw = s
        .upload(D::ACL_INT32, &[rows as i64, nw as i64, 1], &i32_bytes(&wi))
        .unwrap();
    let tb = s
        .upload(D::ACL_INT32, &[1, 1, 32], &i32_bytes(&bits))
        .unwrap();
    let ta = zeros(&s, D::ACL_INT32, &[rows as i64, nw as i64, 32]);
    let tm = zeros(&s, D::ACL_BOOL, &[rows as i64, nw as i64, 32]);
    let tx = s
        .upload(D::ACL_FLOAT, &[rows as i64, vocab as i64], &f32_bytes(&x))
        .unwrap();
    // The BOOL buffer seen as [rows, vocab]: contiguous, since vocab is a multiple of 32.
    let mv = s
        .describe(tm.ptr, D::ACL_BOOL, &[rows as i64, vocab as i64], None, 0)
        .unwrap();
    let zero = scalar_i32(&s, 0);
    let ninf = scalar_f32(&s, f32::NEG_INFINITY);
    // SAFETY: live descriptors.
    s.run_op(
        "and",
        |w, e| unsafe { (band.0)(tw.tensor, tb.tensor, ta.tensor, w, e) },
        band.1,
    )
    .unwrap();
    // SAFETY: live descriptors.
    s.run_op(
        "eq",
        |w, e| unsafe { (eq.0)(ta.tensor, zero, tm.tensor, w, e) },
        eq.1,
    )
    .unwrap();
    // SAFETY: live descriptors.
    s.run_op(
        "fill",
        |w, e| unsafe { (fill.0)(tx.tensor, mv, ninf, w, e) },
        fill.1,
    )
    .unwrap();
    let got = from_f32(&s.download(tx.ptr, tx.bytes).unwrap());
    let want = masked_ref(&x, &words, vocab);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g == w, "element {i}: {g} vs {w}");
    }
    // The AND itself: each word's bit b, in place b of its 32.
    let and = s.download(ta.ptr, ta.bytes).unwrap();
    let and: Vec<i32> = and
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    for (i, &a) in and.iter().enumerate() {
        assert_eq!(a as u32, words[i / 32] & (1 << (i % 32)), "and {i}");
    }

    // Refusals on the pages. FLOAT into BitwiseAnd, out not the broadcast shape, null out.
    let tf = zeros(&s, D::ACL_FLOAT, &[1, 1, 32]);
    let small = zeros(&s, D::ACL_INT32, &[rows as i64, nw as i64, 16]);
    let cases: [(&str, *mut aclTensor, *mut aclTensor, i32); 3] = [
        ("float other", tf.tensor, ta.tensor, 161002),
        ("out shape", tb.tensor, small.tensor, 161002),
        ("null out", tb.tensor, std::ptr::null_mut(), 161001),
    ];
    for (what, other, out, want) in cases {
        let (mut w, mut e) = (0u64, std::ptr::null_mut());
        // SAFETY: live descriptors (or null where the case says so).
        let st = unsafe { (band.0)(tw.tensor, other, out, &mut w, &mut e) };
        assert_eq!(st, want, "and: {what}");
    }
    // EqScalar: out not self's shape; null other.
    for (what, other, out, want) in [
        ("out shape", zero, small.tensor, 161002),
        ("null other", std::ptr::null_mut(), tm.tensor, 161001),
    ] {
        let (mut w, mut e) = (0u64, std::ptr::null_mut());
        // SAFETY: live descriptors (or null where the case says so).
        let st = unsafe { (eq.0)(ta.tensor, other, out, &mut w, &mut e) };
        assert_eq!(st, want, "eq: {what}");
    }
    // MaskedFill: an INT32 mask, a non-contiguous mask (every other column of the BOOL
    // buffer), a mask that does not broadcast to selfRef, a null value.
    let strided = s
        .describe(
            tm.ptr,
            D::ACL_BOOL,
            &[rows as i64, vocab as i64 / 2],
            Some(&[vocab as i64, 2]),
            0,
        )
        .unwrap();
    let tx2 = zeros(&s, D::ACL_FLOAT, &[rows as i64, vocab as i64 / 2]);
    for (what, selfref, mask, value, want) in [
        ("int mask", tx.tensor, ta.tensor, ninf, 161002),
        ("strided mask", tx2.tensor, strided, ninf, 161002),
        ("no broadcast", tx2.tensor, mv, ninf, 161002),
        ("null value", tx.tensor, mv, std::ptr::null_mut(), 161001),
    ] {
        let (mut w, mut e) = (0u64, std::ptr::null_mut());
        // SAFETY: live descriptors (or null where the case says so).
        let st = unsafe { (fill.0)(selfref, mask, value, &mut w, &mut e) };
        assert_eq!(st, want, "fill: {what}");
    }
    destroy_scalar(&s, zero);
    destroy_scalar(&s, ninf);
    // SAFETY: views made by describe, destroyed once.
    unsafe {
        (s.cann.nnop.aclDestroyTensor)(mv);
        (s.cann.nnop.aclDestroyTensor)(strided);
    }
    for t in [tw, tb, ta, tm, tx, tf, small, tx2] {
        s.release(t).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations()), (0, 0), "{st:?}");
}

#[test]
fn bitwise_and_deduces_the_wider_integer_and_eq_compares_exactly() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (band, band_run) = (
        ops.aclnnBitwiseAndTensorGetWorkspaceSize.unwrap(),
        ops.aclnnBitwiseAndTensor.unwrap(),
    );
    // INT64 [2, 1] & INT32 [3] → INT64 [2, 3].
    let a: [i64; 2] = [0x1_0000_00FF, -1];
    let b: [i32; 3] = [0x0F, -16, 0x100];
    let ab: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
    let ta = s.upload(D::ACL_INT64, &[2, 1], &ab).unwrap();
    let tb = s.upload(D::ACL_INT32, &[3], &i32_bytes(&b)).unwrap();
    let to = zeros(&s, D::ACL_INT64, &[2, 3]);
    // SAFETY: live descriptors.
    s.run_op(
        "and i64",
        |w, e| unsafe { band(ta.tensor, tb.tensor, to.tensor, w, e) },
        band_run,
    )
    .unwrap();
    let got: Vec<i64> = s
        .download(to.ptr, to.bytes)
        .unwrap()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let want: Vec<i64> = (0..6).map(|i| a[i / 3] & b[i % 3] as i64).collect();
    assert_eq!(got, want);
    // EqScalar on FLOAT against 2.5, into INT32 (a type BOOL converts to).
    let (eq, eq_run) = (
        ops.aclnnEqScalarGetWorkspaceSize.unwrap(),
        ops.aclnnEqScalar.unwrap(),
    );
    let tx = s
        .upload(D::ACL_FLOAT, &[4], &f32_bytes(&[2.5, 2.0, -2.5, 2.5]))
        .unwrap();
    let te = zeros(&s, D::ACL_INT32, &[4]);
    let v = scalar_f32(&s, 2.5);
    // SAFETY: live descriptors.
    s.run_op(
        "eq f32",
        |w, e| unsafe { eq(tx.tensor, v, te.tensor, w, e) },
        eq_run,
    )
    .unwrap();
    assert_eq!(
        s.download(te.ptr, te.bytes).unwrap(),
        i32_bytes(&[1, 0, 0, 1])
    );
    destroy_scalar(&s, v);
    for t in [ta, tb, to, tx, te] {
        s.release(t).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations()), (0, 0), "{st:?}");
}
