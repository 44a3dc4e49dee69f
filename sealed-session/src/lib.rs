//! FlexServe's sealed sessions (`docs/sealed-session.md`): a client's prompt and the model's
//! answer are plaintext only in the client and in the guest.
//!
//! - [`GuestStatement`] / [`SignedStatement`]: what a guest is (session key, sealing key,
//!   image measurement, isolation, key-root kind), signed with a key its key root derives.
//! - [`seal_request`] (feature `client`) and [`open_request`] (the guest): the user content
//!   sealed with HPKE (RFC 9180: X25519, HKDF-SHA256, AES-256-GCM) to the guest's session
//!   key, its public fields (model, sampling, stream) bound as AAD.
//! - [`ResponseSealer`] (the guest) and [`ResponseOpener`] (the client): every answer piece
//!   sealed under a key exported from the same HPKE context, numbered, the last one marked,
//!   so a dropped, reordered, replayed, altered or cut-off piece is detected.
//!
//! The cryptography is RustCrypto's; this crate lays out bytes and calls it.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod error;
mod keys;
mod request;
mod response;
mod statement;

pub use error::SessionError;
pub use keys::{AttestationKey, SessionKey, derive_attestation_key, derive_session_key};
#[cfg(feature = "client")]
pub use request::seal_request;
pub use request::{SealedRequest, open_request};
pub use response::{OpenedPiece, PIECE_HEADER_BYTES, ResponseOpener, ResponseSealer};
pub use sealed_model::{AttestationPublicKey, SessionPublicKey};
pub use statement::{GuestStatement, Isolation, KeyRootKind, STATEMENT_BYTES, SignedStatement};

/// Randomness for [`seal_request`]: `OsRng.unwrap_err()` is an infallible RNG.
#[cfg(feature = "client")]
pub use rand_core::{OsRng, TryRngCore};

/// HPKE's encapsulated key (X25519): the first bytes of every sealed request.
pub const ENC_BYTES: usize = 32;
/// The AES-GCM tag length.
pub const TAG_BYTES: usize = 16;
/// Ed25519 signature length.
pub const SIGNATURE_BYTES: usize = 64;

/// Domain-separation labels (ASCII), exactly as in the spec.
pub mod label {
    /// HKDF salt for the guest's session key (ikm: key root; info: measurement).
    pub const SESSION_KEY_SALT: &[u8] = b"flexserve session key v1";
    /// HKDF salt for the key root's attestation key (ikm: key root; info: empty).
    pub const ATTESTATION_KEY_SALT: &[u8] = b"flexserve attestation key v1";
    /// Prefix of the signed statement.
    pub const STATEMENT: &[u8] = b"flexserve guest statement v1";
    /// HPKE `info` prefix for a request (then the session public key).
    pub const REQUEST_INFO: &[u8] = b"flexserve sealed request v1";
    /// HPKE exporter context for the response key.
    pub const RESPONSE_KEY: &[u8] = b"flexserve response key v1";
    /// Prefix of every response piece's AAD.
    pub const PIECE_AAD: &[u8] = b"flexserve response piece v1";
}

#[cfg(all(test, feature = "client"))]
mod tests;
