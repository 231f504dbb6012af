//! The W8A8 operators (aclnnDynamicQuant, aclnnAscendQuantV3, aclnnQuantMatmulV4) against
//! naive references written from the ops-nn docs' formulas, and the docs' rejections.

use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;
use cann_emu::harness::*;
use std::ptr::{null, null_mut};

fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16_round(((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
        })
        .collect()
}

fn zeros(s: &Session, dt: D, dims: &[i64]) -> DevTensor {
    let n: i64 = dims.iter().product();
    s.upload(
        dt,
        dims,
        &vec![0u8; n as usize * dt.element_size().unwrap()],
    )
    .unwrap()
}

fn finish(s: Session, ts: Vec<DevTensor>) {
    for t in ts {
        s.release(t).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations()), (0, 0), "{st:?}");
}

fn i8s(b: &[u8]) -> Vec<i8> {
    b.iter().map(|&v| v as i8).collect()
}

#[test]
fn dynamic_quant_is_per_token_symmetric_int8() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (m, h) = (3usize, 40usize);
    let mut x = rnd(m * h, 3);
    x[h..2 * h].iter_mut().for_each(|v| *v = 0.0); // an all-zero row
    let tx = s
        .upload(D::ACL_BF16, &[m as i64, h as i64], &bf16_bytes(&x))
        .unwrap();
    let ty = zeros(&s, D::ACL_INT8, &[m as i64, h as i64]);
    let ts = zeros(&s, D::ACL_FLOAT, &[m as i64]);
    let phase1 = ops.aclnnDynamicQuantGetWorkspaceSize.unwrap();
    // SAFETY: live descriptors.
    s.run_op(
        "dq",
        |ws, ex| unsafe { phase1(tx.tensor, null(), ty.tensor, ts.tensor, ws, ex) },
        ops.aclnnDynamicQuant.unwrap(),
    )
    .unwrap();
    let q = i8s(&s.download(ty.ptr, ty.bytes).unwrap());
    let sc = from_f32(&s.download(ts.ptr, ts.bytes).unwrap());
    for r in 0..m {
        let row = &x[r * h..(r + 1) * h];
        // Docs: scaleOut = row_max(abs(x)) / 127; yOut = round(x / scaleOut).
        let want_s = row.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
        assert_eq!(sc[r], want_s);
        for (j, &v) in row.iter().enumerate() {
            let want = if want_s == 0.0 {
                0
            } else {
                (v / want_s).round_ties_even() as i8
            };
            assert_eq!(q[r * h + j], want, "row {r} col {j}");
        }
    }
    // Rejections from the docs: F32 x; a scale of the wrong shape; a non-INT8 y (INT4/INT32
    // not emulated).
    let tx32 = s
        .upload(D::ACL_FLOAT, &[m as i64, h as i64], &f32_bytes(&x))
        .unwrap();
    let tsbad = zeros(&s, D::ACL_FLOAT, &[m as i64, 1]);
    let ty32 = zeros(&s, D::ACL_INT32, &[m as i64, h as i64 / 8]);
    for (a, y, sc) in [(&tx32, &ty, &ts), (&tx, &ty, &tsbad), (&tx, &ty32, &ts)] {
        let (mut ws, mut ex) = (0, null_mut());
        // SAFETY: live descriptors.
        let st = unsafe { phase1(a.tensor, null(), y.tensor, sc.tensor, &mut ws, &mut ex) };
        assert_eq!(st, ACLNN_ERR_PARAM_INVALID);
    }
    finish(s, vec![tx, ty, ts, tx32, tsbad, ty32]);
}

