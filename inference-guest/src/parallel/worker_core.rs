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
        // The generation a new core starts with, not the one in `state` now: a thread that
        // starts late (a loaded host) would otherwise take a job already open for its own
        // and skip it, and a first job that needs every worker would wait for it forever.
        // An older job it then looks at is closed, and joining is refused.
        let mut seen_gen = 0;
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
#[path = "worker_core_tests.rs"]
mod tests;
