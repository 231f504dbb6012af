//! Dense-model aclnn operators of the emulator against naive references written here.

use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;
use cann_emu::harness::*;

fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            bf16_round(((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0)
        })
        .collect()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}"
        );
    }
}

fn bf(s: &Session, dims: &[i64], v: &[f32]) -> DevTensor {
    s.upload(D::ACL_BF16, dims, &bf16_bytes(v)).unwrap()
}

fn zeros(s: &Session, dt: D, dims: &[i64]) -> DevTensor {
    let n: i64 = dims.iter().product();
    let es = dt.element_size().unwrap();
    s.upload(dt, dims, &vec![0u8; n as usize * es]).unwrap()
}

fn get_bf(s: &Session, t: &DevTensor) -> Vec<f32> {
    from_bf16(&s.download(t.ptr, t.bytes).unwrap())
}

fn done(s: Session, ts: Vec<DevTensor>) {
    for t in ts {
        s.release(t).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations()), (0, 0), "{st:?}");
}

#[test]
fn matmul_with_transposed_view_and_rejection() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (m, k, n) = (3usize, 5usize, 4usize);
    let a = rnd(m * k, 1);
    let bt = rnd(n * k, 2); // storage [n, k]; used as [k, n] through strides
    let ta = bf(&s, &[m as i64, k as i64], &a);
    let tb = bf(&s, &[n as i64, k as i64], &bt);
    let view = s
        .describe(
            tb.ptr,
            D::ACL_BF16,
            &[k as i64, n as i64],
            Some(&[1, k as i64]),
            0,
        )
        .unwrap();
    let to = zeros(&s, D::ACL_BF16, &[m as i64, n as i64]);
    // SAFETY: live descriptors.
    s.run_op(
        "matmul",
        |w, e| unsafe { (ops.aclnnMatmulGetWorkspaceSize)(ta.tensor, view, to.tensor, 1, w, e) },
        ops.aclnnMatmul,
    )
    .unwrap();
    let mut want = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = bf16_round((0..k).map(|p| a[i * k + p] * bt[j * k + p]).sum());
        }
    }
    close(&get_bf(&s, &to), &want, 1e-2);
    // Inner dimensions that differ are rejected in phase 1 with 161002.
    let mut ws = 0;
    let mut ex = std::ptr::null_mut();
    // SAFETY: live descriptors.
    let st = unsafe {
        (ops.aclnnMatmulGetWorkspaceSize)(ta.tensor, tb.tensor, to.tensor, 1, &mut ws, &mut ex)
    };
    assert_eq!(st, ACLNN_ERR_PARAM_INVALID);
    assert!(s
        .cann
        .acl
        .recent_error_message()
        .contains("inner dimensions"));
    // SAFETY: made above.
    unsafe { (s.cann.nnop.aclDestroyTensor)(view) };
    done(s, vec![ta, tb, to]);
}

#[test]
fn batched_matmul_broadcasts_a_2d_mat2() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (b, m, k, n) = (2usize, 3usize, 4usize, 5usize);
    let a = rnd(b * m * k, 21);
    let w = rnd(k * n, 22);
    let ta = s
        .upload(
            D::ACL_FLOAT,
            &[b as i64, m as i64, k as i64],
            &f32_bytes(&a),
        )
        .unwrap();
    let tw = s
        .upload(D::ACL_FLOAT, &[k as i64, n as i64], &f32_bytes(&w))
        .unwrap();
    let to = zeros(&s, D::ACL_FLOAT, &[b as i64, m as i64, n as i64]);
    // SAFETY: live descriptors.
    s.run_op(
        "bmm",
        |ws, e| unsafe {
            (ops.aclnnMatmulGetWorkspaceSize)(ta.tensor, tw.tensor, to.tensor, 0, ws, e)
        },
        ops.aclnnMatmul,
    )
    .unwrap();
    let got = from_f32(&s.download(to.ptr, to.bytes).unwrap());
    let mut want = vec![0f32; b * m * n];
    for r in 0..b * m {
        for j in 0..n {
            want[r * n + j] = (0..k).map(|p| a[r * k + p] * w[p * n + j]).sum();
        }
    }
    close(&got, &want, 1e-5);
    done(s, vec![ta, tw, to]);
}

