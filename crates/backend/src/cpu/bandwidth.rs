//! Measured memory bandwidth, the yardstick for memory-bound decode: a read-only sum (what a
//! GEMV does with its weights) and a STREAM-style triad, over buffers far larger than the
//! caches, split over the current rayon pool.

use std::time::Instant;

use rayon::prelude::*;

/// Best-of-`reps` bandwidths in GB/s (10⁹ bytes per second).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Bandwidth {
    /// Bytes read per second by a parallel sum.
    pub read_gb_s: f64,
    /// STREAM triad `a = b + s·c`: 3 × 8 bytes moved per element (the write counted once).
    pub triad_gb_s: f64,
}

/// Chunk a thread reads at a time: big enough that scheduling is noise.
const CHUNK: usize = 1 << 18;

fn sum_chunk(c: &[f64]) -> f64 {
    // Eight independent accumulators so the loop vectorises and is not latency-bound.
    let mut acc = [0.0f64; 8];
    let mut it = c.chunks_exact(8);
    for b in &mut it {
        for (a, v) in acc.iter_mut().zip(b) {
            *a += v;
        }
    }
    acc.iter().sum::<f64>() + it.remainder().iter().sum::<f64>()
}

/// Measures with buffers of `bytes` each (use several times the last-level cache).
pub fn measure(bytes: usize, reps: usize) -> Bandwidth {
    let n = (bytes / 8).max(CHUNK);
    let b = vec![1.0f64; n];
    let c = vec![2.0f64; n];
    let mut a = vec![0.0f64; n];
    let mut read = f64::INFINITY;
    let mut triad = f64::INFINITY;
    let mut sink = 0.0;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        sink += b.par_chunks(CHUNK).map(sum_chunk).sum::<f64>();
        read = read.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        a.par_chunks_mut(CHUNK)
            .zip(b.par_chunks(CHUNK).zip(c.par_chunks(CHUNK)))
            .for_each(|(a, (b, c))| {
                for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
                    *a = b + 3.0 * c;
                }
            });
        triad = triad.min(t.elapsed().as_secs_f64());
    }
    // Keep the reads observable so they are not optimised away.
    std::hint::black_box((sink, &a));
    Bandwidth {
        read_gb_s: (n * 8) as f64 / read / 1e9,
        triad_gb_s: (n * 24) as f64 / triad / 1e9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_chunk_adds_everything() {
        let v: Vec<f64> = (0..1001).map(f64::from).collect();
        assert_eq!(sum_chunk(&v), 1000.0 * 1001.0 / 2.0);
    }

    #[test]
    fn measure_reports_positive_rates() {
        let b = measure(1 << 21, 1);
        assert!(b.read_gb_s > 0.0 && b.triad_gb_s > 0.0, "{b:?}");
    }
}
