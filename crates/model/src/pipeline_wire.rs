//! What node 0 tells the other nodes each step, and what they answer, over the rendezvous'
//! TCP connection: a length-prefixed frame per message, little-endian fields.
//!
//! Node 0 → node: `Step` (the engine's [`Batch`] without its masks, and whether masks
//! follow), `Masks` (the step's structured-output masks, once the engine has them),
//! `ResizeKv`, `Stop`. Node → node 0: `Output` (the last stage's [`StepOutput`]; empty from
//! the others), `Done`, `Failed` (a reason).

use std::io::{Read, Write};
use std::sync::Arc;

use qwen3_step::batch::{NewSeq, ScheduledSeq, SeqOutput, SeqPromptLogprobs};
use qwen3_step::{Batch, PromptLogprob, Sampled, SamplingParams, StepOutput, TokenBitmask};

use crate::rendezvous::RendezvousError;

/// Largest frame either side accepts: a step's metadata is a few MB at most even for
/// 8K-token batches with long block tables.
const MAX_FRAME: u32 = 1 << 30;

type Result<T> = std::result::Result<T, RendezvousError>;

fn bad(what: impl Into<String>) -> RendezvousError {
    RendezvousError::Protocol(what.into())
}

/// Node 0 to the other nodes.
#[derive(Debug)]
pub enum Command {
    Step {
        batch: Batch,
        masks_follow: bool,
    },
    Masks(Vec<Option<TokenBitmask>>),
    ResizeKv {
        num_blocks: usize,
        block_size: usize,
    },
    Stop,
}

/// The other nodes to node 0.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Output(StepOutput),
    Done,
    Failed(String),
}

