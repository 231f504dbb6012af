//! MoE routing operators and the weight-quantized matmul against naive references
//! written from the CANN documentation's formulas.

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
            bf16_round(((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
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

#[test]
fn gating_topk_softmax() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (n, e, k) = (3usize, 6usize, 2usize);
    let x = rnd(n * e, 1);
    let tx = s
        .upload(D::ACL_FLOAT, &[n as i64, e as i64], &f32_bytes(&x))
        .unwrap();
    let ty = zeros(&s, D::ACL_FLOAT, &[n as i64, k as i64]);
    let te = zeros(&s, D::ACL_INT32, &[n as i64, k as i64]);
    let tr = zeros(&s, D::ACL_INT32, &[n as i64, k as i64]);
    // SAFETY: live descriptors.
    s.run_op(
        "gating",
        |w, ex| unsafe {
            (ops.aclnnMoeGatingTopKSoftmaxGetWorkspaceSize.unwrap())(
                tx.tensor,
                null(),
                k as i64,
                ty.tensor,
                te.tensor,
                tr.tensor,
                w,
                ex,
            )
        },
        ops.aclnnMoeGatingTopKSoftmax.unwrap(),
    )
    .unwrap();
    let y = from_f32(&s.download(ty.ptr, ty.bytes).unwrap());
    let ei = from_i32(&s.download(te.ptr, te.bytes).unwrap());
    let ri = from_i32(&s.download(tr.ptr, tr.bytes).unwrap());
    for i in 0..n {
        let row = &x[i * e..(i + 1) * e];
        let z: f32 = row.iter().map(|v| v.exp()).sum();
        let mut idx: Vec<usize> = (0..e).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        for j in 0..k {
            assert_eq!(ei[i * k + j], idx[j] as i32);
            close(&[y[i * k + j]], &[row[idx[j]].exp() / z], 1e-5);
            // rowIdx lists the expanded positions column-major: j * N + i.
            assert_eq!(ri[i * k + j], (j * n + i) as i32);
        }
    }
    // k larger than the expert count is rejected (a tiling error, per the docs).
    let (mut ws, mut ex) = (0, null_mut());
    // SAFETY: live descriptors.
    let st = unsafe {
        (ops.aclnnMoeGatingTopKSoftmaxGetWorkspaceSize.unwrap())(
            tx.tensor,
            null(),
            7,
            ty.tensor,
            te.tensor,
            tr.tensor,
            &mut ws,
            &mut ex,
        )
    };
    assert_eq!(st, ACLNN_ERR_INNER_TILING_ERROR);
    finish(s, vec![tx, ty, te, tr]);
}

/// Init routing (dropless), a grouped matmul per expert, finalize (mode 2): the whole
/// MoE block, against out[i] = sum_k w[i,k] * x[i] @ W[e(i,k)].
#[test]
fn init_routing_grouped_matmul_finalize_roundtrip() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let nn = s.cann.nnop.clone();
    let (n, k, h, f, e) = (4usize, 2usize, 8usize, 6usize, 3usize);
    let x = rnd(n * h, 2);
    let experts = [2i32, 0, 1, 2, 0, 1, 2, 1];
    let scales = rnd(n * k, 3);
    let w = rnd(e * h * f, 4);
    let tx = s
        .upload(D::ACL_BF16, &[n as i64, h as i64], &bf16_bytes(&x))
        .unwrap();
    let tidx = s
        .upload(D::ACL_INT32, &[n as i64, k as i64], &i32_bytes(&experts))
        .unwrap();
    let txe = zeros(&s, D::ACL_BF16, &[(n * k) as i64, h as i64]);
    let trow = zeros(&s, D::ACL_INT32, &[(n * k) as i64]);
    let tcnt = zeros(&s, D::ACL_INT64, &[e as i64]);
    // SAFETY: live descriptors.
    s.run_op(
        "init",
        |ws, ex| unsafe {
            (ops.aclnnMoeInitRoutingV2GetWorkspaceSize.unwrap())(
                tx.tensor,
                tidx.tensor,
                0,
                0,
                e as i64,
                0,
                1,
                false,
                txe.tensor,
                trow.tensor,
                tcnt.tensor,
                null(),
                ws,
                ex,
            )
        },
        ops.aclnnMoeInitRoutingV2.unwrap(),
    )
    .unwrap();
    let rows = from_i32(&s.download(trow.ptr, trow.bytes).unwrap());
    let cnt = from_i64(&s.download(tcnt.ptr, tcnt.bytes).unwrap());
    // Reference: stable sort of the flattened expert ids.
    let mut order: Vec<usize> = (0..n * k).collect();
    order.sort_by_key(|&j| (experts[j], j));
    for (i, &j) in order.iter().enumerate() {
        assert_eq!(rows[j], i as i32);
    }
    assert_eq!(cnt, vec![2, 5, 8]);
    let xe = from_bf16(&s.download(txe.ptr, txe.bytes).unwrap());
    for (i, &j) in order.iter().enumerate() {
        assert_eq!(&xe[i * h..(i + 1) * h], &x[(j / k) * h..(j / k + 1) * h]);
    }
    // Grouped matmul over the sorted rows: one [E, H, F] weight, cumulative group list.
    let tw = s
        .upload(
            D::ACL_BF16,
            &[e as i64, h as i64, f as i64],
            &bf16_bytes(&w),
        )
        .unwrap();
    let ty = zeros(&s, D::ACL_BF16, &[(n * k) as i64, f as i64]);
    // SAFETY: descriptors for the lists are owned (and destroyed) by the lists.
    unsafe {
        let mk = |t: &DevTensor| {
            s.describe(t.ptr, D::ACL_BF16, &t.dims, None, 0).unwrap() as *const aclTensor
        };
        let xl = (nn.aclCreateTensorList)([mk(&txe)].as_ptr(), 1);
        let wl = (nn.aclCreateTensorList)([mk(&tw)].as_ptr(), 1);
        let yl = (nn.aclCreateTensorList)([mk(&ty)].as_ptr(), 1);
        s.run_op(
            "gmm",
            |ws, ex| {
                (ops.aclnnGroupedMatmulV4GetWorkspaceSize.unwrap())(
                    xl,
                    wl,
                    null(),
                    null(),
                    null(),
                    null(),
                    null(),
                    null(),
                    tcnt.tensor,
                    null(),
                    null(),
                    null(),
                    3,
                    0,
                    0,
                    0,
                    yl,
                    null_mut(),
                    null_mut(),
                    ws,
                    ex,
                )
            },
            ops.aclnnGroupedMatmulV4.unwrap(),
        )
        .unwrap();
        for l in [xl, wl, yl] {
            (nn.aclDestroyTensorList)(l);
        }
    }
    let y = from_bf16(&s.download(ty.ptr, ty.bytes).unwrap());
    let mut want_y = vec![0f32; n * k * f];
    for (i, &j) in order.iter().enumerate() {
        let ex = experts[j] as usize;
        for c in 0..f {
            let acc: f32 = (0..h)
                .map(|p| xe[i * h + p] * w[ex * h * f + p * f + c])
                .sum();
            want_y[i * f + c] = bf16_round(acc);
        }
    }
    close(&y, &want_y, 1e-2);
    // Finalize, dropPadMode 2 (row-major expandedRowIdx, as MoeInitRoutingV2 writes it).
    let tsc = s
        .upload(D::ACL_BF16, &[n as i64, k as i64], &bf16_bytes(&scales))
        .unwrap();
    let tout = zeros(&s, D::ACL_BF16, &[n as i64, f as i64]);
    // SAFETY: live descriptors.
    s.run_op(
        "finalize",
        |ws, ex| unsafe {
            (ops.aclnnMoeFinalizeRoutingV2GetWorkspaceSize.unwrap())(
                ty.tensor,
                trow.tensor,
                null(),
                null(),
                null(),
                tsc.tensor,
                tidx.tensor,
                2,
                tout.tensor,
                ws,
                ex,
            )
        },
        ops.aclnnMoeFinalizeRoutingV2.unwrap(),
    )
    .unwrap();
    let out = from_bf16(&s.download(tout.ptr, tout.bytes).unwrap());
    let mut want = vec![0f32; n * f];
    for i in 0..n {
        for j in 0..k {
            let r = rows[i * k + j] as usize;
            for c in 0..f {
                want[i * f + c] += scales[i * k + j] * y[r * f + c];
            }
        }
    }
    close(
        &out,
        &want.iter().map(|v| bf16_round(*v)).collect::<Vec<_>>(),
        1e-2,
    );
    // The drop/pad modes are refused rather than silently computed.
    let (mut ws, mut ex) = (0, null_mut());
    // SAFETY: live descriptors.
    let st = unsafe {
        (ops.aclnnMoeInitRoutingV2GetWorkspaceSize.unwrap())(
            tx.tensor,
            tidx.tensor,
            0,
            2,
            e as i64,
            1,
            0,
            false,
            txe.tensor,
            trow.tensor,
            null(),
            null(),
            &mut ws,
            &mut ex,
        )
    };
    assert_ne!(st, 0);
    finish(s, vec![tx, tidx, txe, trow, tcnt, tw, ty, tsc, tout]);
}

#[test]
fn finalize_mode_0_reads_row_indices_column_major() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (n, k, h) = (2usize, 2usize, 3usize);
    let xe = rnd(n * k * h, 5);
    let rows = [3i32, 0, 2, 1];
    let sc = [0.5f32, 0.25, 1.0, -1.0];
    let x1 = rnd(n * h, 6);
    let txe = s
        .upload(D::ACL_FLOAT, &[(n * k) as i64, h as i64], &f32_bytes(&xe))
        .unwrap();
    let tr = s
        .upload(D::ACL_INT32, &[(n * k) as i64], &i32_bytes(&rows))
        .unwrap();
    let tsc = s
        .upload(D::ACL_FLOAT, &[n as i64, k as i64], &f32_bytes(&sc))
        .unwrap();
    let tx1 = s
        .upload(D::ACL_FLOAT, &[n as i64, h as i64], &f32_bytes(&x1))
        .unwrap();
    let to = zeros(&s, D::ACL_FLOAT, &[n as i64, h as i64]);
    // SAFETY: live descriptors.
    s.run_op(
        "finalize",
        |ws, ex| unsafe {
            (ops.aclnnMoeFinalizeRoutingV2GetWorkspaceSize.unwrap())(
                txe.tensor,
                tr.tensor,
                tx1.tensor,
                null(),
                null(),
                tsc.tensor,
                null(),
                0,
                to.tensor,
                ws,
                ex,
            )
        },
        ops.aclnnMoeFinalizeRoutingV2.unwrap(),
    )
    .unwrap();
    let out = from_f32(&s.download(to.ptr, to.bytes).unwrap());
    for i in 0..n {
        for c in 0..h {
            let mut v = x1[i * h + c];
            for j in 0..k {
                v += sc[i * k + j] * xe[rows[i + j * n] as usize * h + c];
            }
            close(&[out[i * h + c]], &[v], 1e-6);
        }
    }
    finish(s, vec![txe, tr, tsc, tx1, to]);
}

