//! FusedInferAttentionScore (TND, paged KV, GQA, causal sparseMode 3), ScatterPaKvCache
//! and ScatterNdUpdate against naive references.

use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;
use cann_emu::harness::*;
use std::ffi::CString;
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

const N: usize = 4;
const NKV: usize = 2;
/// Real Qwen3's head dim; FIA in layout TND takes 64, 128 or 192 only.
const DH: usize = 128;
const BS: usize = 128;
const BLOCKS: usize = 4;

struct Fx {
    q: DevTensor,
    cache_k: DevTensor,
    cache_v: DevTensor,
    k3: *mut aclTensor,
    v3: *mut aclTensor,
    mask: DevTensor,
    table: DevTensor,
    out: DevTensor,
    qv: Vec<f32>,
    kv: Vec<f32>,
    vv: Vec<f32>,
    /// Pass the caches as [blocks, KV_N, blockSize, D] (BnNBsD) instead of
    /// [blocks, blockSize, KV_N*D] (BnBsH): the same buffers, read differently.
    bnbsd: bool,
}

fn mask_bytes(inverted: bool) -> Vec<u8> {
    let mut m = vec![0u8; 2048 * 2048];
    for i in 0..2048 {
        for j in 0..2048 {
            m[i * 2048 + j] = ((j > i) != inverted) as u8;
        }
    }
    m
}

fn setup(s: &Session, t: usize, table: &[i32], inverted_mask: bool) -> Fx {
    let qv = rnd(t * N * DH, 1);
    let kv = rnd(BLOCKS * BS * NKV * DH, 2);
    let vv = rnd(BLOCKS * BS * NKV * DH, 3);
    let q = s
        .upload(
            D::ACL_BF16,
            &[t as i64, N as i64, DH as i64],
            &bf16_bytes(&qv),
        )
        .unwrap();
    let dims4 = [BLOCKS as i64, BS as i64, NKV as i64, DH as i64];
    let cache_k = s.upload(D::ACL_BF16, &dims4, &bf16_bytes(&kv)).unwrap();
    let cache_v = s.upload(D::ACL_BF16, &dims4, &bf16_bytes(&vv)).unwrap();
    let dims3 = [BLOCKS as i64, BS as i64, (NKV * DH) as i64];
    let k3 = s
        .describe(cache_k.ptr, D::ACL_BF16, &dims3, None, 0)
        .unwrap();
    let v3 = s
        .describe(cache_v.ptr, D::ACL_BF16, &dims3, None, 0)
        .unwrap();
    let mask = s
        .upload(D::ACL_BOOL, &[2048, 2048], &mask_bytes(inverted_mask))
        .unwrap();
    let table = s
        .upload(
            D::ACL_INT32,
            &[(table.len() / 2) as i64, 2],
            &i32_bytes(table),
        )
        .unwrap();
    let out = s
        .upload(
            D::ACL_BF16,
            &[t as i64, N as i64, DH as i64],
            &vec![0; t * N * DH * 2],
        )
        .unwrap();
    Fx {
        q,
        cache_k,
        cache_v,
        k3,
        v3,
        mask,
        table,
        out,
        qv,
        kv,
        vv,
        bnbsd: false,
    }
}

