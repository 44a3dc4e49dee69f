//! The engine's [`Parallel`] in the guest: vCPU 0 runs the service and hands out work, every
//! other vCPU is a worker. The synchronisation is the host pool's own ([`WorkerCore`]); only
//! parking differs: an idle worker parks its vCPU in its wait register (the VMM blocks the
//! vCPU thread, no host CPU), and vCPU 0 wakes the workers through the wake register. The
//! wait register latches wake-ups per vCPU, which is what [`Park`] requires.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// Background first touches: the next address to touch and the end of the range.
static PREFAULT_NEXT: AtomicU64 = AtomicU64::new(0);
static PREFAULT_END: AtomicU64 = AtomicU64::new(0);
/// Bytes a worker touches per background slice: 16 pages, about 0.3 ms of first touches
/// here, so a job that opens meanwhile waits at most that long.
const PREFAULT_SLICE: u64 = 64 << 10;
const PAGE: u64 = 4096;

/// Has idle workers first-touch `[start, start + len)` of private memory in the background.
/// First touches of private pages are the slow part of filling memory in this VM (the host
/// backs each page on its first access); a worker that has nothing else to do takes them off
/// the critical path, e.g. while vCPU 0 receives a model chunk by chunk. The pages are only
/// read, so this never races with whoever writes them. A later call replaces the range.
pub fn prefault(start: u64, len: u64) {
    PREFAULT_END.store(0, Ordering::SeqCst);
    PREFAULT_NEXT.store(start, Ordering::SeqCst);
    PREFAULT_END.store(start.saturating_add(len), Ordering::SeqCst);
    guest_runtime::virtio::wake_all();
}

/// One slice of background first touches; whether there was one to do.
fn prefault_slice() -> bool {
    let end = PREFAULT_END.load(Ordering::SeqCst);
    if PREFAULT_NEXT.load(Ordering::Relaxed) >= end {
        return false;
    }
    let at = PREFAULT_NEXT.fetch_add(PREFAULT_SLICE, Ordering::SeqCst);
    if at >= end {
        return false;
    }
    let mut page = at & !(PAGE - 1);
    while page < (at + PREFAULT_SLICE).min(end) {
        // SAFETY: `prefault` callers pass memory the engine allocated (private pool,
        // identity-mapped for user mode) and withdraw the range before freeing it. The byte
        // read is discarded: a writer filling the page at the same time (vCPU 0 copying a
        // chunk) can neither observe it nor be disturbed by it; only the page fault matters.
        unsafe { core::ptr::read_volatile(page as *const u8) };
        page += PAGE;
    }
    true
}

/// Parking through the guest's timer page.
struct WaitRegister;

impl Park for WaitRegister {
    fn park(&self, worker: usize) {
        guest_runtime::virtio::wait(worker as u64, PARK_NS);
    }

    fn wake_all(&self) {
        guest_runtime::virtio::wake_all();
    }
}

/// A worker vCPU's life: take part in every job until the VM stops.
pub fn worker(vcpu: u64) -> ! {
    WORKERS.fetch_add(1, Ordering::SeqCst);
    loop {
        CORE.worker_loop_with(&WaitRegister, vcpu as usize, &prefault_slice);
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
