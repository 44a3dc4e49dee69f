//! The host's worker pool: `n - 1` persistent threads plus the caller.
//!
//! The synchronisation (spin after each job, then sleep; late workers skip closed jobs) is
//! [`WorkerCore`]'s, shared with the guest; this file adds the threads and a [`Park`] built on
//! a mutex and a condition variable.

use super::{Parallel, Park, WorkerCore, calibrate_spin_iters};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the gaps inside a forward
/// pass (sampling, small serial ops), far shorter than the gap between requests.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_millis(2);

/// The spin iterations that take about [`SPIN_BEFORE_SLEEP`] here, measured once per process.
fn spin_iters() -> u32 {
    static ITERS: OnceLock<u32> = OnceLock::new();
    *ITERS.get_or_init(|| {
        let start = Instant::now();
        let mut now_ns = || u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let target = u64::try_from(SPIN_BEFORE_SLEEP.as_nanos()).unwrap_or(u64::MAX);
        calibrate_spin_iters(&mut now_ns, target)
    })
}

/// [`Park`] on a condition variable. Every `wake_all` bumps a generation; a worker's `park`
/// blocks only while the generation equals the one it last returned with, so a wake-up that
/// comes before the worker blocks is latched, as the trait requires.
struct CondvarPark {
    /// The wake generation and, per worker, the generation its last `park` returned with.
    state: Mutex<WakeState>,
    wake: Condvar,
}

struct WakeState {
    generation: u64,
    seen: Vec<u64>,
}

impl CondvarPark {
    fn new(n_workers: usize) -> Self {
        Self {
            state: Mutex::new(WakeState {
                generation: 0,
                seen: vec![0; n_workers],
            }),
            wake: Condvar::new(),
        }
    }
}

impl Park for CondvarPark {
    fn park(&self, worker: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.generation == s.seen[worker] {
            s = self.wake.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.seen[worker] = s.generation;
    }

    fn wake_all(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.generation = s.generation.wrapping_add(1);
        self.wake.notify_all();
    }

    fn relax(&self) {
        std::thread::yield_now();
    }
}

struct Shared {
    core: WorkerCore,
    park: CondvarPark,
}

/// A pool of worker threads implementing [`Parallel`].
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// Serialises `for_each` callers: the pool runs one job at a time.
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `n_threads` threads in all (the caller counts as one); `n_threads` of 0
    /// means one.
    pub fn new(n_threads: usize) -> std::io::Result<Self> {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            core: WorkerCore::new(if n_threads > 1 { spin_iters() } else { 0 }),
            park: CondvarPark::new(n_threads - 1),
        });
        let mut workers = Vec::with_capacity(n_threads - 1);
        for i in 1..n_threads {
            let shared_w = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("flexserve-worker-{i}"))
                .spawn(move || shared_w.core.worker_loop(&shared_w.park, i - 1));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    // Let the threads already started return before reporting the error.
                    shared.core.shutdown(&shared.park);
                    for w in workers {
                        let _ = w.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Self {
            shared,
            workers,
            n_threads,
            run_lock: Mutex::new(()),
        })
    }
}

impl Parallel for ThreadPool {
    fn n_threads(&self) -> usize {
        self.n_threads
    }

    fn for_each(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.n_threads == 1 || n <= 1 {
            (0..n).for_each(f);
            return;
        }
        let _one_job_at_a_time = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        s.core.run(&s.park, self.n_threads, n, f);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.core.shutdown(&self.shared.park);
        for w in self.workers.drain(..) {
            // A worker that panicked already reported it; nothing more to do at teardown.
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::for_each_chunk_mut;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn every_item_runs_once_across_many_jobs() {
        let pool = ThreadPool::new(3).expect("spawn");
        let hits: Vec<AtomicU32> = (0..257).map(|_| AtomicU32::new(0)).collect();
        for _ in 0..2000 {
            pool.for_each(hits.len(), &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 2000));
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = ThreadPool::new(2).expect("spawn");
        std::thread::sleep(SPIN_BEFORE_SLEEP * 3);
        let mut data = vec![0u8; 4096];
        for_each_chunk_mut(&pool, &mut data, 64, &|_, c| c.fill(1));
        assert!(data.iter().all(|&x| x == 1));
    }

    /// The first job after each pause (some long enough to sleep, some racing with falling
    /// asleep) completes only once every thread holds one of its items: a lost wake-up would
    /// leave it waiting for a worker that never comes.
    #[test]
    fn every_worker_wakes_for_the_first_job_after_a_pause() {
        const N_THREADS: usize = 3;
        let pool = ThreadPool::new(N_THREADS).expect("spawn");
        for burst in 0..120u64 {
            let pause = if burst % 4 == 0 {
                SPIN_BEFORE_SLEEP * 3
            } else {
                // Around the end of the spin, where falling asleep races with the wake-up.
                Duration::from_micros((burst * 7919) % 3000)
            };
            std::thread::sleep(pause);
            let arrived = AtomicU32::new(0);
            pool.for_each(N_THREADS, &|_| {
                arrived.fetch_add(1, Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs(20);
                while arrived.load(Ordering::SeqCst) < N_THREADS as u32 {
                    assert!(
                        Instant::now() < deadline,
                        "burst {burst}: a worker never woke"
                    );
                    std::thread::yield_now();
                }
            });
        }
    }
}
