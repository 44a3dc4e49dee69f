//! FlexServe's sealed-model format (`.fsm`, specified in `docs/sealed-model.md`): a public,
//! owner-signed header and a body of AES-256-GCM chunks whose content key is wrapped with
//! HPKE to each recipient guest. The host can read the header (sizes, layer ranges, context
//! length) and nothing else; only a guest holding a recipient's sealing key can unseal.
//!
//! - [`Header`]: parse, encode, digest, the chunk plan. The parser bounds every count and
//!   length before allocating and never panics.
//! - [`Unsealer`] (the guest): checks the owner and signature, unwraps the content key with the
//!   guest's [`GuestKey`], then opens chunks strictly in order, in place, hashing the
//!   plaintext; [`Unsealer::finish`] checks that nothing was cut off and the content digest.
//! - [`derive_guest_key`]: the guest's sealing key pair from its key root and image
//!   measurement.
//! - [`seal`] and [`OwnerKey`] (feature `seal`, host only): the owner's side.
//!
//! The cryptography is RustCrypto's (`aes-gcm`, `hpke`, `ed25519-dalek`, `hkdf`, `sha2`);
//! this crate only lays out bytes and calls them. See [`accel`] for hardware AES.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod accel;
mod chunk;
mod error;
mod header;
mod keys;
mod prefix;
#[cfg(feature = "seal")]
mod seal;
mod unseal;

pub use chunk::{ChunkCursor, ChunkInfo, ChunkPlan};
pub use error::SealError;
pub use header::{Header, Recipient};
pub use keys::{
    AttestationPublicKey, GuestKey, GuestPublicKey, KeyFingerprint, OwnerPublicKey,
    SessionPublicKey, derive_guest_key,
};
pub use prefix::LayerHashes;
#[cfg(feature = "seal")]
pub use seal::{OwnerKey, SealRequest, seal};
pub use unseal::{InOrder, Join, Unsealed, Unsealer};

/// Randomness for [`seal`] and [`OwnerKey::generate`]: `OsRng.unwrap_err()` gives an
/// infallible RNG (rand_core 0.9, the version `hpke` uses).
#[cfg(feature = "seal")]
pub use rand_core::{OsRng, TryRngCore};

/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"FLEXSEAL";
/// The one format version this crate reads and writes.
pub const VERSION: u32 = 1;
/// The AES-GCM (and HPKE) tag length: every chunk on disk is its ciphertext plus this.
pub const TAG_BYTES: usize = 16;
/// Ed25519 signature length.
pub const SIGNATURE_BYTES: usize = 64;
/// Smallest and largest `chunk_bytes` (plaintext per chunk).
pub const MIN_CHUNK_BYTES: u32 = 4096;
/// 1 MiB: virtio-llm's `max_chunk_bytes` and the default when sealing.
pub const MAX_CHUNK_BYTES: u32 = 1 << 20;
/// Largest layer count a header may declare.
pub const MAX_LAYERS: u32 = 4096;
/// Largest recipient count a header may declare.
pub const MAX_RECIPIENTS: u32 = 64;
/// Largest plaintext body (256 TiB): keeps every size and offset far from u64 overflow.
pub const MAX_BODY_BYTES: u64 = 1 << 48;

/// Domain-separation labels (ASCII), exactly as in the spec.
pub mod label {
    /// Prefix of every chunk's AAD.
    pub const CHUNK_AAD: &[u8] = b"flexserve sealed chunk v1";
    /// Prefix of the HPKE `info` when wrapping the content key.
    pub const CONTENT_KEY_INFO: &[u8] = b"flexserve content key v1";
    /// HKDF salt for the guest's sealing key.
    pub const SEALING_KEY_SALT: &[u8] = b"flexserve sealing key v1";
}

#[cfg(all(test, feature = "seal"))]
mod overlap_tests;
#[cfg(all(test, feature = "seal"))]
mod owner_tests;
#[cfg(all(test, feature = "seal"))]
mod tests;
