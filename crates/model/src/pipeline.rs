//! Pipeline stages: which decoder layers each pipeline rank (one per node) runs.

use std::ops::Range;

use crate::error::ModelError;

/// Layers `[start, end)` that pipeline rank `rank` of `size` runs, split as vLLM's
/// `get_pp_indices` (vllm/distributed/utils.py) does so that both serve one model alike:
/// equal shares, and the remainder one layer each to the stages before the last, from the
/// second-to-last backwards (the last stage also runs the final norm and the LM head, the
/// first the embedding).
pub fn stage_layers(
    num_layers: usize,
    size: usize,
    rank: usize,
) -> Result<Range<usize>, ModelError> {
    if size == 0 || rank >= size || size > num_layers {
        return Err(ModelError::Invalid(format!(
            "pipeline rank {rank} of {size} over {num_layers} layers: each stage needs at least one layer"
        )));
    }
    let mut parts = vec![num_layers / size; size];
    for i in 2..(num_layers % size) + 2 {
        parts[size - i] += 1;
    }
    let start: usize = parts[..rank].iter().sum();
    Ok(start..start + parts[rank])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(n: usize, size: usize) -> Vec<usize> {
        (0..size)
            .map(|r| stage_layers(n, size, r).unwrap().len())
            .collect()
    }

    #[test]
    fn layers_split_as_vllm_does() {
        // Worked by hand from the rule: the remainder goes to the stages before the last.
        assert_eq!(split(61, 2), [31, 30]);
        assert_eq!(split(61, 4), [15, 15, 16, 15]);
        assert_eq!(split(22, 4), [5, 6, 6, 5]);
        assert_eq!(split(5, 3), [2, 2, 1]);
        // Qwen3-235B-A22B over two nodes.
        assert_eq!(split(94, 2), [47, 47]);
        assert_eq!(stage_layers(94, 2, 1).unwrap(), 47..94);
    }

    #[test]
    fn stages_cover_every_layer_once_in_order() {
        for n in 1..40 {
            for size in 1..=n.min(9) {
                let mut next = 0;
                for r in 0..size {
                    let l = stage_layers(n, size, r).unwrap();
                    assert_eq!(l.start, next, "{n} layers, {size} stages");
                    assert!(!l.is_empty());
                    next = l.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn more_stages_than_layers_or_a_rank_out_of_range_is_refused() {
        assert!(stage_layers(2, 3, 0).is_err());
        assert!(stage_layers(8, 2, 2).is_err());
        assert!(stage_layers(8, 0, 0).is_err());
    }
}
