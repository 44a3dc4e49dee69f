//! The synchronisation core of a persistent worker pool, without `std`.
//!
//! The host's [`ThreadPool`](super::ThreadPool) and the guest's one-worker-per-vCPU pool run
//! the very same logic; they differ only in how an idle worker sleeps and is woken, which they
//! supply as a [`Park`].
//!
//! A decode step runs ~150 parallel regions of a few microseconds each, so going through the
//! OS (or, in the guest, an MMIO exit) for every job would cost more than the work. Workers
//! therefore spin on a state word for a while after each job and only then park. A worker
//! that arrives after the job closed (it was descheduled, or just woke up) skips it: items are
//! claimed dynamically, so the others already did its share.
//!
//! # The state word
//!
//! `state` holds the job generation in its high 32 bits, a `CLOSED` flag and the number of
//! workers active on the job. Only the caller of [`WorkerCore::run`] opens and closes jobs; a
//! worker joins the open job of the generation it saw by incrementing the active count
//! (compare-exchange, refused once `CLOSED` is set) and leaves by decrementing it. The caller
//! returns only after closing the job and seeing the active count drop to zero, which is what
//! makes lending the job (on the caller's stack) to the workers sound.
//!
//! # Sleeping without losing a wake-up
//!
//! A worker about to sleep increments `sleepers`, re-checks `state` and `shutdown`, and only if
//! neither changed calls [`Park::park`]. The caller publishes the new `state` and then reads
//! `sleepers`; [`WorkerCore::shutdown`] sets `shutdown` and always wakes. All four accesses are
//! `SeqCst`, so in their single total order either the sleeper's re-check comes after the
//! publication (it sees the job and does not park), or the caller's read of `sleepers` comes
//! after the sleeper's increment (it sees a sleeper and calls [`Park::wake_all`]). In the
//! second case the wake-up may land before the sleeper has entered `park`; the contract of
//! [`Park::park`] — return at once if a wake-up happened since this worker's previous `park`
//! returned — turns that into an immediate return instead of a lost wake-up.

use super::WorkCounter;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// `state` layout: job generation in the high 32 bits, `CLOSED` flag, active-worker count.
const CLOSED: u64 = 1 << 31;
const ACTIVE_MASK: u64 = CLOSED - 1;
const GEN_SHIFT: u32 = 32;
const GEN_MASK: u64 = 0xffff_ffff;

/// How long the caller spins on workers still active before it calls [`Park::relax`].
const CALLER_SPINS_BEFORE_RELAX: u32 = 1 << 16;

/// How an idle worker sleeps and how the caller wakes it.
///
/// # Contract
///
/// - [`park`](Park::park) may return at any time (spuriously, on a timeout): the worker
///   re-checks and parks again.
/// - [`park`](Park::park) **must not block** if [`wake_all`](Park::wake_all) was called since
///   the previous `park(worker)` call for the same `worker` returned (or, for its first call,
///   since the `Park` was created). A wake-up is thus latched per worker until that worker's
///   next `park` consumes it. The worker registers as a sleeper and re-checks for work
///   *before* calling `park`, so a `wake_all` racing with that window must make `park` return
///   rather than be lost. (The guest's per-vCPU wait register latches wake-ups exactly like
///   this; the host implements it with a generation counter under a mutex.)
/// - [`wake_all`](Park::wake_all) must make every worker currently blocked in `park` (and,
///   by the rule above, every worker about to block) return.
pub trait Park: Sync {
    /// Blocks worker `worker` (the index passed to [`WorkerCore::worker_loop`]) until a
    /// [`wake_all`](Park::wake_all), unless one is already latched; may return spuriously.
    fn park(&self, worker: usize);

    /// Wakes every parked worker and latches the wake-up for those about to park.
    fn wake_all(&self);

