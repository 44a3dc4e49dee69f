//! The host's worker pool: `n - 1` persistent threads plus the caller.
//!
//! A decode step runs ~150 parallel regions of a few microseconds each, so waking threads
//! through the OS every time would cost more than the work. Workers spin on a state word for
//! a short while after each job and only then sleep on a condition variable. A worker that
//! was descheduled and arrives after the job closed simply skips it: items are claimed
//! dynamically, so the others already did its share.

use super::{Parallel, WorkCounter};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the gaps inside a forward
/// pass (sampling, small serial ops), far shorter than the gap between requests.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_millis(2);

/// `state` layout: job generation in the high 32 bits, `CLOSED` flag, active-worker count.
const CLOSED: u64 = 1 << 31;
const ACTIVE_MASK: u64 = CLOSED - 1;
const GEN_SHIFT: u32 = 32;

struct Job<'a> {
    counter: WorkCounter,
    f: &'a (dyn Fn(usize) + Sync),
}

struct Shared {
    state: AtomicU64,
    /// The current job; valid while `state` is open or has active workers.
    job: AtomicPtr<Job<'static>>,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
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
            state: AtomicU64::new(CLOSED),
            job: AtomicPtr::new(std::ptr::null_mut()),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let mut workers = Vec::with_capacity(n_threads - 1);
        for i in 1..n_threads {
            let shared = Arc::clone(&shared);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("flexserve-worker-{i}"))
                    .spawn(move || worker_loop(&shared))?,
            );
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
        let job = Job {
            counter: WorkCounter::new(n),
            f,
        };
        let s = &*self.shared;
        // Erasing the lifetime is sound because this function does not return before the
        // job is closed and no worker is active on it (see the wait below).
        let job_ptr = (&job as *const Job<'_>).cast::<Job<'static>>().cast_mut();
        s.job.store(job_ptr, Ordering::Release);
        let generation =
            (s.state.load(Ordering::Relaxed) >> GEN_SHIFT).wrapping_add(1) & 0xffff_ffff;
        // Open the job: new generation, not closed, no active workers (the previous job
        // ended with none active and closed, and only this thread opens jobs).
        s.state.store(generation << GEN_SHIFT, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        job.counter.drain(f);
        // Close: late workers may no longer join; then wait for those inside to finish.
        let mut state = s.state.fetch_or(CLOSED, Ordering::AcqRel) | CLOSED;
        let mut spins = 0u32;
        while state & ACTIVE_MASK != 0 {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            state = s.state.load(Ordering::Acquire);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            // A worker that panicked already reported it; nothing more to do at teardown.
            let _ = w.join();
        }
    }
}

/// Tries to join the job of generation `generation`; true when this worker is now counted active.
fn try_join(s: &Shared, generation: u64) -> bool {
    let mut cur = s.state.load(Ordering::Acquire);
    loop {
        if cur >> GEN_SHIFT != generation || cur & CLOSED != 0 {
            return false;
        }
        match s
            .state
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return true,
            Err(actual) => cur = actual,
        }
    }
}

fn worker_loop(s: &Shared) {
    let mut seen_gen = s.state.load(Ordering::Acquire) >> GEN_SHIFT;
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    loop {
        if s.shutdown.load(Ordering::Relaxed) {
            return;
        }
        let state = s.state.load(Ordering::Acquire);
        let generation = state >> GEN_SHIFT;
        if generation != seen_gen {
            seen_gen = generation;
            if try_join(s, generation) {
                // SAFETY: we are counted active on an open job, so the caller of `for_each`
                // is still waiting and the `Job` it published lives until we decrement.
                let job = unsafe { &*s.job.load(Ordering::Acquire) };
                job.counter.drain(job.f);
                s.state.fetch_sub(1, Ordering::Release);
            }
            idle_since = Instant::now();
            spins = 0;
            continue;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(1024) || idle_since.elapsed() < SPIN_BEFORE_SLEEP {
            std::hint::spin_loop();
            continue;
        }
        let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.sleepers.fetch_add(1, Ordering::SeqCst);
        let mut guard = guard;
        while s.state.load(Ordering::SeqCst) >> GEN_SHIFT == seen_gen
            && !s.shutdown.load(Ordering::SeqCst)
        {
            guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        s.sleepers.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::for_each_chunk_mut;
    use std::sync::atomic::AtomicU32;

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
}
