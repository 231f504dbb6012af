//! Host side of sampling on the device: which rows need what from the device, and the
//! final draw over the few candidates the device returns.
//!
//! Greedy rows take the device's argmax (one id per row crosses to the host). Rows with
//! `top_k` take the device's top-k candidates (values and ids) and draw on the host with the
//! reference sampler over just those, which gives the same token as over the full row:
//! top-k keeps only those candidates anyway, and temperature, min-p and top-p only look at
//! the kept ones. A structured-output mask is applied on the device first
//! ([`crate::sample_mask`]) where the device can: the row then has only its allowed ids
//! finite, so their count bounds an unbounded top-k. Rows whose result depends on the whole
//! vocabulary — logprobs, logit bias, penalties, a mask the device cannot apply, or no
//! top-k bound — copy their full row to the host and use the reference sampler as is.

use qwen3_backend::sampling::{sample_row, SampleRow, Sampled};

/// The most candidates fetched for a top-k row; larger `top_k` use the full row.
pub const MAX_CANDIDATES: usize = 1024;

/// What one row needs from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowPlan {
    /// The row's argmax.
    Argmax,
    /// The `k` largest logits (sorted), of which `keep` survive suppression.
    TopK { k: usize, keep: usize },
    /// The whole row.
    Full,
}

/// The plan of one row; `device_mask`: a structured-output mask can be applied on the
/// device before selection (else a masked row goes to the host whole).
pub fn plan_row(row: &SampleRow<'_>, vocab: usize, device_mask: bool) -> RowPlan {
    let p = row.params;
    if p.logprobs.is_some()
        || !p.logit_bias.is_empty()
        || p.uses_penalties()
        || (row.allowed.is_some() && !device_mask)
    {
        return RowPlan::Full;
    }
    // Under a mask only the allowed ids are finite: a draw over them is the draw over the
    // whole row (the rest have probability 0), so their count bounds the candidates.
    let bound = match (p.top_k as usize, row.allowed) {
        (0, None) => None,
        (0, Some(m)) => Some(allowed_count(m, vocab)),
        (k, None) => Some(k),
        (k, Some(m)) => Some(k.min(allowed_count(m, vocab))),
    };
    let keep = if p.is_greedy() {
        1
    } else {
        match bound {
            Some(k) if (1..=MAX_CANDIDATES).contains(&k) => k,
            _ => return RowPlan::Full,
        }
    };
    if p.is_greedy() && row.suppressed.is_empty() {
        return RowPlan::Argmax;
    }
    let mut supp: Vec<u32> = row
        .suppressed
        .iter()
        .copied()
        .filter(|&t| (t as usize) < vocab)
        .collect();
    supp.sort_unstable();
    supp.dedup();
    let k = (keep + supp.len()).min(vocab);
    if k == 0 {
        return RowPlan::Full;
    }
    RowPlan::TopK {
        k,
        keep: keep.min(k),
    }
}

/// How many of the first `vocab` ids the packed mask allows.
pub fn allowed_count(mask: &[u32], vocab: usize) -> usize {
    let full = vocab / 32;
    let whole: u32 = mask.iter().take(full).map(|w| w.count_ones()).sum();
    let tail = match (vocab % 32, mask.get(full)) {
        (0, _) | (_, None) => 0,
        (r, Some(w)) => (w & ((1u32 << r) - 1)).count_ones(),
    };
    (whole + tail) as usize
}

