//! Gives freed heap back to the OS after a spike. glibc keeps freed memory in its arenas (each
//! tokio worker gets its own) and on its own trims only the top of the main heap, so after a
//! burst of large requests the process's RSS stays near the burst's peak and creeps up with
//! fragmentation under steady load. A background thread calls `malloc_trim(0)`, which releases
//! the free pages of every arena, when the live heap has fallen well below its high-water mark,
//! and at a slow period while the heap is busy.

use std::time::{Duration, Instant};

/// How often the live heap is looked at; the check is two atomic loads.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Light traffic goes quiet every few seconds; trimming on each lull would be wasted work.
const QUIET_TRIM_GAP: Duration = Duration::from_secs(10);

/// When to trim, from the live heap's level alone (no clock or allocator inside, so it is tested
/// on its own).
#[derive(Debug)]
pub struct TrimPolicy {
    /// A fall of the live heap below its high-water mark at least this large trims at once.
    min_drop: usize,
    /// A heap that allocated at all is trimmed at least this often, for fragmentation.
    period: Duration,
    high: usize,
    last_trim: Instant,
    busy: bool,
}

impl TrimPolicy {
    pub fn new(min_drop: usize, period: Duration, now: Instant, level: usize) -> Self {
        Self {
            min_drop,
            period,
            high: level,
            last_trim: now,
            busy: false,
        }
    }

    /// Takes the high-water mark since the last look and the current level; true when a trim is
    /// due (the caller trims, and the policy starts over from `level`).
    pub fn observe(&mut self, high_since_last: usize, level: usize, now: Instant) -> bool {
        let allocated = high_since_last > level || high_since_last > self.high;
        // Busy before and nothing allocated since the last look: the load just ended, which is
        // when an operator looks at RSS after a spike.
        let went_quiet =
            self.busy && !allocated && now.duration_since(self.last_trim) >= QUIET_TRIM_GAP;
        self.busy |= allocated;
        self.high = self.high.max(high_since_last);
        let dropped = self.high.saturating_sub(level) >= self.min_drop;
        let periodic = self.busy && now.duration_since(self.last_trim) >= self.period;
        if dropped || periodic || went_quiet {
            self.high = level;
            self.last_trim = now;
            self.busy = false;
            true
        } else {
            false
        }
    }
}

/// Starts the trimming thread (a no-op where the C library is not glibc).
pub fn spawn() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("heap-trim".into())
            .spawn(|| {
                let mut policy = TrimPolicy::new(
                    32 << 20,
                    Duration::from_secs(60),
                    Instant::now(),
                    crate::alloc::current(),
                );
                loop {
                    std::thread::sleep(CHECK_EVERY);
                    let high = crate::alloc::take_high_water();
                    let live = crate::alloc::current();
                    if policy.observe(high, live, Instant::now()) {
                        let before = rss_bytes();
                        // SAFETY: malloc_trim only returns free pages of glibc's arenas to the OS;
                        // it takes the arenas' locks and touches no live allocation.
                        unsafe { libc::malloc_trim(0) };
                        tracing::debug!(
                            live_heap_mib = live >> 20,
                            rss_before_mib = before >> 20,
                            rss_after_mib = rss_bytes() >> 20,
                            "heap trimmed"
                        );
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("heap trimming is off: could not start its thread: {e}");
        }
    }
}

/// The process's resident bytes, from `/proc/self/statm` (0 where it cannot be read).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rss_bytes() -> usize {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system; Kunpeng kernels often use 64 KiB pages.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * usize::try_from(page).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn a_large_drop_below_the_high_water_mark_trims_once() {
        let t0 = Instant::now();
        let mut p = TrimPolicy::new(32 * MIB, Duration::from_secs(60), t0, 100 * MIB);
        // A spike to 400 MiB between two looks, back to 120 MiB.
        assert!(p.observe(400 * MIB, 120 * MIB, t0 + Duration::from_secs(1)));
        // Nothing new happened: no second trim.
        assert!(!p.observe(120 * MIB, 120 * MIB, t0 + Duration::from_secs(2)));
    }

    #[test]
    fn steady_small_churn_trims_once_per_period() {
        let t0 = Instant::now();
        let mut p = TrimPolicy::new(32 * MIB, Duration::from_secs(60), t0, 100 * MIB);
        for s in 1..60 {
            assert!(
                !p.observe(110 * MIB, 100 * MIB, t0 + Duration::from_secs(s)),
                "{s}"
            );
        }
        // Busy throughout and the period has passed: trim for fragmentation.
        assert!(p.observe(110 * MIB, 100 * MIB, t0 + Duration::from_secs(60)));
        assert!(!p.observe(110 * MIB, 100 * MIB, t0 + Duration::from_secs(61)));
    }

    #[test]
    fn the_end_of_a_busy_spell_trims_once_and_idleness_never_does() {
        let t0 = Instant::now();
        let mut p = TrimPolicy::new(32 * MIB, Duration::from_secs(60), t0, 100 * MIB);
        assert!(!p.observe(100 * MIB, 100 * MIB, t0 + Duration::from_secs(1)));
        // Lulls of light traffic within the gap after the last trim: left alone.
        assert!(!p.observe(110 * MIB, 100 * MIB, t0 + Duration::from_secs(2)));
        assert!(!p.observe(100 * MIB, 100 * MIB, t0 + Duration::from_secs(3)));
        assert!(!p.observe(110 * MIB, 100 * MIB, t0 + Duration::from_secs(11)));
        // Nothing allocated in the last second, 12 s after the last trim: the spell ended.
        assert!(p.observe(100 * MIB, 100 * MIB, t0 + Duration::from_secs(12)));
        for s in 13..300 {
            assert!(
                !p.observe(100 * MIB, 100 * MIB, t0 + Duration::from_secs(s)),
                "{s}"
            );
        }
    }

    #[test]
    fn growth_alone_does_not_trim_before_the_period() {
        let t0 = Instant::now();
        let mut p = TrimPolicy::new(32 * MIB, Duration::from_secs(60), t0, 100 * MIB);
        assert!(!p.observe(300 * MIB, 300 * MIB, t0 + Duration::from_secs(1)));
        assert!(!p.observe(300 * MIB, 290 * MIB, t0 + Duration::from_secs(2)));
        assert!(p.observe(300 * MIB, 260 * MIB, t0 + Duration::from_secs(3)));
    }
}
