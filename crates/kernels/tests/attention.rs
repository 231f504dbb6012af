//! The paged decode and chunked-prefill attention kernels, run on the AscendC sim, against
//! softmax(q·K)·V in F64 over the same BF16 cache.
//!
//! Bound: scores, softmax and the V sum run in F32 (relative error ~1e-6 over contexts of a
//! few hundred keys), then one rounding to BF16 (2^-9 relative). Outputs are averages of
//! values in [-1, 1], so |got - want| <= 2^-8 |want| + 2e-4 (the absolute term: outputs near 0).

mod common;

use common::{f64s, worst, Cache, Rng};
use half::bf16;
use qwen3_kernels::device::{Buffer, Kernel};
use qwen3_kernels::{
    chunked_prefill_attention, chunked_prefill_tiling, paged_decode_attention, paged_decode_tiling,
    AttnShape, CoreSpec, KernelError, PagedKv, SplitKv,
};

const REL: f64 = 1.0 / 256.0;
const ABS: f64 = 2e-4;

fn shape(c: &Cache, hq: usize) -> AttnShape {
    AttnShape {
        num_q_heads: hq as u32,
        num_kv_heads: c.heads as u32,
        head_dim: c.d as u32,
        block_size: c.bs as u32,
        max_blocks_per_seq: c.max_blocks as u32,
        num_cache_blocks: c.blocks as u32,
        scale: (c.d as f32).powf(-0.5),
    }
}

fn kv(c: &Cache) -> PagedKv<'_> {
    PagedKv {
        k_cache: &c.k,
        v_cache: &c.v,
        block_table: &c.table,
        context_lens: &c.lens,
    }
}

/// Query rows `q` `[tokens, hq, d]`, token i of sequence seq_of[i] at position pos_of[i].
fn reference(c: &Cache, hq: usize, q: &[bf16], seq_of: &[usize], pos_of: &[usize]) -> Vec<f64> {
    let (k, v, qf) = (f64s(&c.k), f64s(&c.v), f64s(q));
    let (d, g) = (c.d, hq / c.heads);
    let scale = f64::from((d as f32).powf(-0.5));
    let mut out = Vec::with_capacity(q.len());
    for (i, (&s, &p)) in seq_of.iter().zip(pos_of).enumerate() {
        for h in 0..hq {
            let row = &qf[(i * hq + h) * d..][..d];
            out.extend(common::attend(row, &k, &v, c, s, p, h / g, scale));
        }
    }
    out
}

fn decode(
    hq: usize,
    hk: usize,
    d: usize,
    bs: usize,
    lens: &[usize],
    split: SplitKv,
    cores: &CoreSpec,
) -> usize {
    let mut rng = Rng::new((hq * 1000 + lens.len()) as u64);
    let c = Cache::new(&mut rng, hk, d, bs, lens);
    let q = rng.bf16s(lens.len() * hq * d, 2.0);
    let max_ctx = *lens.iter().max().unwrap() as u32;
    let t = paged_decode_tiling(&shape(&c, hq), lens.len() as u32, max_ctx, split, cores).unwrap();
    let mut out = vec![bf16::from_f32(9.0); q.len()];
    paged_decode_attention(&t, &q, &kv(&c), &mut out).unwrap();
    let seqs: Vec<usize> = (0..lens.len()).collect();
    let pos: Vec<usize> = lens.iter().map(|l| l - 1).collect();
    let w = worst(&out, &reference(&c, hq, &q, &seqs, &pos), REL, ABS);
    assert!(
        w <= 1.0,
        "hq {hq} hk {hk} lens {lens:?} {split:?}: worst {w} of the bound"
    );
    t.num_splits as usize
}

/// Contexts ending mid-block, exactly on block boundaries, a single key, and long.
const LENS: [usize; 6] = [1, 127, 128, 129, 256, 300];

