//! The virtio-llm device in the VMM: the transport-facing half ([`VirtioLlm`], a
//! [`VirtioDevice`]) and the host-facing half ([`LlmHost`], what the CLI and tests call).
//!
//! Notifications both ways avoid the vCPU threads: the guest's queue notifications land on
//! one eventfd per queue (registered as ioeventfds, so KVM signals them without an exit; the
//! MMIO path signals the same eventfds if registration is unavailable), and the device's
//! "interrupt" sets the interrupt status and wakes the vCPUs parked in their wait register,
//! the same job irqfd does for a guest idling in `hlt`.
//!
//! The device reaches guest memory through a mapping of the shared window alone, so no bug
//! in it can touch the boot region or the private pool.

use super::Timer;
use super::virtio_mmio::{ActivateError, INT_VRING, VirtioDevice};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use virtio_llm::device::chain::Window;
use virtio_llm::device::{DeviceError, LlmDevice, NotifyDriver};
use virtio_llm::spec::{self, config, feature, queue};
use virtio_llm::wire::control::{ControlCommand, ControlReply};
use virtio_llm::wire::memory::{BudgetChange, RelinquishReport};
use virtio_llm::wire::request::RequestMsg;
use virtio_llm::wire::response::ResponseMsg;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// How long a waiting host thread spins on the rings before it sleeps on the eventfd: a
/// guest that answers within this time costs no wake-up latency. Only while the queue's
/// answers keep coming that fast: a stream that arrives slower (a token every few ms) would
/// pay the whole spin for every message, on a core the vCPUs need.
const SPIN: Duration = Duration::from_micros(200);
/// Longest sleep between checks that the VM is still running.
const NAP: Duration = Duration::from_millis(20);

/// Why a host-side operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("the guest has not brought the virtio-llm device up (no driver, or it reset it)")]
    NotReady,
    #[error("the VM stopped")]
    VmStopped,
    #[error("no answer from the guest within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// The device's "interrupt": interrupt status, and a wake-up for parked vCPUs.
struct Interrupt {
    status: Arc<AtomicU32>,
    timer: Arc<Timer>,
}

impl NotifyDriver for Interrupt {
    fn notify(&self, _queue: u16) {
        self.status.fetch_or(INT_VRING, Ordering::SeqCst);
        self.timer.wake_all();
    }
}

/// The host's handle on the device: send commands and requests, receive replies and
/// responses. Shared between threads; each operation takes the device briefly.
pub struct LlmHost {
    device: Mutex<Option<LlmDevice<GuestMemoryMmap>>>,
    changed: Condvar,
    /// One per queue: the guest notified it.
    kicks: Vec<EventFd>,
    /// One per queue: whether its last wait was answered within [`SPIN`] (spinning pays).
    spin_pays: Vec<AtomicBool>,
    stopped: AtomicBool,
    /// The features the driver accepted; 0 while the device is not live.
    features: AtomicU64,
    /// Counts activations and resets (changed only with `device` locked), so a buffer
    /// taken from one device is never completed on the next.
    incarnation: AtomicU64,
}

impl LlmHost {
    fn lock(&self) -> MutexGuard<'_, Option<LlmDevice<GuestMemoryMmap>>> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The eventfd the guest's notifications of `queue` signal.
    pub fn kick_fd(&self, queue: u16) -> Option<&EventFd> {
        self.kicks.get(usize::from(queue))
    }

    /// Waits until the guest driver set DRIVER_OK.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), HostError> {
        let deadline = Instant::now() + timeout;
        let mut d = self.lock();
        while d.is_none() {
            if self.stopped.load(Ordering::SeqCst) {
                return Err(HostError::VmStopped);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HostError::Timeout(timeout));
            }
            d = self
                .changed
                .wait_timeout(d, (deadline - now).min(NAP))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// What the device sent, received and refused, while the driver has it up.
    pub fn device_stats(&self) -> Option<virtio_llm::device::DeviceStats> {
        self.lock().as_ref().map(LlmDevice::stats)
    }

    /// Marks the VM as running (the machine calls this when `run` starts).
    pub fn vm_started(&self) {
        self.stopped.store(false, Ordering::SeqCst);
    }

