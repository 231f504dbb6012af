//! The emulator's `aclrtlaunch_<kernel>` stubs for qwen3's AscendC kernels: launched on a
//! stream with device buffers they give what the same kernels give on host slices, a
//! capturing stream records them into a graph that replays them on new inputs (as CANN
//! records any kernel launch on a capturing stream), and an argument smaller than its tiling
//! says faults the stream instead of being read past.

use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;
use cann_emu::harness::*;
use half::bf16;
use qwen3_kernels::{
    paged_decode_attention, paged_decode_tiling, AttnShape, CoreSpec, PagedKv, SplitKv,
};
use std::ffi::c_void;

type P = *mut c_void;
type Decode = unsafe extern "C" fn(u32, aclrtStream, P, P, P, P, P, P, P, P, P) -> u32;
type Merge = unsafe extern "C" fn(u32, aclrtStream, P, P, P, P) -> u32;

/// The stubs from the copy of the emulator the session loaded (a second copy would have its
/// own memory).
fn stubs() -> (libloading::Library, Decode, Merge) {
    let path = lib_dir().unwrap().join("libascendcl.so");
    // SAFETY: the emulator library the session already loaded; its initialisers are ours.
    let lib = unsafe { libloading::Library::new(path) }.unwrap();
    // SAFETY: the types match the exports in src/kernels.rs.
    let (d, m) = unsafe {
        (
            *lib.get::<Decode>(b"aclrtlaunch_paged_decode_attention")
                .unwrap(),
            *lib.get::<Merge>(b"aclrtlaunch_paged_decode_merge").unwrap(),
        )
    };
    (lib, d, m)
}

fn values(n: usize, seed: u64) -> Vec<bf16> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

fn bytes<T: Copy>(v: &[T]) -> Vec<u8> {
    // SAFETY: plain numbers viewed as their bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
        .to_vec()
}

struct Fx {
    shape: AttnShape,
    q: Vec<bf16>,
    k: Vec<bf16>,
    v: Vec<bf16>,
    table: Vec<i32>,
    lens: Vec<i32>,
}

fn fixture() -> Fx {
    // Two sequences, GQA 4:1, head_dim 128, blocks of 128, contexts 300 and 128.
    let (hq, hk, d, bs, blocks) = (8usize, 2usize, 128usize, 128usize, 6usize);
    let n = blocks * bs * hk * d;
    Fx {
        shape: AttnShape {
            num_q_heads: hq as u32,
            num_kv_heads: hk as u32,
            head_dim: d as u32,
            block_size: bs as u32,
            max_blocks_per_seq: 3,
            num_cache_blocks: blocks as u32,
            scale: (d as f32).powf(-0.5),
        },
        q: values(2 * hq * d, 1),
        k: values(n, 2),
        v: values(n, 3),
        table: vec![4, 0, 5, 2, -1, -1],
        lens: vec![300, 128],
    }
}

/// The fixture's inputs on the device, the tiling, a zeroed output and the split partials:
/// `[q, k, v, table, lens, tiling, out, partial out, partial stats]`.
fn split_decode_buffers(
    s: &Session,
    fx: &Fx,
    t: &qwen3_kernels::PagedDecodeTiling,
) -> [DevTensor; 9] {
    let up = |b: Vec<u8>| s.upload(D::ACL_UINT8, &[b.len() as i64], &b).unwrap();
    let rows = (2 * t.num_splits * 8) as usize;
    [
        up(bytes(&fx.q)),
        up(bytes(&fx.k)),
        up(bytes(&fx.v)),
        up(bytes(&fx.table)),
        up(bytes(&fx.lens)),
        up(bytes(std::slice::from_ref(t))),
        up(vec![0; fx.q.len() * 2]),
        up(vec![0; rows * 128 * 4]),
        up(vec![0; rows * 2 * 4]),
    ]
}

#[test]
fn decode_with_split_kv_through_the_launch_stubs_matches_the_host_run() {
    let fx = fixture();
    let t =
        paged_decode_tiling(&fx.shape, 2, 300, SplitKv::Max(3), &CoreSpec::ASCEND_910B2).unwrap();
    assert!(t.num_splits > 1);
    let mut want = vec![bf16::ZERO; fx.q.len()];
    let kv = PagedKv {
        k_cache: &fx.k,
        v_cache: &fx.v,
        block_table: &fx.table,
        context_lens: &fx.lens,
    };
    paged_decode_attention(&t, &fx.q, &kv, &mut want).unwrap();

    let s = Session::new().unwrap();
    let (_lib, decode, merge) = stubs();
    let [q, k, v, table, lens, tiling, out, po, ps] = split_decode_buffers(&s, &fx, &t);
    // SAFETY: device buffers of the sizes the tiling implies, a live stream.
    unsafe {
        let rc = decode(
            t.block_dim,
            s.stream,
            q.ptr,
            k.ptr,
            v.ptr,
            table.ptr,
            lens.ptr,
            out.ptr,
            po.ptr,
            ps.ptr,
            tiling.ptr,
        );
        assert_eq!(rc, 0);
        assert_eq!(
            merge(
                t.merge_block_dim,
                s.stream,
                po.ptr,
                ps.ptr,
                out.ptr,
                tiling.ptr
            ),
            0
        );
    }
    let got = s.download(out.ptr, out.bytes).unwrap();
    assert_eq!(got, bytes(&want));
    for d in [q, k, v, table, lens, tiling, out, po, ps] {
        s.release(d).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations()), (0, 0));
}