/// Reference: per sequence, query i sees keys j <= kv - q + i (bottom-right causal).
fn reference(fx: &Fx, cu_q: &[i64], kv_lens: &[i64], table: &[i32], scale: f32) -> Vec<f32> {
    let row = NKV * DH;
    let mut out = vec![0f32; fx.qv.len()];
    let mut qs = 0usize;
    for (b, (&qe, &kvl)) in cu_q.iter().zip(kv_lens).enumerate() {
        let (ql, kvl) = (qe as usize - qs, kvl as usize);
        // Element `e` of kv head `kh` of key `j` of this sequence, in either cache layout.
        let at = |j: usize, kh: usize, e: usize| {
            let (blk, off) = (table[b * 2 + j / BS] as usize, j % BS);
            if fx.bnbsd {
                ((blk * NKV + kh) * BS + off) * DH + e
            } else {
                (blk * BS + off) * row + kh * DH + e
            }
        };
        for i in 0..ql {
            let vis = kvl + i + 1 - ql;
            for h in 0..N {
                let kh = h / (N / NKV);
                let q = &fx.qv[((qs + i) * N + h) * DH..][..DH];
                let sc: Vec<f32> = (0..vis)
                    .map(|j| {
                        q.iter()
                            .enumerate()
                            .map(|(e, a)| a * fx.kv[at(j, kh, e)])
                            .sum::<f32>()
                            * scale
                    })
                    .collect();
                let m = sc.iter().copied().fold(f32::MIN, f32::max);
                let z: f32 = sc.iter().map(|v| (v - m).exp()).sum();
                for e in 0..DH {
                    let acc: f32 = (0..vis)
                        .map(|j| (sc[j] - m).exp() / z * fx.vv[at(j, kh, e)])
                        .sum();
                    out[((qs + i) * N + h) * DH + e] = bf16_round(acc);
                }
            }
        }
        qs = qe as usize;
    }
    out
}

/// The workspace phase 1 asked for, allocated: (address, size) for phase 2.
struct Ws(*mut std::ffi::c_void, u64);

#[allow(clippy::too_many_arguments)]
fn fia(
    s: &Session,
    version: u8,
    fx: &Fx,
    aq: *const aclIntArray,
    akv: *const aclIntArray,
    layout: &str,
    bs: i64,
    scale: f64,
) -> (i32, *mut aclOpExecutor, Ws) {
    let nn = &s.cann.nnop;
    let ops = &s.cann.ops;
    // SAFETY: live descriptors; the lists are destroyed below (without their tensors,
    // which are the fixture's: each list gets its own descriptors).
    unsafe {
        let dims: Vec<i64> = if fx.bnbsd {
            vec![BLOCKS as i64, NKV as i64, BS as i64, DH as i64]
        } else {
            vec![BLOCKS as i64, BS as i64, (NKV * DH) as i64]
        };
        let k = s
            .describe(fx.cache_k.ptr, D::ACL_BF16, &dims, None, 0)
            .unwrap();
        let v = s
            .describe(fx.cache_v.ptr, D::ACL_BF16, &dims, None, 0)
            .unwrap();
        let kl = (nn.aclCreateTensorList)([k as *const aclTensor].as_ptr(), 1);
        let vl = (nn.aclCreateTensorList)([v as *const aclTensor].as_ptr(), 1);
        let lay = CString::new(layout).unwrap();
        let (mut ws, mut ex) = (0u64, std::ptr::null_mut());
        let st = match version {
            2 => (ops.aclnnFusedInferAttentionScoreV2GetWorkspaceSize.unwrap())(
                fx.q.tensor,
                kl,
                vl,
                null(),
                fx.mask.tensor,
                aq,
                akv,
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                fx.table.tensor,
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                N as i64,
                scale,
                2147483647,
                0,
                lay.as_ptr() as *mut _,
                NKV as i64,
                3,
                1,
                bs,
                0,
                false,
                0,
                0,
                fx.out.tensor,
                null(),
                &mut ws,
                &mut ex,
            ),
            3 => (ops.aclnnFusedInferAttentionScoreV3GetWorkspaceSize.unwrap())(
                fx.q.tensor,
                kl,
                vl,
                null(),
                fx.mask.tensor,
                aq,
                akv,
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                fx.table.tensor,
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                N as i64,
                scale,
                2147483647,
                0,
                lay.as_ptr() as *mut _,
                NKV as i64,
                3,
                1,
                bs,
                0,
                false,
                0,
                0,
                fx.out.tensor,
                null(),
                &mut ws,
                &mut ex,
            ),
            _ => (ops.aclnnFusedInferAttentionScoreV4GetWorkspaceSize.unwrap())(
                fx.q.tensor,
                kl,
                vl,
                null(),
                fx.mask.tensor,
                aq,
                akv,
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                fx.table.tensor,
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                N as i64,
                scale,
                2147483647,
                0,
                lay.as_ptr() as *mut _,
                NKV as i64,
                3,
                1,
                bs,
                0,
                false,
                0,
                0,
                0,
                fx.out.tensor,
                null(),
                &mut ws,
                &mut ex,
            ),
        };
        (nn.aclDestroyTensorList)(kl);
        (nn.aclDestroyTensorList)(vl);
        let w = if st == 0 {
            s.workspace(ws).unwrap()
        } else {
            null_mut()
        };
        (st, ex, Ws(w, ws))
    }
}

