//! The guest's session key (requests are sealed to it) and its key root's attestation key
//! (it signs the guest's statement), both derived with HKDF-SHA256 from the key root.

use core::fmt;

use ed25519_dalek::{Signer, SigningKey};
use hkdf::Hkdf;
use hpke::kem::X25519HkdfSha256;
use hpke::{Kem, Serializable};
use sha2::Sha256;

use crate::{AttestationPublicKey, SIGNATURE_BYTES, SessionPublicKey, label};

pub(crate) type KemPrivateKey = <X25519HkdfSha256 as Kem>::PrivateKey;

fn expand(salt: &[u8], root: &[u8; 32], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(salt), root)
        .expand(info, &mut out)
        .expect("32 bytes is far below HKDF-SHA256's 8160-byte output limit");
    out
}

/// A guest's session key pair (HPKE X25519). Only the guest holds one.
#[derive(Clone)]
pub struct SessionKey {
    secret: KemPrivateKey,
    public: SessionPublicKey,
}

impl SessionKey {
    /// The public half: clients seal requests to it.
    pub fn public(&self) -> SessionPublicKey {
        self.public
    }

    pub(crate) fn secret(&self) -> &KemPrivateKey {
        &self.secret
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The guest's session key pair: as its sealing key (`sealed_model::derive_guest_key`) but
/// with the salt `flexserve session key v1`, so the two keys are unrelated, and both change
/// with the image measurement.
pub fn derive_session_key(root: &[u8; 32], measurement: &[u8; 32]) -> SessionKey {
    let ikm = expand(label::SESSION_KEY_SALT, root, measurement);
    let (secret, public) = X25519HkdfSha256::derive_keypair(&ikm);
    SessionKey {
        secret,
        public: SessionPublicKey(public.to_bytes().into()),
    }
}

/// The key root's Ed25519 attestation key: it signs guest statements.
#[derive(Clone)]
pub struct AttestationKey(SigningKey);

impl AttestationKey {
    pub fn public(&self) -> AttestationPublicKey {
        AttestationPublicKey(self.0.verifying_key().to_bytes())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_BYTES] {
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for AttestationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttestationKey({})", self.public())
    }
}

/// The key root's attestation key: HKDF-SHA256 (salt `flexserve attestation key v1`, ikm
/// `root`, empty info) as an Ed25519 seed. It depends on the root only, not on the image, so
/// a client can recognise one device's root across image updates while the statement it
/// signs names the measurement (as a DICE chain's certificate does).
pub fn derive_attestation_key(root: &[u8; 32]) -> AttestationKey {
    AttestationKey(SigningKey::from_bytes(&expand(
        label::ATTESTATION_KEY_SALT,
        root,
        &[],
    )))
}