    /// Marks the VM as gone and wakes every waiter.
    pub fn vm_stopped(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.changed.notify_all();
        for k in &self.kicks {
            let _ = k.write(1);
        }
    }

    /// Retries `attempt` on `queue` until it yields, the deadline passes or the VM stops:
    /// spinning first, then sleeping on the queue's eventfd with notifications armed.
    fn wait_on<R>(
        &self,
        queue: u16,
        timeout: Duration,
        mut attempt: impl FnMut(&mut LlmDevice<GuestMemoryMmap>) -> Result<Option<R>, DeviceError>,
    ) -> Result<R, HostError> {
        let start = Instant::now();
        let spin_pays = self.spin_pays.get(usize::from(queue));
        let spin = match spin_pays {
            Some(pays) if !pays.load(Ordering::Relaxed) => Duration::ZERO,
            _ => SPIN,
        };
        let mut slept = false;
        loop {
            let pending = {
                let mut guard = self.lock();
                let dev = guard.as_mut().ok_or(HostError::NotReady)?;
                if let Some(r) = attempt(dev)? {
                    if let Some(pays) = spin_pays {
                        pays.store(!slept, Ordering::Relaxed);
                    }
                    return Ok(r);
                }
                if start.elapsed() < spin {
                    drop(guard);
                    std::hint::spin_loop();
                    continue;
                }
                dev.arm(queue)?
            };
            // Checked even when the ring says work is pending: a driver whose ring keeps
            // saying so without a chain to take must not hold this thread past its time.
            if self.stopped.load(Ordering::SeqCst) {
                return Err(HostError::VmStopped);
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(HostError::Timeout(timeout));
            }
            if pending {
                continue;
            }
            if let Some(fd) = self.kick_fd(queue) {
                wait_readable(fd, left.min(NAP));
                let _ = fd.read();
            }
            slept = true;
        }
    }

    /// Sends a control command, waiting for a posted buffer.
    pub fn send_command(
        &self,
        cmd: &ControlCommand<'_>,
        timeout: Duration,
    ) -> Result<(), HostError> {
        self.wait_on(queue::CONTROL_CMD, timeout, |d| {
            Ok(d.send_command(cmd)?.then_some(()))
        })
    }

    /// Receives the next control reply.
    pub fn recv_reply(&self, timeout: Duration) -> Result<ControlReply, HostError> {
        self.wait_on(queue::CONTROL_REPLY, timeout, |d| d.recv_reply())
    }

    /// Sends a request, waiting for a posted buffer.
    pub fn send_request(&self, req: &RequestMsg, timeout: Duration) -> Result<(), HostError> {
        self.wait_on(queue::REQUEST, timeout, |d| {
            Ok(d.send_request(req)?.then_some(()))
        })
    }

    /// Receives the next response.
    pub fn recv_response(&self, timeout: Duration) -> Result<ResponseMsg, HostError> {
        self.wait_on(queue::RESPONSE, timeout, |d| d.recv_response())
    }

    /// Sends a budget change on the memory event queue, waiting for a posted buffer.
    pub fn send_budget(&self, change: &BudgetChange, timeout: Duration) -> Result<(), HostError> {
        self.wait_on(queue::MEMORY_EVENT, timeout, |d| {
            Ok(d.send_budget(change)?.then_some(()))
        })
    }

    /// Takes the next relinquish report, calling `release` on it before its buffer goes
    /// back to the guest. `release` runs without the device's lock: hole-punching a large
    /// report takes milliseconds the request and command queues must not wait for.
    pub fn recv_relinquish(
        &self,
        release: &mut dyn FnMut(&RelinquishReport),
        timeout: Duration,
    ) -> Result<RelinquishReport, HostError> {
        let (head, report, incarnation) = self.wait_on(queue::MEMORY_REPORT, timeout, |d| {
            let taken = d.take_relinquish()?;
            // Read under the lock that also guards activation and reset.
            let incarnation = self.incarnation.load(Ordering::SeqCst);
            Ok(taken.map(|(head, report)| (head, report, incarnation)))
        })?;
        release(&report);
        let mut guard = self.lock();
        // A driver that reset the device meanwhile has new queues: the head is not theirs.
        if let Some(dev) = guard.as_mut()
            && self.incarnation.load(Ordering::SeqCst) == incarnation
        {
            dev.complete_relinquish(head)?;
        }
        Ok(report)
    }

