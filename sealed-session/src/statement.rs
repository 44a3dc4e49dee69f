//! The guest's statement: what a client needs to decide whether to trust a guest and how to
//! seal to it, signed with the key root's attestation key.
//!
//! Layout (little-endian, `STATEMENT_BYTES` bytes): magic `FLEXGST1`, session public key
//! (32), sealing public key (32), image measurement (32), isolation u8, key-root kind u8,
//! two zero bytes. A [`SignedStatement`] appends the attestation public key (32) and the
//! Ed25519 signature (64) over `label::STATEMENT || statement`.

use ed25519_dalek::{Signature, VerifyingKey};
use sealed_model::GuestPublicKey;

use crate::keys::AttestationKey;
use crate::{AttestationPublicKey, SIGNATURE_BYTES, SessionError, SessionPublicKey, label};

const MAGIC: [u8; 8] = *b"FLEXGST1";
/// Bytes of an encoded [`GuestStatement`].
pub const STATEMENT_BYTES: usize = 8 + 3 * 32 + 4;
const SIGNED_BYTES: usize = STATEMENT_BYTES + 32 + SIGNATURE_BYTES;

/// Who can read guest memory (docs/threat-model.md): as the host reported it at boot. Only
/// a production key root that attests to the VM type makes this more than the host's word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Isolation {
    None = 0,
    PrivateMemory = 1,
    ProtectedVm = 2,
}

impl Isolation {
    /// The level's name, as `flexserve isolation` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::PrivateMemory => "private-memory",
            Self::ProtectedVm => "protected-vm",
        }
    }

    /// The level named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::None, Self::PrivateMemory, Self::ProtectedVm]
            .into_iter()
            .find(|l| l.name() == name)
    }
}

/// Where the guest's key root comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum KeyRootKind {
    /// A secret the VMM reads from a host file: no protection against a compromised host.
    Development = 0,
    /// A root only the guest's firmware can give it (pKVM's DICE chain).
    Production = 1,
}

impl KeyRootKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Production => "production",
        }
    }
}

/// What a guest says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestStatement {
    /// Clients seal requests to this key.
    pub session_key: SessionPublicKey,
    /// Model owners seal models to this key.
    pub sealing_key: GuestPublicKey,
    /// SHA-256 over the guest's kernel and engine images, from whoever loaded them.
    pub measurement: [u8; 32],
    pub isolation: Isolation,
    pub key_root: KeyRootKind,
}

impl GuestStatement {
    pub fn encode(&self) -> [u8; STATEMENT_BYTES] {
        let mut out = [0u8; STATEMENT_BYTES];
        out[..8].copy_from_slice(&MAGIC);
        out[8..40].copy_from_slice(&self.session_key.0);
        out[40..72].copy_from_slice(&self.sealing_key.0);
        out[72..104].copy_from_slice(&self.measurement);
        out[104] = self.isolation as u8;
        out[105] = self.key_root as u8;
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        if bytes.len() != STATEMENT_BYTES {
            return Err(SessionError::StatementLength {
                got: bytes.len() as u64,
                expected: STATEMENT_BYTES as u64,
            });
        }
        if bytes[..8] != MAGIC {
            return Err(SessionError::StatementMagic);
        }
        let key = |at: usize| {
            let mut k = [0u8; 32];
            k.copy_from_slice(&bytes[at..at + 32]);
            k
        };
        let field = |field, value: u8| SessionError::StatementField {
            field,
            value: value.into(),
        };
        let isolation = match bytes[104] {
            0 => Isolation::None,
            1 => Isolation::PrivateMemory,
            2 => Isolation::ProtectedVm,
            v => return Err(field("isolation", v)),
        };
        let key_root = match bytes[105] {
            0 => KeyRootKind::Development,
            1 => KeyRootKind::Production,
            v => return Err(field("key_root", v)),
        };
        if bytes[106..] != [0, 0] {
            return Err(field("reserved", bytes[106] | bytes[107]));
        }
        Ok(Self {
            session_key: SessionPublicKey(key(8)),
            sealing_key: GuestPublicKey(key(40)),
            measurement: key(72),
            isolation,
            key_root,
        })
    }

    fn signed_message(&self) -> [u8; label::STATEMENT.len() + STATEMENT_BYTES] {
        let mut m = [0u8; label::STATEMENT.len() + STATEMENT_BYTES];
        m[..label::STATEMENT.len()].copy_from_slice(label::STATEMENT);
        m[label::STATEMENT.len()..].copy_from_slice(&self.encode());
        m
    }
}

/// A statement with the attestation key that signed it and the signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedStatement {
    pub statement: GuestStatement,
    pub attestation_key: AttestationPublicKey,
    pub signature: [u8; SIGNATURE_BYTES],
}

impl SignedStatement {
    /// Bytes of an encoded signed statement.
    pub const BYTES: usize = SIGNED_BYTES;

    pub fn sign(statement: GuestStatement, key: &AttestationKey) -> Self {
        Self {
            statement,
            attestation_key: key.public(),
            signature: key.sign(&statement.signed_message()),
        }
    }

    /// Checks the signature under the statement's own attestation key. That proves the
    /// statement is whole; whether the key is one to trust is the caller's decision (a
    /// pinned key, or for a production root its certificate chain).
    pub fn verify(&self) -> Result<(), SessionError> {
        let key = VerifyingKey::from_bytes(&self.attestation_key.0)
            .map_err(|_| SessionError::StatementSignature)?;
        key.verify_strict(
            &self.statement.signed_message(),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| SessionError::StatementSignature)
    }

    pub fn encode(&self) -> [u8; SIGNED_BYTES] {
        let mut out = [0u8; SIGNED_BYTES];
        out[..STATEMENT_BYTES].copy_from_slice(&self.statement.encode());
        out[STATEMENT_BYTES..STATEMENT_BYTES + 32].copy_from_slice(&self.attestation_key.0);
        out[STATEMENT_BYTES + 32..].copy_from_slice(&self.signature);
        out
    }

    /// Parses and verifies.
    pub fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        if bytes.len() != SIGNED_BYTES {
            return Err(SessionError::StatementLength {
                got: bytes.len() as u64,
                expected: SIGNED_BYTES as u64,
            });
        }
        let statement = GuestStatement::decode(&bytes[..STATEMENT_BYTES])?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[STATEMENT_BYTES..STATEMENT_BYTES + 32]);
        let mut signature = [0u8; SIGNATURE_BYTES];
        signature.copy_from_slice(&bytes[STATEMENT_BYTES + 32..]);
        let signed = Self {
            statement,
            attestation_key: AttestationPublicKey(key),
            signature,
        };
        signed.verify()?;
        Ok(signed)
    }
}
