//! The engine's [`Parallel`] in the guest: vCPU 0 runs the service and hands out work, every
//! other vCPU is a worker. The synchronisation is the host pool's own ([`WorkerCore`]); only
//! parking differs: an idle worker parks its vCPU in its wait register (the VMM blocks the
//! vCPU thread, no host CPU), and vCPU 0 wakes the workers through the wake register. The
//! wait register latches wake-ups per vCPU, which is what [`Park`] requires.

use core::sync::atomic::{AtomicUsize, Ordering};
use inference_guest::parallel::{Parallel, Park, WorkerCore};

/// Spin iterations before an idle worker parks: about 2 ms here (the host pool calibrates
/// the same loop to ~82,000 iterations per 2 ms); counted, because reading the guest clock is
/// an MMIO exit.
const SPIN_ITERS: u32 = 80_000;
/// Longest park of an idle worker; it re-checks for work and parks again.
const PARK_NS: u64 = 200_000_000;

static CORE: WorkerCore = WorkerCore::new(SPIN_ITERS);
/// Workers that have started (vCPUs 1..).
static WORKERS: AtomicUsize = AtomicUsize::new(0);

/// Parking through the guest's timer page.
struct WaitRegister;

impl Park for WaitRegister {
    fn park(&self, worker: usize) {
        guest_programs::virtio::wait(worker as u64, PARK_NS);
    }

    fn wake_all(&self) {
        guest_programs::virtio::wake_all();
    }
}

/// A worker vCPU's life: take part in every job until the VM stops.
pub fn worker(vcpu: u64) -> ! {
    WORKERS.fetch_add(1, Ordering::SeqCst);
    loop {
        CORE.worker_loop(&WaitRegister, vcpu as usize);
    }
}

/// vCPU 0's handle on the pool.
pub struct VcpuPool;

impl Parallel for VcpuPool {
    fn n_threads(&self) -> usize {
        1 + WORKERS.load(Ordering::SeqCst)
    }

    fn for_each(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let threads = self.n_threads();
        if threads == 1 || n <= 1 {
            (0..n).for_each(f);
            return;
        }
        CORE.run(&WaitRegister, threads, n, f);
    }
}
