//! Host side of sampling on the device: which rows need what from the device, and the
//! final draw over the few candidates the device returns.
//!
//! Greedy rows take the device's argmax (one id per row crosses to the host). Rows with
//! `top_k` take the device's top-k candidates (values and ids) and draw on the host with the
//! reference sampler over just those, which gives the same token as over the full row:
//! top-k keeps only those candidates anyway, and temperature, min-p and top-p only look at
//! the kept ones. Rows whose result depends on the whole vocabulary — logprobs, logit bias,
//! penalties, a structured-output mask, or no top-k bound — copy their full row to the host and use the reference
//! sampler as is.

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

pub fn plan_row(row: &SampleRow<'_>, vocab: usize) -> RowPlan {
    let p = row.params;
    // A structured-output row is masked over the whole vocabulary before any selection.
    if p.logprobs.is_some()
        || !p.logit_bias.is_empty()
        || p.uses_penalties()
        || row.allowed.is_some()
    {
        return RowPlan::Full;
    }
    let keep = if p.is_greedy() {
        1
    } else if p.top_k > 0 && (p.top_k as usize) <= MAX_CANDIDATES {
        p.top_k as usize
    } else {
        return RowPlan::Full;
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
        assert_eq!(plan_row(&row(&g, &[], 0), 100), RowPlan::Argmax);
        assert_eq!(
            plan_row(&row(&g, &[3, 3, 500], 0), 100),
            RowPlan::TopK { k: 2, keep: 1 }
        );
        let t = SamplingParams {
            top_k: 20,
            ..SamplingParams::default()
        };
        assert_eq!(
            plan_row(&row(&t, &[], 0), 100),
            RowPlan::TopK { k: 20, keep: 20 }
        );
        let unbounded = SamplingParams::default();
        assert_eq!(plan_row(&row(&unbounded, &[], 0), 100), RowPlan::Full);
        let lp = SamplingParams {
            logprobs: Some(1),
            ..SamplingParams::greedy()
        };
        assert_eq!(plan_row(&row(&lp, &[], 0), 100), RowPlan::Full);
        let pen = SamplingParams {
            presence_penalty: 0.5,
            top_k: 5,
            ..SamplingParams::default()
        };
        assert_eq!(plan_row(&row(&pen, &[], 0), 100), RowPlan::Full);
    }

    /// The candidate path draws exactly what the reference draws over the whole row.
    #[test]
    fn candidates_match_the_reference() {
        let vocab = 300;
        let logits: Vec<f32> = (0..vocab)
            .map(|i| ((i * 7919) % 97) as f32 / 13.0 - 3.0)
            .collect();
        let supp = [5u32, 17];
        for (top_k, temp, top_p, min_p) in [
            (1, 1.0, 1.0, 0.0),
            (10, 0.7, 1.0, 0.0),
            (40, 1.3, 0.8, 0.0),
            (40, 1.0, 1.0, 0.2),
        ] {
            let p = SamplingParams {
                top_k,
                temperature: temp,
                top_p,
                min_p,
                ..SamplingParams::default()
            };
            for i in 0..200u64 {
                let r = row(&p, &supp, draw_seed(9, i));
                let want = sample_row(&logits, &r, &mut Vec::new()).token;
                let RowPlan::TopK { k, keep } = plan_row(&r, vocab) else {
                    panic!("expected a top-k plan");
                };
                // What the device returns: the k largest, in any order.
                let mut idx: Vec<usize> = (0..vocab).collect();
                idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
                idx.truncate(k);
                idx.reverse();
                let vals: Vec<f32> = idx.iter().map(|&i| logits[i]).collect();
                let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
                assert_eq!(sample_candidates(&vals, &ids, keep, &r).token, want);
            }
        }
    }
}