    /// Whether the guest's driver took the memory queues (negotiated `feature::MEMORY`).
    pub fn memory_queues_live(&self) -> bool {
        self.negotiated(feature::MEMORY)
    }

    /// Whether the live device runs with feature `bit` (one of `spec::feature`).
    pub fn negotiated(&self, bit: u32) -> bool {
        self.features.load(Ordering::SeqCst) & (1 << bit) != 0
    }
}

/// Blocks until `fd` is readable or `timeout` passes.
fn wait_readable(fd: &EventFd, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// The device's limits, as its configuration space states them.
#[derive(Clone, Copy, Debug)]
pub struct LlmConfig {
    pub max_models: u32,
    pub max_sessions: u32,
    pub max_context_len: u32,
    pub memory_budget: u64,
    /// Offer `feature::DIAGNOSTICS` (memory probes); only tests ask for it.
    pub diagnostics: bool,
    /// The guest's key root and image measurement: with them the device offers
    /// `feature::SEALED` and puts both in its configuration space. Only the development root
    /// travels this way (the host knows it anyway); a production root never passes through
    /// the host (docs/sealed-model.md, "Key roots").
    pub key_root: Option<SealingRoot>,
    /// Offer `feature::KV_REUSE`: the guest keeps closed sessions' KV caches for later
    /// prompts that start the same way.
    pub kv_reuse: bool,
    /// Offer `feature::BATCH`: the guest runs the requests it holds on sessions of one model
    /// together.
    pub batch: bool,
}

/// A key root and the measurement of the images the guest runs.
#[derive(Clone, Copy)]
pub struct SealingRoot {
    pub root: [u8; 32],
    pub measurement: [u8; 32],
}

impl std::fmt::Debug for SealingRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingRoot").finish_non_exhaustive()
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            max_models: 4,
            max_sessions: 16,
            max_context_len: spec::MAX_CONTEXT_LEN,
            memory_budget: 0,
            diagnostics: false,
            key_root: None,
            kv_reuse: true,
            batch: true,
        }
    }
}

/// The transport-facing half of the device.
pub struct VirtioLlm {
    host: Arc<LlmHost>,
    shared: GuestMemoryMmap,
    window: Window,
    interrupt: Arc<Interrupt>,
    config: [u8; config::SIZE],
    diagnostics: bool,
    sealed: bool,
    kv_reuse: bool,
    batch: bool,
}

impl VirtioLlm {
    /// A device over `shared` (a mapping of the shared window `window` and nothing else).
    /// `interrupt_status` is the transport's register; `timer` wakes parked vCPUs.
    pub fn new(
        shared: GuestMemoryMmap,
        window: Window,
        interrupt_status: Arc<AtomicU32>,
        timer: Arc<Timer>,
        limits: LlmConfig,
    ) -> Result<(Self, Arc<LlmHost>), std::io::Error> {
        let kicks = (0..queue::COUNT)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        let host = Arc::new(LlmHost {
            device: Mutex::new(None),
            changed: Condvar::new(),
            kicks,
            spin_pays: (0..queue::COUNT).map(|_| AtomicBool::new(true)).collect(),
            stopped: AtomicBool::new(false),
            features: AtomicU64::new(0),
            incarnation: AtomicU64::new(0),
        });
        let mut cfg = [0u8; config::SIZE];
        cfg[config::PROTOCOL_VERSION] = spec::PROTOCOL_VERSION;
        let mut put = |at: usize, v: &[u8]| cfg[at..at + v.len()].copy_from_slice(v);
        put(
            config::MAX_MESSAGE_BYTES,
            &(spec::MAX_MESSAGE_BYTES as u32).to_le_bytes(),
        );
        put(
            config::MAX_CHUNK_BYTES,
            &(spec::MAX_CHUNK_BYTES as u32).to_le_bytes(),
        );
        put(config::MAX_MODELS, &limits.max_models.to_le_bytes());
        put(config::MAX_SESSIONS, &limits.max_sessions.to_le_bytes());
        put(
            config::MAX_CONTEXT_LEN,
            &limits.max_context_len.to_le_bytes(),
        );
        put(config::MEMORY_BUDGET, &limits.memory_budget.to_le_bytes());
        if let Some(k) = &limits.key_root {
            put(config::KEY_ROOT, &k.root);
            put(config::MEASUREMENT, &k.measurement);
        }
        let device = Self {
            host: host.clone(),
            shared,
            window,
            interrupt: Arc::new(Interrupt {
                status: interrupt_status,
                timer,
            }),
            config: cfg,
            diagnostics: limits.diagnostics,
            sealed: limits.key_root.is_some(),
            kv_reuse: limits.kv_reuse,
            batch: limits.batch,
        };
        Ok((device, host))
    }
}

