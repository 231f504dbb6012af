//! Prompt logprobs on the executor side: which rows of a step score which prompt tokens, and
//! their logits computed a bounded number of rows at a time, so a long prompt never holds
//! `[tokens, vocab]` logits at once.

use qwen3_backend::comm::Communicator;
use qwen3_backend::Backend;
use qwen3_step::batch::SeqPromptLogprobs;
use qwen3_step::{Batch, SeqId};

use crate::error::ModelError;
use crate::qwen3::Qwen3;

/// Most bytes of F32 logits one chunk of prompt rows may take (on the device and, where a
/// backend reads rows back, on the host): about 110 rows of a 151,936-token vocabulary.
pub const PROMPT_LOGITS_CHUNK_BYTES: usize = 64 << 20;

/// The rows of one sequence's chunk in this step that score prompt tokens: row
/// `first_row + i` holds the logits that score `targets[i]`, prompt token `first_index + i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptSpan {
    pub seq_id: SeqId,
    pub first_index: usize,
    pub first_row: u32,
    pub targets: Vec<u32>,
    pub top_n: usize,
}

/// Rows per chunk for a vocabulary of `vocab` tokens.
pub fn rows_per_chunk(vocab: usize) -> usize {
    (PROMPT_LOGITS_CHUNK_BYTES / (vocab.max(1) * 4)).max(1)
}

/// The prompt spans of a step. `prompt_of` gives a sequence's prompt and its
/// `prompt_logprobs` count, None when it asked for none.
pub fn plan<'a>(
    batch: &Batch,
    prompt_of: impl Fn(SeqId) -> Option<(&'a [u32], u32)>,
) -> Vec<PromptSpan> {
    let mut spans = Vec::new();
    for s in &batch.seqs {
        let Some((prompt, n)) = prompt_of(s.seq_id) else {
            continue;
        };
        // The logits at position p score token p + 1; the last prompt position's score the
        // first generated token (sampling's business, not the prompt's).
        let start = (s.context_len - s.query_len) as usize;
        let end = (s.context_len as usize).min(prompt.len().saturating_sub(1));
        if start >= end {
            continue;
        }
        spans.push(PromptSpan {
            seq_id: s.seq_id,
            first_index: start + 1,
            first_row: s.query_start,
            targets: prompt[start + 1..end + 1].to_vec(),
            top_n: n as usize,
        });
    }
    spans
}

/// The logprobs of every span, from the step's final hidden states. Every rank calls this
/// with the same spans (the lm_head's gather is a collective); only a rank with `emit` set
/// reads the numbers out, the others return nothing.
pub fn compute<B: Backend>(
    model: &Qwen3<B>,
    backend: &B,
    comm: &dyn Communicator<B>,
    hidden: &B::Tensor,
    spans: &[PromptSpan],
    emit: bool,
) -> Result<Vec<SeqPromptLogprobs>, ModelError> {
    let chunk = rows_per_chunk(model.config.vocab_size);
    let mut out = Vec::with_capacity(spans.len());
    let mut rows = Vec::with_capacity(chunk);
    for span in spans {
        let mut entries = Vec::with_capacity(if emit { span.targets.len() } else { 0 });
        for (c, targets) in span.targets.chunks(chunk).enumerate() {
            rows.clear();
            let first = span.first_row + (c * chunk) as u32;
            rows.extend(first..first + targets.len() as u32);
            let logits = model.logits(backend, comm, hidden, &rows)?;
            if emit {
                entries.extend(backend.prompt_logprobs(&logits, targets, span.top_n)?);
            }
        }
        if emit {
            out.push(SeqPromptLogprobs {
                seq_id: span.seq_id,
                first_index: span.first_index,
                entries,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwen3_step::ScheduledSeq;

    fn seq(id: SeqId, query_start: u32, query_len: u32, context_len: u32) -> ScheduledSeq {
        ScheduledSeq {
            seq_id: id,
            query_start,
            query_len,
            context_len,
            sample: false,
            suppressed: Vec::new(),
        }
    }

    #[test]
    fn spans_cover_each_chunk_and_stop_before_the_last_prompt_position() {
        let prompt: Vec<u32> = (100..110).collect(); // 10 tokens
        let batch = Batch {
            seqs: vec![
                seq(1, 0, 4, 4),   // positions 0..4 score tokens 1..5
                seq(2, 4, 6, 10),  // positions 4..10: 4..9 score 5..10, 9 samples
                seq(3, 10, 1, 11), // a decode: nothing
                seq(4, 11, 3, 3),  // no prompt logprobs asked
            ],
            ..Batch::default()
        };
        let spans = plan(&batch, |id| (id != 4).then_some((&prompt[..], 2)));
        assert_eq!(spans.len(), 2);
        assert_eq!((spans[0].first_index, spans[0].first_row), (1, 0));
        assert_eq!(spans[0].targets, vec![101, 102, 103, 104]);
        assert_eq!((spans[1].first_index, spans[1].first_row), (5, 4));
        assert_eq!(spans[1].targets, vec![105, 106, 107, 108, 109]);
        assert_eq!(rows_per_chunk(151_936), 110);
        assert_eq!(rows_per_chunk(usize::MAX / 8), 1);
    }
}
