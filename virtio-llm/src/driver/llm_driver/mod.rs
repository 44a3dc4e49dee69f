//! The guest's virtio-llm driver: brings the device up over virtio-mmio, keeps receive
//! buffers posted on the host → guest queues, and sends replies and responses through a pool
//! of transmit buffers, all inside the shared window.
//!
//! Everything the device writes is hostile: a used entry must name a chain the driver posted
//! with a length it offered ([`SplitRing`] checks), a message is copied out of the shared
//! buffer once and decoded from the private copy, and a message that does not decode is
//! reported as [`DriverError::Malformed`] after its buffer went back to the device.

use super::layout::{PLANS, buffers_start, ring_addrs};
use super::{DriverMemory, RingError, SplitRing};
use crate::WireError;
use crate::mmio::{self, F_EVENT_IDX, F_VERSION_1, reg, status};
use crate::spec::{self, config, feature, queue};
use alloc::vec::Vec;

mod queues;

/// The virtio-mmio register page as the driver reaches it (volatile MMIO in the guest, a
/// direct call into the VMM's transport in host tests).
pub trait Transport {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: u64) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: u64, value: u32);
}

/// Why the driver failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("no virtio-mmio device here (magic {magic:#x}, version {version})")]
    NotVirtioMmio { magic: u32, version: u32 },
    #[error("the device is type {0}, not virtio-llm")]
    WrongDevice(u32),
    #[error("the device speaks protocol version {0}; this driver speaks 1")]
    ProtocolVersion(u8),
    #[error("the device lacks required features (offered {offered:#x})")]
    MissingFeatures { offered: u64 },
    #[error("the device refused the negotiated features")]
    FeaturesRefused,
    #[error("queue {queue} holds at most {max} entries; the driver needs {needed}")]
    QueueTooSmall { queue: u16, max: u32, needed: u16 },
    #[error("the shared window ({size:#x} bytes) is too small for the driver's buffers")]
    WindowTooSmall { size: u64 },
    #[error("the device needs a reset (it reported DEVICE_NEEDS_RESET)")]
    NeedsReset,
    #[error("queue {queue}: {source}")]
    Ring {
        queue: u16,
        #[source]
        source: RingError,
    },
    #[error("queue {queue}: malformed message from the device: {source}")]
    Malformed {
        queue: u16,
        #[source]
        source: WireError,
    },
    #[error("cannot encode the message: {0}")]
    Encode(WireError),
    #[error("a {len}-byte message does not fit a {max}-byte buffer of queue {queue}")]
    TooBig { queue: u16, len: usize, max: u32 },
    #[error("queue {0} is not live (its feature was not negotiated)")]
    NoSuchQueue(u16),
}

/// The device's limits, read from its configuration space and clamped to the protocol's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    pub max_message_bytes: u32,
    pub max_chunk_bytes: u32,
    pub max_models: u32,
    pub max_sessions: u32,
    pub max_context_len: u32,
    pub memory_budget: u64,
}

/// The secret a guest derives its sealing key from, and the measurement of its images.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyRoot {
    pub root: [u8; 32],
    pub measurement: [u8; 32],
}

impl core::fmt::Debug for KeyRoot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyRoot").finish_non_exhaustive()
    }
}

/// What the driver saw go wrong without failing (device bugs or attacks it survived).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub received: u64,
    pub sent: u64,
    pub notifications: u64,
    pub refused_buffers: u64,
    pub malformed: u64,
}

/// Receive side of a host → guest queue: which buffer each posted head holds.
struct RxQueue {
    ring: SplitRing,
    /// Buffer address by head descriptor.
    buffer_of: Vec<u64>,
    buffer_bytes: u32,
}

