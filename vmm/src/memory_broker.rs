//! The host's half of flexible protected memory: it sets the guest's private memory budget
//! over virtio-llm's memory queues, releases (hole-punches) what the guest relinquishes, and
//! takes memory back by force from a guest that ignores a shrink.
//!
//! Relinquish reports are the guest's word: each is checked whole against the pool and the
//! changes sent before anything is released ([`check_report`]), and the hole-punching runs
//! outside the device's lock.
//!
//! The host never reads private memory; it measures the guest's share with `mincore` on
//! the guest_memfd mapping ([`PrivateMemory::resident_bytes`]) and trusts nothing the guest
//! says about it.

use crate::devices::virtio_llm::{HostError, LlmHost};
use crate::hypervisor::{PrivateBacking, PrivateMemory};
use crate::machine::StopHandle;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use virtio_llm::spec::{MAX_RELINQUISH_RANGES, MEMORY_GRANULE, MIN_MEMORY_BUDGET};
use virtio_llm::wire::memory::{BudgetChange, RelinquishReport};

mod reports;
pub use reports::{ReportError, check_report};

/// How often a shrink checks the guest's resident size.
const SHRINK_POLL: Duration = Duration::from_millis(2);
/// How long the report thread sleeps between checks that it should stop.
const REPORT_POLL: Duration = Duration::from_millis(50);
/// How long sending a budget change may wait for the guest to post a buffer.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong managing the guest's memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(
        "a budget of {requested} bytes is not possible: it must be a multiple of 2 MiB, at \
         least {} MiB (the guest's message buffers) and at most the private region's {max} \
         bytes (raise --memory)",
        MIN_MEMORY_BUDGET >> 20
    )]
    BadBudget { requested: u64, max: u64 },
    #[error("the guest does not manage its memory (it did not take the memory queues)")]
    NotSupported,
    #[error("cannot send the budget change: {0}")]
    Link(#[from] HostError),
    #[error(
        "the guest still held {resident} bytes of private memory {deadline:?} after its budget \
         dropped to {budget}{}; it was stopped and its memory freed",
        if *answered { "" } else { " and had not answered the change" }
    )]
    ShrinkIgnored {
        resident: u64,
        budget: u64,
        deadline: Duration,
        answered: bool,
    },
    #[error(
        "this guest's memory cannot shrink while it runs: it is a pKVM protected VM, whose \
         pages stay pinned until the VM is destroyed (upstream pKVM has no MEM_RELINQUISH); \
         restart the guest with a smaller --memory instead"
    )]
    CannotShrink,
    #[error("measuring or releasing private memory failed: {0}")]
    Backing(#[from] crate::hypervisor::HypervisorError),
}

/// Counters of what the broker did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// The budget in force.
    pub budget: u64,
    /// Relinquish reports handled.
    pub reports: u64,
    /// Bytes released on the guest's reports.
    pub released_bytes: u64,
    /// Ranges the host failed to release.
    pub refused_ranges: u64,
    /// Reports refused whole: malformed, or failing [`check_report`].
    pub refused_reports: u64,
}

/// A running broker for one guest.
pub struct MemoryBroker {
    llm: Arc<LlmHost>,
    private: Arc<PrivateMemory>,
    stop_vm: Arc<StopHandle>,
    sequence: Mutex<u64>,
    budget: AtomicU64,
    counters: Arc<Counters>,
    quit: Arc<AtomicBool>,
    reports: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Counters {
    reports: AtomicU64,
    /// The latest budget change the guest has answered in full (its last report was short).
    answered: AtomicU64,
    released: AtomicU64,
    refused: AtomicU64,
    refused_reports: AtomicU64,
    /// The latest budget change sent: a report cannot answer a later one.
    sent: AtomicU64,
}

impl MemoryBroker {
    /// Starts the report thread for a guest whose budget begins at the whole private region.
    pub fn start(
        llm: Arc<LlmHost>,
        private: Arc<PrivateMemory>,
        stop_vm: Arc<StopHandle>,
    ) -> std::io::Result<Self> {
        let counters = Arc::new(Counters::default());
        let quit = Arc::new(AtomicBool::new(false));
        let reports = {
            let (llm, private, counters, quit) =
                (llm.clone(), private.clone(), counters.clone(), quit.clone());
            std::thread::Builder::new()
                .name("flexserve-mem".into())
                .spawn(move || serve_reports(&llm, &private, &counters, &quit))?
        };
        Ok(Self {
            budget: AtomicU64::new(private.len() as u64),
            llm,
            private,
            stop_vm,
            sequence: Mutex::new(0),
            counters,
            quit,
            reports: Some(reports),
        })
    }

    /// Bytes of private memory the guest holds now (measured by the host).
    pub fn resident_bytes(&self) -> Result<u64, MemoryError> {
        Ok(self.private.resident_bytes()?)
    }

    /// The private region's size: the largest budget.
    pub fn max_bytes(&self) -> u64 {
        self.private.len() as u64
    }