#[test]
fn ascend_quant_v3_rounds_scales_offsets_and_saturates() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (m, h) = (2usize, 16usize);
    let x: Vec<f32> = rnd(m * h, 5).iter().map(|v| v * 40.0).collect();
    let tx = s
        .upload(D::ACL_FLOAT, &[m as i64, h as i64], &f32_bytes(&x))
        .unwrap();
    let (scale, offset) = (3.0f32, -5.0f32);
    let tsc = s.upload(D::ACL_FLOAT, &[1], &f32_bytes(&[scale])).unwrap();
    let toff = s.upload(D::ACL_FLOAT, &[1], &f32_bytes(&[offset])).unwrap();
    let ty = zeros(&s, D::ACL_INT8, &[m as i64, h as i64]);
    let phase1 = ops.aclnnAscendQuantV3GetWorkspaceSize.unwrap();
    let mode = c"round";
    // SAFETY: live descriptors.
    s.run_op(
        "aq",
        |ws, ex| unsafe {
            phase1(
                tx.tensor,
                tsc.tensor,
                toff.tensor,
                false,
                mode.as_ptr(),
                2,
                -1,
                ty.tensor,
                ws,
                ex,
            )
        },
        ops.aclnnAscendQuantV3.unwrap(),
    )
    .unwrap();
    let q = i8s(&s.download(ty.ptr, ty.bytes).unwrap());
    let mut saturated = 0;
    for (i, &v) in x.iter().enumerate() {
        // Docs: y = round(x * scale + offset), into INT8.
        let r = (v * scale + offset).round_ties_even();
        saturated += usize::from(!(-128.0..=127.0).contains(&r));
        assert_eq!(q[i], r.clamp(-128.0, 127.0) as i8, "element {i}");
    }
    assert!(saturated > 0, "the test data should reach INT8's limits");
    // Rejections: roundMode "hybrid" (950 only), dstType INT4 (not emulated), axis 0 of a
    // 3-D x (A2: one of the last two dims only), a scale not of x's dtype.
    let hybrid = c"hybrid";
    let t3 = s
        .upload(D::ACL_FLOAT, &[1, m as i64, h as i64], &f32_bytes(&x))
        .unwrap();
    let ty3 = zeros(&s, D::ACL_INT8, &[1, m as i64, h as i64]);
    let tscb = s.upload(D::ACL_BF16, &[1], &bf16_bytes(&[scale])).unwrap();
    for (a, sc, y, md, dst, axis) in [
        (&tx, &tsc, &ty, hybrid, 2, -1),
        (&tx, &tsc, &ty, mode, 29, -1),
        (&t3, &tsc, &ty3, mode, 2, 0),
        (&tx, &tscb, &ty, mode, 2, -1),
    ] {
        let (mut ws, mut ex) = (0, null_mut());
        // SAFETY: live descriptors.
        let st = unsafe {
            phase1(
                a.tensor,
                sc.tensor,
                null(),
                false,
                md.as_ptr(),
                dst,
                axis,
                y.tensor,
                &mut ws,
                &mut ex,
            )
        };
        assert_eq!(st, ACLNN_ERR_PARAM_INVALID, "{md:?} {dst} {axis}");
    }
    finish(s, vec![tx, tsc, toff, ty, t3, ty3, tscb]);
}

