//! The virtio-mmio transport (virtio 1.2 §4.2, "modern" version 2): the register page through
//! which a guest driver discovers a virtio device, negotiates features, sets up its
//! virtqueues and notifies the device. The device behind it only sees negotiated features
//! and ready queues ([`VirtioDevice`]), each at its own index.
//!
//! Everything the guest writes is checked: features outside the offer, queue sizes above the
//! maximum or not a power of two, ring addresses the device cannot reach or misaligned
//! (`Queue::is_valid` over the device's memory), queue changes after the device went live.
//! A driver that breaks the rules gets FEATURES_OK refused or DEVICE_NEEDS_RESET, never a
//! device running on half-configured queues.

use super::{DeviceEvent, MmioDevice};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};

/// Why a device would not start on what the driver set up (the transport then asks the
/// driver to reset).
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver made {ready} of the {needed} queues ready")]
    QueuesNotReady { ready: usize, needed: usize },
    #[error("the driver did not accept {0}, which this device requires")]
    FeatureRequired(&'static str),
    #[error(
        "the driver made queue {0} ready with a bad size or rings outside the memory the \
         device may use (or misaligned)"
    )]
    QueueInvalid(u16),
}

pub use virtio_llm::mmio::{
    F_VERSION_1, INT_CONFIG, INT_VRING, MAGIC, VENDOR_ID, VERSION, reg, status,
};

/// A virtio device model behind the transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID.
    fn device_type(&self) -> u32;
    /// Features offered (the transport adds `F_VERSION_1`).
    fn features(&self) -> u64;
    /// The maximum size of each queue; the slice length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Whether `queue`'s size and rings are usable in the memory the device reaches
    /// (`Queue::is_valid` over it).
    fn queue_valid(&self, queue: &Queue) -> bool;
    /// Starts the device on the negotiated `features` and the driver's `queues`, indexed by
    /// queue number: `None` where the driver did not make the queue ready.
    fn activate(&mut self, features: u64, queues: Vec<Option<Queue>>) -> Result<(), ActivateError>;
    /// The driver notified queue `index`.
    fn queue_notify(&mut self, index: u16);
    /// Stops the device and drops its queues (driver reset).
    fn reset(&mut self);
}

struct State {
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    config_generation: u32,
}

/// The register page of one virtio device.
pub struct MmioTransport {
    device: Mutex<Box<dyn VirtioDevice>>,
    state: Mutex<State>,
    /// InterruptStatus, shared with the device, which raises bits from its own thread.
    interrupt_status: Arc<AtomicU32>,
}