#[test]
fn decode_gqa_4_to_1_head_dim_128_split_off_and_on() {
    let c = CoreSpec::ASCEND_910B2;
    assert_eq!(decode(16, 4, 128, 128, &LENS, SplitKv::Off, &c), 1);
    // Two sequences on 48 cores: the tiling splits their keys.
    assert!(decode(16, 4, 128, 128, &[300, 129], SplitKv::Auto, &c) > 1);
    assert_eq!(decode(16, 4, 128, 128, &LENS, SplitKv::Max(3), &c), 3);
}

#[test]
fn decode_gqa_8_and_16_to_1() {
    let c = CoreSpec::ASCEND_910B2;
    assert_eq!(decode(16, 2, 128, 128, &LENS, SplitKv::Off, &c), 1);
    assert!(decode(16, 2, 128, 128, &[640], SplitKv::Auto, &c) > 1);
    assert!(decode(16, 1, 128, 128, &[257, 5], SplitKv::Max(4), &c) > 1);
}

#[test]
fn decode_odd_shapes() {
    let c = CoreSpec::ASCEND_910B3;
    // head_dim 64, blocks of 16, 3:1: splits land inside sequences with empty tails.
    assert!(decode(6, 2, 64, 16, &[1, 15, 16, 17, 50], SplitKv::Max(5), &c) > 1);
    // Splits past a short sequence's end stay empty and are skipped by the merge.
    assert_eq!(decode(6, 2, 64, 16, &[200, 3], SplitKv::Max(4), &c), 4);
}

/// Sequences as (new tokens, context including them).
fn prefill(hq: usize, hk: usize, d: usize, bs: usize, seqs: &[(usize, usize)], cores: &CoreSpec) {
    let mut rng = Rng::new((hq * 7 + seqs.len()) as u64);
    let lens: Vec<usize> = seqs.iter().map(|s| s.1).collect();
    let c = Cache::new(&mut rng, hk, d, bs, &lens);
    let qlens: Vec<u32> = seqs.iter().map(|s| s.0 as u32).collect();
    let tokens: usize = seqs.iter().map(|s| s.0).sum();
    let q = rng.bf16s(tokens * hq * d, 2.0);
    let mut starts = vec![0i32];
    let (mut seq_of, mut pos_of) = (Vec::new(), Vec::new());
    for (i, &(n, ctx)) in seqs.iter().enumerate() {
        starts.push(starts[i] + n as i32);
        seq_of.extend(std::iter::repeat_n(i, n));
        pos_of.extend(ctx - n..ctx);
    }
    let t = chunked_prefill_tiling(&shape(&c, hq), &qlens, cores).unwrap();
    let mut out = vec![bf16::from_f32(9.0); q.len()];
    chunked_prefill_attention(&t, &q, &starts, &kv(&c), &mut out).unwrap();
    let w = worst(&out, &reference(&c, hq, &q, &seq_of, &pos_of), REL, ABS);
    assert!(
        w <= 1.0,
        "hq {hq} hk {hk} seqs {seqs:?}: worst {w} of the bound"
    );
}

#[test]
fn prefill_fresh_and_on_a_cached_prefix_gqa_4_to_1() {
    // A fresh 37-token prompt; a 16-token chunk on a 284-token prefix (ends mid-block); a
    // 128-token chunk on a 128-token prefix (ends on a boundary); a decode mixed in.
    let seqs = [(37, 37), (16, 300), (128, 256), (1, 77)];
    prefill(16, 4, 128, 128, &seqs, &CoreSpec::ASCEND_910B2);
}

#[test]
fn prefill_gqa_8_to_1_and_odd_shapes() {
    prefill(
        16,
        2,
        128,
        128,
        &[(20, 150), (1, 1), (5, 128)],
        &CoreSpec::ASCEND_910B2,
    );
    // head_dim 64, blocks of 32, 3:1, chunks crossing several blocks.
    prefill(
        6,
        2,
        64,
        32,
        &[(45, 45), (33, 100), (2, 64)],
        &CoreSpec::ASCEND_910B3,
    );
}

