//! Shared test helpers: a seeded generator, BF16 conversion, a paged cache builder and the
//! plain-definition references (F64) the kernels are checked against.
#![allow(dead_code)]

use half::bf16;

/// xorshift64*: reproducible inputs without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn bf16s(&mut self, n: usize, scale: f32) -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(self.unit() * scale))
            .collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

pub fn f64s(v: &[bf16]) -> Vec<f64> {
    v.iter().map(|x| f64::from(x.to_f32())).collect()
}

/// Largest |got - want| / (rel * |want| + abs) over the elements: at most 1 passes.
pub fn worst(got: &[bf16], want: &[f64], rel: f64, abs: f64) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (f64::from(g.to_f32()) - w).abs() / (rel * w.abs() + abs))
        // f64::max drops NaN: a NaN result must fail the bound, not vanish.
        .map(|e| if e.is_nan() { f64::INFINITY } else { e })
        .fold(0.0, f64::max)
}

/// A paged cache with each sequence's blocks scattered at random over the pool.
pub struct Cache {
    pub heads: usize,
    pub d: usize,
    pub bs: usize,
    pub blocks: usize,
    pub max_blocks: usize,
    pub k: Vec<bf16>,
    pub v: Vec<bf16>,
    pub table: Vec<i32>,
    pub lens: Vec<i32>,
}

impl Cache {
    pub fn new(rng: &mut Rng, heads: usize, d: usize, bs: usize, lens: &[usize]) -> Cache {
        let max_blocks = lens
            .iter()
            .map(|l| l.div_ceil(bs))
            .max()
            .unwrap_or(1)
            .max(1)
            + 1;
        let used: usize = lens.iter().map(|l| l.div_ceil(bs)).sum();
        let blocks = used + 3;
        let mut ids: Vec<i32> = (0..blocks as i32).collect();
        rng.shuffle(&mut ids);
        let mut table = vec![-1; lens.len() * max_blocks];
        let mut next = 0;
        for (s, &l) in lens.iter().enumerate() {
            for b in 0..l.div_ceil(bs) {
                table[s * max_blocks + b] = ids[next];
                next += 1;
            }
        }
        let n = blocks * bs * heads * d;
        Cache {
            heads,
            d,
            bs,
            blocks,
            max_blocks,
            k: rng.bf16s(n, 1.0),
            v: rng.bf16s(n, 1.0),
            table,
            lens: lens.iter().map(|&l| l as i32).collect(),
        }
    }
    pub fn row(&self, seq: usize, pos: usize, head: usize) -> usize {
        let block = self.table[seq * self.max_blocks + pos / self.bs] as usize;
        ((block * self.bs + pos % self.bs) * self.heads + head) * self.d
    }
}

/// softmax(q·K·scale)·V over keys `..=pos` of `seq`, for one query head row (`k`, `v`:
/// the cache in F64).
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    c: &Cache,
    seq: usize,
    pos: usize,
    kv_head: usize,
    scale: f64,
) -> Vec<f64> {
    let d = c.d;
    let s: Vec<f64> = (0..=pos)
        .map(|j| {
            let r = c.row(seq, j, kv_head);
            q.iter().zip(&k[r..r + d]).map(|(a, b)| a * b).sum::<f64>() * scale
        })
        .collect();
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut o = vec![0.0; d];
    for (j, w) in e.iter().enumerate() {
        let r = c.row(seq, j, kv_head);
        for (oi, vi) in o.iter_mut().zip(&v[r..r + d]) {
            *oi += w / z * vi;
        }
    }
    o
}
