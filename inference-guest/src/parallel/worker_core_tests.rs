//! Tests of [`super::WorkerCore`]: jobs, sleeping and waking, shutdown, under random delays.

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

    /// Waits until every worker has called `park` at least once, so that the first job
    /// finds them all asleep (what the lost-wake-up tests are about).
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

/// A worker whose thread starts only after a job opened still joins it: a first job that
/// needs every worker (each item waits for the others) completes.
#[test]
fn a_worker_started_after_the_job_opened_joins_it() {
    with_deadline(Duration::from_secs(30), || {
        let core = Arc::new(WorkerCore::new(1000));
        let park = Arc::new(TestPark::new(1, false));
        let arrived = Arc::new(AtomicU32::new(0));
        let worker = std::sync::Mutex::new(None);
        core.run(&*park, 2, 2, &|_| {
            if arrived.fetch_add(1, Ordering::SeqCst) == 0 {
                // The job is open: only now does the worker's thread start.
                let (c, p) = (Arc::clone(&core), Arc::clone(&park));
                *worker.lock().unwrap() = Some(thread::spawn(move || c.worker_loop(&*p, 0)));
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while arrived.load(Ordering::SeqCst) < 2 {
                assert!(Instant::now() < deadline, "the late worker never joined");
                thread::yield_now();
            }
        });
        core.shutdown(&*park);
        let handle = worker.lock().unwrap().take().expect("spawned");
        handle.join().expect("worker");
    });
}
