//! Sampling on the host: the reference sampler (the CPU path, and what devices that sample on
//! their own must match), and the seeding that keeps draws independent of batch order.
//! The parameters and the result are the step contract's ([`qwen3_step`]), re-exported here.

use std::cell::RefCell;

pub use qwen3_step::{Sampled, SamplingParams};

/// One row of logits to sample from, with the state sampling needs.
#[derive(Clone, Copy, Debug)]
pub struct SampleRow<'a> {
    pub params: &'a SamplingParams,
    /// Prompt tokens (for the repetition penalty).
    pub prompt_tokens: &'a [u32],
    /// Tokens generated so far (for penalties).
    pub output_tokens: &'a [u32],
    /// Tokens that must not be chosen at this step (EOS and stop ids before min_tokens).
    pub suppressed: &'a [u32],
    /// Structured output: the tokens that may be chosen (bit `t % 32` of word `t / 32`);
    /// None allows all.
    pub allowed: Option<&'a [u32]>,
    /// Seed for this row's draw, unique per (request, output position), so draws do not depend
    /// on batch composition.
    pub rng_seed: u64,
}

/// A uniform draw in `[0, 1)` from a 64-bit seed (SplitMix64 finaliser): counter-based, so a
/// request's draws depend only on its seed and position, never on batch order.
pub fn uniform_from_seed(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Mixes a request seed with an output position into the seed of one draw.
pub fn draw_seed(request_seed: u64, output_index: u64) -> u64 {
    request_seed
        ^ output_index
            .wrapping_mul(0xD6E8_FEB8_6659_FD93)
            .rotate_left(17)
}

/// Samples one token from a row of logits on the host. Devices that sample on their own
/// implement the same semantics; this is the reference and the CPU path.
///
/// Order as vLLM: logit bias and suppression, penalties, then temperature, min_p, top_k, top_p.
/// Logprobs are of the raw distribution (vLLM's default `raw_logprobs`).
pub fn sample_row(logits: &[f32], row: &SampleRow<'_>, scratch: &mut Vec<f32>) -> Sampled {
    let p = row.params;
    let (logprob_of, top_logprobs) = match p.logprobs {
        Some(n) => {
            let lse = log_sum_exp(logits);
            let top = top_n(logits, n as usize)
                .into_iter()
                .map(|(t, l)| (t, l - lse))
                .collect::<Vec<_>>();
            (Some(lse), top)
        }
        None => (None, Vec::new()),
    };

    // Logits that nothing modifies are read in place: no copy of a vocabulary-sized row.
    let modified = !p.logit_bias.is_empty()
        || (p.repetition_penalty != 1.0 && p.repetition_penalty > 0.0)
        || p.frequency_penalty != 0.0
        || p.presence_penalty != 0.0
        || !row.suppressed.is_empty();
    let v: &[f32] = if modified || (row.allowed.is_some() && !p.is_greedy()) {
        modify(logits, row, scratch)
    } else {
        logits
    };
    let token = if p.is_greedy() {
        match row.allowed {
            // Greedy under a mask needs no copy: the best allowed id, read in place.
            Some(mask) if !modified => masked_argmax(v, mask),
            _ => argmax(v),
        }
    } else {
        sample_processed(v, p, uniform_from_seed(row.rng_seed))
    };
    let logprob = logprob_of.map(|lse| {
        logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |l| l - lse)
    });
    Sampled {
        token,
        logprob,
        top_logprobs,
    }
}

/// `logits` with the bias, penalties and suppression applied, in `scratch`.
fn modify<'s>(logits: &[f32], row: &SampleRow<'_>, scratch: &'s mut Vec<f32>) -> &'s [f32] {
    let p = row.params;
    scratch.clear();
    scratch.extend_from_slice(logits);
    let v = scratch.as_mut_slice();
    for &(t, b) in &p.logit_bias {
        if let Some(x) = v.get_mut(t as usize) {
            *x += b;
        }
    }
    if p.repetition_penalty != 1.0 && p.repetition_penalty > 0.0 {
        // Each distinct token once, as vLLM's mask-based penalty does.
        let mut seen = std::collections::HashSet::new();
        for &t in row.prompt_tokens.iter().chain(row.output_tokens) {
            if seen.insert(t) {
                if let Some(x) = v.get_mut(t as usize) {
                    *x = if *x > 0.0 {
                        *x / p.repetition_penalty
                    } else {
                        *x * p.repetition_penalty
                    };
                }
            }
        }
    }
    if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &t in row.output_tokens {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(x) = v.get_mut(t as usize) {
                *x -= p.frequency_penalty * c as f32 + p.presence_penalty;
            }
        }
    }
    for &t in row.suppressed {
        if let Some(x) = v.get_mut(t as usize) {
            *x = f32::NEG_INFINITY;
        }
    }
    if let Some(mask) = row.allowed {
        apply_mask(v, mask);
    }
    v
}

