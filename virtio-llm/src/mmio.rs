//! The virtio-mmio transport's register page (virtio 1.2 §4.2.2, "modern" version 2), as
//! both sides see it: the VMM implements it, the guest driver programs it.

/// "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The modern (non-legacy) transport.
pub const VERSION: u32 = 2;
/// VIRTIO_F_VERSION_1: every modern device offers and requires it.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_EVENT_IDX: used/avail event indices suppress notifications (virtio 1.2 §2.7.7).
pub const F_EVENT_IDX: u64 = 1 << 29;
/// FlexServe's vendor id ("FSRV").
pub const VENDOR_ID: u32 = 0x5652_5346;

/// Register offsets (virtio 1.2 §4.2.2).
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;
