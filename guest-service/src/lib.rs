//! The inference service of the protected guest: what the engine program runs on vCPU 0.
//!
//! - [`service`]: virtio-llm control commands and generation requests served by the engine,
//!   generic over the driver's memory and transport and the [`service::Environment`];
//! - [`loader`]: receiving a model file in ordered, hashed chunks;
//! - [`unsealing`]: receiving a sealed model, each chunk decrypted into private memory;
//! - [`memory`]: the private pool under the host's budget, and relinquish reports.
//!
//! The guest executable (`src/main.rs`, feature `guest`) wires it to the guest's plumbing;
//! host tests wire it to the VMM's device in one process.
#![no_std]

extern crate alloc;

pub mod arriving;
pub mod kv_seal;
pub mod loader;
pub mod memory;
pub mod service;
pub mod unsealing;
#[cfg(feature = "guest")]
pub mod vcpu_pool;