#[test]
fn view_outside_its_allocation_is_rejected() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let ta = bf(&s, &[2, 4], &rnd(8, 3));
    // A [4, 4] view over an 8-element buffer.
    let big = s.describe(ta.ptr, D::ACL_BF16, &[4, 4], None, 0).unwrap();
    let to = zeros(&s, D::ACL_BF16, &[4, 4]);
    let mut ws = 0;
    let mut ex = std::ptr::null_mut();
    // SAFETY: live descriptors.
    let st = unsafe { (ops.aclnnSoftmaxGetWorkspaceSize)(big, -1, to.tensor, &mut ws, &mut ex) };
    assert_eq!(st, ACLNN_ERR_PARAM_INVALID);
    // SAFETY: made above.
    unsafe { (s.cann.nnop.aclDestroyTensor)(big) };
    for t in [ta, to] {
        s.release(t).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!(st.oob_accesses, 1);
}

fn rms_ref(x: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
    let d = g.len();
    x.chunks(d)
        .flat_map(|r| {
            let rs = 1.0 / (r.iter().map(|v| v * v).sum::<f32>() / d as f32 + eps).sqrt();
            r.iter()
                .zip(g)
                .map(move |(v, w)| bf16_round(v * rs * w))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn rms_norm_and_add_rms_norm() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (x, x2, g) = (rnd(24, 4), rnd(24, 5), rnd(8, 6));
    let (tx, tx2, tg) = (bf(&s, &[3, 8], &x), bf(&s, &[3, 8], &x2), bf(&s, &[8], &g));
    let ty = zeros(&s, D::ACL_BF16, &[3, 8]);
    let tr = zeros(&s, D::ACL_FLOAT, &[3, 1]);
    let txo = zeros(&s, D::ACL_BF16, &[3, 8]);
    // SAFETY: live descriptors.
    s.run_op(
        "rms",
        |w, e| unsafe {
            (ops.aclnnRmsNormGetWorkspaceSize)(
                tx.tensor, tg.tensor, 1e-6, ty.tensor, tr.tensor, w, e,
            )
        },
        ops.aclnnRmsNorm,
    )
    .unwrap();
    close(&get_bf(&s, &ty), &rms_ref(&x, &g, 1e-6), 1e-2);
    // SAFETY: live descriptors.
    s.run_op(
        "addrms",
        |w, e| unsafe {
            (ops.aclnnAddRmsNormGetWorkspaceSize)(
                tx.tensor, tx2.tensor, tg.tensor, 1e-6, ty.tensor, tr.tensor, txo.tensor, w, e,
            )
        },
        ops.aclnnAddRmsNorm,
    )
    .unwrap();
    let sum: Vec<f32> = x.iter().zip(&x2).map(|(a, b)| a + b).collect();
    close(&get_bf(&s, &ty), &rms_ref(&sum, &g, 1e-6), 1e-2);
    close(
        &get_bf(&s, &txo),
        &sum.iter().map(|v| bf16_round(*v)).collect::<Vec<_>>(),
        0.0,
    );
    // gamma that is not x's trailing shape is rejected.
    let mut ws = 0;
    let mut ex = std::ptr::null_mut();
    // SAFETY: live descriptors.
    let st = unsafe {
        (ops.aclnnRmsNormGetWorkspaceSize)(
            tx.tensor, tx2.tensor, 1e-6, ty.tensor, tr.tensor, &mut ws, &mut ex,
        )
    };
    assert_eq!(st, ACLNN_ERR_PARAM_INVALID);
    done(s, vec![tx, tx2, tg, ty, tr, txo]);
}

#[test]
fn swiglu_gates_with_the_first_half() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let x = rnd(2 * 8, 7);
    let tx = bf(&s, &[2, 8], &x);
    let to = zeros(&s, D::ACL_BF16, &[2, 4]);
    // SAFETY: live descriptors.
    s.run_op(
        "swiglu",
        |w, e| unsafe { (ops.aclnnSwiGluGetWorkspaceSize)(tx.tensor, -1, to.tensor, w, e) },
        ops.aclnnSwiGlu,
    )
    .unwrap();
    let mut want = vec![];
    for r in 0..2 {
        for i in 0..4 {
            let (a, b) = (x[r * 8 + i], x[r * 8 + 4 + i]);
            want.push(bf16_round(a / (1.0 + (-a).exp()) * b));
        }
    }
    close(&get_bf(&s, &to), &want, 1e-2);
    done(s, vec![tx, to]);
}

#[test]
fn embedding_index_select_gather() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let w = rnd(5 * 3, 8);
    let tw = bf(&s, &[5, 3], &w);
    let ti = s
        .upload(D::ACL_INT32, &[3], &i32_bytes(&[4, 0, 2]))
        .unwrap();
    let to = zeros(&s, D::ACL_BF16, &[3, 3]);
    // SAFETY: live descriptors.
    s.run_op(
        "emb",
        |ws, e| unsafe {
            (ops.aclnnEmbeddingGetWorkspaceSize)(tw.tensor, ti.tensor, to.tensor, ws, e)
        },
        ops.aclnnEmbedding,
    )
    .unwrap();
    let want: Vec<f32> = [4, 0, 2]
        .iter()
        .flat_map(|&r| w[r * 3..r * 3 + 3].to_vec())
        .collect();
    close(&get_bf(&s, &to), &want, 0.0);
    // index_select on dim 1
    let ti2 = s.upload(D::ACL_INT64, &[2], &i64_bytes(&[2, 0])).unwrap();
    let to2 = zeros(&s, D::ACL_BF16, &[5, 2]);
    // SAFETY: live descriptors.
    s.run_op(
        "isel",
        |ws, e| unsafe {
            (ops.aclnnIndexSelectGetWorkspaceSize)(tw.tensor, 1, ti2.tensor, to2.tensor, ws, e)
        },
        ops.aclnnIndexSelect,
    )
    .unwrap();
    let want: Vec<f32> = (0..5).flat_map(|r| [w[r * 3 + 2], w[r * 3]]).collect();
    close(&get_bf(&s, &to2), &want, 0.0);
    // gather dim 1: out[i][j] = w[i][idx[i][j]]
    let idx = [1i64, 1, 0, 2, 2, 0, 0, 0, 1, 2];
    let ti3 = s.upload(D::ACL_INT64, &[5, 2], &i64_bytes(&idx)).unwrap();
    let to3 = zeros(&s, D::ACL_BF16, &[5, 2]);
    // SAFETY: live descriptors.
    s.run_op(
        "gather",
        |ws, e| unsafe {
            (ops.aclnnGatherGetWorkspaceSize)(tw.tensor, 1, ti3.tensor, to3.tensor, ws, e)
        },
        ops.aclnnGather,
    )
    .unwrap();
    let want: Vec<f32> = (0..10).map(|p| w[(p / 2) * 3 + idx[p] as usize]).collect();
    close(&get_bf(&s, &to3), &want, 0.0);
    // An out-of-range index fails at execution.
    let bad = s
        .upload(D::ACL_INT32, &[3], &i32_bytes(&[4, 9, 2]))
        .unwrap();
    // SAFETY: live descriptors.
    s.run_op(
        "emb",
        |ws, e| unsafe {
            (ops.aclnnEmbeddingGetWorkspaceSize)(tw.tensor, bad.tensor, to.tensor, ws, e)
        },
        ops.aclnnEmbedding,
    )
    .unwrap();
    assert!(s.sync().is_err());
    done(s, vec![tw, ti, to, ti2, to2, ti3, to3, bad]);
}

