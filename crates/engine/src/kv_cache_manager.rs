//! Per-sequence block tables on top of the [`BlockPool`]: prefix-cache lookup, slot
//! allocation for a step's new tokens, and freeing on finish or preemption.
//!
//! As in vLLM V1, a sequence's full blocks are hashed as a chain (each hash covers its
//! parent's), and blocks are indexed in the prefix cache as soon as the step that computes
//! them is scheduled: K/V for a whole step is written before any of the step's attention
//! reads it, so a request admitted later in the same step may already share them.

use crate::block_pool::{hash_block, BlockHash, BlockId, BlockPool};

/// One sequence's view of the KV cache. Lives inside the scheduler's request state so a step
/// does no map look-ups; its Vecs keep their capacity across preemptions.
#[derive(Debug, Default)]
pub struct SeqBlocks {
    table: Vec<BlockId>,
    /// Chain hashes of the sequence's full blocks computed so far (valid across preemption:
    /// they depend only on the tokens).
    hashes: Vec<BlockHash>,
    /// How many leading blocks of `table` have been offered to the prefix cache.
    num_cached_blocks: usize,
}

impl SeqBlocks {
    /// Reserves room for a sequence of up to `max_tokens` tokens, so growing it allocates
    /// nothing on the hot path.
    pub fn with_capacity(max_tokens: usize, block_size: usize, caching: bool) -> Self {
        let blocks = max_tokens.div_ceil(block_size.max(1));
        Self {
            table: Vec::with_capacity(blocks),
            hashes: Vec::with_capacity(if caching { blocks } else { 0 }),
            num_cached_blocks: 0,
        }
    }

    pub fn table(&self) -> &[BlockId] {
        &self.table
    }
}

#[derive(Debug)]
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    /// Blocks found by the last `find_cached_prefix`, consumed by `allocate_slots`.
    hits: Vec<BlockId>,
    prefix_queries: u64,
    prefix_hits: u64,
}