fn int_array(s: &Session, v: &[i64]) -> *mut aclIntArray {
    // SAFETY: a valid array.
    unsafe { (s.cann.nnop.aclCreateIntArray)(v.as_ptr(), v.len() as u64) }
}

fn teardown(s: Session, fx: Fx, arrays: &[*mut aclIntArray]) -> cann_emu::CannEmuStats {
    // SAFETY: live handles made by this test.
    unsafe {
        for a in arrays {
            (s.cann.nnop.aclDestroyIntArray)(*a);
        }
        (s.cann.nnop.aclDestroyTensor)(fx.k3);
        (s.cann.nnop.aclDestroyTensor)(fx.v3);
    }
    for t in [fx.q, fx.cache_k, fx.cache_v, fx.mask, fx.table, fx.out] {
        s.release(t).unwrap();
    }
    s.finish().unwrap()
}

#[test]
fn fia_tnd_paged_gqa_causal_mixed_prefill_and_decode() {
    // Sequence 0: 3 new queries over 5 keys (2 cached); sequence 1: one decode query
    // over 130 keys spanning two blocks.
    let table = [2, 0, 1, 3];
    let (cu_q, kv) = ([3i64, 4], [5i64, 130]);
    let scale = 1.0 / (DH as f64).sqrt();
    for (version, bnbsd) in [(2u8, false), (3, false), (4, false), (4, true)] {
        let s = Session::new().unwrap();
        let mut fx = setup(&s, 4, &table, false);
        fx.bnbsd = bnbsd;
        let (aq, akv) = (int_array(&s, &cu_q), int_array(&s, &kv));
        let (st, ex, w) = fia(&s, version, &fx, aq, akv, "TND", BS as i64, scale);
        assert_eq!(st, 0, "V{version}: {}", s.cann.acl.recent_error_message());
        let run = match version {
            2 => s.cann.ops.aclnnFusedInferAttentionScoreV2,
            3 => s.cann.ops.aclnnFusedInferAttentionScoreV3,
            _ => s.cann.ops.aclnnFusedInferAttentionScoreV4,
        }
        .unwrap();
        // SAFETY: an executor from phase 1 and the session's stream.
        assert_eq!(unsafe { run(w.0, w.1, ex, s.stream) }, 0);
        let got = from_bf16(&s.download(fx.out.ptr, fx.out.bytes).unwrap());
        let want = reference(&fx, &cu_q, &kv, &table, scale as f32);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-2 * (1.0 + w.abs()),
                "V{version} element {i}: {g} vs {w}"
            );
        }
        let st = teardown(s, fx, &[aq, akv]);
        assert_eq!((st.leaks(), st.violations()), (0, 0), "{st:?}");
    }
}

#[test]
fn fia_rejects_what_the_real_op_rejects() {
    let s = Session::new().unwrap();
    let fx = setup(&s, 4, &[2, 0, 1, 3], false);
    let (aq, akv) = (int_array(&s, &[3, 4]), int_array(&s, &[5, 130]));
    // Wrong layout string.
    let (st, _, _) = fia(&s, 4, &fx, aq, akv, "BSH", BS as i64, 0.25);
    assert_eq!(st, ACLNN_ERR_PARAM_INVALID);
    // actualSeqLengths that are not cumulative up to T.
    let bad = int_array(&s, &[3, 3]);
    let (st, _, _) = fia(&s, 4, &fx, bad, akv, "TND", BS as i64, 0.25);
    assert_eq!(st, ACLNN_ERR_PARAM_INVALID);
    let st = teardown(s, fx, &[aq, akv, bad]);
    assert_eq!(st.leaks(), 0);
    assert_eq!(st.ops_rejected, 2);
}

