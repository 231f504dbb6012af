//! A deterministic fake model for tests, here and in other crates.
//!
//! The next token is a function of the sequence's history only (by default a hash of the last
//! few tokens), so a request produces the same tokens however it is batched, chunked, cached
//! or preempted. The fake keeps per-sequence state from `new_seqs` / `finished` exactly as a
//! real executor must, and it checks every batch: layout, positions, context lengths, block
//! tables and slot mapping, that finished sequences are never scheduled again, and — by
//! simulating the KV cache, writing (token, position) into each slot and reading each
//! sequence's whole context back through its block table — that no slot is shared by two
//! live sequences except prefix-cache-shared full blocks holding identical content.
//! A violation is returned as an `ExecutorError`. It honours async scheduling's deferred
//! inputs, checking that each is the token it sampled for that sequence in its previous step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokenizers::Tokenizer;

use crate::batch::{
    Batch, Executor, ExecutorError, Sampled, SamplingParams, SeqId, SeqOutput, StepOutput,
};

/// `next token = f(history, num_prompt_tokens)`.
pub type TokenFn = Arc<dyn Fn(&[u32], usize) -> u32 + Send + Sync>;

/// The default fake model: a hash of the last 4 tokens and the length, mod `vocab`.
pub fn hash_token_fn(vocab: u32) -> TokenFn {
    Arc::new(move |h: &[u32], _np: usize| {
        let mut x: u64 = 0xcbf2_9ce4_8422_2325 ^ h.len() as u64;
        for &t in &h[h.len().saturating_sub(4)..] {
            x ^= u64::from(t);
            x = x.wrapping_mul(0x0100_0000_01b3);
            x ^= x >> 29;
        }
        (x % u64::from(vocab.max(1))) as u32
    })
}

/// A scripted model: output token `i` is `script[i % len]`, whatever the prompt.
pub fn script_token_fn(script: Vec<u32>) -> TokenFn {
    Arc::new(move |h: &[u32], np: usize| {
        if script.is_empty() {
            return 0;
        }
        script[(h.len() - np) % script.len()]
    })
}

/// Knobs a test can turn while the executor runs on the engine thread.
#[derive(Debug, Default)]
pub struct FakeControl {
    /// Fail the next step (then reset).
    pub fail_next: AtomicBool,
    /// Fail the next step and every one after, reporting itself broken (as a tensor-parallel
    /// group with a faulted rank).
    pub break_next: AtomicBool,
    /// Panic in the next step (then reset).
    pub panic_next: AtomicBool,
    /// Sleep this many microseconds per step (to keep requests in flight).
    pub step_delay_us: AtomicU64,
    /// Steps executed.
    pub steps: AtomicU64,
    /// Largest number of sequences seen in one step.
    pub max_batch_seqs: AtomicU64,
}

struct FakeSeq {
    tokens: Vec<u32>,
    num_prompt: usize,
    sampling: Arc<SamplingParams>,
    /// Tokens in the KV cache, None until first scheduled.
    computed: Option<usize>,
    table: Vec<u32>,
    /// The step (count of steps run) that last sampled a token for this sequence.
    sampled_at: Option<u64>,
}

pub struct FakeExecutor {
    block_size: usize,
    num_blocks: usize,
    vocab: u32,
    token_fn: TokenFn,
    seqs: HashMap<SeqId, FakeSeq>,
    /// Simulated KV cache: (token, position) per slot.
    kv: Vec<Option<(u32, u32)>>,
    written: Vec<bool>,
    control: Arc<FakeControl>,
    check_kv: bool,
    /// Steps run so far.
    step_index: u64,
    /// This step's input ids, deferred ones resolved.
    inputs: Vec<u32>,
}

impl FakeExecutor {
    /// A fake for a cache of `num_blocks` blocks of `block_size`, sampling from `vocab` ids
    /// with the default hash model.
    pub fn new(block_size: usize, num_blocks: usize, vocab: u32) -> Self {
        Self {
            block_size,
            num_blocks,
            vocab,
            token_fn: hash_token_fn(vocab),
            seqs: HashMap::new(),
            kv: vec![None; num_blocks * block_size],
            written: vec![false; num_blocks * block_size],
            control: Arc::new(FakeControl::default()),
            check_kv: true,
            step_index: 0,
            inputs: Vec::new(),
        }
    }

    pub fn with_token_fn(mut self, f: TokenFn) -> Self {
        self.token_fn = f;
        self
    }

    /// Skips the simulated-KV read-back (O(context) per sequence per step) for big runs.
    pub fn without_kv_check(mut self) -> Self {
        self.check_kv = false;
        self
    }

    pub fn control(&self) -> Arc<FakeControl> {
        Arc::clone(&self.control)
    }

    /// Sequences the fake currently holds state for.
    pub fn num_live_seqs(&self) -> usize {
        self.seqs.len()
    }

