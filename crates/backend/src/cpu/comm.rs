//! In-process collectives for tensor-parallel ranks that are threads of one process (the CPU
//! backend's TP, and the way TP is tested in CI).
//!
//! Ranks meet at a condition-variable barrier (they sleep, never spin, so two cores are not
//! starved), exchange data through per-rank slots, and meet again before slots are reused.
//! A rank that fails calls [`InProcessGroup::abort`], which wakes and fails every waiter
//! instead of leaving them blocked forever.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::CpuTensor;
use crate::comm::Communicator;
use crate::{BackendError, Result};

struct BarrierState {
    arrived: usize,
    generation: u64,
    aborted: bool,
}

struct Shared {
    world: usize,
    state: Mutex<BarrierState>,
    cv: Condvar,
    slots: Vec<Mutex<(Vec<usize>, Vec<f32>)>>,
}

/// One rank's handle on the group.
#[derive(Clone)]
pub struct InProcessGroup {
    rank: usize,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A rank that panicked while holding a slot leaves plain data behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InProcessGroup {
    /// Handles for ranks `0..world`, in order.
    pub fn new(world: usize) -> Vec<InProcessGroup> {
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(BarrierState {
                arrived: 0,
                generation: 0,
                aborted: false,
            }),
            cv: Condvar::new(),
            slots: (0..world)
                .map(|_| Mutex::new((Vec::new(), Vec::new())))
                .collect(),
        });
        (0..world)
            .map(|rank| InProcessGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Fails every current and future collective of the group.
    pub fn abort(&self) {
        lock(&self.shared.state).aborted = true;
        self.shared.cv.notify_all();
    }

    fn barrier(&self) -> Result<()> {
        let s = &self.shared;
        let mut st = lock(&s.state);
        if st.aborted {
            return Err(BackendError::Collective(
                "the group was aborted by a failed rank".into(),
            ));
        }
        st.arrived += 1;
        if st.arrived == s.world {
            st.arrived = 0;
            st.generation = st.generation.wrapping_add(1);
            s.cv.notify_all();
            return Ok(());
        }
        let gen = st.generation;
        while st.generation == gen && !st.aborted {
            st = s.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.generation == gen {
            return Err(BackendError::Collective(
                "the group was aborted by a failed rank".into(),
            ));
        }
        Ok(())
    }

    fn deposit(&self, t: &CpuTensor) -> Result<()> {
        let data = t.f32("collective")?;
        let mut slot = lock(&self.shared.slots[self.rank]);
        slot.0.clear();
        slot.0.extend_from_slice(t.shape());
        slot.1.clear();
        slot.1.extend_from_slice(data);
        Ok(())
    }
}

impl Communicator<super::CpuBackend> for InProcessGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, _b: &super::CpuBackend, t: &mut CpuTensor) -> Result<()> {
        if self.shared.world == 1 {
            return Ok(());
        }
        self.deposit(t)?;
        self.barrier()?;
        // Inline (Copy): no allocation per collective.
        let shape = t.shape;
        let out = t.f32_mut("all_reduce")?;
        out.fill(0.0);
        // Every rank sums in rank order, so all ranks hold bit-identical results.
        for slot in &self.shared.slots {
            let slot = lock(slot);
            if slot.0 != *shape {
                return Err(BackendError::Collective(format!(
                    "all_reduce of {shape:?} met {:?}",
                    slot.0
                )));
            }
            out.iter_mut().zip(&slot.1).for_each(|(a, b)| *a += b);
        }
        self.barrier()
    }

    fn all_gather_cols(&self, b: &super::CpuBackend, t: CpuTensor) -> Result<CpuTensor> {
        if self.shared.world == 1 {
            return Ok(t);
        }
        self.deposit(&t)?;
        self.barrier()?;
        let rows = t.shape().first().copied().unwrap_or(0);
        let mut width = 0;
        for slot in &self.shared.slots {
            let slot = lock(slot);
            if slot.0.len() != 2 || slot.0[0] != rows {
                return Err(BackendError::Collective(format!(
                    "all_gather of {rows} rows met {:?}",
                    slot.0
                )));
            }
            width += slot.0[1];
        }
        // Read straight from the slots (no rank rewrites its slot before the next barrier)
        // into a pooled buffer.
        let mut out = b.take(rows * width);
        let mut col = 0;
        for slot in &self.shared.slots {
            let slot = lock(slot);
            let cols = slot.0[1];
            for (r, part) in slot.1.chunks_exact(cols.max(1)).take(rows).enumerate() {
                out[r * width + col..][..cols].copy_from_slice(part);
            }
            col += cols;
        }
        self.barrier()?;
        b.tensor(out, super::Dims::matrix(rows, width))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuBackend;

    #[test]
    fn all_reduce_and_gather_across_threads() {
        let groups = InProcessGroup::new(3);
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| {
                std::thread::spawn(move || {
                    let b = CpuBackend::new();
                    let r = g.rank() as f32;
                    let mut t = CpuTensor::from_f32(vec![r, r + 1.0], &[1, 2])?;
                    g.all_reduce_sum(&b, &mut t)?;
                    let part =
                        CpuTensor::from_f32(vec![r; 2 * (g.rank() + 1)], &[2, g.rank() + 1])?;
                    let all = g.all_gather_cols(&b, part)?;
                    Ok::<_, BackendError>((t.f32("t")?.to_vec(), all))
                })
            })
            .collect();
        for h in handles {
            let (sum, all) = h.join().expect("rank thread").expect("collectives");
            assert_eq!(sum, vec![3.0, 6.0]);
            assert_eq!(all.shape(), &[2, 6]);
            assert_eq!(
                all.f32("x").expect("f32"),
                &[0., 1., 1., 2., 2., 2., 0., 1., 1., 2., 2., 2.]
            );
        }
    }

    #[test]
    fn abort_wakes_waiters() {
        let mut groups = InProcessGroup::new(2);
        let g1 = groups.pop().expect("rank 1");
        let g0 = groups.pop().expect("rank 0");
        let h = std::thread::spawn(move || {
            let b = CpuBackend::new();
            let mut t = CpuTensor::from_f32(vec![1.0], &[1, 1])?;
            g0.all_reduce_sum(&b, &mut t)
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        g1.abort();
        assert!(h.join().expect("rank 0 thread").is_err());
    }
}