#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend(v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend(v.to_le_bytes());
    }
    fn f32(&mut self, v: f32) {
        self.0.extend(v.to_le_bytes());
    }
    fn u32s(&mut self, v: &[u32]) {
        self.u64(v.len() as u64);
        v.iter().for_each(|&x| self.u32(x));
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.0.extend(v);
    }
    fn pairs(&mut self, v: &[(u32, f32)]) {
        self.u64(v.len() as u64);
        for &(t, l) in v {
            self.u32(t);
            self.f32(l);
        }
    }
}

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            return Err(bad("a truncated pipeline message"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    /// A count of items each at least `min` bytes long, refused when the rest cannot hold it.
    fn len(&mut self, min: usize) -> Result<usize> {
        let n = self.u64()? as usize;
        if n.saturating_mul(min) > self.0.len() {
            return Err(bad(format!("a pipeline message claims {n} items")));
        }
        Ok(n)
    }
    fn u32s(&mut self) -> Result<Vec<u32>> {
        let n = self.len(4)?;
        (0..n).map(|_| self.u32()).collect()
    }
    fn bytes(&mut self) -> Result<&[u8]> {
        let n = self.len(1)?;
        self.take(n)
    }
    fn pairs(&mut self) -> Result<Vec<(u32, f32)>> {
        let n = self.len(8)?;
        (0..n).map(|_| Ok((self.u32()?, self.f32()?))).collect()
    }
}

fn put_batch(w: &mut W, b: &Batch) -> Result<()> {
    w.u64(b.new_seqs.len() as u64);
    for s in &b.new_seqs {
        w.u64(s.seq_id);
        w.u32s(&s.token_ids);
        w.u64(s.num_prompt_tokens as u64);
        let params = serde_json::to_vec(&*s.sampling)
            .map_err(|e| bad(format!("encoding sampling parameters: {e}")))?;
        w.bytes(&params);
    }
    w.u64(b.finished.len() as u64);
    b.finished.iter().for_each(|&id| w.u64(id));
    w.u64(b.seqs.len() as u64);
    for s in &b.seqs {
        w.u64(s.seq_id);
        w.u32(s.query_start);
        w.u32(s.query_len);
        w.u32(s.context_len);
        w.u8(u8::from(s.sample));
        w.u32s(&s.suppressed);
    }
    for v in [
        &b.token_ids,
        &b.positions,
        &b.slot_mapping,
        &b.block_tables,
        &b.deferred_inputs,
    ] {
        w.u32s(v);
    }
    w.u64(b.max_blocks_per_seq as u64);
    w.u64(b.block_size as u64);
    Ok(())
}

fn get_batch(r: &mut R) -> Result<Batch> {
    let mut b = Batch::default();
    for _ in 0..r.len(8)? {
        let seq_id = r.u64()?;
        let token_ids: Arc<[u32]> = r.u32s()?.into();
        let num_prompt_tokens = r.u64()? as usize;
        let sampling: SamplingParams = serde_json::from_slice(r.bytes()?)
            .map_err(|e| bad(format!("decoding sampling parameters: {e}")))?;
        b.new_seqs.push(NewSeq {
            seq_id,
            token_ids,
            num_prompt_tokens,
            sampling: Arc::new(sampling),
        });
    }
    for _ in 0..r.len(8)? {
        b.finished.push(r.u64()?);
    }
    for _ in 0..r.len(8)? {
        b.seqs.push(ScheduledSeq {
            seq_id: r.u64()?,
            query_start: r.u32()?,
            query_len: r.u32()?,
            context_len: r.u32()?,
            sample: r.u8()? != 0,
            suppressed: r.u32s()?,
        });
    }
    b.token_ids = r.u32s()?;
    b.positions = r.u32s()?;
    b.slot_mapping = r.u32s()?;
    b.block_tables = r.u32s()?;
    b.deferred_inputs = r.u32s()?;
    b.max_blocks_per_seq = r.u64()? as usize;
    b.block_size = r.u64()? as usize;
    Ok(b)
}

fn put_output(w: &mut W, o: &StepOutput) {
    w.u64(o.outputs.len() as u64);
    for s in &o.outputs {
        w.u64(s.seq_id);
        w.u32(s.sampled.token);
        match s.sampled.logprob {
            Some(l) => {
                w.u8(1);
                w.f32(l);
            }
            None => w.u8(0),
        }
        w.pairs(&s.sampled.top_logprobs);
    }
    w.u64(o.prompt_logprobs.len() as u64);
    for p in &o.prompt_logprobs {
        w.u64(p.seq_id);
        w.u64(p.first_index as u64);
        w.u64(p.entries.len() as u64);
        for e in &p.entries {
            w.u32(e.token_id);
            w.f32(e.logprob);
            w.u32(e.rank);
            w.pairs(&e.top);
        }
    }
}

fn get_output(r: &mut R) -> Result<StepOutput> {
    let mut o = StepOutput::default();
    for _ in 0..r.len(13)? {
        let seq_id = r.u64()?;
        let token = r.u32()?;
        let logprob = if r.u8()? != 0 { Some(r.f32()?) } else { None };
        let top_logprobs = r.pairs()?;
        o.outputs.push(SeqOutput {
            seq_id,
            sampled: Sampled {
                token,
                logprob,
                top_logprobs,
            },
        });
    }
    for _ in 0..r.len(24)? {
        let seq_id = r.u64()?;
        let first_index = r.u64()? as usize;
        let mut entries = Vec::new();
        for _ in 0..r.len(20)? {
            entries.push(PromptLogprob {
                token_id: r.u32()?,
                logprob: r.f32()?,
                rank: r.u32()?,
                top: r.pairs()?,
            });
        }
        o.prompt_logprobs.push(SeqPromptLogprobs {
            seq_id,
            first_index,
            entries,
        });
    }
    Ok(o)
}

impl Command {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut w = W::default();
        match self {
            Command::Step {
                batch,
                masks_follow,
            } => {
                w.u8(0);
                w.u8(u8::from(*masks_follow));
                put_batch(&mut w, batch)?;
            }
            Command::Masks(rows) => {
                w.u8(1);
                w.u64(rows.len() as u64);
                for m in rows {
                    match m {
                        Some(m) => {
                            w.u8(1);
                            w.u32s(m);
                        }
                        None => w.u8(0),
                    }
                }
            }
            Command::ResizeKv {
                num_blocks,
                block_size,
            } => {
                w.u8(2);
                w.u64(*num_blocks as u64);
                w.u64(*block_size as u64);
            }
            Command::Stop => w.u8(3),
        }
        Ok(w.0)
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut r = R(b);
        let c = match r.u8()? {
            0 => Command::Step {
                masks_follow: r.u8()? != 0,
                batch: get_batch(&mut r)?,
            },
            1 => {
                let mut rows = Vec::new();
                for _ in 0..r.len(1)? {
                    rows.push(match r.u8()? {
                        0 => None,
                        _ => Some(r.u32s()?.into()),
                    });
                }
                Command::Masks(rows)
            }
            2 => Command::ResizeKv {
                num_blocks: r.u64()? as usize,
                block_size: r.u64()? as usize,
            },
            3 => Command::Stop,
            k => return Err(bad(format!("an unknown pipeline command {k}"))),
        };
        Ok(c)
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W::default();
        match self {
            Reply::Output(o) => {
                w.u8(0);
                put_output(&mut w, o);
            }
            Reply::Done => w.u8(1),
            Reply::Failed(why) => {
                w.u8(2);
                w.bytes(why.as_bytes());
            }
        }
        w.0
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut r = R(b);
        Ok(match r.u8()? {
            0 => Reply::Output(get_output(&mut r)?),
            1 => Reply::Done,
            2 => Reply::Failed(String::from_utf8_lossy(r.bytes()?).into_owned()),
            k => return Err(bad(format!("an unknown pipeline reply {k}"))),
        })
    }
}