#[test]
fn an_argument_smaller_than_its_tiling_faults_the_stream() {
    let fx = fixture();
    let t = paged_decode_tiling(&fx.shape, 2, 300, SplitKv::Off, &CoreSpec::ASCEND_910B2).unwrap();
    let s = Session::new().unwrap();
    let (_lib, decode, _) = stubs();
    let up = |b: Vec<u8>| s.upload(D::ACL_UINT8, &[b.len() as i64], &b).unwrap();
    let q = up(bytes(&fx.q));
    // One cache block short.
    let k = up(bytes(&fx.k[..fx.k.len() - 128 * 2 * 128]));
    let v = up(bytes(&fx.v));
    let (table, lens) = (up(bytes(&fx.table)), up(bytes(&fx.lens)));
    let tiling = up(bytes(std::slice::from_ref(&t)));
    let out = up(vec![0; fx.q.len() * 2]);
    let null = std::ptr::null_mut();
    // SAFETY: as above; the short key cache is the point of the test.
    let rc = unsafe {
        decode(
            t.block_dim,
            s.stream,
            q.ptr,
            k.ptr,
            v.ptr,
            table.ptr,
            lens.ptr,
            out.ptr,
            null,
            null,
            tiling.ptr,
        )
    };
    assert_eq!(rc, 0, "the launch is queued; the fault comes at execution");
    let err = s.sync().unwrap_err();
    assert!(err.contains("out-of-bounds"), "{err}");
    for d in [q, k, v, table, lens, tiling, out] {
        s.release(d).unwrap();
    }
    let st = stats().unwrap();
    assert_eq!((st.oob_accesses, st.exec_errors), (1, 1));
    drop(s);
}

#[test]
fn launches_on_a_capturing_stream_replay_from_the_graph_with_new_inputs() {
    let fx = fixture();
    let t =
        paged_decode_tiling(&fx.shape, 2, 300, SplitKv::Max(3), &CoreSpec::ASCEND_910B2).unwrap();
    let s = Session::new().unwrap();
    let acl = &s.cann.acl;
    let (_lib, decode, merge) = stubs();
    let [q, k, v, table, lens, tiling, out, po, ps] = split_decode_buffers(&s, &fx, &t);
    s.sync().unwrap();
    let mut ri: aclmdlRI = std::ptr::null_mut();
    // SAFETY: device buffers of the sizes the tiling implies, a live stream, a graph handle
    // written by CaptureEnd and destroyed once below.
    unsafe {
        let begin = acl.aclmdlRICaptureBegin.unwrap();
        let mode = aclmdlRICaptureMode::ACL_MODEL_RI_CAPTURE_MODE_RELAXED;
        assert_eq!(begin(s.stream, mode), 0);
        let args = [
            q.ptr, k.ptr, v.ptr, table.ptr, lens.ptr, out.ptr, po.ptr, ps.ptr,
        ];
        let [a0, a1, a2, a3, a4, a5, a6, a7] = args;
        assert_eq!(
            decode(
                t.block_dim,
                s.stream,
                a0,
                a1,
                a2,
                a3,
                a4,
                a5,
                a6,
                a7,
                tiling.ptr
            ),
            0
        );
        assert_eq!(
            merge(
                t.merge_block_dim,
                s.stream,
                po.ptr,
                ps.ptr,
                out.ptr,
                tiling.ptr
            ),
            0
        );
        assert_eq!((acl.aclmdlRICaptureEnd.unwrap())(s.stream, &mut ri), 0);
    }
    // Captured, not run.
    assert!(s
        .download(out.ptr, out.bytes)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    // New queries in the graph's input buffer, then a replay.
    let q2 = values(fx.q.len(), 9);
    // SAFETY: `q` holds as many bytes as `q2`; the graph is live.
    unsafe {
        let rc = (acl.aclrtMemcpy)(
            q.ptr,
            q.bytes,
            q2.as_ptr().cast(),
            q.bytes,
            aclrtMemcpyKind::ACL_MEMCPY_HOST_TO_DEVICE,
        );
        assert_eq!(rc, 0);
        assert_eq!((acl.aclmdlRIExecuteAsync.unwrap())(ri, s.stream), 0);
    }
    let mut want = vec![bf16::ZERO; fx.q.len()];
    let kv = PagedKv {
        k_cache: &fx.k,
        v_cache: &fx.v,
        block_table: &fx.table,
        context_lens: &fx.lens,
    };
    paged_decode_attention(&t, &q2, &kv, &mut want).unwrap();
    assert_eq!(s.download(out.ptr, out.bytes).unwrap(), bytes(&want));
    // SAFETY: made by CaptureEnd, nothing queued uses it any more.
    assert_eq!(unsafe { (acl.aclmdlRIDestroy.unwrap())(ri) }, 0);
    for d in [q, k, v, table, lens, tiling, out, po, ps] {
        s.release(d).unwrap();
    }
    let st = s.finish().unwrap();
    assert_eq!((st.leaks(), st.violations()), (0, 0));
}