/// Transmit side of a guest → host queue.
struct TxQueue {
    ring: SplitRing,
    free: Vec<u64>,
    /// Buffer address and message length by head descriptor.
    in_flight: Vec<(u64, u32)>,
    buffer_bytes: u32,
    /// Buffers the device returned, oldest first, for queues whose senders need to know
    /// (a relinquish report is done only when the device gives its buffer back).
    returned: Option<Vec<u64>>,
}

/// The virtio-llm driver over guest memory `M` and transport `T`.
pub struct LlmDriver<M: DriverMemory, T: Transport> {
    mem: M,
    transport: T,
    features: u64,
    limits: DeviceLimits,
    commands: RxQueue,
    requests: RxQueue,
    replies: TxQueue,
    responses: TxQueue,
    /// The memory queues, when `feature::MEMORY` was negotiated.
    mem_events: Option<RxQueue>,
    mem_reports: Option<TxQueue>,
    window_base: u64,
    stats: DriverStats,
}

/// Features the driver accepts when offered (besides the required ones). Memory probes
/// (`feature::DIAGNOSTICS`) are not among them: only a test build of the engine asks for
/// them ([`LlmDriver::with_probes`]), so a production engine never answers one.
pub const OPTIONAL_FEATURES: u64 = F_EVENT_IDX
    | 1 << feature::TEXT_PROMPT
    | 1 << feature::MEMORY
    | 1 << feature::PREEMPT
    | 1 << feature::SEALED
    | 1 << feature::GUEST_TEXT
    | 1 << feature::SEALED_SESSION
    | 1 << feature::KV_REUSE
    | 1 << feature::OPTIONS
    | 1 << feature::EMBED
    | 1 << feature::GUEST_TOOLS
    | 1 << feature::KV_EVICT
    | 1 << feature::BATCH;
/// Features the driver refuses to run without.
pub const REQUIRED_FEATURES: u64 = F_VERSION_1 | 1 << feature::ACCESS_PLATFORM;

fn ring_err(queue: u16) -> impl Fn(RingError) -> DriverError {
    move |source| DriverError::Ring { queue, source }
}

impl<M: DriverMemory, T: Transport> LlmDriver<M, T> {
    /// Initialises the device (virtio 1.2 §3.1.1) with its queues in the shared window at
    /// `window_base` (`window_size` bytes), posts the receive buffers and sets DRIVER_OK.
    /// On failure the device is left with FAILED set.
    pub fn new(
        mem: M,
        transport: T,
        window_base: u64,
        window_size: u64,
    ) -> Result<Self, DriverError> {
        Self::open(mem, transport, window_base, window_size, OPTIONAL_FEATURES)
    }

    /// [`Self::new`] for a test build of the engine: memory probes are accepted too.
    pub fn with_probes(
        mem: M,
        transport: T,
        window_base: u64,
        window_size: u64,
    ) -> Result<Self, DriverError> {
        let accepted = OPTIONAL_FEATURES | 1 << feature::DIAGNOSTICS;
        Self::open(mem, transport, window_base, window_size, accepted)
    }

    fn open(
        mem: M,
        transport: T,
        window_base: u64,
        window_size: u64,
        accepted: u64,
    ) -> Result<Self, DriverError> {
        let t = &transport;
        let (magic, version) = (t.read32(reg::MAGIC), t.read32(reg::VERSION));
        if magic != mmio::MAGIC || version != mmio::VERSION {
            return Err(DriverError::NotVirtioMmio { magic, version });
        }
        let id = t.read32(reg::DEVICE_ID);
        if id != spec::DEVICE_ID {
            return Err(DriverError::WrongDevice(id));
        }
        t.write32(reg::STATUS, 0);
        t.write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let (features, limits, rings) =
            match Self::try_configure(&mem, t, window_base, window_size, accepted) {
                Ok(parts) => parts,
                Err(e) => {
                    fail(t);
                    return Err(e);
                }
            };
        let mut d = Self::assemble(mem, transport, features, limits, rings, window_base);
        if let Err(e) = d.post_all_rx().and_then(|()| d.go_live()) {
            fail(&d.transport);
            return Err(e);
        }
        Ok(d)
    }