fn pack_int4(v: &[i8]) -> Vec<u8> {
    v.chunks(2)
        .map(|c| (c[0] as u8 & 0xF) | ((c[1] as u8 & 0xF) << 4))
        .collect()
}

#[test]
fn weight_quant_matmul_int8_per_channel_and_int4_per_group() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (m, k, n, g) = (2usize, 64usize, 8usize, 32usize);
    let x = rnd(m * k, 7);
    let tx = s
        .upload(D::ACL_BF16, &[m as i64, k as i64], &bf16_bytes(&x))
        .unwrap();
    let ty = zeros(&s, D::ACL_BF16, &[m as i64, n as i64]);
    let run = |w: &DevTensor, sc: &DevTensor, off: &DevTensor, group: i32| {
        // SAFETY: live descriptors.
        s.run_op(
            "wqbmm",
            |ws, ex| unsafe {
                (ops.aclnnWeightQuantBatchMatmulV2GetWorkspaceSize.unwrap())(
                    tx.tensor,
                    w.tensor,
                    sc.tensor,
                    off.tensor,
                    null(),
                    null(),
                    null(),
                    group,
                    ty.tensor,
                    ws,
                    ex,
                )
            },
            ops.aclnnWeightQuantBatchMatmulV2.unwrap(),
        )
        .unwrap();
        from_bf16(&s.download(ty.ptr, ty.bytes).unwrap())
    };
    let reference = |w: &[i8], sc: &[f32], off: &[f32], group: usize| -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut acc = 0f32;
                for p in 0..k {
                    let gi = p.checked_div(group).map_or(c, |q| q * n + c);
                    acc += x[r * k + p] * ((w[p * n + c] as f32 + off[gi]) * sc[gi]);
                }
                out[r * n + c] = bf16_round(acc);
            }
        }
        out
    };
    // INT8, per channel.
    let w8: Vec<i8> = (0..k * n).map(|i| ((i * 37) % 255) as i8).collect();
    let tw8 = s
        .upload(
            D::ACL_INT8,
            &[k as i64, n as i64],
            &w8.iter().map(|&v| v as u8).collect::<Vec<_>>(),
        )
        .unwrap();
    let (sc8, off8) = (
        rnd(n, 8)
            .iter()
            .map(|v| v * 0.01)
            .map(bf16_round)
            .collect::<Vec<_>>(),
        (0..n).map(|i| (i % 4) as f32 - 3.0).collect::<Vec<_>>(),
    );
    let tsc8 = s
        .upload(D::ACL_BF16, &[n as i64], &bf16_bytes(&sc8))
        .unwrap();
    let toff8 = s
        .upload(D::ACL_BF16, &[n as i64], &bf16_bytes(&off8))
        .unwrap();
    close(
        &run(&tw8, &tsc8, &toff8, 0),
        &reference(&w8, &sc8, &off8, 0),
        2e-2,
    );
    // INT4, per group of 32: scale/offset [k/g, n].
    let w4: Vec<i8> = (0..k * n).map(|i| ((i * 5) % 16) as i8 - 8).collect();
    let tw4 = s
        .upload(D::ACL_INT4, &[k as i64, n as i64], &pack_int4(&w4))
        .unwrap();
    let sc4 = rnd(k / g * n, 9)
        .iter()
        .map(|v| bf16_round(v * 0.1))
        .collect::<Vec<_>>();
    let off4 = (0..k / g * n)
        .map(|i| (i % 3) as f32 - 1.0)
        .collect::<Vec<_>>();
    let tsc4 = s
        .upload(D::ACL_BF16, &[(k / g) as i64, n as i64], &bf16_bytes(&sc4))
        .unwrap();
    let toff4 = s
        .upload(D::ACL_BF16, &[(k / g) as i64, n as i64], &bf16_bytes(&off4))
        .unwrap();
    close(
        &run(&tw4, &tsc4, &toff4, g as i32),
        &reference(&w4, &sc4, &off4, g),
        2e-2,
    );
    // The same INT4 weight packed eight to an INT32 word ([k, n/8]): identical result.
    let words: Vec<i32> = w4
        .chunks(8)
        .map(|c| {
            c.iter().enumerate().fold(0u32, |acc, (i, &v)| {
                acc | ((v as u8 as u32 & 0xF) << (4 * i))
            }) as i32
        })
        .collect();
    let tw32 = s
        .upload(
            D::ACL_INT32,
            &[k as i64, (n / 8).max(1) as i64],
            &i32_bytes(&words),
        )
        .unwrap();
    if n % 8 == 0 {
        close(
            &run(&tw32, &tsc4, &toff4, g as i32),
            &reference(&w4, &sc4, &off4, g),
            2e-2,
        );
    }
    // A group size that is not a multiple of 32 is rejected.
    let (mut ws, mut ex) = (0, null_mut());
    // SAFETY: live descriptors.
    let st = unsafe {
        (ops.aclnnWeightQuantBatchMatmulV2GetWorkspaceSize.unwrap())(
            tx.tensor,
            tw4.tensor,
            tsc4.tensor,
            toff4.tensor,
            null(),
            null(),
            null(),
            48,
            ty.tensor,
            &mut ws,
            &mut ex,
        )
    };
    assert_eq!(st, ACLNN_ERR_PARAM_INVALID);
    finish(s, vec![tx, ty, tw8, tsc8, toff8, tw4, tsc4, toff4, tw32]);
}