#[test]
fn add_alpha_inplace_add_mul_broadcast() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (a, b) = (rnd(6, 9), rnd(3, 10));
    let (ta, tb) = (bf(&s, &[2, 3], &a), bf(&s, &[3], &b));
    let to = zeros(&s, D::ACL_BF16, &[2, 3]);
    let mut alpha = 2.0f32;
    // SAFETY: a valid float.
    let al =
        unsafe { (s.cann.nnop.aclCreateScalar)((&mut alpha as *mut f32).cast(), D::ACL_FLOAT) };
    // SAFETY: live descriptors.
    s.run_op(
        "add",
        |w, e| unsafe { (ops.aclnnAddGetWorkspaceSize)(ta.tensor, tb.tensor, al, to.tensor, w, e) },
        ops.aclnnAdd,
    )
    .unwrap();
    let want: Vec<f32> = (0..6).map(|i| bf16_round(a[i] + 2.0 * b[i % 3])).collect();
    close(&get_bf(&s, &to), &want, 0.0);
    // SAFETY: live descriptors.
    s.run_op(
        "mul",
        |w, e| unsafe { (ops.aclnnMulGetWorkspaceSize)(ta.tensor, tb.tensor, to.tensor, w, e) },
        ops.aclnnMul,
    )
    .unwrap();
    let want: Vec<f32> = (0..6).map(|i| bf16_round(a[i] * b[i % 3])).collect();
    close(&get_bf(&s, &to), &want, 0.0);
    // SAFETY: live descriptors.
    s.run_op(
        "iadd",
        |w, e| unsafe { (ops.aclnnInplaceAddGetWorkspaceSize)(ta.tensor, tb.tensor, al, w, e) },
        ops.aclnnInplaceAdd,
    )
    .unwrap();
    let want: Vec<f32> = (0..6).map(|i| bf16_round(a[i] + 2.0 * b[i % 3])).collect();
    close(&get_bf(&s, &ta), &want, 0.0);
    // SAFETY: made above.
    unsafe { (s.cann.nnop.aclDestroyScalar)(al) };
    done(s, vec![ta, tb, to]);
}