#[test]
fn quant_matmul_v4_int8_with_int32_bias_or_per_token_scale() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (m, k, n) = (3usize, 70usize, 5usize);
    let a: Vec<i8> = (0..m * k)
        .map(|i| ((i * 53 + 7) % 256) as u8 as i8)
        .collect();
    let w: Vec<i8> = (0..n * k)
        .map(|i| ((i * 29 + 3) % 256) as u8 as i8)
        .collect();
    let scale: Vec<f32> = (0..n).map(|i| 1e-3 * (i as f32 + 1.0)).collect();
    let pert: Vec<f32> = (0..m).map(|i| 0.5 + i as f32).collect();
    let bias: Vec<i32> = (0..n).map(|i| i as i32 * 1000 - 2000).collect();
    let up8 = |v: &[i8], dims: &[i64]| {
        s.upload(
            D::ACL_INT8,
            dims,
            &v.iter().map(|&x| x as u8).collect::<Vec<_>>(),
        )
        .unwrap()
    };
    let ta = up8(&a, &[m as i64, k as i64]);
    let tw = up8(&w, &[n as i64, k as i64]);
    let tsc = s
        .upload(D::ACL_FLOAT, &[n as i64], &f32_bytes(&scale))
        .unwrap();
    let tp = s
        .upload(D::ACL_FLOAT, &[m as i64], &f32_bytes(&pert))
        .unwrap();
    let tb = s
        .upload(D::ACL_INT32, &[n as i64], &i32_bytes(&bias))
        .unwrap();
    let ty = zeros(&s, D::ACL_BF16, &[m as i64, n as i64]);
    let phase1 = ops.aclnnQuantMatmulV4GetWorkspaceSize.unwrap();
    let dot = |r: usize, c: usize| -> i64 {
        (0..k)
            .map(|j| a[r * k + j] as i64 * w[c * k + j] as i64)
            .sum()
    };
    // Static: (x1 @ x2 + bias) * scale; dynamic: x1 @ x2 * scale * pertoken.
    for (pertoken, b) in [(None, Some(&tb)), (Some(&tp), None)] {
        let (pp, bp) = (
            pertoken.map_or(null(), |t: &DevTensor| t.tensor as *const _),
            b.map_or(null(), |t: &DevTensor| t.tensor as *const _),
        );
        // SAFETY: live descriptors.
        s.run_op(
            "qmm",
            |ws, ex| unsafe {
                phase1(
                    ta.tensor,
                    tw.tensor,
                    tsc.tensor,
                    null(),
                    pp,
                    bp,
                    false,
                    true,
                    ty.tensor,
                    ws,
                    ex,
                )
            },
            ops.aclnnQuantMatmulV4.unwrap(),
        )
        .unwrap();
        let y = from_bf16(&s.download(ty.ptr, ty.bytes).unwrap());
        for r in 0..m {
            for c in 0..n {
                let acc = dot(r, c) + b.map_or(0, |_| bias[c] as i64);
                let want = bf16_round(acc as f32 * scale[c] * pertoken.map_or(1.0, |_| pert[r]));
                assert_eq!(y[r * n + c], want, "row {r} col {c}");
            }
        }
    }
    // Rejections: an F32 out (no documented combination), an offset without INT8 out, a
    // transposed x1, k that disagrees, an FP16 out without a per-token scale.
    let tyf = zeros(&s, D::ACL_FLOAT, &[m as i64, n as i64]);
    let tyh = zeros(&s, D::ACL_FLOAT16, &[m as i64, n as i64]);
    let tw_bad = up8(&w[..n * (k - 1)], &[n as i64, k as i64 - 1]);
    let cases: [(
        &DevTensor,
        *const aclTensor,
        *const aclTensor,
        bool,
        &DevTensor,
    ); 5] = [
        (&tw, null(), null(), false, &tyf),
        (&tw, tsc.tensor, null(), false, &ty),
        (&tw, null(), null(), true, &ty),
        (&tw_bad, null(), null(), false, &ty),
        (&tw, null(), null(), false, &tyh),
    ];
    for (i, (x2, off, pt, t1, out)) in cases.into_iter().enumerate() {
        let (mut ws, mut ex) = (0, null_mut());
        // SAFETY: live descriptors.
        let st = unsafe {
            phase1(
                ta.tensor,
                x2.tensor,
                tsc.tensor,
                off,
                pt,
                null(),
                t1,
                true,
                out.tensor,
                &mut ws,
                &mut ex,
            )
        };
        assert_eq!(st, ACLNN_ERR_PARAM_INVALID, "case {i}");
    }
    finish(s, vec![ta, tw, tsc, tp, tb, ty, tyf, tyh, tw_bad]);
}