/// Writes one frame.
pub fn write_frame(s: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
    let mut f = Vec::with_capacity(payload.len() + 4);
    f.extend((payload.len() as u32).to_le_bytes());
    f.extend(payload);
    s.write_all(&f)
}

/// Reads one frame; None when the peer closed the connection between frames.
pub fn read_frame(s: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut n = [0u8; 4];
    match s.read_exact(&mut n) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(n);
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a pipeline frame of {n} bytes"),
        ));
    }
    let mut v = vec![0u8; n as usize];
    s.read_exact(&mut v)?;
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_and_its_output_cross_the_wire_unchanged() {
        let batch = Batch {
            new_seqs: vec![NewSeq {
                seq_id: 7,
                token_ids: vec![1, 2, 3].into(),
                num_prompt_tokens: 3,
                sampling: Arc::new(SamplingParams {
                    seed: Some(9),
                    logprobs: Some(2),
                    ..SamplingParams::greedy()
                }),
            }],
            finished: vec![4],
            seqs: vec![ScheduledSeq {
                seq_id: 7,
                query_start: 0,
                query_len: 3,
                context_len: 3,
                sample: true,
                suppressed: vec![5],
            }],
            token_ids: vec![1, 2, 3],
            positions: vec![0, 1, 2],
            slot_mapping: vec![16, 17, 18],
            block_tables: vec![1, 0],
            max_blocks_per_seq: 2,
            block_size: 16,
            masks: None,
            deferred_inputs: vec![2],
        };
        let bytes = Command::Step {
            batch: batch.clone(),
            masks_follow: true,
        }
        .encode()
        .unwrap();
        let Command::Step {
            batch: b,
            masks_follow,
        } = Command::decode(&bytes).unwrap()
        else {
            panic!("not a step")
        };
        assert!(masks_follow);
        assert_eq!(format!("{b:?}"), format!("{batch:?}"));
        let out = StepOutput {
            outputs: vec![SeqOutput {
                seq_id: 7,
                sampled: Sampled {
                    token: 11,
                    logprob: Some(-0.5),
                    top_logprobs: vec![(11, -0.5), (12, -1.5)],
                },
            }],
            prompt_logprobs: vec![SeqPromptLogprobs {
                seq_id: 7,
                first_index: 1,
                entries: vec![PromptLogprob {
                    token_id: 2,
                    logprob: -3.0,
                    rank: 4,
                    top: vec![(8, -0.1)],
                }],
            }],
        };
        let r = Reply::decode(&Reply::Output(out.clone()).encode()).unwrap();
        assert_eq!(r, Reply::Output(out));
        let masks = vec![None, Some(TokenBitmask::from(vec![0xffu32, 1]))];
        let Command::Masks(m) =
            Command::decode(&Command::Masks(masks.clone()).encode().unwrap()).unwrap()
        else {
            panic!("not masks")
        };
        assert_eq!(m, masks);
    }

    #[test]
    fn truncated_or_unknown_messages_are_errors() {
        let bytes = Command::ResizeKv {
            num_blocks: 3,
            block_size: 128,
        }
        .encode()
        .unwrap();
        assert!(Command::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Command::decode(&[9]).is_err());
        // A count larger than the bytes that follow is refused before allocating.
        let mut huge = vec![1u8];
        huge.extend(u64::MAX.to_le_bytes());
        assert!(Command::decode(&huge).is_err());
        assert!(Reply::decode(&[]).is_err());
    }
}