impl VirtioDevice for VirtioLlm {
    fn device_type(&self) -> u32 {
        spec::DEVICE_ID
    }

    fn features(&self) -> u64 {
        let diagnostics = if self.diagnostics {
            1 << feature::DIAGNOSTICS
        } else {
            0
        };
        // A key root lets the guest unseal models and open sealed requests.
        let sealed = if self.sealed {
            1 << feature::SEALED | 1 << feature::SEALED_SESSION
        } else {
            0
        };
        virtio_llm::mmio::F_EVENT_IDX
            | sealed
            | 1 << feature::ACCESS_PLATFORM
            | 1 << feature::TEXT_PROMPT
            | 1 << feature::MEMORY
            | 1 << feature::PREEMPT
            | 1 << feature::GUEST_TEXT
            | u64::from(self.kv_reuse) << feature::KV_REUSE
            // Eviction seals with the key root, and evicts what KV reuse keeps.
            | u64::from(self.kv_reuse && self.sealed) << feature::KV_EVICT
            | 1 << feature::OPTIONS
            | 1 << feature::EMBED
            | 1 << feature::GUEST_TOOLS
            | u64::from(self.batch) << feature::BATCH
            | diagnostics
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[queue::MAX_SIZE; queue::COUNT as usize]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, b) in data.iter_mut().enumerate() {
            *b = start
                .checked_add(i)
                .and_then(|at| self.config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn queue_valid(&self, queue: &Queue) -> bool {
        use virtio_queue::QueueT;
        // Over the shared window alone: rings anywhere else are refused.
        queue.is_valid(&self.shared)
    }

    fn activate(&mut self, features: u64, queues: Vec<Option<Queue>>) -> Result<(), ActivateError> {
        const NEEDED: [u16; 4] = [
            queue::CONTROL_CMD,
            queue::CONTROL_REPLY,
            queue::REQUEST,
            queue::RESPONSE,
        ];
        // With VIRTIO_LLM_F_MEMORY the memory queues must be ready too.
        let memory = features & (1 << feature::MEMORY) != 0;
        let needed = if memory {
            usize::from(queue::COUNT)
        } else {
            NEEDED.len()
        };
        let ready = queues[..needed.min(queues.len())]
            .iter()
            .filter(|q| q.is_some())
            .count();
        if ready < needed {
            return Err(ActivateError::QueuesNotReady { ready, needed });
        }
        if features & (1 << feature::ACCESS_PLATFORM) == 0 {
            return Err(ActivateError::FeatureRequired("VIRTIO_F_ACCESS_PLATFORM"));
        }
        self.host.features.store(features, Ordering::SeqCst);
        let device = LlmDevice::new(
            self.shared.clone(),
            self.window,
            features,
            queues,
            self.interrupt.clone(),
        );
        let mut live = self.host.lock();
        *live = Some(device);
        self.host.incarnation.fetch_add(1, Ordering::SeqCst);
        drop(live);
        self.host.changed.notify_all();
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        // Reached only when the ioeventfd is not registered: the same eventfd, by hand.
        if let Some(fd) = self.host.kick_fd(index) {
            let _ = fd.write(1);
        }
    }

    fn reset(&mut self) {
        self.host.features.store(0, Ordering::SeqCst);
        let mut live = self.host.lock();
        *live = None;
        self.host.incarnation.fetch_add(1, Ordering::SeqCst);
        drop(live);
        self.host.changed.notify_all();
    }
}