    fn go_live(&mut self) -> Result<(), DriverError> {
        let s = self.transport.read32(reg::STATUS);
        self.transport.write32(reg::STATUS, s | status::DRIVER_OK);
        if self.transport.read32(reg::STATUS) & status::DEVICE_NEEDS_RESET != 0 {
            return Err(DriverError::NeedsReset);
        }
        Ok(())
    }

    fn try_configure(
        mem: &M,
        t: &T,
        base: u64,
        size: u64,
        accepted: u64,
    ) -> Result<(u64, DeviceLimits, Vec<SplitRing>), DriverError> {
        if super::layout::window_bytes_needed() > size {
            return Err(DriverError::WindowTooSmall { size });
        }
        let limits = read_limits(t)?;
        t.write32(reg::DEVICE_FEATURES_SEL, 0);
        let low = t.read32(reg::DEVICE_FEATURES);
        t.write32(reg::DEVICE_FEATURES_SEL, 1);
        let offered = u64::from(low) | u64::from(t.read32(reg::DEVICE_FEATURES)) << 32;
        if offered & REQUIRED_FEATURES != REQUIRED_FEATURES {
            return Err(DriverError::MissingFeatures { offered });
        }
        let features = REQUIRED_FEATURES | (offered & accepted);
        t.write32(reg::DRIVER_FEATURES_SEL, 0);
        t.write32(reg::DRIVER_FEATURES, features as u32);
        t.write32(reg::DRIVER_FEATURES_SEL, 1);
        t.write32(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let s = t.read32(reg::STATUS);
        t.write32(reg::STATUS, s | status::FEATURES_OK);
        if t.read32(reg::STATUS) & status::FEATURES_OK == 0 {
            return Err(DriverError::FeaturesRefused);
        }
        let mut rings = Vec::new();
        let queues = if features & (1 << feature::MEMORY) != 0 {
            PLANS.len()
        } else {
            usize::from(queue::MEMORY_EVENT)
        };
        for (i, plan) in PLANS.iter().enumerate().take(queues) {
            let q = i as u16;
            t.write32(reg::QUEUE_SEL, u32::from(q));
            let max = t.read32(reg::QUEUE_NUM_MAX);
            if max < u32::from(plan.size) {
                return Err(DriverError::QueueTooSmall {
                    queue: q,
                    max,
                    needed: plan.size,
                });
            }
            let a = ring_addrs(base, q);
            let mut ring =
                SplitRing::new(mem, plan.size, a.desc, a.avail, a.used).map_err(ring_err(q))?;
            ring.set_event_idx(features & F_EVENT_IDX != 0);
            t.write32(reg::QUEUE_NUM, u32::from(plan.size));
            for (low, addr) in [
                (reg::QUEUE_DESC_LOW, a.desc),
                (reg::QUEUE_DRIVER_LOW, a.avail),
                (reg::QUEUE_DEVICE_LOW, a.used),
            ] {
                t.write32(low, addr as u32);
                t.write32(low + 4, (addr >> 32) as u32);
            }
            t.write32(reg::QUEUE_READY, 1);
            rings.push(ring);
        }
        Ok((features, limits, rings))
    }

    fn assemble(
        mem: M,
        transport: T,
        features: u64,
        limits: DeviceLimits,
        rings: Vec<SplitRing>,
        base: u64,
    ) -> Self {
        let mut rings = rings.into_iter();
        let mut next = || rings.next();
        let (Some(commands), Some(replies), Some(requests), Some(responses)) =
            (next(), next(), next(), next())
        else {
            unreachable!("try_configure sets up at least the four control and request rings")
        };
        let memory = (next(), next());
        let rx = |index: u16, ring: SplitRing| RxQueue {
            buffer_of: alloc::vec![0; usize::from(PLANS[usize::from(index)].size)],
            buffer_bytes: PLANS[usize::from(index)].buffer_bytes,
            ring,
        };
        let tx = |index: u16, ring: SplitRing| {
            let plan = PLANS[usize::from(index)];
            let start = buffers_start(base, index);
            let stride = u64::from(plan.buffer_bytes).next_multiple_of(4096);
            TxQueue {
                ring,
                free: (0..u64::from(plan.buffers))
                    .rev()
                    .map(|i| start + i * stride)
                    .collect(),
                in_flight: alloc::vec![(0, 0); usize::from(plan.size)],
                buffer_bytes: plan.buffer_bytes,
                returned: (index == queue::MEMORY_REPORT).then(Vec::new),
            }
        };
        let (mem_events, mem_reports) = match memory {
            (Some(events), Some(reports)) => (
                Some(rx(queue::MEMORY_EVENT, events)),
                Some(tx(queue::MEMORY_REPORT, reports)),
            ),
            _ => (None, None),
        };
        Self {
            commands: rx(queue::CONTROL_CMD, commands),
            replies: tx(queue::CONTROL_REPLY, replies),
            requests: rx(queue::REQUEST, requests),
            responses: tx(queue::RESPONSE, responses),
            mem_events,
            mem_reports,
            window_base: base,
            mem,
            transport,
            features,
            limits,
            stats: DriverStats::default(),
        }
    }

    /// Features in use.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The device's limits.
    pub fn limits(&self) -> DeviceLimits {
        self.limits
    }

    /// The key root and image measurement from the configuration space, when
    /// `feature::SEALED` was negotiated (docs/sealed-model.md, "Key roots").
    pub fn key_root(&self) -> Option<KeyRoot> {
        if self.features & (1 << feature::SEALED) == 0 {
            return None;
        }
        let read = |at: usize| {
            let mut out = [0u8; 32];
            for (i, word) in out.chunks_exact_mut(4).enumerate() {
                let v = self.transport.read32(reg::CONFIG + (at + 4 * i) as u64);
                word.copy_from_slice(&v.to_le_bytes());
            }
            out
        };
        Some(KeyRoot {
            root: read(config::KEY_ROOT),
            measurement: read(config::MEASUREMENT),
        })
    }

    /// Counters.
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// Whether the memory queues are live (`feature::MEMORY` negotiated).
    pub fn memory_enabled(&self) -> bool {
        self.mem_events.is_some()
    }
}

/// Tells the device the driver gave up (virtio 1.2 §3.1.1 step 8).
fn fail(t: &impl Transport) {
    let s = t.read32(reg::STATUS);
    t.write32(reg::STATUS, s | status::FAILED);
}

fn read_limits(t: &impl Transport) -> Result<DeviceLimits, DriverError> {
    let u32_at = |off: usize| t.read32(reg::CONFIG + off as u64);
    let version = (u32_at(config::PROTOCOL_VERSION) & 0xff) as u8;
    if version != spec::PROTOCOL_VERSION {
        return Err(DriverError::ProtocolVersion(version));
    }
    let budget = u64::from(u32_at(config::MEMORY_BUDGET))
        | u64::from(u32_at(config::MEMORY_BUDGET + 4)) << 32;
    // Limits above the protocol's are clamped, never trusted for an allocation.
    Ok(DeviceLimits {
        max_message_bytes: u32_at(config::MAX_MESSAGE_BYTES).min(spec::MAX_MESSAGE_BYTES as u32),
        max_chunk_bytes: u32_at(config::MAX_CHUNK_BYTES).min(spec::MAX_CHUNK_BYTES as u32),
        max_models: u32_at(config::MAX_MODELS),
        max_sessions: u32_at(config::MAX_SESSIONS),
        max_context_len: u32_at(config::MAX_CONTEXT_LEN).min(spec::MAX_CONTEXT_LEN),
        memory_budget: budget - budget % spec::MEMORY_GRANULE,
    })
}