fn new_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    // A queue whose maximum size is not a power of two would be a device bug; it shows up
    // as a queue the driver cannot use (QueueNumMax 0) rather than a panic.
    device
        .queue_max_sizes()
        .iter()
        .filter_map(|&max| Queue::new(max).ok())
        .collect()
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        Self::with_interrupt_status(device, Arc::default())
    }

    /// A transport whose InterruptStatus register is `interrupt_status`, which the device
    /// also holds.
    pub fn with_interrupt_status(
        device: Box<dyn VirtioDevice>,
        interrupt_status: Arc<AtomicU32>,
    ) -> Self {
        let queues = new_queues(device.as_ref());
        Self {
            device: Mutex::new(device),
            state: Mutex::new(State {
                status: 0,
                device_features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                queue_sel: 0,
                queues,
                config_generation: 0,
            }),
            interrupt_status,
        }
    }

    /// Marks used buffers on a queue (the device calls this before interrupting the guest).
    pub fn signal_used_queue(&self) {
        self.interrupt_status.fetch_or(INT_VRING, Ordering::SeqCst);
    }

    fn offered(&self) -> u64 {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .features()
            | F_VERSION_1
    }

    fn reset(&self, s: &mut State) {
        let mut dev = self.device.lock().unwrap_or_else(|e| e.into_inner());
        dev.reset();
        s.queues = new_queues(dev.as_ref());
        s.status = 0;
        s.driver_features = 0;
        s.device_features_sel = 0;
        s.driver_features_sel = 0;
        s.queue_sel = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
    }

    fn write_status(&self, s: &mut State, value: u32) {
        if value == 0 {
            self.reset(s);
            return;
        }
        let new_bits = value & !s.status;
        if new_bits & status::FEATURES_OK != 0 {
            let offered = self.offered();
            if s.driver_features & !offered != 0 || s.driver_features & F_VERSION_1 == 0 {
                // Refused: the driver reads the status back and sees FEATURES_OK clear.
                s.status = value & !status::FEATURES_OK;
                return;
            }
        }
        s.status = value;
        if new_bits & status::DRIVER_OK != 0 {
            let mut dev = self.device.lock().unwrap_or_else(|e| e.into_inner());
            // The ready queues move to the device, each at its own index (a queue the driver
            // left unready must not shift the others); the transport keeps stand-ins that
            // only answer QueueNumMax/QueueReady reads (live queues cannot be reconfigured).
            let mut stand_ins = new_queues(dev.as_ref());
            let queues = std::mem::take(&mut s.queues);
            let mut handed = Vec::with_capacity(queues.len());
            let mut invalid = None;
            for (index, (q, stand_in)) in queues.into_iter().zip(stand_ins.iter_mut()).enumerate() {
                if !q.ready() {
                    handed.push(None);
                    continue;
                }
                if !dev.queue_valid(&q) {
                    invalid.get_or_insert(index as u16);
                }
                stand_in.set_ready(true);
                handed.push(Some(q));
            }
            s.queues = stand_ins;
            let started = match invalid {
                Some(index) => Err(ActivateError::QueueInvalid(index)),
                None => dev.activate(s.driver_features, handed),
            };
            if let Err(why) = started {
                eprintln!(
                    "[vmm] virtio device {} failed to start: {why}",
                    dev.device_type()
                );
                s.status |= status::DEVICE_NEEDS_RESET;
                self.interrupt_status.fetch_or(INT_CONFIG, Ordering::SeqCst);
            }
        }
    }

    fn configuring_queues(s: &State) -> bool {
        s.status & status::FEATURES_OK != 0 && s.status & status::DRIVER_OK == 0
    }
}

fn le_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

