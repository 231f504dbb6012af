//! The pool of KV cache blocks: ref counts, an LRU free queue, and the prefix-cache index.
//!
//! Modelled on vLLM V1's `BlockPool`: every block not referenced by a live sequence sits in
//! one free queue, ordered by when it was freed. Freed blocks that hold a cached full block
//! keep their hash, so a later request can take them back out of the queue (a prefix hit);
//! only when the pool needs a block is the one at the head (least recently freed) evicted.
//! The queue is an intrusive doubly-linked list over block ids, so taking a block out of the
//! middle is O(1) and nothing is allocated after construction.
//!
//! Block 0 is reserved as a null block (as vLLM does): it is never handed out, so a 0 in a
//! block table unambiguously means "no block", and a kernel that reads padding stays inside
//! memory that belongs to nobody.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use sha2::{Digest, Sha256};

pub type BlockId = u32;

/// The reserved block: never allocated, used as padding in block tables.
pub const NULL_BLOCK: BlockId = 0;

const NIL: u32 = u32::MAX;

/// SHA-256 of (parent block hash, token ids of the block): identifies a full block's
/// content together with everything before it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockHash(pub [u8; 32]);

impl Hash for BlockHash {
    // The value is already a cryptographic hash: its first 8 bytes are as good a map key as
    // any, so the map does not hash it again.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(b));
    }
}

/// Passes through the u64 written by `BlockHash::hash`.
#[derive(Default)]
pub struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for BlockHash keys; fold anything else in so the hasher stays correct.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type PrehashedMap<V> = HashMap<BlockHash, V, BuildHasherDefault<PrehashedHasher>>;

/// Root of every hash chain (the "parent" of a sequence's first block).
const ROOT_HASH: [u8; 32] = [0; 32];

/// Hash of one full block given its parent's hash (None for the first block).
pub fn hash_block(parent: Option<&BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    h.update(parent.map_or(&ROOT_HASH, |p| &p.0));
    // Feed the tokens through a small stack buffer: one update call per 64 tokens.
    let mut buf = [0u8; 256];
    for chunk in tokens.chunks(64) {
        for (i, t) in chunk.iter().enumerate() {
            buf[i * 4..i * 4 + 4].copy_from_slice(&t.to_le_bytes());
        }
        h.update(&buf[..chunk.len() * 4]);
    }
    BlockHash(h.finalize().into())
}

#[derive(Clone, Debug)]
struct BlockMeta {
    ref_cnt: u32,
    /// Set while the block is in the prefix-cache index.
    hash: Option<BlockHash>,
    prev: u32,
    next: u32,
    in_free_queue: bool,
}