#[test]
fn grouped_matmul_with_counts_and_one_weight_per_expert() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let nn = s.cann.nnop.clone();
    let (m, k, n) = (5usize, 3usize, 2usize);
    let x = rnd(m * k, 11);
    let ws: Vec<Vec<f32>> = (0..2).map(|e| rnd(k * n, 12 + e)).collect();
    let tx = s
        .upload(D::ACL_FLOAT, &[m as i64, k as i64], &f32_bytes(&x))
        .unwrap();
    let tw: Vec<DevTensor> = ws
        .iter()
        .map(|w| {
            s.upload(D::ACL_FLOAT, &[k as i64, n as i64], &f32_bytes(w))
                .unwrap()
        })
        .collect();
    let ty = zeros(&s, D::ACL_FLOAT, &[m as i64, n as i64]);
    let run = |counts: &[i64]| -> Result<(), String> {
        let tg = s.upload(D::ACL_INT64, &[2], &i64_bytes(counts)).unwrap();
        // SAFETY: list descriptors are owned (and destroyed) by the lists.
        let r = unsafe {
            let mk = |t: &DevTensor| {
                s.describe(t.ptr, D::ACL_FLOAT, &t.dims, None, 0).unwrap() as *const aclTensor
            };
            let xl = (nn.aclCreateTensorList)([mk(&tx)].as_ptr(), 1);
            let wl = (nn.aclCreateTensorList)([mk(&tw[0]), mk(&tw[1])].as_ptr(), 2);
            let yl = (nn.aclCreateTensorList)([mk(&ty)].as_ptr(), 1);
            let r = s.run_op(
                "gmm",
                |w, e| {
                    (ops.aclnnGroupedMatmulV4GetWorkspaceSize.unwrap())(
                        xl,
                        wl,
                        null(),
                        null(),
                        null(),
                        null(),
                        null(),
                        null(),
                        tg.tensor,
                        null(),
                        null(),
                        null(),
                        2,
                        0,
                        1,
                        0,
                        yl,
                        null_mut(),
                        null_mut(),
                        w,
                        e,
                    )
                },
                ops.aclnnGroupedMatmulV4.unwrap(),
            );
            for l in [xl, wl, yl] {
                (nn.aclDestroyTensorList)(l);
            }
            r.and_then(|_| s.sync())
        };
        s.release(tg).unwrap();
        r
    };
    // Counts 2 and 3: rows 0-1 use expert 0, rows 2-4 expert 1.
    run(&[2, 3]).unwrap();
    let got = from_f32(&s.download(ty.ptr, ty.bytes).unwrap());
    for r in 0..m {
        let w = &ws[usize::from(r >= 2)];
        for c in 0..n {
            let want: f32 = (0..k).map(|p| x[r * k + p] * w[p * n + c]).sum();
            close(&[got[r * n + c]], &[want], 1e-5);
        }
    }
    // Counts that exceed the rows fail at execution.
    assert!(run(&[4, 3]).is_err());
    let mut all = vec![tx, ty];
    all.extend(tw);
    for t in all {
        s.release(t).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!(st.leaks(), 0);
    assert_eq!(st.exec_errors, 1);
}