/// Sets every logit the structured-output mask does not allow to -inf (rows past the mask's
/// end included).
pub fn apply_mask(v: &mut [f32], mask: &[u32]) {
    for (w, chunk) in v.chunks_mut(32).enumerate() {
        let bits = mask.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue;
        }
        for (b, x) in chunk.iter_mut().enumerate() {
            if bits & (1 << b) == 0 {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

/// First index of the maximum among the ids `mask` allows (0 when it allows none, as
/// [`argmax`] of a row of -inf).
fn masked_argmax(v: &[f32], mask: &[u32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (w, &bits) in mask.iter().enumerate() {
        let mut bits = bits;
        while bits != 0 {
            let i = w * 32 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            match v.get(i) {
                Some(&x) if x > best_v => {
                    best_v = x;
                    best = i;
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    best as u32
}

/// First index of the maximum, as torch.argmax.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        if x > best_v {
            best_v = x;
            best = i;
        }
    }
    best as u32
}

pub(crate) fn log_sum_exp(v: &[f32]) -> f32 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = v.iter().map(|&x| ((x - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

thread_local! {
    /// Candidate indices of [`top_n`] (vocabulary-sized), kept per thread.
    static TOP_IDX: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// The `n` largest (index, value) pairs, best first, ties by lower index.
pub(crate) fn top_n(v: &[f32], n: usize) -> Vec<(u32, f32)> {
    let n = n.min(v.len());
    if n == 0 {
        return Vec::new();
    }
    TOP_IDX.with(|c| {
        // Nested use cannot happen (nothing here calls back in); fall back rather than panic.
        let mut own = Vec::new();
        let mut guard = c.try_borrow_mut();
        let idx = guard.as_deref_mut().unwrap_or(&mut own);
        idx.clear();
        idx.extend(0..v.len() as u32);
        let cmp = |a: &u32, b: &u32| v[*b as usize].total_cmp(&v[*a as usize]).then(a.cmp(b));
        idx.select_nth_unstable_by(n - 1, cmp);
        idx.truncate(n);
        // Unstable is exact here: ties are broken by index, so the order is total.
        idx.sort_unstable_by(cmp);
        idx.iter().map(|&i| (i, v[i as usize])).collect()
    })
}

fn sample_processed(v: &[f32], p: &SamplingParams, u: f64) -> u32 {
    let t = p.temperature.max(1e-5);
    // Candidates sorted by logit, best first; truncated by top_k.
    let k = if p.top_k > 0 {
        (p.top_k as usize).min(v.len())
    } else {
        v.len()
    };
    let mut cand = top_n(v, k);
    let max = cand.first().map_or(0.0, |c| c.1);
    if !max.is_finite() {
        return cand.first().map_or(0, |c| c.0);
    }
    let mut probs: Vec<f64> = cand
        .iter()
        .map(|&(_, l)| (((l - max) / t) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= total);
    let mut keep = probs.len();
    if p.min_p > 0.0 {
        let floor = probs[0] * p.min_p as f64;
        keep = probs.iter().take_while(|&&x| x >= floor).count().max(1);
    }
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let mut n = 0;
        for &x in &probs[..keep] {
            n += 1;
            acc += x;
            if acc >= p.top_p as f64 {
                break;
            }
        }
        keep = n.max(1);
    }
    cand.truncate(keep);
    probs.truncate(keep);
    let total: f64 = probs.iter().sum();
    let target = u * total;
    let mut acc = 0.0;
    for (i, x) in probs.iter().enumerate() {
        acc += x;
        if target < acc {
            return cand[i].0;
        }
    }
    cand.last().map_or(0, |c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(p: &'a SamplingParams, out: &'a [u32], seed: u64) -> SampleRow<'a> {
        SampleRow {
            params: p,
            prompt_tokens: &[],
            output_tokens: out,
            suppressed: &[],
            allowed: None,
            rng_seed: seed,
        }
    }

    #[test]
    fn the_structured_output_mask_limits_every_draw() {
        // 70 logits rising with the id; only ids 3 and 40 are allowed (words 0 and 1).
        let logits: Vec<f32> = (0..70).map(|i| i as f32 / 10.0).collect();
        let mask = [1u32 << 3, 1u32 << (40 - 32), 0];
        let greedy = SamplingParams::greedy();
        let r = SampleRow {
            allowed: Some(&mask),
            ..row(&greedy, &[], 0)
        };
        assert_eq!(sample_row(&logits, &r, &mut Vec::new()).token, 40);
        let hot = SamplingParams {
            temperature: 2.0,
            ..SamplingParams::default()
        };
        for seed in 0..200 {
            let r = SampleRow {
                allowed: Some(&mask),
                ..row(&hot, &[], seed)
            };
            let t = sample_row(&logits, &r, &mut Vec::new()).token;
            assert!(t == 3 || t == 40, "drew {t}");
        }
    }

    #[test]
    fn greedy_takes_first_max() {
        let p = SamplingParams::greedy();
        let s = sample_row(&[1.0, 3.0, 3.0, 2.0], &row(&p, &[], 0), &mut Vec::new());
        assert_eq!(s.token, 1);
        assert_eq!(s.logprob, None);
    }

    #[test]
    fn logprobs_are_raw_and_sorted() {
        let p = SamplingParams {
            logprobs: Some(2),
            ..SamplingParams::greedy()
        };
        let logits = [0.0f32, 1.0, 2.0];
        let s = sample_row(&logits, &row(&p, &[], 0), &mut Vec::new());
        let lse = (1.0f32 + 1f32.exp() + 2f32.exp()).ln();
        assert_eq!(s.token, 2);
        assert!((s.logprob.unwrap_or(0.0) - (2.0 - lse)).abs() < 1e-5);
        assert_eq!(s.top_logprobs.len(), 2);
        assert_eq!(s.top_logprobs[0].0, 2);
        assert_eq!(s.top_logprobs[1].0, 1);
    }

    #[test]
    fn top_k_one_and_suppression() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            ..SamplingParams::default()
        };
        let mut r = row(&p, &[], 7);
        let supp = [2u32];
        r.suppressed = &supp;
        assert_eq!(sample_row(&[0.0, 1.0, 5.0], &r, &mut Vec::new()).token, 1);
    }

    #[test]
    fn seeded_draws_repeat_and_follow_distribution() {
        let p = SamplingParams::default();
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let mut ones = 0;
        for i in 0..4000u64 {
            let a = sample_row(&logits, &row(&p, &[], draw_seed(42, i)), &mut Vec::new());
            let b = sample_row(&logits, &row(&p, &[], draw_seed(42, i)), &mut Vec::new());
            assert_eq!(a.token, b.token);
            ones += a.token as usize;
        }
        let frac = ones as f64 / 4000.0;
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let logits = [5.0f32, 4.9, -10.0, -10.0];
        for p in [
            SamplingParams {
                top_p: 0.9,
                ..SamplingParams::default()
            },
            SamplingParams {
                min_p: 0.1,
                ..SamplingParams::default()
            },
        ] {
            for i in 0..500u64 {
                let s = sample_row(&logits, &row(&p, &[], draw_seed(1, i)), &mut Vec::new());
                assert!(s.token < 2);
            }
        }
    }

    #[test]
    fn penalties_change_the_choice() {
        let logits = [2.0f32, 1.9];
        let p = SamplingParams {
            frequency_penalty: 0.5,
            ..SamplingParams::greedy()
        };
        assert_eq!(
            sample_row(&logits, &row(&p, &[0], 0), &mut Vec::new()).token,
            1
        );
        let p = SamplingParams {
            repetition_penalty: 1.2,
            ..SamplingParams::greedy()
        };
        assert_eq!(
            sample_row(&logits, &row(&p, &[0], 0), &mut Vec::new()).token,
            1
        );
        let p = SamplingParams {
            logit_bias: vec![(1, -5.0)],
            ..SamplingParams::greedy()
        };
        assert_eq!(
            sample_row(&[1.0, 2.0], &row(&p, &[], 0), &mut Vec::new()).token,
            0
        );
    }
}