/// aclnnGroupedMatmulV4's INT8 mode (A8W8), against the doc's formula
/// `y_i = (x_i × weight_i + bias_i) · scale_i · per_token_scale_i`: per-token dynamic with a
/// BF16 scale and BF16 out (what vllm-ascend's W8A8_DYNAMIC experts call), static with an
/// INT32 bias, the FLOAT32-scale / FLOAT16-out row, an empty group and counts (groupListType
/// 1), the weight as stored `[E, N, K]` read transposed; then the doc's rejections.
#[test]
fn grouped_matmul_int8_dequantizes_per_channel_and_per_token() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let nn = s.cann.nnop.clone();
    let (e, m, k, n) = (3usize, 7usize, 40usize, 12usize);
    let (ei, mi, ki, ni) = (e as i64, m as i64, k as i64, n as i64);
    let x: Vec<i8> = (0..m * k)
        .map(|i| ((i * 53 + 7) % 255) as u8 as i8)
        .collect();
    // Stored [E, N, K], as checkpoints hold experts.
    let w: Vec<i8> = (0..e * n * k)
        .map(|i| ((i * 29 + 3) % 251) as u8 as i8)
        .collect();
    let scale: Vec<f32> = (0..e * n)
        .map(|i| bf16_round(1e-4 * (i as f32 + 1.0)))
        .collect();
    let pert: Vec<f32> = (0..m).map(|i| 0.25 + i as f32 / 3.0).collect();
    let bias: Vec<i32> = (0..e * n).map(|i| i as i32 * 300 - 4000).collect();
    let up8 = |v: &[i8], dims: &[i64]| {
        let b: Vec<u8> = v.iter().map(|&x| x as u8).collect();
        s.upload(D::ACL_INT8, dims, &b).unwrap()
    };
    let tx = up8(&x, &[mi, ki]);
    let tw = up8(&w, &[ei, ni, ki]);
    let tsc = s
        .upload(D::ACL_BF16, &[ei, ni], &bf16_bytes(&scale))
        .unwrap();
    let tsc32 = s
        .upload(D::ACL_FLOAT, &[ei, ni], &f32_bytes(&scale))
        .unwrap();
    let tp = s.upload(D::ACL_FLOAT, &[mi], &f32_bytes(&pert)).unwrap();
    let tb = s
        .upload(D::ACL_INT32, &[ei, ni], &i32_bytes(&bias))
        .unwrap();
    let ty = zeros(&s, D::ACL_BF16, &[mi, ni]);
    let tyh = zeros(&s, D::ACL_FLOAT16, &[mi, ni]);
    let tyf = zeros(&s, D::ACL_FLOAT, &[mi, ni]);
    // Rows 0-1 expert 0, none for expert 1, rows 2-6 expert 2.
    let tends = s
        .upload(D::ACL_INT64, &[ei], &i64_bytes(&[2, 2, 7]))
        .unwrap();
    let tcounts = s
        .upload(D::ACL_INT64, &[ei], &i64_bytes(&[2, 0, 5]))
        .unwrap();
    let tshort = s
        .upload(D::ACL_INT64, &[ei], &i64_bytes(&[2, 2, 6]))
        .unwrap();
    // The weight as the op reads it, [E, K, N]: a transposed view of the stored [E, N, K].
    let wt_strides = [ni * ki, 1, ki];
    struct Call<'a> {
        w: (D, Option<&'a [i64]>),
        scale: Option<(&'a DevTensor, D, &'a [i64])>,
        pert: Option<(&'a DevTensor, D)>,
        bias: Option<(&'a DevTensor, D)>,
        offset: bool,
        groups: &'a DevTensor,
        list_type: i64,
        out: (&'a DevTensor, D),
    }
    let ok = Call {
        w: (D::ACL_INT8, Some(&wt_strides)),
        scale: Some((&tsc, D::ACL_BF16, &[ei, ni])),
        pert: Some((&tp, D::ACL_FLOAT)),
        bias: None,
        offset: false,
        groups: &tends,
        list_type: 0,
        out: (&ty, D::ACL_BF16),
    };
    let run = |c: &Call| -> Result<Vec<u8>, String> {
        // SAFETY: descriptors over live device tensors; the lists own (and destroy) them.
        unsafe {
            let mk = |t: &DevTensor, dt: D, dims: &[i64], st: Option<&[i64]>| {
                s.describe(t.ptr, dt, dims, st, 0).unwrap() as *const aclTensor
            };
            let list = |t: *const aclTensor| (nn.aclCreateTensorList)([t].as_ptr(), 1);
            let xl = list(mk(&tx, D::ACL_INT8, &[mi, ki], None));
            let wl = list(mk(&tw, c.w.0, &[ei, ki, ni], c.w.1));
            let yl = list(mk(c.out.0, c.out.1, &[mi, ni], None));
            let sl = c
                .scale
                .map_or(null_mut(), |(t, dt, d)| list(mk(t, dt, d, None)));
            let pl = c
                .pert
                .map_or(null_mut(), |(t, dt)| list(mk(t, dt, &[mi], None)));
            let bl = c
                .bias
                .map_or(null_mut(), |(t, dt)| list(mk(t, dt, &[ei, ni], None)));
            let ol = if c.offset {
                list(mk(&tsc32, D::ACL_FLOAT, &[ei, ni], None))
            } else {
                null_mut()
            };
            let r = s.run_op(
                "gmm int8",
                |ws, ex| {
                    (ops.aclnnGroupedMatmulV4GetWorkspaceSize.unwrap())(
                        xl,
                        wl,
                        bl,
                        sl,
                        ol,
                        null(),
                        null(),
                        pl,
                        c.groups.tensor,
                        null(),
                        null(),
                        null(),
                        3,
                        0,
                        c.list_type,
                        0,
                        yl,
                        null_mut(),
                        null_mut(),
                        ws,
                        ex,
                    )
                },
                ops.aclnnGroupedMatmulV4.unwrap(),
            );
            for l in [xl, wl, yl, sl, pl, bl, ol] {
                if !l.is_null() {
                    (nn.aclDestroyTensorList)(l);
                }
            }
            r.and_then(|_| s.sync())?;
            s.download(c.out.0.ptr, c.out.0.bytes)
        }
    };
    let expert = |r: usize| if r < 2 { 0 } else { 2 };
    let want = |r: usize, c: usize, with_bias: bool, pertoken: bool| -> f32 {
        let ex = expert(r);
        let acc: i64 = (0..k)
            .map(|j| x[r * k + j] as i64 * w[(ex * n + c) * k + j] as i64)
            .sum::<i64>()
            + if with_bias {
                bias[ex * n + c] as i64
            } else {
                0
            };
        acc as f32 * scale[ex * n + c] * if pertoken { pert[r] } else { 1.0 }
    };
    let check_bf16 = |c: &Call, with_bias: bool, pertoken: bool| {
        let y = from_bf16(&run(c).unwrap());
        for (i, &v) in y.iter().enumerate() {
            let w = bf16_round(want(i / n, i % n, with_bias, pertoken));
            assert_eq!(v, w, "[{}, {}]", i / n, i % n);
        }
    };
    // Dynamic (per-token), cumulative ends and counts alike.
    for (groups, list_type) in [(&tends, 0), (&tcounts, 1)] {
        let c = Call {
            groups,
            list_type,
            ..ok
        };
        check_bf16(&c, false, true);
    }
    // Static: the INT32 bias before the scale, no per-token scale.
    let c = Call {
        bias: Some((&tb, D::ACL_INT32)),
        pert: None,
        ..ok
    };
    check_bf16(&c, true, false);
    // FLOAT32 scale with a FLOAT16 out (the other A2 row).
    let yh = run(&Call {
        scale: Some((&tsc32, D::ACL_FLOAT, &[ei, ni])),
        out: (&tyh, D::ACL_FLOAT16),
        ..ok
    })
    .unwrap();
    for (i, c) in yh.chunks_exact(2).enumerate() {
        let got = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
        let w = half::f16::from_f32(want(i / n, i % n, false, true)).to_f32();
        assert_eq!(got, w, "f16 [{i}]");
    }
    // The doc's rejections (161002 in phase 1).
    let rejected: [(&str, Call); 8] = [
        (
            "F32 scale with a BF16 out",
            Call {
                scale: Some((&tsc32, D::ACL_FLOAT, &[ei, ni])),
                ..ok
            },
        ),
        (
            "per-tensor scale [E, 1]",
            Call {
                scale: Some((&tsc, D::ACL_BF16, &[ei, 1])),
                ..ok
            },
        ),
        ("no scale (INT32 out row)", Call { scale: None, ..ok }),
        (
            "F16 per-token scale",
            Call {
                pert: Some((&tsc, D::ACL_FLOAT16)),
                ..ok
            },
        ),
        (
            "F32 bias",
            Call {
                bias: Some((&tsc32, D::ACL_FLOAT)),
                ..ok
            },
        ),
        ("an offset", Call { offset: true, ..ok }),
        (
            "INT4 weight",
            Call {
                w: (D::ACL_INT4, None),
                ..ok
            },
        ),
        (
            "F32 out",
            Call {
                out: (&tyf, D::ACL_FLOAT),
                ..ok
            },
        ),
    ];
    for (what, c) in &rejected {
        let err = run(c).expect_err(what);
        assert!(err.contains("phase 1: 161002"), "{what}: {err}");
    }
    // A group list that leaves rows out fails when the op runs.
    let err = run(&Call {
        groups: &tshort,
        ..ok
    })
    .expect_err("short group list");
    assert!(!err.contains("phase 1"), "{err}");
    finish(
        s,
        vec![
            tx, tw, tsc, tsc32, tp, tb, ty, tyh, tyf, tends, tcounts, tshort,
        ],
    );
}
