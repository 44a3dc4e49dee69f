//! virtio-llm: the device between the host and the protected guest.
//!
//! The protocol is specified in `docs/virtio-llm.md`. The host (the virtio *device*, in the
//! VMM) is the client: it loads models, opens sessions and sends generation requests; the
//! guest (the virtio *driver*) runs the engine and streams tokens back. Each side treats
//! everything the other writes as hostile, so every decoder here is bounds-checked and
//! returns a named [`WireError`] instead of panicking.
//!
//! Module map:
//! - [`spec`] holds the device ID, feature bits, queue indices, config layout and limits;
//! - [`error`] holds [`WireError`];
//! - [`wire::codec`] is the bounds-checked `Reader`/`Writer` and the common header;
//! - [`wire::control`], [`wire::request`], [`wire::response`] and [`wire::memory`] hold one
//!   message family each, [`wire::status`] the status codes.
//!
//! - [`driver`] is the guest side of a split virtqueue, generic over [`driver::DriverMemory`].
//!
//! - [`device`] (feature `device`, std) is the host side on `virtio-queue`, generic over
//!   guest memory and notification.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "device")]
extern crate std;

#[cfg(feature = "device")]
pub mod device;

pub mod driver;
pub mod error;
pub mod mmio;
pub mod spec;
pub mod wire;

pub use error::WireError;
pub use wire::Message;
pub use wire::status::Status;