impl KvCacheManager {
    pub fn new(num_blocks: usize, block_size: usize, enable_caching: bool) -> Self {
        Self {
            pool: BlockPool::new(num_blocks, enable_caching),
            block_size: block_size.max(1),
            hits: Vec::with_capacity(num_blocks),
            prefix_queries: 0,
            prefix_hits: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn usage(&self) -> f64 {
        self.pool.usage()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free()
    }

    /// Tokens the pool can hold at most for one sequence.
    pub fn capacity_tokens(&self) -> usize {
        self.pool.num_usable() * self.block_size
    }

    /// Looks up the longest cached prefix of `tokens` in whole blocks, always leaving at
    /// least the last token to be computed (its logits are needed to sample). Returns the
    /// number of hit tokens; the blocks are remembered for the next `allocate_slots`.
    /// Nothing is referenced yet: if the allocation then fails, nothing needs undoing.
    pub fn find_cached_prefix(&mut self, seq: &mut SeqBlocks, tokens: &[u32]) -> usize {
        self.hits.clear();
        if !self.pool.caching_enabled() || tokens.is_empty() || !seq.table.is_empty() {
            return 0;
        }
        let max_blocks = (tokens.len() - 1) / self.block_size;
        self.ensure_hashes(seq, tokens, max_blocks);
        for h in &seq.hashes[..max_blocks] {
            match self.pool.lookup(h) {
                Some(b) => self.hits.push(b),
                None => break,
            }
        }
        self.hits.len() * self.block_size
    }

    /// Makes room for `num_new_tokens` more tokens after `num_computed_tokens` already in the
    /// sequence's table plus `num_new_computed_tokens` prefix-hit tokens from the preceding
    /// `find_cached_prefix` (0 when not admitting). Returns false, changing nothing, when the
    /// pool has too few free blocks.
    pub fn allocate_slots(
        &mut self,
        seq: &mut SeqBlocks,
        tokens: &[u32],
        num_computed_tokens: usize,
        num_new_computed_tokens: usize,
        num_new_tokens: usize,
    ) -> bool {
        let bs = self.block_size;
        let hit_blocks = (num_new_computed_tokens / bs).min(self.hits.len());
        let total = num_computed_tokens + hit_blocks * bs + num_new_tokens;
        let needed = total.div_ceil(bs);
        let to_alloc = needed.saturating_sub(seq.table.len() + hit_blocks);
        // Hit blocks nobody references sit in the free queue: touching them uses it up too.
        let evictable_hits = self.hits[..hit_blocks]
            .iter()
            .filter(|&&b| self.pool.ref_cnt(b) == 0)
            .count();
        if to_alloc + evictable_hits > self.pool.num_free() {
            return false;
        }
        for &b in &self.hits[..hit_blocks] {
            self.pool.touch(b);
            seq.table.push(b);
        }
        self.hits.clear();
        for _ in 0..to_alloc {
            match self.pool.allocate() {
                Some(b) => seq.table.push(b),
                // Cannot happen after the check above; fail the allocation rather than panic.
                None => return false,
            }
        }
        if hit_blocks > 0 {
            seq.num_cached_blocks = seq.num_cached_blocks.max(hit_blocks);
        }
        if self.pool.caching_enabled() {
            // Blocks that will be full once this step is computed join the prefix cache.
            let full = total.min(tokens.len()) / bs;
            if full > seq.num_cached_blocks {
                self.ensure_hashes(seq, tokens, full);
                for i in seq.num_cached_blocks..full {
                    self.pool.cache_block(seq.table[i], seq.hashes[i]);
                }
                seq.num_cached_blocks = full;
            }
        }
        true
    }

    /// Releases a sequence's blocks (finish, abort or preemption). Blocks are freed
    /// last-first, so a sequence's tail is evicted before the prefix others may share.
    pub fn free(&mut self, seq: &mut SeqBlocks) {
        for &b in seq.table.iter().rev() {
            self.pool.free(b);
        }
        seq.table.clear();
        seq.num_cached_blocks = 0;
    }

    /// Counts a prefix-cache look-up (tokens queried, tokens hit), as vLLM's
    /// prefix_cache_queries / prefix_cache_hits.
    pub fn record_prefix_lookup(&mut self, queries: usize, hits: usize) {
        self.prefix_queries += queries as u64;
        self.prefix_hits += hits as u64;
    }

    /// (queries, hits) in tokens since start.
    pub fn prefix_cache_counters(&self) -> (u64, u64) {
        (self.prefix_queries, self.prefix_hits)
    }

    pub fn reset_prefix_cache(&mut self) {
        self.pool.reset_prefix_cache();
    }

    fn ensure_hashes(&self, seq: &mut SeqBlocks, tokens: &[u32], num_blocks: usize) {
        let bs = self.block_size;
        let num_blocks = num_blocks.min(tokens.len() / bs);
        while seq.hashes.len() < num_blocks {
            let i = seq.hashes.len();
            let h = hash_block(seq.hashes.last(), &tokens[i * bs..(i + 1) * bs]);
            seq.hashes.push(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefix_hit_leaves_last_token() {
        let mut m = KvCacheManager::new(16, 4, true);
        let toks: Vec<u32> = (0..8).collect();
        let mut a = SeqBlocks::default();
        assert_eq!(m.find_cached_prefix(&mut a, &toks), 0);
        assert!(m.allocate_slots(&mut a, &toks, 0, 0, 8));
        assert_eq!(a.table().len(), 2);
        // Same 8 tokens: the second block must be recomputed (last token needs logits).
        let mut b = SeqBlocks::default();
        assert_eq!(m.find_cached_prefix(&mut b, &toks), 4);
        assert!(m.allocate_slots(&mut b, &toks, 0, 4, 4));
        assert_eq!(b.table()[0], a.table()[0]);
        assert_ne!(b.table()[1], a.table()[1]);
        assert_eq!(m.pool().ref_cnt(a.table()[0]), 2);
        // A longer prompt sharing both blocks hits both.
        let longer: Vec<u32> = (0..10).collect();
        let mut c = SeqBlocks::default();
        assert_eq!(m.find_cached_prefix(&mut c, &longer), 8);
        assert!(m.allocate_slots(&mut c, &longer, 0, 8, 2));
        m.pool()
            .check_invariants(&[a.table(), b.table(), c.table()])
            .unwrap();
        m.free(&mut a);
        m.free(&mut b);
        m.free(&mut c);
        m.pool().check_invariants(&[]).unwrap();
        assert_eq!(m.num_free_blocks(), 15);
        // Freed blocks stay cached.
        let mut d = SeqBlocks::default();
        assert_eq!(m.find_cached_prefix(&mut d, &longer), 8);
    }

    #[test]
    fn allocation_failure_changes_nothing() {
        let mut m = KvCacheManager::new(3, 4, true); // 2 usable blocks
        let toks: Vec<u32> = (0..12).collect();
        let mut a = SeqBlocks::default();
        assert!(!m.allocate_slots(&mut a, &toks, 0, 0, 12));
        assert!(a.table().is_empty());
        assert_eq!(m.num_free_blocks(), 2);
        m.pool().check_invariants(&[]).unwrap();
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Admit a new sequence: prompt drawn from a tiny alphabet so prefixes repeat.
        Admit { prompt: Vec<u32>, chunk: usize },
        /// Grow sequence `i % live` by `n` tokens (a prefill chunk or decodes).
        Append { i: usize, n: usize, tok: u32 },
        /// Free sequence `i % live` (finish / abort / preemption).
        Free { i: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (prop::collection::vec(0u32..3, 1..24), 1usize..24)
                .prop_map(|(prompt, chunk)| Op::Admit { prompt, chunk }),
            (any::<usize>(), 1usize..6, 0u32..3).prop_map(|(i, n, tok)| Op::Append { i, n, tok }),
            any::<usize>().prop_map(|i| Op::Free { i }),
        ]
    }

    struct Live {
        blocks: SeqBlocks,
        tokens: Vec<u32>,
        computed: usize,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any sequence of admit / append / free / (implicit) evict keeps the pool consistent:
        /// ref counts equal the number of tables holding a block, only full cached blocks are
        /// shared, free + used = total, and freeing everything returns every ref count to 0.
        #[test]
        fn block_manager_invariants(
            ops in prop::collection::vec(op(), 1..80),
            caching in any::<bool>(),
            num_blocks in 2usize..24,
            bs in 1usize..6,
        ) {
            let mut m = KvCacheManager::new(num_blocks, bs, caching);
            let mut live: Vec<Live> = Vec::new();
            for op in ops {
                match op {
                    Op::Admit { prompt, chunk } => {
                        let mut s = SeqBlocks::default();
                        let hit = m.find_cached_prefix(&mut s, &prompt);
                        prop_assert!(hit < prompt.len());
                        prop_assert_eq!(hit % bs, 0);
                        let n = chunk.min(prompt.len() - hit);
                        if m.allocate_slots(&mut s, &prompt, 0, hit, n) {
                            prop_assert_eq!(s.table().len(), (hit + n).div_ceil(bs));
                            live.push(Live { blocks: s, tokens: prompt, computed: hit + n });
                        } else {
                            prop_assert!(s.table().is_empty());
                        }
                    }
                    Op::Append { i, n, tok } => {
                        if live.is_empty() { continue; }
                        let k = i % live.len();
                        let l = &mut live[k];
                        // Known tokens first (continuing a prefill), then new "sampled" ones.
                        while l.tokens.len() < l.computed + n { l.tokens.push(tok); }
                        let before = l.blocks.table().len();
                        if m.allocate_slots(&mut l.blocks, &l.tokens, l.computed, 0, n) {
                            l.computed += n;
                            prop_assert_eq!(l.blocks.table().len(), l.computed.div_ceil(bs));
                        } else {
                            prop_assert_eq!(l.blocks.table().len(), before);
                        }
                    }
                    Op::Free { i } => {
                        if live.is_empty() { continue; }
                        let k = i % live.len();
                        let mut l = live.swap_remove(k);
                        m.free(&mut l.blocks);
                    }
                }
                let tables: Vec<&[BlockId]> = live.iter().map(|l| l.blocks.table()).collect();
                if let Err(e) = m.pool().check_invariants(&tables) {
                    return Err(TestCaseError::fail(e));
                }
                // A block held by two sequences must be a full block at the same index with
                // the same tokens in both (only prefix-cache sharing is allowed).
                for (a, la) in live.iter().enumerate() {
                    for lb in live.iter().skip(a + 1) {
                        for (ia, ba) in la.blocks.table().iter().enumerate() {
                            if let Some(ib) = lb.blocks.table().iter().position(|b| b == ba) {
                                prop_assert!(caching);
                                prop_assert_eq!(ia, ib);
                                prop_assert!((ia + 1) * bs <= la.computed);
                                prop_assert!((ib + 1) * bs <= lb.computed);
                                prop_assert_eq!(
                                    &la.tokens[..(ia + 1) * bs],
                                    &lb.tokens[..(ib + 1) * bs]
                                );
                            }
                        }
                    }
                }
            }
            for mut l in live.drain(..) {
                m.free(&mut l.blocks);
            }
            if let Err(e) = m.pool().check_invariants(&[]) {
                return Err(TestCaseError::fail(e));
            }
            prop_assert_eq!(m.num_free_blocks(), num_blocks - 1);
            for b in 1..num_blocks as u32 {
                prop_assert_eq!(m.pool().ref_cnt(b), 0);
            }
        }
    }
}