    /// Called by the caller of [`WorkerCore::run`] while it keeps waiting for workers still
    /// inside a job after a long spin (a worker descheduled by the OS, say): the host yields
    /// its time slice. The default is a spin hint.
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// One `for_each` call as lent to the workers.
struct Job<'a> {
    counter: WorkCounter,
    f: &'a (dyn Fn(usize) + Sync),
}

/// The shared state of a pool of persistent workers: see the [module docs](self).
///
/// Any number of workers run [`worker_loop`](Self::worker_loop); one caller at a time runs
/// jobs with [`run`](Self::run); [`shutdown`](Self::shutdown) makes the workers return.
pub struct WorkerCore {
    /// Generation (high 32 bits), `CLOSED`, active-worker count.
    state: AtomicU64,
    /// The current job; valid while `state` is open or has active workers.
    job: AtomicPtr<Job<'static>>,
    /// Workers that registered to park (see the module docs).
    sleepers: AtomicUsize,
    /// Set once; workers return from `worker_loop` when they see it.
    shutdown: AtomicBool,
    /// A caller is inside `run`: a second, concurrent caller runs its job alone.
    busy: AtomicBool,
    /// Idle iterations a worker spins after a job before it parks.
    spin_iters: u32,
}

impl core::fmt::Debug for WorkerCore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WorkerCore")
            .field("state", &self.state.load(Ordering::Relaxed))
            .field("sleepers", &self.sleepers.load(Ordering::Relaxed))
            .field("shutdown", &self.shutdown.load(Ordering::Relaxed))
            .field("spin_iters", &self.spin_iters)
            .finish_non_exhaustive()
    }
}

impl WorkerCore {
    /// A core with no job open. After each job a worker spins `spin_iters` idle iterations
    /// (see [`calibrate_spin_iters`]) before it parks; 0 parks at once.
    pub const fn new(spin_iters: u32) -> Self {
        Self {
            state: AtomicU64::new(CLOSED),
            job: AtomicPtr::new(core::ptr::null_mut()),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            spin_iters,
        }
    }