#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<BlockMeta>,
    free_head: u32,
    free_tail: u32,
    num_free: usize,
    cached: PrehashedMap<BlockId>,
    enable_caching: bool,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks (block 0 reserved). `num_blocks` must be at least 2 and
    /// below `u32::MAX` (checked by the engine's config validation).
    pub fn new(num_blocks: usize, enable_caching: bool) -> Self {
        let n = num_blocks.max(1);
        let blocks = vec![
            BlockMeta {
                ref_cnt: 0,
                hash: None,
                prev: NIL,
                next: NIL,
                in_free_queue: false,
            };
            n
        ];
        let mut pool = Self {
            blocks,
            free_head: NIL,
            free_tail: NIL,
            num_free: 0,
            // Capacity for every block up front: inserting never reallocates on the hot path.
            cached: PrehashedMap::with_capacity_and_hasher(
                if enable_caching { n } else { 0 },
                Default::default(),
            ),
            enable_caching,
        };
        // The null block is permanently referenced, so it never enters the free queue.
        pool.blocks[NULL_BLOCK as usize].ref_cnt = 1;
        for id in 1..n as u32 {
            pool.push_back(id);
        }
        pool
    }

    /// Blocks that can ever be allocated (all but the null block).
    pub fn num_usable(&self) -> usize {
        self.blocks.len() - 1
    }

    /// Blocks in the free queue, including evictable cached ones.
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Fraction of usable blocks referenced by live sequences (vLLM's kv_cache_usage).
    pub fn usage(&self) -> f64 {
        let usable = self.num_usable();
        if usable == 0 {
            return 0.0;
        }
        1.0 - self.num_free as f64 / usable as f64
    }

    pub fn caching_enabled(&self) -> bool {
        self.enable_caching
    }

    pub fn ref_cnt(&self, id: BlockId) -> u32 {
        self.blocks.get(id as usize).map_or(0, |b| b.ref_cnt)
    }

    /// The cached block holding this content, if any.
    pub fn lookup(&self, hash: &BlockHash) -> Option<BlockId> {
        self.cached.get(hash).copied()
    }

    /// Takes a reference on a block (a prefix hit), taking it out of the free queue if needed.
    pub fn touch(&mut self, id: BlockId) {
        if self.blocks[id as usize].ref_cnt == 0 {
            self.unlink(id);
        }
        self.blocks[id as usize].ref_cnt += 1;
    }

    /// Pops the least recently freed block, evicting its cached content if it had any.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let id = self.free_head;
        if id == NIL {
            return None;
        }
        self.unlink(id);
        if let Some(h) = self.blocks[id as usize].hash.take() {
            if self.cached.get(&h) == Some(&id) {
                self.cached.remove(&h);
            }
        }
        self.blocks[id as usize].ref_cnt = 1;
        Some(id)
    }

    /// Drops one reference; a block nobody references goes to the back of the free queue
    /// (keeping its cached content until evicted).
    pub fn free(&mut self, id: BlockId) {
        let meta = &mut self.blocks[id as usize];
        if id == NULL_BLOCK || meta.ref_cnt == 0 {
            // A double free would corrupt the queue; refuse it (and flag it in debug builds).
            debug_assert!(false, "double free of block {id}");
            return;
        }
        meta.ref_cnt -= 1;
        if meta.ref_cnt == 0 {
            self.push_back(id);
        }
    }

    /// Records that `id` (a full, computed block) holds the content `hash`. A second block
    /// with the same content is not indexed (the first stays the canonical copy).
    pub fn cache_block(&mut self, id: BlockId, hash: BlockHash) {
        if !self.enable_caching || self.blocks[id as usize].hash.is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
            e.insert(id);
            self.blocks[id as usize].hash = Some(hash);
        }
    }

    /// Forgets every cached block (after an executor fault the content of blocks written in
    /// the failed step cannot be trusted).
    pub fn reset_prefix_cache(&mut self) {
        self.cached.clear();
        for b in &mut self.blocks {
            b.hash = None;
        }
    }

    /// Number of blocks currently indexed in the prefix cache.
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    fn push_back(&mut self, id: BlockId) {
        let tail = self.free_tail;
        {
            let m = &mut self.blocks[id as usize];
            m.prev = tail;
            m.next = NIL;
            m.in_free_queue = true;
        }
        if tail == NIL {
            self.free_head = id;
        } else {
            self.blocks[tail as usize].next = id;
        }
        self.free_tail = id;
        self.num_free += 1;
    }

    fn unlink(&mut self, id: BlockId) {
        let (prev, next) = {
            let m = &self.blocks[id as usize];
            if !m.in_free_queue {
                return;
            }
            (m.prev, m.next)
        };
        if prev == NIL {
            self.free_head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.free_tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let m = &mut self.blocks[id as usize];
        m.prev = NIL;
        m.next = NIL;
        m.in_free_queue = false;
        self.num_free -= 1;
    }

    /// Checks the pool's internal invariants against the block tables of every live
    /// sequence; used by the tests. Returns a description of the first violation.
    pub fn check_invariants(&self, tables: &[&[BlockId]]) -> Result<(), String> {
        let n = self.blocks.len();
        let mut refs = vec![0u32; n];
        for t in tables {
            for &b in *t {
                if b == NULL_BLOCK || b as usize >= n {
                    return Err(format!("table holds invalid block {b}"));
                }
                refs[b as usize] += 1;
            }
        }
        // Walk the free queue.
        let mut seen = vec![false; n];
        let mut count = 0usize;
        let mut cur = self.free_head;
        let mut prev = NIL;
        while cur != NIL {
            if seen[cur as usize] {
                return Err(format!("free queue has a cycle at {cur}"));
            }
            seen[cur as usize] = true;
            let m = &self.blocks[cur as usize];
            if m.prev != prev {
                return Err(format!("free queue back link broken at {cur}"));
            }
            if m.ref_cnt != 0 || !m.in_free_queue {
                return Err(format!(
                    "block {cur} in free queue with ref_cnt {}",
                    m.ref_cnt
                ));
            }
            count += 1;
            prev = cur;
            cur = m.next;
        }
        if prev != self.free_tail {
            return Err("free queue tail mismatch".into());
        }
        if count != self.num_free {
            return Err(format!(
                "num_free {} but queue holds {count}",
                self.num_free
            ));
        }
        let mut used = 0usize;
        for (id, m) in self.blocks.iter().enumerate().skip(1) {
            if m.ref_cnt != refs[id] {
                return Err(format!(
                    "block {id}: ref_cnt {} but {} tables hold it",
                    m.ref_cnt, refs[id]
                ));
            }
            if (m.ref_cnt == 0) != seen[id] {
                return Err(format!("block {id}: ref_cnt {} vs free queue", m.ref_cnt));
            }
            if m.ref_cnt > 0 {
                used += 1;
            }
            if let Some(h) = &m.hash {
                if self.cached.get(h) != Some(&(id as u32)) {
                    return Err(format!(
                        "block {id} has a hash the index does not map to it"
                    ));
                }
            }
        }
        if used + self.num_free != self.num_usable() {
            return Err(format!(
                "used {used} + free {} != usable {}",
                self.num_free,
                self.num_usable()
            ));
        }
        for (h, &id) in &self.cached {
            if self.blocks[id as usize].hash.as_ref() != Some(h) {
                return Err(format!(
                    "index maps a hash to block {id} that does not hold it"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_eviction_order_and_hits() {
        let mut p = BlockPool::new(4, true);
        assert_eq!(p.num_usable(), 3);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        let ha = hash_block(None, &[1, 2]);
        let hb = hash_block(Some(&ha), &[3, 4]);
        p.cache_block(a, ha);
        p.cache_block(b, hb);
        // Free b then a: a is the most recently freed, so b is evicted first.
        p.free(b);
        p.free(a);
        assert_eq!(p.num_free(), 3);
        assert_eq!(p.lookup(&ha), Some(a));
        let c = p.allocate().unwrap(); // the never-used block 3
        assert_eq!(c, 3);
        let d = p.allocate().unwrap(); // evicts b
        assert_eq!(d, b);
        assert_eq!(p.lookup(&hb), None);
        assert_eq!(p.lookup(&ha), Some(a));
        p.touch(a);
        assert_eq!(p.num_free(), 0);
        p.check_invariants(&[&[a], &[c], &[d]]).unwrap();
    }

    #[test]
    fn hash_depends_on_parent_and_tokens() {
        let h1 = hash_block(None, &[1, 2, 3]);
        assert_ne!(h1, hash_block(None, &[1, 2, 4]));
        assert_ne!(hash_block(Some(&h1), &[5]), hash_block(None, &[5]));
        assert_eq!(h1, hash_block(None, &[1, 2, 3]));
        let long: Vec<u32> = (0..200).collect();
        assert_ne!(hash_block(None, &long), hash_block(None, &long[..199]));
    }
}