    fn sample(
        &self,
        s: &FakeSeq,
        suppressed: &[u32],
        allowed: Option<&[u32]>,
    ) -> Result<u32, ExecutorError> {
        let mut t = (self.token_fn)(&s.tokens, s.num_prompt) % self.vocab.max(1);
        // Honour suppression and a structured-output mask the way a sampler would: take the
        // next allowed id.
        for _ in 0..self.vocab {
            if !suppressed.contains(&t) && allowed.is_none_or(|m| crate::batch::mask_allows(m, t)) {
                return Ok(t);
            }
            t = (t + 1) % self.vocab;
        }
        Err(ExecutorError("every token id is suppressed".into()))
    }

    fn check(&mut self, batch: &Batch, tokens: &[u32]) -> Result<(), String> {
        let bs = self.block_size;
        if batch.block_size != bs {
            return Err(format!("block_size {} != {bs}", batch.block_size));
        }
        let n = batch.token_ids.len();
        if batch.positions.len() != n || batch.slot_mapping.len() != n {
            return Err("token_ids / positions / slot_mapping lengths differ".into());
        }
        let w = batch.max_blocks_per_seq;
        if batch.block_tables.len() != batch.seqs.len() * w {
            return Err("block_tables is not seqs x max_blocks_per_seq".into());
        }
        let mut offset = 0u32;
        let mut seen = std::collections::HashSet::new();
        self.written.iter_mut().for_each(|x| *x = false);
        for (i, s) in batch.seqs.iter().enumerate() {
            if !seen.insert(s.seq_id) {
                return Err(format!("seq {} scheduled twice in one step", s.seq_id));
            }
            let Some(fs) = self.seqs.get(&s.seq_id) else {
                return Err(format!("seq {} scheduled but not live", s.seq_id));
            };
            if s.query_start != offset || s.query_len == 0 {
                return Err(format!("seq {}: bad query_start/len", s.seq_id));
            }
            let (start, end) = (
                (s.context_len - s.query_len) as usize,
                s.context_len as usize,
            );
            match fs.computed {
                Some(c) if c != start => {
                    return Err(format!(
                        "seq {}: continues at {start}, computed {c}",
                        s.seq_id
                    ))
                }
                None if start % bs != 0 => {
                    return Err(format!(
                        "seq {}: prefix hit of {start} not whole blocks",
                        s.seq_id
                    ))
                }
                _ => {}
            }
            if end > fs.tokens.len() {
                return Err(format!("seq {}: context beyond known tokens", s.seq_id));
            }
            if s.sample != (end == fs.tokens.len()) {
                return Err(format!("seq {}: sample flag wrong", s.seq_id));
            }
            let q = s.query_start as usize..(s.query_start + s.query_len) as usize;
            if tokens[q.clone()] != fs.tokens[start..end] {
                return Err(format!("seq {}: token ids differ from history", s.seq_id));
            }
            if !batch.positions[q.clone()]
                .iter()
                .zip(start as u32..)
                .all(|(a, b)| *a == b)
            {
                return Err(format!("seq {}: positions not contiguous", s.seq_id));
            }
            let row = batch.block_table(i);
            let needed = end.div_ceil(bs);
            if needed > w {
                return Err(format!("seq {}: block table too narrow", s.seq_id));
            }
            if row[needed..].iter().any(|&b| b != 0) {
                return Err(format!("seq {}: padding not zero", s.seq_id));
            }
            let mut ids = row[..needed].to_vec();
            if ids.iter().any(|&b| b == 0 || b as usize >= self.num_blocks) {
                return Err(format!("seq {}: block id out of range: {ids:?}", s.seq_id));
            }
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != needed {
                return Err(format!("seq {}: block repeated in its table", s.seq_id));
            }
            for (j, p) in q.clone().zip(start..end) {
                let want = row[p / bs] as usize * bs + p % bs;
                if batch.slot_mapping[j] as usize != want {
                    return Err(format!("seq {}: slot mapping inconsistent", s.seq_id));
                }
                if self.written[want] {
                    return Err(format!("slot {want} written twice in one step"));
                }
                self.written[want] = true;
                self.kv[want] = Some((tokens[j], p as u32));
            }
            offset += s.query_len;
        }
        if offset as usize != n {
            return Err("token count does not match the sequences".into());
        }
        // Record the new tables and contexts, then check sharing across all live sequences.
        for (i, s) in batch.seqs.iter().enumerate() {
            let needed = (s.context_len as usize).div_ceil(bs);
            let row = batch.block_table(i)[..needed].to_vec();
            if let Some(fs) = self.seqs.get_mut(&s.seq_id) {
                fs.table = row;
                fs.computed = Some(s.context_len as usize);
            }
        }
        let mut owners: HashMap<u32, (SeqId, usize)> = HashMap::new();
        for (&id, fs) in &self.seqs {
            let Some(ctx) = fs.computed else { continue };
            for (idx, &b) in fs.table.iter().enumerate() {
                if let Some(&(other, oidx)) = owners.get(&b) {
                    let octx = self.seqs[&other].computed.unwrap_or(0);
                    let full = (idx + 1) * bs <= ctx && (oidx + 1) * bs <= octx;
                    if idx != oidx || !full {
                        return Err(format!(
                            "block {b} shared by seqs {id} and {other} outside a full prefix block"
                        ));
                    }
                } else {
                    owners.insert(b, (id, idx));
                }
            }
        }
        if self.check_kv {
            for s in &batch.seqs {
                let fs = &self.seqs[&s.seq_id];
                for p in 0..s.context_len as usize {
                    let slot = fs.table[p / bs] as usize * bs + p % bs;
                    if self.kv[slot] != Some((fs.tokens[p], p as u32)) {
                        return Err(format!(
                            "seq {}: KV at position {p} holds {:?}, expected {:?}",
                            s.seq_id,
                            self.kv[slot],
                            (fs.tokens[p], p)
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Executor for FakeExecutor {
    fn is_broken(&self) -> bool {
        self.control.break_next.load(Ordering::Acquire)
    }

    fn resolves_deferred_inputs(&self) -> bool {
        true
    }

    fn execute(&mut self, batch: &Batch) -> Result<StepOutput, ExecutorError> {
        for id in &batch.finished {
            if self.seqs.remove(id).is_none() {
                return Err(ExecutorError(format!("finished seq {id} is not live")));
            }
        }
        for ns in &batch.new_seqs {
            if self.seqs.contains_key(&ns.seq_id) {
                return Err(ExecutorError(format!(
                    "new seq {} is already live",
                    ns.seq_id
                )));
            }
            if ns.num_prompt_tokens == 0 || ns.num_prompt_tokens > ns.token_ids.len() {
                return Err(ExecutorError(format!(
                    "new seq {}: bad prompt length",
                    ns.seq_id
                )));
            }
            self.seqs.insert(
                ns.seq_id,
                FakeSeq {
                    tokens: ns.token_ids.to_vec(),
                    num_prompt: ns.num_prompt_tokens,
                    sampling: Arc::clone(&ns.sampling),
                    computed: None,
                    table: Vec::new(),
                    sampled_at: None,
                },
            );
        }
        let c = &self.control;
        c.steps.fetch_add(1, Ordering::Relaxed);
        c.max_batch_seqs
            .fetch_max(batch.seqs.len() as u64, Ordering::Relaxed);
        let delay = c.step_delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        if c.fail_next.swap(false, Ordering::AcqRel) {
            return Err(ExecutorError("injected device fault".into()));
        }
        if c.break_next.load(Ordering::Acquire) {
            return Err(ExecutorError(
                "injected fault of a tensor-parallel rank".into(),
            ));
        }
        if c.panic_next.swap(false, Ordering::AcqRel) {
            panic!("injected executor panic");
        }
        self.step_index += 1;
        let (seqs, step) = (&self.seqs, self.step_index);
        let mut inputs = std::mem::take(&mut self.inputs);
        let resolved = batch.resolve_inputs(&mut inputs, |id, pos| {
            let fs = seqs.get(&id)?;
            let last = fs.sampled_at == Some(step - 1) && fs.tokens.len() == pos + 1;
            last.then(|| fs.tokens[pos])
        });
        let checked = resolved.and_then(|()| self.check(batch, &inputs).map_err(ExecutorError));
        self.inputs = inputs;
        checked?;
        let mut outputs = Vec::new();
        let masks = batch.masks.as_deref().map(|m| m.wait());
        for (i, s) in batch.seqs.iter().enumerate().filter(|(_, s)| s.sample) {
            let fs = &self.seqs[&s.seq_id];
            let allowed = masks.and_then(|m| m.get(i)).and_then(|m| m.as_deref());
            let token = self.sample(fs, &s.suppressed, allowed)?;
            let (logprob, top_logprobs) = match fs.sampling.logprobs {
                Some(k) => (
                    Some(-0.5),
                    (0..k)
                        .map(|i| ((token + i) % self.vocab, -0.5 - i as f32))
                        .collect(),
                ),
                None => (None, Vec::new()),
            };
            if let Some(fs) = self.seqs.get_mut(&s.seq_id) {
                fs.tokens.push(token);
                fs.sampled_at = Some(self.step_index);
            }
            outputs.push(SeqOutput {
                seq_id: s.seq_id,
                sampled: Sampled {
                    token,
                    logprob,
                    top_logprobs,
                },
            });
        }
        Ok(StepOutput {
            outputs,
            ..StepOutput::default()
        })
    }
}

/// GPT-2 style byte → printable char map used by byte-level BPE.
fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        table[b as usize] = char::from_u32(c).unwrap_or(' ');
    }
    table
}

/// A tiny byte-level BPE tokenizer with no merges: token id = byte value (0..256), plus
/// special tokens `<|endoftext|>` = 256 and `<|im_end|>` = 257. Every multi-byte character
/// spans several tokens, which is what incremental-detokenization tests need.
pub fn byte_level_test_tokenizer() -> tokenizers::Result<Tokenizer> {
    let table = bytes_to_unicode();
    let vocab: serde_json::Map<String, serde_json::Value> = table
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::Value::from(i)))
        .collect();
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": false, "use_regex": true});
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(256, "<|endoftext|>"), special(257, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    json.to_string().parse::<Tokenizer>()
}