    /// The caller's side of [`Parallel::for_each`](super::Parallel::for_each): calls `f(i)`
    /// exactly once for every `i` in `0..n`, on this thread and on the workers that join, and
    /// returns after every call finished. `n_threads` counts the caller and the workers; with
    /// one thread, or at most one item, everything runs here without touching the workers.
    ///
    /// Callers must serialise calls (the host pool holds a mutex around it; the guest has a
    /// single caller). A call made while another is in progress (from another thread, or from
    /// inside `f`) is still correct but runs its items on its own thread only.
    pub fn run<P: Park>(&self, park: &P, n_threads: usize, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_threads <= 1 || n <= 1 || self.busy.swap(true, Ordering::Acquire) {
            (0..n).for_each(f);
            return;
        }
        let job = Job {
            counter: WorkCounter::new(n),
            f,
        };
        // Declared after `job`, so dropped before it, also when `f` panics: no worker can be
        // on the job (or join it) once `job` goes away.
        let _close = CloseOnDrop { core: self, park };
        // Erasing the lifetime is sound because `_close` closes the job and waits until no
        // worker is active on it before `job` is dropped, and workers only dereference the
        // pointer while counted active on an open job.
        let job_ptr = (&job as *const Job<'_>).cast::<Job<'static>>().cast_mut();
        self.job.store(job_ptr, Ordering::Release);
        let generation = ((self.state.load(Ordering::Relaxed) >> GEN_SHIFT) + 1) & GEN_MASK;
        // Open the job: new generation, not closed, no active workers. A plain store is right:
        // the previous job ended closed with none active, nobody else opens jobs (`busy`) and
        // workers only modify an open state or their own active count.
        self.state.store(generation << GEN_SHIFT, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            park.wake_all();
        }
        job.counter.drain(f);
    }

    /// A worker's whole life: joins open jobs, spins for a while after each, then parks with
    /// `park.park(worker)`; returns once [`shutdown`](Self::shutdown) was called (after
    /// finishing any job it is on). `worker` is only passed on to [`Park::park`].
    pub fn worker_loop<P: Park>(&self, park: &P, worker: usize) {
        self.worker_loop_with(park, worker, &|| false);
    }

    /// [`worker_loop`](Self::worker_loop) with background work: while no job is open, the
    /// worker calls `background()` before it spins or parks; it returns whether it did
    /// something (then the worker checks for a job and calls it again). Each call should be
    /// short (well under a millisecond): a job opened meanwhile waits for it.
    pub fn worker_loop_with<P: Park>(
        &self,
        park: &P,
        worker: usize,
        background: &dyn Fn() -> bool,
    ) {
        let mut seen_gen = self.state.load(Ordering::Acquire) >> GEN_SHIFT;
        let mut spin_budget = self.spin_iters;
        loop {
            if self.shutdown.load(Ordering::Relaxed) {
                return;
            }
            let generation = self.state.load(Ordering::Acquire) >> GEN_SHIFT;
            if generation != seen_gen {
                seen_gen = generation;
                self.work_on(generation);
                spin_budget = self.spin_iters;
                continue;
            }
            if background() {
                spin_budget = self.spin_iters;
                continue;
            }
            if spin_budget > 0 {
                spin_budget -= self.spin_while_idle(seen_gen, spin_budget);
                continue;
            }
            // Register, re-check, park: see "Sleeping without losing a wake-up".
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            if self.state.load(Ordering::SeqCst) >> GEN_SHIFT == seen_gen
                && !self.shutdown.load(Ordering::SeqCst)
            {
                park.park(worker);
            }
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            // A spurious return finds the budget spent and parks again after one check.
        }
    }

    /// Makes every worker return from [`worker_loop`](Self::worker_loop) (a worker on a job
    /// finishes it first). Workers that start `worker_loop` later return at once.
    pub fn shutdown<P: Park>(&self, park: &P) {
        self.shutdown.store(true, Ordering::SeqCst);
        park.wake_all();
    }

    /// Spins while the generation is `seen_gen` and no shutdown is requested, for at most
    /// `max` iterations; returns the iterations spent (below `max` when something changed).
    #[inline]
    fn spin_while_idle(&self, seen_gen: u64, max: u32) -> u32 {
        let mut spent = 0;
        while spent < max {
            if self.state.load(Ordering::Acquire) >> GEN_SHIFT != seen_gen
                || self.shutdown.load(Ordering::Relaxed)
            {
                break;
            }
            core::hint::spin_loop();
            spent += 1;
        }
        spent
    }

    /// Joins the job of `generation` if it is still open and drains it.
    fn work_on(&self, generation: u64) {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if cur >> GEN_SHIFT != generation || cur & CLOSED != 0 {
                return;
            }
            match self.state.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        // SAFETY: we are counted active on the open job of `generation`, so its caller is
        // still inside `run` (it waits for the active count to reach zero before dropping the
        // job) and the pointer, stored before the job opened (our acquire CAS synchronises with
        // the opening store), points at that live `Job`.
        let job = unsafe { &*self.job.load(Ordering::Acquire) };
        job.counter.drain(job.f);
        // Release: the caller's acquire load of a zero count sees every write `f` made.
        self.state.fetch_sub(1, Ordering::Release);
    }
}

/// Closes the open job and waits until no worker is active on it; then frees the core for the
/// next caller.
struct CloseOnDrop<'a, P: Park> {
    core: &'a WorkerCore,
    park: &'a P,
}

impl<P: Park> Drop for CloseOnDrop<'_, P> {
    fn drop(&mut self) {
        let core = self.core;
        // Close: late workers may no longer join; then wait for those inside to finish.
        let mut state = core.state.fetch_or(CLOSED, Ordering::AcqRel) | CLOSED;
        let mut spins = 0u32;
        while state & ACTIVE_MASK != 0 {
            if spins < CALLER_SPINS_BEFORE_RELAX {
                spins += 1;
                core::hint::spin_loop();
            } else {
                self.park.relax();
            }
            state = core.state.load(Ordering::Acquire);
        }
        core.busy.store(false, Ordering::Release);
    }
}

