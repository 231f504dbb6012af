//! Prompt logprobs: the log-softmax of a row of logits read at the token that followed, with
//! its rank and the row's top alternatives (what vLLM's `prompt_logprobs` and `echo` return).
//! The host reference here is the CPU path and every device's fallback.

pub use qwen3_step::PromptLogprob;

use crate::sampling::{log_sum_exp, top_n};

/// Logprobs of `target` under the raw distribution `logits`, with its rank and the top `n`.
/// A target outside the row scores `-inf` with the last rank.
pub fn row_prompt_logprob(logits: &[f32], target: u32, n: usize) -> PromptLogprob {
    let lse = log_sum_exp(logits);
    let (logprob, rank) = match logits.get(target as usize) {
        Some(&x) => (
            x - lse,
            1 + logits.iter().filter(|&&y| y > x).count() as u32,
        ),
        None => (f32::NEG_INFINITY, logits.len() as u32),
    };
    PromptLogprob {
        token_id: target,
        logprob,
        rank,
        top: top_n(logits, n)
            .into_iter()
            .map(|(t, l)| (t, l - lse))
            .collect(),
    }
}

/// [`row_prompt_logprob`] for each row of row-major `logits` `[targets.len(), vocab]`.
pub fn host_prompt_logprobs(
    logits: &[f32],
    vocab: usize,
    targets: &[u32],
    n: usize,
) -> Vec<PromptLogprob> {
    logits
        .chunks_exact(vocab.max(1))
        .zip(targets)
        .map(|(row, &t)| row_prompt_logprob(row, t, n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprob_rank_and_top_match_a_direct_log_softmax() {
        let logits = [0.5f32, 2.0, -1.0, 2.0, 1.0];
        let lse = logits.iter().map(|x| x.exp()).sum::<f32>().ln();
        let p = row_prompt_logprob(&logits, 4, 2);
        assert!((p.logprob - (1.0 - lse)).abs() < 1e-6);
        // Two tokens (1 and 3) score higher than token 4.
        assert_eq!(p.rank, 3);
        assert_eq!(p.top.len(), 2);
        assert_eq!((p.top[0].0, p.top[1].0), (1, 3));
        assert!((p.top[0].1 - (2.0 - lse)).abs() < 1e-6);
        // Ties share the best rank.
        assert_eq!(row_prompt_logprob(&logits, 3, 0).rank, 1);
        assert!(row_prompt_logprob(&logits, 9, 0).logprob.is_infinite());
    }
}