#[test]
fn cast_rounds_to_nearest_even_and_inplace_copy_is_strided() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
    let v = [1.0f32 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5, 1e-3];
    let tf = s.upload(D::ACL_FLOAT, &[4], &f32_bytes(&v)).unwrap();
    let tb = zeros(&s, D::ACL_BF16, &[4]);
    // SAFETY: live descriptors.
    s.run_op(
        "cast",
        |w, e| unsafe { (ops.aclnnCastGetWorkspaceSize)(tf.tensor, D::ACL_BF16, tb.tensor, w, e) },
        ops.aclnnCast,
    )
    .unwrap();
    let got = get_bf(&s, &tb);
    assert_eq!(got[0], 1.0);
    assert_eq!(got[1], 1.0 + 4.0 / 256.0);
    assert_eq!(got[2], -2.5);
    // Copy a [2, 3] source into the transposed view of a [3, 2] buffer.
    let src = rnd(6, 11);
    let ts = bf(&s, &[2, 3], &src);
    let td = zeros(&s, D::ACL_BF16, &[3, 2]);
    let view = s
        .describe(td.ptr, D::ACL_BF16, &[2, 3], Some(&[1, 2]), 0)
        .unwrap();
    // SAFETY: live descriptors.
    s.run_op(
        "copy",
        |w, e| unsafe { (ops.aclnnInplaceCopyGetWorkspaceSize)(view, ts.tensor, w, e) },
        ops.aclnnInplaceCopy,
    )
    .unwrap();
    let got = get_bf(&s, &td);
    for i in 0..2 {
        for j in 0..3 {
            assert_eq!(got[j * 2 + i], src[i * 3 + j]);
        }
    }
    // SAFETY: made above.
    unsafe { (s.cann.nnop.aclDestroyTensor)(view) };
    done(s, vec![tf, tb, ts, td]);
}

fn rope_ref(x: &[f32], cos: &[f32], sin: &[f32], d: usize, interleave: bool) -> Vec<f32> {
    // cos/sin: one row of d per position; x rows: [pos][head][d] with 2 heads.
    let mut out = vec![0f32; x.len()];
    for (r, row) in x.chunks(d).enumerate() {
        let p = r / 2;
        for i in 0..d {
            let rot = if interleave {
                if i % 2 == 0 {
                    -row[i + 1]
                } else {
                    row[i - 1]
                }
            } else if i < d / 2 {
                -row[i + d / 2]
            } else {
                row[i - d / 2]
            };
            out[r * d + i] = bf16_round(row[i] * cos[p * d + i] + rot * sin[p * d + i]);
        }
    }
    out
}