impl MmioDevice for MmioTransport {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            let dev = self.device.lock().unwrap_or_else(|e| e.into_inner());
            dev.read_config(offset - reg::CONFIG, data);
            return;
        }
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let queue = s.queues.get(s.queue_sel as usize);
        let value = match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self
                .device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match s.device_features_sel {
                0 => self.offered() as u32,
                1 => (self.offered() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            reg::STATUS => s.status,
            reg::CONFIG_GENERATION => s.config_generation,
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        let v = le_u32(data);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let configuring = Self::configuring_queues(&s);
        let sel = s.queue_sel as usize;
        match offset {
            reg::DEVICE_FEATURES_SEL => s.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => s.driver_features_sel = v,
            reg::DRIVER_FEATURES if s.status & status::FEATURES_OK == 0 => {
                match s.driver_features_sel {
                    0 => s.driver_features = (s.driver_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        s.driver_features = (s.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => s.queue_sel = v,
            reg::QUEUE_NUM if configuring => {
                if let Some(q) = s.queues.get_mut(sel) {
                    // virtio-queue ignores sizes above max or not a power of two, leaving
                    // the queue invalid: the device then refuses to start on it.
                    q.set_size(v as u16);
                }
            }
            reg::QUEUE_READY if configuring => {
                if let Some(q) = s.queues.get_mut(sel) {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH
                if configuring =>
            {
                if let Some(q) = s.queues.get_mut(sel) {
                    let (low, high) = if offset.is_multiple_of(8) {
                        (Some(v), None)
                    } else {
                        (None, Some(v))
                    };
                    match offset & !0x7 {
                        reg::QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                        reg::QUEUE_DRIVER_LOW => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            reg::QUEUE_NOTIFY if s.status & status::DRIVER_OK != 0 => {
                drop(s);
                self.device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .queue_notify(v as u16);
            }
            reg::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            reg::STATUS => self.write_status(&mut s, v),
            _ => {} // read-only registers and out-of-order writes are ignored
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Default)]
    struct Log {
        activated: Option<(u64, Vec<Option<u16>>)>,
        notified: Vec<u16>,
        resets: usize,
    }

    /// A device whose memory is 64 KiB at `MEM_BASE`.
    struct Recorder(Arc<Mutex<Log>>, vm_memory::GuestMemoryMmap);

    const MEM_BASE: u64 = 0x4000_0000;

    impl VirtioDevice for Recorder {
        fn device_type(&self) -> u32 {
            60
        }
        fn features(&self) -> u64 {
            0b101
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 64]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn queue_valid(&self, queue: &Queue) -> bool {
            queue.is_valid(&self.1)
        }
        fn activate(
            &mut self,
            features: u64,
            queues: Vec<Option<Queue>>,
        ) -> Result<(), ActivateError> {
            let sizes = queues
                .iter()
                .map(|q| q.as_ref().map(|q| q.size()))
                .collect();
            self.0.lock().unwrap().activated = Some((features, sizes));
            Ok(())
        }
        fn queue_notify(&mut self, index: u16) {
            self.0.lock().unwrap().notified.push(index);
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().resets += 1;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(
            vm_memory::GuestAddress(MEM_BASE),
            0x1_0000,
        )])
        .unwrap();
        (
            MmioTransport::new(Box::new(Recorder(Arc::clone(&log), mem))),
            log,
        )
    }

    fn rd(t: &MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// The driver side of virtio 1.2 §3.1.1 up to FEATURES_OK, acking `features`.
    fn negotiate(t: &MmioTransport, features: u64) -> u32 {
        wr(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(t, reg::DRIVER_FEATURES_SEL, 0);
        wr(t, reg::DRIVER_FEATURES, features as u32);
        wr(t, reg::DRIVER_FEATURES_SEL, 1);
        wr(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        rd(t, reg::STATUS)
    }

    #[test]
    fn identity_registers_and_config_space() {
        let (t, _) = transport();
        assert_eq!(rd(&t, reg::MAGIC), MAGIC);
        assert_eq!(rd(&t, reg::VERSION), 2);
        assert_eq!(rd(&t, reg::DEVICE_ID), 60);
        wr(&t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            rd(&t, reg::DEVICE_FEATURES),
            1,
            "VERSION_1 in the high word"
        );
        wr(&t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&t, reg::DEVICE_FEATURES), 0b101);
        assert_eq!(rd(&t, reg::CONFIG + 3), u32::from_le_bytes([4; 4]));
        assert_eq!(rd(&t, 0x0f0), 0, "unknown registers read as zero");
    }

    #[test]
    fn features_outside_the_offer_or_without_version_1_are_refused() {
        let (t, _) = transport();
        assert_eq!(negotiate(&t, F_VERSION_1 | 0b010) & status::FEATURES_OK, 0);
        wr(&t, reg::STATUS, 0);
        assert_eq!(
            negotiate(&t, 0b001) & status::FEATURES_OK,
            0,
            "VERSION_1 is required"
        );
        wr(&t, reg::STATUS, 0);
        assert_ne!(negotiate(&t, F_VERSION_1 | 0b100) & status::FEATURES_OK, 0);
    }

    #[test]
    fn queues_are_configured_then_handed_to_the_device_on_driver_ok() {
        let (t, log) = transport();
        wr(&t, reg::QUEUE_NUM, 16); // before FEATURES_OK: ignored
        negotiate(&t, F_VERSION_1 | 1);
        wr(&t, reg::QUEUE_SEL, 0);
        assert_eq!(rd(&t, reg::QUEUE_NUM_MAX), 256);
        wr(&t, reg::QUEUE_NUM, 128);
        wr(&t, reg::QUEUE_DESC_LOW, 0x4000_0000);
        wr(&t, reg::QUEUE_DRIVER_LOW, 0x4000_1000);
        wr(&t, reg::QUEUE_DEVICE_LOW, 0x4000_2000);
        wr(&t, reg::QUEUE_READY, 1);
        wr(&t, reg::QUEUE_SEL, 7);
        assert_eq!(rd(&t, reg::QUEUE_NUM_MAX), 0, "no such queue");
        wr(&t, reg::QUEUE_NOTIFY, 0); // before DRIVER_OK: ignored
        let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        wr(&t, reg::STATUS, all);
        assert_eq!(
            log.lock().unwrap().activated,
            Some((F_VERSION_1 | 1, vec![Some(128), None]))
        );
        wr(&t, reg::QUEUE_SEL, 0);
        wr(&t, reg::QUEUE_NUM, 8); // live queues cannot change
        wr(&t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(log.lock().unwrap().notified, [0]);
        t.signal_used_queue();
        assert_eq!(rd(&t, reg::INTERRUPT_STATUS), INT_VRING);
        wr(&t, reg::INTERRUPT_ACK, INT_VRING);
        assert_eq!(rd(&t, reg::INTERRUPT_STATUS), 0);
        wr(&t, reg::STATUS, 0);
        assert_eq!(rd(&t, reg::STATUS), 0);
        assert_eq!(log.lock().unwrap().resets, 1);
        wr(&t, reg::QUEUE_SEL, 0);
        assert_eq!(rd(&t, reg::QUEUE_READY), 0, "reset clears the queues");
    }

    /// Sets up queue `sel` of `size` entries with its rings at `base` and makes it ready.
    fn ready_queue(t: &MmioTransport, sel: u32, size: u32, base: u32) {
        wr(t, reg::QUEUE_SEL, sel);
        wr(t, reg::QUEUE_NUM, size);
        wr(t, reg::QUEUE_DESC_LOW, base);
        wr(t, reg::QUEUE_DRIVER_LOW, base + 0x1000);
        wr(t, reg::QUEUE_DEVICE_LOW, base + 0x2000);
        wr(t, reg::QUEUE_READY, 1);
    }

    const ALL: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn each_queue_keeps_its_index_when_an_earlier_one_is_not_ready() {
        let (t, log) = transport();
        negotiate(&t, F_VERSION_1);
        ready_queue(&t, 1, 32, MEM_BASE as u32);
        wr(&t, reg::STATUS, ALL);
        assert_eq!(
            log.lock().unwrap().activated,
            Some((F_VERSION_1, vec![None, Some(32)])),
            "queue 1 stays queue 1"
        );
        assert_eq!(rd(&t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn queues_with_rings_the_device_cannot_reach_are_refused() {
        // Rings outside the device's memory, straddling its end, or misaligned.
        for base in [0x1000, MEM_BASE as u32 + 0xf000, MEM_BASE as u32 + 2] {
            let (t, log) = transport();
            negotiate(&t, F_VERSION_1);
            ready_queue(&t, 0, 64, base);
            wr(&t, reg::STATUS, ALL);
            assert_eq!(log.lock().unwrap().activated, None, "{base:#x}");
            assert_ne!(rd(&t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
            assert_eq!(rd(&t, reg::INTERRUPT_STATUS) & INT_CONFIG, INT_CONFIG);
            // A reset clears it; a good setup then starts the device.
            wr(&t, reg::STATUS, 0);
            negotiate(&t, F_VERSION_1);
            ready_queue(&t, 0, 64, MEM_BASE as u32);
            wr(&t, reg::STATUS, ALL);
            assert!(log.lock().unwrap().activated.is_some());
        }
    }
}
