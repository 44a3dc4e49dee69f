//! virtio-llm: the device between the host and the protected guest.
//!
//! Not built yet (issue 4): this crate will hold the spec constants, wire messages with
//! bounds-checked decoding, and the host-device and guest-driver queue logic. It is empty on
//! purpose so that nothing pretends to work.
#![no_std]
#![forbid(unsafe_code)]
