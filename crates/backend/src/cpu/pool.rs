//! Reused memory for the CPU backend, so a decode step makes no heap allocation once warmed up.
//!
//! - [`ActivationPool`]: F32 activation buffers. An op takes the smallest free buffer whose
//!   capacity covers what it needs (so steps of any token count up to the largest seen reuse
//!   the same buffers); a [`super::CpuTensor`] made by an op hands its buffer back when it
//!   drops. After the engine's start-up profiling step (the largest batch) every decode step
//!   finds its buffers here.
//! - [`Spare`]: one spare value of some scratch type (a step's metadata arrays, the MoE
//!   routing lists), taken by an op and put back when done, its capacity kept.
//!
//! The pool is bounded: at most [`PoolLimits::max_buffers`] free buffers and
//! [`PoolLimits::max_bytes`] of free capacity; past either, the largest free buffers are
//! released to the allocator first (they are what a long prefill left; decode steps fit in
//! the smaller ones).

use std::sync::{Mutex, MutexGuard};

/// Bounds on what the activation pool keeps while no op uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// Free buffers kept (a forward pass has about a dozen live at once per rank).
    pub max_buffers: usize,
    /// Bytes of free capacity kept.
    pub max_bytes: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_buffers: 64,
            // Covers the activations of an 8K-token prefill of the 0.6B–8B shapes; a larger
            // step still runs, its largest buffers going back to the allocator afterwards.
            max_bytes: 1 << 30,
        }
    }
}

/// Counters of the pool's traffic (for tests and logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers handed out.
    pub takes: u64,
    /// Of those, how many needed a new allocation (no free buffer was large enough).
    pub misses: u64,
    /// Free buffers now, and their capacity in bytes.
    pub free_buffers: usize,
    pub free_bytes: usize,
}

#[derive(Default)]
struct Free {
    /// Ascending by capacity.
    bufs: Vec<Vec<f32>>,
    bytes: usize,
    takes: u64,
    misses: u64,
}

/// Free F32 activation buffers, shared by the ops of one backend (and its clones).
#[derive(Default)]
pub struct ActivationPool {
    free: Mutex<Free>,
    limits: PoolLimits,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked (plain pushes and pops).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bytes_of(v: &Vec<f32>) -> usize {
    v.capacity() * std::mem::size_of::<f32>()
}

impl ActivationPool {
    pub fn new(limits: PoolLimits) -> Self {
        Self {
            free: Mutex::default(),
            limits,
        }
    }

    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// A buffer of `n` zeros: the smallest free one that holds `n`, else a new one.
    pub fn take(&self, n: usize) -> Vec<f32> {
        let found = {
            let mut f = lock(&self.free);
            f.takes += 1;
            let i = f.bufs.partition_point(|b| b.capacity() < n);
            if i < f.bufs.len() {
                let b = f.bufs.remove(i);
                f.bytes -= bytes_of(&b);
                Some(b)
            } else {
                f.misses += 1;
                None
            }
        };
        let mut b = found.unwrap_or_default();
        // Zero-filled like the `vec![0.0; n]` it replaces: ops that accumulate (embedding of
        // another rank's ids, MoE) rely on it, and a memset is cheap next to the op.
        b.clear();
        b.resize(n, 0.0);
        b
    }

    /// Takes back a buffer (of any origin); keeps it unless that breaks the limits.
    pub fn give(&self, b: Vec<f32>) {
        if b.capacity() == 0 {
            return;
        }
        let mut f = lock(&self.free);
        let i = f.bufs.partition_point(|x| x.capacity() < b.capacity());
        f.bytes += bytes_of(&b);
        f.bufs.insert(i, b);
        // Released outside the lock would be nicer, but a release is rare (past the limits).
        while f.bufs.len() > self.limits.max_buffers || f.bytes > self.limits.max_bytes {
            match f.bufs.pop() {
                Some(big) => f.bytes -= bytes_of(&big),
                None => break,
            }
        }
    }

    pub fn stats(&self) -> PoolStats {
        let f = lock(&self.free);
        PoolStats {
            takes: f.takes,
            misses: f.misses,
            free_buffers: f.bufs.len(),
            free_bytes: f.bytes,
        }
    }
}

impl std::fmt::Debug for ActivationPool {
    fn fmt(&self, fm: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fm.debug_struct("ActivationPool")
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish()
    }
}

/// One spare scratch value: [`Spare::take`] gives it (or a fresh default when another op
/// holds it), [`Spare::put`] returns it with its capacity for the next op.
pub struct Spare<T>(Mutex<Option<T>>);

impl<T> Default for Spare<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T: Default> Spare<T> {
    pub fn take(&self) -> T {
        lock(&self.0).take().unwrap_or_default()
    }

    pub fn put(&self, v: T) {
        *lock(&self.0) = Some(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_by_capacity_best_fit() {
        let p = ActivationPool::new(PoolLimits::default());
        let (a, b) = (p.take(100), p.take(1000));
        assert_eq!(p.stats().misses, 2);
        p.give(b);
        p.give(a);
        // 50 fits both; the smaller is chosen, so 500 still finds the larger.
        let small = p.take(50);
        assert!(small.capacity() >= 100 && small.capacity() < 1000);
        assert_eq!(small.len(), 50);
        let big = p.take(500);
        assert!(big.capacity() >= 1000);
        assert_eq!(p.stats().misses, 2);
        // Handed out zeroed, whatever the buffer held.
        p.give(vec![7.0; 64]);
        assert!(p.take(64).iter().all(|&x| x == 0.0));
    }

    #[test]
    fn stays_within_its_limits() {
        let p = ActivationPool::new(PoolLimits {
            max_buffers: 3,
            max_bytes: 4000,
        });
        for n in [10, 20, 30, 40] {
            p.give(Vec::with_capacity(n));
        }
        assert_eq!(p.stats().free_buffers, 3);
        // The largest went first: nothing free holds 31.
        drop(p.take(31));
        assert_eq!(p.stats().misses, 1);
        p.give(Vec::with_capacity(2000));
        assert!(p.stats().free_bytes <= 4000);
        assert!(p.stats().free_buffers <= 3);
    }
}
