//! Paged causal attention on the CPU: each query token reads its sequence's K/V through the
//! block table, so prefill chunks and decodes share one call.

use rayon::prelude::*;

use crate::AttnGeometry;

/// Where one query token sits.
#[derive(Clone, Copy, Debug)]
pub struct TokenPlace {
    pub seq: u32,
    /// Absolute position of the token; it attends to positions `..=pos`.
    pub pos: u32,
}

pub struct PagedKv<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub block_size: usize,
    pub block_tables: &'a [u32],
    pub max_blocks_per_seq: usize,
}

/// `q`: `[tokens, heads * head_dim]`; returns `[tokens, heads * head_dim]`.
/// Callers check that every block-table entry a token reaches is inside the cache.
pub fn paged_attention(
    q: &[f32],
    places: &[TokenPlace],
    kv: &PagedKv<'_>,
    g: &AttnGeometry,
    out: &mut [f32],
) {
    let d = g.head_dim;
    let row = g.num_heads * d;
    let group = g.num_heads / g.num_kv_heads;
    out.par_chunks_mut(row)
        .zip(q.par_chunks(row))
        .zip(places.par_iter())
        .for_each_init(Vec::new, |scores, ((o, qrow), place)| {
            let table = &kv.block_tables[place.seq as usize * kv.max_blocks_per_seq..]
                [..kv.max_blocks_per_seq];
            let end = place.pos as usize + 1;
            let start = g.sliding_window.map_or(0, |w| end.saturating_sub(w));
            for h in 0..g.num_heads {
                let kvh = h / group;
                let qh = &qrow[h * d..(h + 1) * d];
                scores.clear();
                let mut max = f32::NEG_INFINITY;
                for j in start..end {
                    let off = kv_offset(table, kv.block_size, j, g.num_kv_heads, kvh, d);
                    let kj = &kv.k[off..off + d];
                    let s = qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * g.scale;
                    max = max.max(s);
                    scores.push(s);
                }
                let mut sum = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let oh = &mut o[h * d..(h + 1) * d];
                oh.fill(0.0);
                for (idx, j) in (start..end).enumerate() {
                    let p = scores[idx] / sum;
                    let off = kv_offset(table, kv.block_size, j, g.num_kv_heads, kvh, d);
                    for (acc, vj) in oh.iter_mut().zip(&kv.v[off..off + d]) {
                        *acc += p * vj;
                    }
                }
            }
        });
}

#[inline]
fn kv_offset(
    table: &[u32],
    block_size: usize,
    pos: usize,
    kv_heads: usize,
    kvh: usize,
    d: usize,
) -> usize {
    let slot = table[pos / block_size] as usize * block_size + pos % block_size;
    (slot * kv_heads + kvh) * d
}