    /// What the broker did so far.
    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            budget: self.budget.load(Ordering::SeqCst),
            reports: self.counters.reports.load(Ordering::SeqCst),
            released_bytes: self.counters.released.load(Ordering::SeqCst),
            refused_ranges: self.counters.refused.load(Ordering::SeqCst),
            refused_reports: self.counters.refused_reports.load(Ordering::SeqCst),
        }
    }

    /// Sets the guest's budget. Raising it returns at once. Lowering it waits until the
    /// guest has answered the change and its resident private memory is at most `bytes`;
    /// if that has not happened within `deadline`, the guest is stopped, its whole region
    /// released, and the error says so. Returns how long the shrink took.
    ///
    /// Both are needed: the host's measure alone may already fit (pages the guest holds
    /// but never touched are not resident) while the guest still holds freed data it is
    /// about to give back.
    pub fn set_budget(&self, bytes: u64, deadline: Duration) -> Result<Duration, MemoryError> {
        let max = self.private.len() as u64;
        if !bytes.is_multiple_of(MEMORY_GRANULE) || bytes < MIN_MEMORY_BUDGET || bytes > max {
            return Err(MemoryError::BadBudget {
                requested: bytes,
                max,
            });
        }
        if !self.llm.memory_queues_live() {
            return Err(MemoryError::NotSupported);
        }
        // Refused before the guest hears of it: it would drop caches it cannot give back.
        if self.private.backing() == PrivateBacking::AnonymousProtected
            && bytes < self.budget.load(Ordering::SeqCst)
        {
            return Err(MemoryError::CannotShrink);
        }
        let start = Instant::now();
        let (sequence, lowering) = {
            let mut seq = self.sequence.lock().unwrap_or_else(|e| e.into_inner());
            *seq += 1;
            // Before the send: the guest may answer before it returns.
            self.counters.sent.fetch_max(*seq, Ordering::SeqCst);
            let change = BudgetChange {
                sequence: *seq,
                new_budget_bytes: bytes,
            };
            self.llm.send_budget(&change, SEND_TIMEOUT)?;
            (*seq, self.budget.swap(bytes, Ordering::SeqCst) > bytes)
        };
        loop {
            let resident = self.private.resident_bytes()?;
            let answered = !lowering || self.counters.answered.load(Ordering::SeqCst) >= sequence;
            if answered && resident <= bytes {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= deadline {
                self.force_reclaim()?;
                return Err(MemoryError::ShrinkIgnored {
                    resident,
                    budget: bytes,
                    deadline,
                    answered,
                });
            }
            std::thread::sleep(SHRINK_POLL);
        }
    }

    /// Takes everything back: stops the guest and releases its whole region (nothing in it
    /// is readable afterwards, by the host or by a later guest).
    pub fn force_reclaim(&self) -> Result<(), MemoryError> {
        self.stop_vm.stop();
        let whole = self.private.len() as u64;
        self.private.release(self.private.guest_addr(), whole)?;
        Ok(())
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::SeqCst);
        if let Some(t) = self.reports.take() {
            let _ = t.join();
        }
    }
}

/// The report thread: checks each report the guest relinquishes, releases its ranges, then
/// gives the report's buffer back (which tells the guest the pages are gone and may be
/// reused). A refused report's buffer goes back with nothing released.
fn serve_reports(llm: &LlmHost, private: &PrivateMemory, counters: &Counters, quit: &AtomicBool) {
    let base = private.guest_addr();
    let pool = base..base.saturating_add(private.len() as u64);
    let mut release = |report: &RelinquishReport| {
        counters.reports.fetch_add(1, Ordering::SeqCst);
        if let Err(why) = check_report(report, &pool, counters.sent.load(Ordering::SeqCst)) {
            refused(counters, &why);
            return;
        }
        for r in &report.ranges {
            match private.release(r.guest_phys, r.len) {
                Ok(()) => {
                    counters.released.fetch_add(r.len, Ordering::SeqCst);
                }
                Err(_) => {
                    counters.refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        if report.ranges.len() < MAX_RELINQUISH_RANGES {
            counters
                .answered
                .fetch_max(report.sequence, Ordering::SeqCst);
        }
    };
    while !quit.load(Ordering::SeqCst) {
        match llm.recv_relinquish(&mut release, REPORT_POLL) {
            Ok(_) | Err(HostError::Timeout(_)) => {}
            // Not up yet (booting) or reset: look again shortly.
            Err(HostError::NotReady) => std::thread::sleep(REPORT_POLL),
            Err(HostError::VmStopped) => std::thread::sleep(REPORT_POLL),
            // A malformed report was refused and its buffer returned, or the ring itself is
            // broken: either way the guest waits, so a broken ring cannot make this spin.
            Err(HostError::Device(e)) => {
                refused(counters, &e);
                std::thread::sleep(REPORT_POLL);
            }
        }
    }
}

/// Counts a refused report and says why, at the first and then at every power of two (a
/// guest sending nothing but bad reports must not flood the host's log).
fn refused(counters: &Counters, why: &dyn std::fmt::Display) {
    let n = counters.refused_reports.fetch_add(1, Ordering::SeqCst) + 1;
    if n.is_power_of_two() {
        eprintln!(
            "[vmm] refused a relinquish report from the guest ({n} so far; nothing of it was \
             released): {why}"
        );
    }
}