/// Replaces the fixture's query and output by ones of another dtype or head dim, runs
/// phase 1 (and phase 2 when it passes) and puts the fixture's back; returns the status
/// and the emulator's message.
fn fia_with_query(
    s: &Session,
    fx: &mut Fx,
    dtype: aclDataType,
    d: usize,
    bs: i64,
) -> (i32, String) {
    let t = 4;
    let elem = if dtype == D::ACL_FLOAT { 4 } else { 2 };
    let dims = [t as i64, N as i64, d as i64];
    let q = s.upload(dtype, &dims, &vec![0; t * N * d * elem]).unwrap();
    let out = s.upload(dtype, &dims, &vec![0; t * N * d * elem]).unwrap();
    let (q0, out0) = (
        std::mem::replace(&mut fx.q, q),
        std::mem::replace(&mut fx.out, out),
    );
    let (aq, akv) = (int_array(s, &[3, 4]), int_array(s, &[5, 130]));
    let (st, ex, w) = fia(s, 4, fx, aq, akv, "TND", bs, 0.25);
    let msg = s.cann.acl.recent_error_message();
    if st == 0 {
        let run = s.cann.ops.aclnnFusedInferAttentionScoreV4.unwrap();
        // SAFETY: an executor from phase 1 and the session's stream.
        assert_eq!(unsafe { run(w.0, w.1, ex, s.stream) }, 0);
        s.sync().unwrap();
    }
    // SAFETY: arrays made above.
    unsafe {
        (s.cann.nnop.aclDestroyIntArray)(aq);
        (s.cann.nnop.aclDestroyIntArray)(akv);
    }
    s.release(std::mem::replace(&mut fx.q, q0)).unwrap();
    s.release(std::mem::replace(&mut fx.out, out0)).unwrap();
    (st, msg)
}

/// Rule TND-head-dim: head dims other than 64/128/192 are refused with the tiling error
/// (561002) and the message CANN 8.3 prints (vllm-ascend PR 9632); 128 passes.
#[test]
fn fia_tnd_refuses_head_dims_other_than_64_128_192() {
    let s = Session::new().unwrap();
    let mut fx = setup(&s, 4, &[2, 0, 1, 3], false);
    for d in [16, 32, 96, 256] {
        let (st, msg) = fia_with_query(&s, &mut fx, D::ACL_BF16, d, BS as i64);
        assert_eq!(st, ACLNN_ERR_INNER_TILING_ERROR, "head dim {d}: {msg}");
        assert!(msg.contains("When layout is TND, queryD"), "{msg}");
    }
    let (st, msg) = fia_with_query(&s, &mut fx, D::ACL_BF16, DH, BS as i64);
    assert_eq!(st, 0, "{msg}");
    let st = teardown(s, fx, &[]);
    assert_eq!((st.ops_rejected, st.leaks()), (4, 0), "{st:?}");
}

/// Rule TND-dtype: FLOAT16 and FLOAT queries are refused as invalid parameters (161002).
#[test]
fn fia_tnd_refuses_dtypes_other_than_bf16() {
    let s = Session::new().unwrap();
    let mut fx = setup(&s, 4, &[2, 0, 1, 3], false);
    for dt in [D::ACL_FLOAT16, D::ACL_FLOAT] {
        let (st, msg) = fia_with_query(&s, &mut fx, dt, DH, BS as i64);
        assert_eq!(st, ACLNN_ERR_PARAM_INVALID, "{dt:?}: {msg}");
        assert!(msg.contains("BFLOAT16 only"), "{msg}");
    }
    let st = teardown(s, fx, &[]);
    assert_eq!((st.ops_rejected, st.leaks()), (2, 0), "{st:?}");
}