#[test]
fn rotary_position_embedding_half_and_interleave() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let d = 8usize;
    let x = rnd(3 * 2 * d, 12);
    let (c, sn) = (rnd(3 * d, 13), rnd(3 * d, 14));
    let tx = bf(&s, &[1, 3, 2, d as i64], &x);
    let tc = bf(&s, &[1, 3, 1, d as i64], &c);
    let ts = bf(&s, &[1, 3, 1, d as i64], &sn);
    let to = zeros(&s, D::ACL_BF16, &[1, 3, 2, d as i64]);
    for mode in [0i64, 1] {
        // SAFETY: live descriptors.
        s.run_op(
            "rope",
            |w, e| unsafe {
                (ops.aclnnRotaryPositionEmbeddingGetWorkspaceSize.unwrap())(
                    tx.tensor, tc.tensor, ts.tensor, mode, to.tensor, w, e,
                )
            },
            ops.aclnnRotaryPositionEmbedding.unwrap(),
        )
        .unwrap();
        close(&get_bf(&s, &to), &rope_ref(&x, &c, &sn, d, mode == 1), 1e-2);
    }
    // ApplyRotaryPosEmb: in place on q and k (BSND), half mode.
    let tk = bf(&s, &[1, 3, 2, d as i64], &x);
    // SAFETY: live descriptors.
    s.run_op(
        "apply",
        |w, e| unsafe {
            (ops.aclnnApplyRotaryPosEmbGetWorkspaceSize.unwrap())(
                tx.tensor, tk.tensor, tc.tensor, ts.tensor, 1, w, e,
            )
        },
        ops.aclnnApplyRotaryPosEmb.unwrap(),
    )
    .unwrap();
    let want = rope_ref(&x, &c, &sn, d, false);
    close(&get_bf(&s, &tx), &want, 1e-2);
    close(&get_bf(&s, &tk), &want, 1e-2);
    // An odd mode is rejected.
    let (mut ws, mut ex) = (0, std::ptr::null_mut());
    // SAFETY: live descriptors.
    let st = unsafe {
        (ops.aclnnRotaryPositionEmbeddingGetWorkspaceSize.unwrap())(
            tx.tensor, tc.tensor, ts.tensor, 7, to.tensor, &mut ws, &mut ex,
        )
    };
    assert_eq!(st, ACLNN_ERR_PARAM_INVALID);
    done(s, vec![tx, tc, ts, to, tk]);
}

#[test]
fn argmax_topk_softmax() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let x = vec![0.5f32, 2.0, 2.0, -1.0, 3.0, 0.0, 1.0, 1.5];
    let tx = s.upload(D::ACL_FLOAT, &[2, 4], &f32_bytes(&x)).unwrap();
    let ta = zeros(&s, D::ACL_INT64, &[2]);
    // SAFETY: live descriptors.
    s.run_op(
        "argmax",
        |w, e| unsafe { (ops.aclnnArgMaxGetWorkspaceSize)(tx.tensor, -1, false, ta.tensor, w, e) },
        ops.aclnnArgMax,
    )
    .unwrap();
    assert_eq!(
        from_i64(&s.download(ta.ptr, 16).unwrap()),
        vec![1, 0],
        "first maximum wins"
    );
    let tv = zeros(&s, D::ACL_FLOAT, &[2, 2]);
    let ti = zeros(&s, D::ACL_INT64, &[2, 2]);
    // SAFETY: live descriptors.
    s.run_op(
        "topk",
        |w, e| unsafe {
            (ops.aclnnTopkGetWorkspaceSize)(
                tx.tensor, 2, -1, true, true, tv.tensor, ti.tensor, w, e,
            )
        },
        ops.aclnnTopk,
    )
    .unwrap();
    assert_eq!(
        from_f32(&s.download(tv.ptr, 16).unwrap()),
        vec![2.0, 2.0, 3.0, 1.5]
    );
    assert_eq!(from_i64(&s.download(ti.ptr, 32).unwrap()), vec![1, 2, 0, 3]);
    let tsm = zeros(&s, D::ACL_FLOAT, &[2, 4]);
    // SAFETY: live descriptors.
    s.run_op(
        "softmax",
        |w, e| unsafe { (ops.aclnnSoftmaxGetWorkspaceSize)(tx.tensor, 1, tsm.tensor, w, e) },
        ops.aclnnSoftmax,
    )
    .unwrap();
    let got = from_f32(&s.download(tsm.ptr, 32).unwrap());
    for r in 0..2 {
        let row = &x[r * 4..r * 4 + 4];
        let z: f32 = row.iter().map(|v| v.exp()).sum();
        close(
            &got[r * 4..r * 4 + 4],
            &row.iter().map(|v| v.exp() / z).collect::<Vec<_>>(),
            1e-5,
        );
    }
    done(s, vec![tx, ta, tv, ti, tsm]);
}