/// Draws from the device's candidates `(values, ids)` (any order) for a [`RowPlan::TopK`] row.
pub fn sample_candidates(values: &[f32], ids: &[i64], keep: usize, row: &SampleRow<'_>) -> Sampled {
    let mut cand: Vec<(u32, f32)> = ids
        .iter()
        .zip(values)
        .filter_map(|(&i, &v)| u32::try_from(i).ok().map(|i| (i, v)))
        .filter(|(i, _)| !row.suppressed.contains(i))
        .collect();
    // Best first, ties by lower id: the reference's order, so the same draw picks the same.
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    cand.truncate(keep.max(1));
    let reduced: Vec<f32> = cand.iter().map(|c| c.1).collect();
    let sub = SampleRow {
        suppressed: &[],
        allowed: None,
        ..*row
    };
    let s = sample_row(&reduced, &sub, &mut Vec::new());
    Sampled {
        token: cand.get(s.token as usize).map_or(0, |c| c.0),
        logprob: None,
        top_logprobs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwen3_backend::sampling::{draw_seed, SamplingParams};

    fn row<'a>(p: &'a SamplingParams, supp: &'a [u32], seed: u64) -> SampleRow<'a> {
        SampleRow {
            params: p,
            prompt_tokens: &[],
            output_tokens: &[],
            suppressed: supp,
            allowed: None,
            rng_seed: seed,
        }
    }

    #[test]
    fn plans() {
        let g = SamplingParams::greedy();
        assert_eq!(plan_row(&row(&g, &[], 0), 100, true), RowPlan::Argmax);
        assert_eq!(
            plan_row(&row(&g, &[3, 3, 500], 0), 100, true),
            RowPlan::TopK { k: 2, keep: 1 }
        );
        let t = SamplingParams {
            top_k: 20,
            ..SamplingParams::default()
        };
        assert_eq!(
            plan_row(&row(&t, &[], 0), 100, true),
            RowPlan::TopK { k: 20, keep: 20 }
        );
        let unbounded = SamplingParams::default();
        assert_eq!(plan_row(&row(&unbounded, &[], 0), 100, true), RowPlan::Full);
        let lp = SamplingParams {
            logprobs: Some(1),
            ..SamplingParams::greedy()
        };
        assert_eq!(plan_row(&row(&lp, &[], 0), 100, true), RowPlan::Full);
        let pen = SamplingParams {
            presence_penalty: 0.5,
            top_k: 5,
            ..SamplingParams::default()
        };
        assert_eq!(plan_row(&row(&pen, &[], 0), 100, true), RowPlan::Full);
    }

    #[test]
    fn masked_rows_plan_on_the_device_only_when_it_masks() {
        let mask = [0b1011u32, 0, 1 << 31, 0xFFFF_FFFF];
        assert_eq!(allowed_count(&mask, 128), 3 + 1 + 32);
        assert_eq!(allowed_count(&mask, 100), 3 + 1 + 4);
        let sampled = SamplingParams::default();
        let r = SampleRow {
            allowed: Some(&mask),
            ..row(&sampled, &[], 0)
        };
        assert_eq!(plan_row(&r, 128, false), RowPlan::Full);
        // Unbounded top-k: bounded by the 36 allowed ids.
        assert_eq!(plan_row(&r, 128, true), RowPlan::TopK { k: 36, keep: 36 });
        let top5 = SamplingParams {
            top_k: 5,
            ..SamplingParams::default()
        };
        let r5 = SampleRow {
            allowed: Some(&mask),
            ..row(&top5, &[], 0)
        };
        assert_eq!(plan_row(&r5, 128, true), RowPlan::TopK { k: 5, keep: 5 });
        let g = SamplingParams::greedy();
        let rg = SampleRow {
            allowed: Some(&mask),
            ..row(&g, &[], 0)
        };
        assert_eq!(plan_row(&rg, 128, true), RowPlan::Argmax);
        let none = [0u32; 4];
        let r0 = SampleRow {
            allowed: Some(&none),
            ..row(&sampled, &[], 0)
        };
        assert_eq!(plan_row(&r0, 128, true), RowPlan::Full);
    }

    fn params(top_k: u32, temperature: f32, top_p: f32, min_p: f32) -> SamplingParams {
        SamplingParams {
            top_k,
            temperature,
            top_p,
            min_p,
            ..SamplingParams::default()
        }
    }

    /// What the device path draws for `r` over `logits` (as the device holds them): the
    /// plan's top k, returned in reverse (the device's order is not relied on), then the
    /// host's draw over those candidates.
    fn device_draw(logits: &[f32], r: &SampleRow<'_>) -> u32 {
        let RowPlan::TopK { k, keep } = plan_row(r, logits.len(), true) else {
            panic!("expected a top-k plan");
        };
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        idx.truncate(k);
        idx.reverse();
        let vals: Vec<f32> = idx.iter().map(|&i| logits[i]).collect();
        let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
        sample_candidates(&vals, &ids, keep, r).token
    }

    fn test_logits(vocab: usize) -> Vec<f32> {
        (0..vocab)
            .map(|i| ((i * 7919) % 97) as f32 / 13.0 - 3.0)
            .collect()
    }

    /// A masked row drawn from the device's candidates over the masked logits (what
    /// `sample_mask` leaves) gives the reference's draw over the whole row with the mask.
    #[test]
    fn masked_candidates_match_the_reference() {
        let vocab = 320;
        let logits = test_logits(vocab);
        let mask: Vec<u32> = (0..vocab / 32)
            .map(|w| (0x9E37_79B9u32).rotate_left(w as u32 * 7) & 0x0101_1111)
            .collect();
        let mut masked = logits.clone();
        qwen3_backend::sampling::apply_mask(&mut masked, &mask);
        let supp = [mask[0].trailing_zeros()];
        for (top_k, temp, top_p, min_p) in
            [(0, 1.0, 1.0, 0.0), (3, 0.7, 1.0, 0.0), (0, 1.3, 0.8, 0.1)]
        {
            let p = params(top_k, temp, top_p, min_p);
            for i in 0..200u64 {
                let r = SampleRow {
                    allowed: Some(&mask),
                    ..row(&p, &supp, draw_seed(5, i))
                };
                let want = sample_row(&logits, &r, &mut Vec::new()).token;
                assert_eq!(device_draw(&masked, &r), want);
            }
        }
    }

    /// The candidate path draws exactly what the reference draws over the whole row.
    #[test]
    fn candidates_match_the_reference() {
        let logits = test_logits(300);
        let supp = [5u32, 17];
        for (top_k, temp, top_p, min_p) in [
            (1, 1.0, 1.0, 0.0),
            (10, 0.7, 1.0, 0.0),
            (40, 1.3, 0.8, 0.0),
            (40, 1.0, 1.0, 0.2),
        ] {
            let p = params(top_k, temp, top_p, min_p);
            for i in 0..200u64 {
                let r = row(&p, &supp, draw_seed(9, i));
                let want = sample_row(&logits, &r, &mut Vec::new()).token;
                assert_eq!(device_draw(&logits, &r), want);
            }
        }
    }
}