/// Rule TND-block-size: paged blocks other than 128/512/1024 are refused with 561002,
/// including sizes the general page-attention rule would take (16-aligned for D 128).
#[test]
fn fia_tnd_refuses_block_sizes_other_than_128_512_1024() {
    let s = Session::new().unwrap();
    let mut fx = setup(&s, 4, &[2, 0, 1, 3], false);
    for bs in [16, 64, 256, 384] {
        let (st, msg) = fia_with_query(&s, &mut fx, D::ACL_BF16, DH, bs);
        assert_eq!(st, ACLNN_ERR_INNER_TILING_ERROR, "blockSize {bs}: {msg}");
        assert!(msg.contains("blockSize"), "{msg}");
    }
    let st = teardown(s, fx, &[]);
    assert_eq!((st.ops_rejected, st.leaks()), (4, 0), "{st:?}");
}

/// Rule TND-paged-version: an emulated CANN older than 8.3 reports its version and
/// refuses TND with a paged cache (vllm-ascend issue 4373) with 561002.
#[test]
fn fia_tnd_paged_refused_before_cann_8_3() {
    let s = Session::new().unwrap();
    let mut fx = setup(&s, 4, &[2, 0, 1, 3], false);
    std::env::set_var("CANN_EMU_VERSION", "8.2.RC1");
    let version = s.cann.cann_version();
    let (st, msg) = fia_with_query(&s, &mut fx, D::ACL_BF16, DH, BS as i64);
    std::env::remove_var("CANN_EMU_VERSION");
    assert_eq!(version.as_deref(), Some("8.2.RC1"));
    assert_eq!(st, ACLNN_ERR_INNER_TILING_ERROR, "{msg}");
    assert!(msg.contains("not support Page Attention"), "{msg}");
    assert_eq!(s.cann.cann_version().as_deref(), Some("8.3.RC1"));
    let (st, msg) = fia_with_query(&s, &mut fx, D::ACL_BF16, DH, BS as i64);
    assert_eq!(st, 0, "{msg}");
    let st = teardown(s, fx, &[]);
    assert_eq!((st.ops_rejected, st.leaks()), (1, 0), "{st:?}");
}

#[test]
fn fia_rejects_an_inverted_mask_at_run_time() {
    let s = Session::new().unwrap();
    let fx = setup(&s, 4, &[2, 0, 1, 3], true);
    let (aq, akv) = (int_array(&s, &[3, 4]), int_array(&s, &[5, 130]));
    let (st, ex, w) = fia(&s, 4, &fx, aq, akv, "TND", BS as i64, 0.25);
    assert_eq!(st, 0);
    // SAFETY: an executor from phase 1.
    unsafe { (s.cann.ops.aclnnFusedInferAttentionScoreV4.unwrap())(w.0, w.1, ex, s.stream) };
    assert!(s.sync().is_err());
    teardown(s, fx, &[aq, akv]);
}