#[test]
fn executors_run_once_unless_repeatable_and_leaks_are_counted() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let nn = s.cann.nnop.clone();
    let x = rnd(4, 15);
    let tx = bf(&s, &[4], &x);
    let to = zeros(&s, D::ACL_BF16, &[4]);
    let (mut ws, mut ex) = (0, std::ptr::null_mut());
    // SAFETY: live descriptors; the executor is used as the API allows, then misused.
    unsafe {
        assert_eq!(
            (ops.aclnnSoftmaxGetWorkspaceSize)(tx.tensor, 0, to.tensor, &mut ws, &mut ex),
            0
        );
        assert_eq!((ops.aclnnSoftmax)(std::ptr::null_mut(), 0, ex, s.stream), 0);
        // Run twice without being repeatable: rejected.
        assert_ne!((ops.aclnnSoftmax)(std::ptr::null_mut(), 0, ex, s.stream), 0);
        assert_eq!(
            (ops.aclnnSoftmaxGetWorkspaceSize)(tx.tensor, 0, to.tensor, &mut ws, &mut ex),
            0
        );
        assert_eq!((nn.aclSetAclOpExecutorRepeatable.unwrap())(ex), 0);
        for _ in 0..3 {
            assert_eq!((ops.aclnnSoftmax)(std::ptr::null_mut(), 0, ex, s.stream), 0);
        }
        assert_eq!((nn.aclDestroyAclOpExecutor.unwrap())(ex), 0);
        // An executor from phase 1 that is never run is a leak.
        assert_eq!(
            (ops.aclnnSoftmaxGetWorkspaceSize)(tx.tensor, 0, to.tensor, &mut ws, &mut ex),
            0
        );
    }
    s.sync().unwrap();
    for t in [tx, to] {
        s.release(t).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!(st.live_executors, 1);
    assert_eq!(st.ops_executed, 4);
    assert_eq!(st.bad_handles, 1);
}

/// Sums of `x` (row-major `dims`) over the axes flagged in `red`, in f64, keeping them.
fn reduce_sum_ref(x: &[f32], dims: &[usize], red: &[bool]) -> Vec<f64> {
    let od: Vec<usize> = dims
        .iter()
        .zip(red)
        .map(|(&n, &r)| if r { 1 } else { n })
        .collect();
    let mut out = vec![0f64; od.iter().product()];
    for (i, &v) in x.iter().enumerate() {
        let (mut rem, mut at, mut stride) = (i, 0, 1);
        for d in (0..dims.len()).rev() {
            let c = rem % dims[d];
            rem /= dims[d];
            if !red[d] {
                at += c * stride;
            }
            stride *= od[d];
        }
        out[at] += v as f64;
    }
    out
}