/// How many idle iterations of [`WorkerCore::worker_loop`]'s spin take about `target_ns`
/// nanoseconds on this machine, measured with the clock `now_ns` (read only twice per sample,
/// so an expensive clock is fine; its resolution should be well below a millisecond). The
/// result is at least 1.
pub fn calibrate_spin_iters(now_ns: &mut dyn FnMut() -> u64, target_ns: u64) -> u32 {
    const SAMPLE: u32 = 4096;
    let probe = WorkerCore::new(0);
    let seen_gen = probe.state.load(Ordering::Relaxed) >> GEN_SHIFT;
    // The fastest of a few samples: preemption only ever makes a sample slower.
    let mut best = u64::MAX;
    for _ in 0..3 {
        let t0 = now_ns();
        let spent = probe.spin_while_idle(core::hint::black_box(seen_gen), SAMPLE);
        core::hint::black_box(spent);
        best = best.min(now_ns().saturating_sub(t0));
    }
    let iters = u128::from(target_ns) * u128::from(SAMPLE) / u128::from(best.max(1));
    u32::try_from(iters).unwrap_or(u32::MAX).max(1)
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::mpsc;
    use std::sync::{Arc, Condvar, Mutex};
    use std::thread;
    use std::time::{Duration, Instant};
    use std::vec::Vec;

    /// A small xorshift generator, one per thread, seeded from the thread's identity.
    fn rand_below(bound: u64) -> u64 {
        use core::cell::Cell;
        std::thread_local! {
            static STATE: Cell<u64> = Cell::new({
                let id = format!("{:?}", thread::current().id());
                id.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                }) | 1
            });
        }
        STATE.with(|s| {
            let mut x = s.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            x % bound.max(1)
        })
    }

    /// Up to `max_us` microseconds of delay: a spin for short ones, a sleep for longer ones.
    fn random_delay(max_us: u64) {
        let us = rand_below(max_us + 1);
        if us == 0 {
            return;
        }
        if us < 20 {
            let until = Instant::now() + Duration::from_micros(us);
            while Instant::now() < until {
                core::hint::spin_loop();
            }
        } else {
            thread::sleep(Duration::from_micros(us));
        }
    }

    /// A test `Park`: per-worker latched wake-ups under a mutex, a random delay before blocking
    /// (to widen the window between the worker's re-check and its park), and — when `flaky` —
    /// random spurious returns and short timeouts.
    struct TestPark {
        pending: Mutex<Vec<bool>>,
        cv: Condvar,
        flaky: bool,
        parks: Vec<AtomicU32>,
    }

    impl TestPark {
        fn new(n_workers: usize, flaky: bool) -> Self {
            Self {
                pending: Mutex::new(vec![false; n_workers]),
                cv: Condvar::new(),
                flaky,
                parks: (0..n_workers).map(|_| AtomicU32::new(0)).collect(),
            }
        }
    }

    impl Park for TestPark {
        fn park(&self, worker: usize) {
            self.parks[worker].fetch_add(1, Ordering::Relaxed);
            random_delay(30);
            if self.flaky && rand_below(4) == 0 {
                return; // spurious
            }
            let mut pending = self.pending.lock().unwrap();
            if self.flaky {
                let timeout = Duration::from_micros(50 + rand_below(2000));
                if !pending[worker] {
                    pending = self.cv.wait_timeout(pending, timeout).unwrap().0;
                }
            } else {
                while !pending[worker] {
                    pending = self.cv.wait(pending).unwrap();
                }
            }
            pending[worker] = false;
        }

        fn wake_all(&self) {
            random_delay(5);
            let mut pending = self.pending.lock().unwrap();
            pending.iter_mut().for_each(|p| *p = true);
            self.cv.notify_all();
        }

        fn relax(&self) {
            thread::yield_now();
        }
    }

    struct Harness {
        core: Arc<WorkerCore>,
        park: Arc<TestPark>,
        workers: Vec<thread::JoinHandle<()>>,
        n_threads: usize,
    }

    impl Harness {
        fn new(n_threads: usize, spin_iters: u32, flaky: bool) -> Self {
            let core = Arc::new(WorkerCore::new(spin_iters));
            let park = Arc::new(TestPark::new(n_threads - 1, flaky));
            let workers = (0..n_threads - 1)
                .map(|w| {
                    let (core, park) = (Arc::clone(&core), Arc::clone(&park));
                    thread::spawn(move || core.worker_loop(&*park, w))
                })
                .collect();
            Self {
                core,
                park,
                workers,
                n_threads,
            }
        }

        /// Waits until every worker has called `park` at least once, i.e. is inside
        /// `worker_loop` past its first look at `state`. A worker that first looks at `state`
        /// while a job is open takes that generation as already seen and skips the job (by
        /// design: jobs never need a particular worker). A freshly spawned thread can start
        /// arbitrarily late on a loaded machine, so a test whose first job needs *every*
        /// worker must wait for this rather than for a fixed time.
        fn wait_until_all_parked(&self) {
            let deadline = Instant::now() + Duration::from_secs(20);
            for (w, parks) in self.park.parks.iter().enumerate() {
                while parks.load(Ordering::Relaxed) == 0 {
                    assert!(Instant::now() < deadline, "worker {w} never parked");
                    thread::sleep(Duration::from_micros(100));
                }
            }
        }

        fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
            self.core.run(&*self.park, self.n_threads, n, f);
        }

        fn finish(self) {
            self.core.shutdown(&*self.park);
            for w in self.workers {
                w.join().expect("worker panicked");
            }
        }
    }

    /// Runs `body` on a thread and fails if it does not finish within `limit` (a lost wake-up
    /// or a stuck caller would otherwise hang the test run).
    fn with_deadline(limit: Duration, body: impl FnOnce() + Send + 'static) {
        let (tx, rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            body();
            let _ = tx.send(());
        });
        match rx.recv_timeout(limit) {
            Ok(()) => handle.join().expect("test body panicked"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The body panicked: re-raise its panic.
                handle.join().expect("test body panicked");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("test did not finish in {limit:?}"),
        }
    }

    /// Many tiny jobs: every item runs exactly once, and `run` returns only after all did.
    fn many_small_jobs(flaky: bool, spin_iters: u32) {
        with_deadline(Duration::from_secs(120), move || {
            let h = Harness::new(3, spin_iters, flaky);
            let hits: Vec<AtomicU32> = (0..8).map(|_| AtomicU32::new(0)).collect();
            for k in 0..100_000usize {
                let n = 1 + k % 8;
                h.run(n, &|i| {
                    if rand_below(64) == 0 {
                        random_delay(3);
                    }
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                for (i, hit) in hits.iter().enumerate() {
                    let want = u32::from(i < n);
                    assert_eq!(hit.swap(0, Ordering::Relaxed), want, "job {k}, item {i}");
                }
                if k % 10_000 == 9_999 {
                    // A pause long enough for the workers to park.
                    thread::sleep(Duration::from_millis(5));
                }
            }
            h.finish();
        });
    }

    #[test]
    fn many_small_jobs_each_item_once() {
        many_small_jobs(false, 20_000);
    }

    #[test]
    fn many_small_jobs_with_spurious_park() {
        many_small_jobs(true, 200);
    }

    #[test]
    fn many_small_jobs_always_parking() {
        many_small_jobs(true, 0);
    }

    /// Bursts of jobs separated by pauses, some long enough that every worker parks, some
    /// short enough that the wake-up races with a worker going to sleep. The first job of
    /// each burst is a barrier that completes only when *every* thread holds one of its items,
    /// so a lost wake-up (with a park that never returns by itself) fails the test instead of
    /// being absorbed by the caller doing all the work.
    fn bursts(flaky: bool) {
        with_deadline(Duration::from_secs(120), move || {
            const N_THREADS: usize = 3;
            let h = Harness::new(N_THREADS, 500, flaky);
            // Every worker must be idle in `worker_loop` before the first barrier; the 5 ms
            // pause of burst 0 does not guarantee that a new thread has even started.
            h.wait_until_all_parked();
            let total = AtomicU32::new(0);
            let parks = |w: usize| h.park.parks[w].load(Ordering::Relaxed);
            let (mut long_pauses, mut all_parked) = (0u32, 0u32);
            for burst in 0..600u32 {
                if burst % 8 == 0 {
                    let before: Vec<u32> = (0..N_THREADS - 1).map(parks).collect();
                    thread::sleep(Duration::from_millis(5));
                    long_pauses += 1;
                    all_parked += u32::from((0..N_THREADS - 1).all(|w| parks(w) > before[w]));
                } else {
                    random_delay(300);
                }
                let arrived = AtomicU32::new(0);
                h.run(N_THREADS, &|_| {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while arrived.load(Ordering::SeqCst) < N_THREADS as u32 {
                        assert!(
                            Instant::now() < deadline,
                            "burst {burst}: a worker never joined (lost wake-up)"
                        );
                        thread::yield_now();
                    }
                });
                for _ in 0..20 {
                    let n = 1 + rand_below(8) as usize;
                    h.run(n, &|_| {
                        total.fetch_add(1, Ordering::Relaxed);
                    });
                }
            }
            // Normally every long pause; a heavily loaded machine may delay a few.
            assert!(
                all_parked * 2 >= long_pauses,
                "workers parked in only {all_parked} of {long_pauses} long pauses"
            );
            assert!(total.load(Ordering::Relaxed) > 0);
            h.finish();
        });
    }

    #[test]
    fn no_lost_wake_up_across_bursts() {
        bursts(false);
    }

    #[test]
    fn no_lost_wake_up_with_spurious_park() {
        bursts(true);
    }

    #[test]
    fn shutdown_wakes_parked_and_spinning_workers() {
        with_deadline(Duration::from_secs(30), || {
            for spin_iters in [0, 1_000, u32::MAX] {
                let h = Harness::new(4, spin_iters, false);
                h.run(64, &|_| {});
                thread::sleep(Duration::from_millis(2));
                h.finish();
            }
        });
    }

    #[test]
    fn concurrent_callers_stay_correct() {
        with_deadline(Duration::from_secs(60), || {
            let h = Arc::new(Harness::new(3, 1_000, true));
            let callers: Vec<_> = (0..3)
                .map(|_| {
                    let h = Arc::clone(&h);
                    thread::spawn(move || {
                        let hits: Vec<AtomicU32> = (0..16).map(|_| AtomicU32::new(0)).collect();
                        for _ in 0..5_000 {
                            h.run(hits.len(), &|i| {
                                hits[i].fetch_add(1, Ordering::Relaxed);
                            });
                            assert!(hits.iter().all(|x| x.swap(0, Ordering::Relaxed) == 1));
                        }
                    })
                })
                .collect();
            for c in callers {
                c.join().expect("caller panicked");
            }
            Arc::try_unwrap(h).ok().expect("sole owner").finish();
        });
    }

    #[test]
    fn calibration_is_sane() {
        let start = Instant::now();
        let mut now = || start.elapsed().as_nanos() as u64;
        let iters = calibrate_spin_iters(&mut now, 2_000_000);
        assert!(iters >= 1);
        let core = WorkerCore::new(0);
        let t = Instant::now();
        core.spin_while_idle(0, iters);
        // Loose: a loaded machine can stretch it, but not shrink it far below the target.
        assert!(
            t.elapsed() >= Duration::from_micros(200),
            "{:?}",
            t.elapsed()
        );
    }
}