#[test]
fn a_tiling_that_oversubscribes_the_ub_is_refused_by_the_sim() {
    let mut rng = Rng::new(3);
    let c = Cache::new(&mut rng, 1, 128, 128, &[10]);
    let q = rng.bf16s(16 * 128, 1.0);
    let mut t =
        paged_decode_tiling(&shape(&c, 16), 1, 10, SplitKv::Off, &CoreSpec::ASCEND_910B2).unwrap();
    assert!(t.kv_tile < 128, "16 rows leave no room for 128-key tiles");
    t.kv_tile = 128;
    let mut out = vec![bf16::ZERO; q.len()];
    match paged_decode_attention(&t, &q, &kv(&c), &mut out) {
        Err(KernelError::Refused(m)) => {
            assert!(m.contains("InitBuffer") && m.contains("UB"), "{m}")
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn bad_tables_and_lengths_are_refused_before_launch() {
    let mut rng = Rng::new(4);
    let mut c = Cache::new(&mut rng, 2, 128, 128, &[200]);
    let q = rng.bf16s(8 * 128, 1.0);
    let t =
        paged_decode_tiling(&shape(&c, 8), 1, 200, SplitKv::Off, &CoreSpec::ASCEND_910B2).unwrap();
    let mut out = vec![bf16::ZERO; q.len()];
    c.table[1] = c.blocks as i32;
    assert!(matches!(
        paged_decode_attention(&t, &q, &kv(&c), &mut out),
        Err(KernelError::Input(_))
    ));
    c.table[1] = 0;
    c.lens[0] = 0;
    assert!(matches!(
        paged_decode_attention(&t, &q, &kv(&c), &mut out),
        Err(KernelError::Input(_))
    ));
}

/// Copies `v` into an aligned buffer.
fn buffer<T: Copy>(v: &[T]) -> Buffer {
    let bytes = std::mem::size_of_val(v);
    let mut b = Buffer::zeroed(bytes);
    // SAFETY: T is a plain number type (bf16, i32); its bytes are initialised.
    let src = unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), bytes) };
    b.as_bytes_mut().copy_from_slice(src);
    b
}

fn tiling_bytes<T>(t: &T) -> Vec<u8> {
    // SAFETY: a tiling struct of u32/f32 fields, viewed as its bytes.
    unsafe { std::slice::from_raw_parts((t as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

/// The byte-buffer launch path (what the emulated CANN's aclrtlaunch stubs use) gives the
/// same output as the checked one, and the sim itself stops a block-table entry that points
/// outside the cache when no host check runs first.
#[test]
fn device_buffers_match_and_bad_indices_stop_in_the_sim() {
    let mut rng = Rng::new(5);
    let mut c = Cache::new(&mut rng, 2, 128, 128, &[150, 9]);
    let q = rng.bf16s(8 * 128 * 3, 1.0);
    let t = chunked_prefill_tiling(&shape(&c, 8), &[2, 1], &CoreSpec::ASCEND_910B2).unwrap();
    let starts = [0i32, 2, 3];
    let mut want = vec![bf16::ZERO; q.len()];
    chunked_prefill_attention(&t, &q, &starts, &kv(&c), &mut want).unwrap();
    let tb = tiling_bytes(&t);
    let run = |c: &Cache| {
        let mut bufs = vec![
            buffer(&q),
            buffer(&c.k),
            buffer(&c.v),
            buffer(&c.table),
            buffer(&starts),
            buffer(&c.lens),
            Buffer::zeroed(q.len() * 2),
        ];
        Kernel::ChunkedPrefillAttention
            .run(t.block_dim, &tb, &mut bufs)
            .map(|()| bufs.pop().unwrap())
    };
    let got = run(&c).unwrap();
    assert_eq!(got.as_bytes(), buffer(&want).as_bytes());
    c.table[0] = -1;
    match run(&c) {
        Err(KernelError::Refused(m)) => assert!(m.contains("out-of-bounds global access"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}