#[test]
fn reduce_sum_over_axes_in_the_requested_dtype() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (ws, run) = (
        ops.aclnnReduceSumGetWorkspaceSize.unwrap(),
        ops.aclnnReduceSum.unwrap(),
    );
    // SAFETY: `v` is valid for its length; nnopbase copies it.
    let int_array =
        |v: &[i64]| unsafe { (s.cann.nnop.aclCreateIntArray)(v.as_ptr(), v.len() as u64) };
    let x: Vec<f32> = rnd(3 * 4 * 8, 41)
        .iter()
        .map(|v| bf16_round(v * 3.0))
        .collect();
    let tx = bf(&s, &[3, 4, 8], &x);
    // Last axis, BF16 in, FLOAT out (the sum is not rounded to BF16).
    let last = int_array(&[-1]);
    let tf = zeros(&s, D::ACL_FLOAT, &[3, 4]);
    // SAFETY: live descriptors.
    s.run_op(
        "reduce_sum f32",
        |w, e| unsafe { ws(tx.tensor, last, false, D::ACL_FLOAT, tf.tensor, w, e) },
        run,
    )
    .unwrap();
    let want = reduce_sum_ref(&x, &[3, 4, 8], &[false, false, true]);
    let got = from_f32(&s.download(tf.ptr, tf.bytes).unwrap());
    close(
        &got,
        &want.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        1e-6,
    );
    // Two axes kept as size 1, BF16 out: rounded once.
    let two = int_array(&[0, 2]);
    let tb = zeros(&s, D::ACL_BF16, &[1, 4, 1]);
    // SAFETY: live descriptors.
    s.run_op(
        "reduce_sum bf16",
        |w, e| unsafe { ws(tx.tensor, two, true, D::ACL_BF16, tb.tensor, w, e) },
        run,
    )
    .unwrap();
    let want = reduce_sum_ref(&x, &[3, 4, 8], &[true, false, true]);
    let want: Vec<f32> = want.iter().map(|&v| bf16_round(v as f32)).collect();
    assert_eq!(get_bf(&s, &tb), want);
    // A transposed view of x: [8, 4, 3] read through strides, summed over its first axis.
    let tt = s
        .describe(tx.ptr, D::ACL_BF16, &[8, 4, 3], Some(&[1, 8, 32]), 0)
        .unwrap();
    let first = int_array(&[0]);
    let tt_out = zeros(&s, D::ACL_FLOAT, &[4, 3]);
    // SAFETY: live descriptors.
    s.run_op(
        "reduce_sum strided",
        |w, e| unsafe { ws(tt, first, false, D::ACL_FLOAT, tt_out.tensor, w, e) },
        run,
    )
    .unwrap();
    let got = from_f32(&s.download(tt_out.ptr, tt_out.bytes).unwrap());
    let want = reduce_sum_ref(&x, &[3, 4, 8], &[false, false, true]);
    // Out [4, 3] is the transpose of the [3, 4] last-axis sums.
    for (j, i) in (0..4).flat_map(|j| (0..3).map(move |i| (j, i))) {
        assert!((got[j * 3 + i] as f64 - want[i * 4 + j]).abs() < 1e-5);
    }
    // Rejections (161002): dtype not out's, a repeated axis, an axis out of range, a wrong
    // out shape, an integer input (not emulated); null dims (161001).
    let rep = int_array(&[2, -1]);
    let far = int_array(&[3]);
    let ti = zeros(&s, D::ACL_INT32, &[3, 4, 8]);
    let cases: [(
        &str,
        *mut aclTensor,
        *const aclIntArray,
        D,
        *mut aclTensor,
        i32,
    ); 6] = [
        ("dtype", tx.tensor, last, D::ACL_BF16, tf.tensor, 161002),
        ("repeat", tx.tensor, rep, D::ACL_FLOAT, tf.tensor, 161002),
        ("range", tx.tensor, far, D::ACL_FLOAT, tf.tensor, 161002),
        ("shape", tx.tensor, two, D::ACL_FLOAT, tf.tensor, 161002),
        ("int", ti.tensor, last, D::ACL_FLOAT, tf.tensor, 161002),
        (
            "null",
            tx.tensor,
            std::ptr::null(),
            D::ACL_FLOAT,
            tf.tensor,
            161001,
        ),
    ];
    for (what, a, d, dt, o, want) in cases {
        let (mut w, mut e) = (0u64, std::ptr::null_mut());
        // SAFETY: live descriptors (or null where the case says so).
        let st = unsafe { ws(a, d, false, dt, o, &mut w, &mut e) };
        assert_eq!(st, want, "{what}");
    }
    // SAFETY: live handles made here.
    unsafe {
        (s.cann.nnop.aclDestroyTensor)(tt);
        for a in [last, two, first, rep, far] {
            (s.cann.nnop.aclDestroyIntArray)(a);
        }
    }
    done(s, vec![tx, tf, tb, tt_out, ti]);
}