#[test]
fn scatter_pa_kv_cache_norm_writes_slots() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let (blocks, bs, h, d) = (2usize, 16usize, 2usize, 4usize);
    let dims = [blocks as i64, bs as i64, h as i64, d as i64];
    let zero = vec![0u8; blocks * bs * h * d * 2];
    let kc = s.upload(D::ACL_BF16, &dims, &zero).unwrap();
    let vc = s.upload(D::ACL_BF16, &dims, &zero).unwrap();
    let (kx, vx) = (rnd(3 * h * d, 5), rnd(3 * h * d, 6));
    let k = s
        .upload(D::ACL_BF16, &[3, h as i64, d as i64], &bf16_bytes(&kx))
        .unwrap();
    let v = s
        .upload(D::ACL_BF16, &[3, h as i64, d as i64], &bf16_bytes(&vx))
        .unwrap();
    let slots = [17i32, 0, 3];
    let sm = s.upload(D::ACL_INT32, &[3], &i32_bytes(&slots)).unwrap();
    let mode = CString::new("Norm").unwrap();
    // SAFETY: live descriptors.
    s.run_op(
        "spkv",
        |w, e| unsafe {
            (ops.aclnnScatterPaKvCacheGetWorkspaceSize.unwrap())(
                k.tensor,
                kc.tensor,
                sm.tensor,
                v.tensor,
                vc.tensor,
                null(),
                null(),
                null(),
                mode.as_ptr() as *mut _,
                std::ptr::null_mut(),
                null(),
                null(),
                w,
                e,
            )
        },
        ops.aclnnScatterPaKvCache.unwrap(),
    )
    .unwrap();
    let gk = from_bf16(&s.download(kc.ptr, kc.bytes).unwrap());
    let gv = from_bf16(&s.download(vc.ptr, vc.bytes).unwrap());
    let row = h * d;
    let mut wk = vec![0f32; gk.len()];
    let mut wv = vec![0f32; gv.len()];
    for (t, &sl) in slots.iter().enumerate() {
        if sl >= 0 {
            wk[sl as usize * row..][..row].copy_from_slice(&kx[t * row..][..row]);
            wv[sl as usize * row..][..row].copy_from_slice(&vx[t * row..][..row]);
        }
    }
    assert_eq!(gk, wk);
    assert_eq!(gv, wv);
    // Slots beyond the cache, negative (padding is not skipped: the docs require
    // [0, blocks*block_size)) or repeated fail at execution.
    let mut bads = Vec::new();
    for slots in [[0, 1, 32], [0, -1, 2], [4, 5, 4]] {
        let bad = s.upload(D::ACL_INT32, &[3], &i32_bytes(&slots)).unwrap();
        // SAFETY: live descriptors.
        s.run_op(
            "spkv",
            |w, e| unsafe {
                (ops.aclnnScatterPaKvCacheGetWorkspaceSize.unwrap())(
                    k.tensor,
                    kc.tensor,
                    bad.tensor,
                    v.tensor,
                    vc.tensor,
                    null(),
                    null(),
                    null(),
                    mode.as_ptr() as *mut _,
                    std::ptr::null_mut(),
                    null(),
                    null(),
                    w,
                    e,
                )
            },
            ops.aclnnScatterPaKvCache.unwrap(),
        )
        .unwrap();
        assert!(s.sync().is_err(), "{slots:?}");
        bads.push(bad);
    }
    // Another cache mode is rejected in phase 1.
    let nz = CString::new("PA_NZ").unwrap();
    let (mut ws, mut ex) = (0, std::ptr::null_mut());
    // SAFETY: live descriptors.
    let st = unsafe {
        (ops.aclnnScatterPaKvCacheGetWorkspaceSize.unwrap())(
            k.tensor,
            kc.tensor,
            sm.tensor,
            v.tensor,
            vc.tensor,
            null(),
            null(),
            null(),
            nz.as_ptr() as *mut _,
            std::ptr::null_mut(),
            null(),
            null(),
            &mut ws,
            &mut ex,
        )
    };
    assert_eq!(st, ACLNN_ERR_PARAM_INVALID);
    for t in [kc, vc, k, v, sm].into_iter().chain(bads) {
        s.release(t).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!(st.oob_accesses, 2);
    assert_eq!(st.exec_errors, 3);
    assert_eq!(st.leaks(), 0);
}

#[test]
fn scatter_nd_update_rows() {
    let s = Session::new().unwrap();
    let ops = s.cann.ops.clone();
    let var = s.upload(D::ACL_BF16, &[6, 4], &[0u8; 48]).unwrap();
    let up = rnd(8, 7);
    let tu = s.upload(D::ACL_BF16, &[2, 4], &bf16_bytes(&up)).unwrap();
    let ti = s
        .upload(D::ACL_INT64, &[2, 1], &i64_bytes(&[5, 1]))
        .unwrap();
    // SAFETY: live descriptors.
    s.run_op(
        "snd",
        |w, e| unsafe {
            (ops.aclnnScatterNdUpdateGetWorkspaceSize.unwrap())(
                var.tensor, ti.tensor, tu.tensor, w, e,
            )
        },
        ops.aclnnScatterNdUpdate.unwrap(),
    )
    .unwrap();
    let got = from_bf16(&s.download(var.ptr, 48).unwrap());
    let mut want = vec![0f32; 24];
    want[20..24].copy_from_slice(&up[0..4]);
    want[4..8].copy_from_slice(&up[4..8]);
    assert_eq!(got, want);
    for t in [var, tu, ti] {
        s.release(t).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations()), (0, 0));
}