/// GroupedMatmulV4's weight-quantized ("伪量化") inputs: y_i = x_i @ ((w_i + offset_i) *
/// scale_i), INT4 per group (symmetric) and per channel (asymmetric), the same INT4 packed
/// eight to an INT32, INT8 per channel; and what the docs' A16W4 / A16W8 constraints reject.
#[test]
fn grouped_matmul_antiquant_int4_per_group_int8_per_channel() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let nn = s.cann.nnop.clone();
    let (e, m, k, n, g) = (2usize, 5usize, 64usize, 16usize, 2usize);
    let x = rnd(m * k, 21);
    let tx = s
        .upload(D::ACL_BF16, &[m as i64, k as i64], &bf16_bytes(&x))
        .unwrap();
    let ty = zeros(&s, D::ACL_BF16, &[m as i64, n as i64]);
    // Cumulative group list: rows 0-1 expert 0, rows 2-4 expert 1.
    let tg = s.upload(D::ACL_INT64, &[2], &i64_bytes(&[2, 5])).unwrap();
    // One GMM with antiquant parameters (None: null list), synchronised.
    let run = |w: &DevTensor, wdt: D, sc: Option<(&DevTensor, D)>, off: Option<&DevTensor>| {
        // SAFETY: list descriptors are owned (and destroyed) by the lists.
        unsafe {
            let mk = |t: &DevTensor, dt: D| {
                s.describe(t.ptr, dt, &t.dims, None, 0).unwrap() as *const aclTensor
            };
            let list = |t: &DevTensor, dt: D| (nn.aclCreateTensorList)([mk(t, dt)].as_ptr(), 1);
            let xl = list(&tx, D::ACL_BF16);
            let wl = list(w, wdt);
            let yl = list(&ty, D::ACL_BF16);
            let sl = sc.map_or(null_mut(), |(t, dt)| list(t, dt));
            let ol = off.map_or(null_mut(), |t| list(t, D::ACL_BF16));
            let r = s.run_op(
                "gmm antiquant",
                |ws, ex| {
                    (ops.aclnnGroupedMatmulV4GetWorkspaceSize.unwrap())(
                        xl,
                        wl,
                        null(),
                        null(),
                        null(),
                        sl,
                        ol,
                        null(),
                        tg.tensor,
                        null(),
                        null(),
                        null(),
                        2,
                        0,
                        0,
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
            for l in [xl, wl, yl, sl, ol] {
                if !l.is_null() {
                    (nn.aclDestroyTensorList)(l);
                }
            }
            r.and_then(|_| s.sync())?;
            Ok::<_, String>(from_bf16(&s.download(ty.ptr, ty.bytes).unwrap()))
        }
    };
    // The docs' formula, per expert, with groups of k / groups along K.
    let reference = |w: &[i8], sc: &[f32], off: &[f32], groups: usize| -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            let ex = usize::from(r >= 2);
            for c in 0..n {
                let mut acc = 0f32;
                for p in 0..k {
                    let gi = (ex * groups + p / (k / groups)) * n + c;
                    acc += x[r * k + p] * ((w[(ex * k + p) * n + c] as f32 + off[gi]) * sc[gi]);
                }
                out[r * n + c] = bf16_round(acc);
            }
        }
        out
    };
    let params = |len: usize, seed: u64| -> Vec<f32> {
        rnd(len, seed)
            .iter()
            .map(|v| bf16_round(v * 0.05))
            .collect()
    };
    let up = |v: &[f32], dims: &[usize]| {
        let d: Vec<i64> = dims.iter().map(|&x| x as i64).collect();
        s.upload(D::ACL_BF16, &d, &bf16_bytes(v)).unwrap()
    };
    let dims3 = [e as i64, k as i64, n as i64];
    // INT4 per group (G = 2, symmetric: zero offsets).
    let w4: Vec<i8> = (0..e * k * n)
        .map(|i| ((i * 7 + 3) % 16) as i8 - 8)
        .collect();
    let tw4 = s.upload(D::ACL_INT4, &dims3, &pack_int4(&w4)).unwrap();
    let sc_g = params(e * g * n, 22);
    let off_g = vec![0f32; e * g * n];
    let (tsc_g, toff_g) = (up(&sc_g, &[e, g, n]), up(&off_g, &[e, g, n]));
    let want = reference(&w4, &sc_g, &off_g, g);
    close(
        &run(
            &tw4,
            D::ACL_INT4,
            Some((&tsc_g, D::ACL_BF16)),
            Some(&toff_g),
        )
        .unwrap(),
        &want,
        2e-2,
    );
    // The same codes packed eight to an INT32 ([E, K, N/8]): identical.
    let words: Vec<i32> = w4
        .chunks(8)
        .map(|c| {
            c.iter().enumerate().fold(0u32, |acc, (i, &v)| {
                acc | ((v as u8 as u32 & 0xF) << (4 * i))
            }) as i32
        })
        .collect();
    let tw32 = s
        .upload(
            D::ACL_INT32,
            &[e as i64, k as i64, (n / 8) as i64],
            &i32_bytes(&words),
        )
        .unwrap();
    close(
        &run(
            &tw32,
            D::ACL_INT32,
            Some((&tsc_g, D::ACL_BF16)),
            Some(&toff_g),
        )
        .unwrap(),
        &want,
        2e-2,
    );
    // INT4 per channel, asymmetric (non-zero offsets).
    let sc_c = params(e * n, 23);
    let off_c: Vec<f32> = (0..e * n).map(|i| (i % 5) as f32 - 2.0).collect();
    let (tsc_c, toff_c) = (up(&sc_c, &[e, n]), up(&off_c, &[e, n]));
    close(
        &run(
            &tw4,
            D::ACL_INT4,
            Some((&tsc_c, D::ACL_BF16)),
            Some(&toff_c),
        )
        .unwrap(),
        &reference(&w4, &sc_c, &off_c, 1),
        2e-2,
    );
    // INT8 per channel, asymmetric.
    let w8: Vec<i8> = (0..e * k * n).map(|i| ((i * 37) % 255) as i8).collect();
    let tw8 = s
        .upload(
            D::ACL_INT8,
            &dims3,
            &w8.iter().map(|&v| v as u8).collect::<Vec<_>>(),
        )
        .unwrap();
    close(
        &run(
            &tw8,
            D::ACL_INT8,
            Some((&tsc_c, D::ACL_BF16)),
            Some(&toff_c),
        )
        .unwrap(),
        &reference(&w8, &sc_c, &off_c, 1),
        2e-2,
    );
    // Rejected in phase 1: INT8 per group, a group count that does not divide K, a missing
    // offset, a scale in another dtype than x.
    let sc_3 = params(e * 3 * n, 24);
    let tsc_3 = up(&sc_3, &[e, 3, n]);
    let tsc_f32 = s
        .upload(D::ACL_FLOAT, &[e as i64, n as i64], &f32_bytes(&sc_c))
        .unwrap();
    for (what, r) in [
        (
            "INT8 per group",
            run(
                &tw8,
                D::ACL_INT8,
                Some((&tsc_g, D::ACL_BF16)),
                Some(&toff_g),
            ),
        ),
        (
            "G = 3 with K = 64",
            run(&tw4, D::ACL_INT4, Some((&tsc_3, D::ACL_BF16)), Some(&tsc_3)),
        ),
        (
            "no offset",
            run(&tw4, D::ACL_INT4, Some((&tsc_c, D::ACL_BF16)), None),
        ),
        (
            "FLOAT scale",
            run(
                &tw4,
                D::ACL_INT4,
                Some((&tsc_f32, D::ACL_FLOAT)),
                Some(&toff_c),
            ),
        ),
    ] {
        let err = r.expect_err(what);
        assert!(err.contains("phase 1: 161002"), "{what}: {err}");
    }
    // Asymmetric per group: the docs support it per channel only (an execution error here,
    // since the offsets are device data).
    let toff_ng = up(
        &(0..e * g * n).map(|i| (i % 3) as f32).collect::<Vec<_>>(),
        &[e, g, n],
    );
    let err = run(
        &tw4,
        D::ACL_INT4,
        Some((&tsc_g, D::ACL_BF16)),
        Some(&toff_ng),
    )
    .expect_err("asymmetric per group");
    assert!(err.contains("per channel only"), "{err}");
    for t in [
        tx, ty, tg, tw4, tsc_g, toff_g, tw32, tsc_c, toff_c, tw8, tsc_3, tsc_f32, toff_ng,
    ] {
        s.release(t).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!(st.leaks(), 0, "{st:?}");
    assert_eq!(st.exec_errors, 1, "{st:?}");
}
