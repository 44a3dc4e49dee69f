//! Public keys as 64 hex digits, and the guest's sealing key derived from its key root and
//! image measurement.

use core::fmt;
use core::str::FromStr;

use hkdf::Hkdf;
#[cfg(feature = "seal")]
use hpke::Deserializable;
use hpke::kem::X25519HkdfSha256;
use hpke::{Kem, Serializable};
use sha2::Sha256;

use crate::SealError;
use crate::label;

type KemPrivateKey = <X25519HkdfSha256 as Kem>::PrivateKey;
#[cfg(feature = "seal")]
type KemPublicKey = <X25519HkdfSha256 as Kem>::PublicKey;

/// 32 bytes from 64 hex digits (either case, no prefix, surrounding whitespace ignored).
fn parse_hex32(text: &str) -> Result<[u8; 32], SealError> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return Err(SealError::HexLength {
            got: text.len() as u64,
        });
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let digit = |pos: usize| {
            let c = text[pos];
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(SealError::HexDigit {
                    position: pos as u64,
                }),
            }
        };
        *byte = (digit(2 * i)? << 4) | digit(2 * i + 1)?;
    }
    Ok(out)
}

fn write_hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// A public key's first 8 bytes ([`OwnerPublicKey::fingerprint`]), shown as 16 lowercase hex
/// digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyFingerprint(pub [u8; 8]);

impl fmt::Display for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(&self.0, f)
    }
}

macro_rules! hex_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The key's first 8 bytes: enough to tell keys apart in a log line, never to
            /// check one (compare the whole key for that).
            pub fn fingerprint(&self) -> KeyFingerprint {
                let mut first = [0u8; 8];
                first.copy_from_slice(&self.0[..8]);
                KeyFingerprint(first)
            }
        }

        impl fmt::Display for $name {
            /// 64 lowercase hex digits.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = SealError;
            /// 64 hex digits, either case; surrounding whitespace (a file's newline) is ignored.
            fn from_str(text: &str) -> Result<Self, SealError> {
                parse_hex32(text).map(Self)
            }
        }
    };
}

hex_key!(
    /// A guest's X25519 sealing public key: model owners seal content keys to it.
    GuestPublicKey
);
hex_key!(
    /// A model owner's Ed25519 public key: it signs sealed-model headers.
    OwnerPublicKey
);
hex_key!(
    /// A guest's X25519 session public key: clients seal their requests to it
    /// (docs/sealed-session.md).
    SessionPublicKey
);
hex_key!(
    /// The Ed25519 key a guest's key root signs the guest's statement with
    /// (docs/sealed-session.md).
    AttestationPublicKey
);

/// A guest's sealing key pair (HPKE X25519). Only the guest holds one; it never leaves it.
#[derive(Clone)]
pub struct GuestKey {
    secret: KemPrivateKey,
    public: GuestPublicKey,
}

impl GuestKey {
    /// The public half, for `flexserve guest-key` and for owners to seal to.
    pub fn public(&self) -> GuestPublicKey {
        self.public
    }

    pub(crate) fn secret(&self) -> &KemPrivateKey {
        &self.secret
    }
}

impl fmt::Debug for GuestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The guest's sealing key pair: HKDF-SHA256 (salt `flexserve sealing key v1`, ikm `root`,
/// info `measurement`) expanded to 32 bytes, then the KEM's RFC 9180 `DeriveKeyPair` on
/// those. A different root or measurement (a different guest image) gives an unrelated key.
pub fn derive_guest_key(root: &[u8; 32], measurement: &[u8; 32]) -> GuestKey {
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(label::SEALING_KEY_SALT), root)
        .expand(measurement, &mut ikm)
        .expect("32 bytes is far below HKDF-SHA256's 8160-byte output limit");
    let (secret, public) = X25519HkdfSha256::derive_keypair(&ikm);
    GuestKey {
        secret,
        public: GuestPublicKey(public.to_bytes().into()),
    }
}

/// The KEM public key for a guest key's bytes (any 32 bytes are an X25519 point encoding).
#[cfg(feature = "seal")]
pub(crate) fn kem_public(key: &GuestPublicKey) -> Result<KemPublicKey, hpke::HpkeError> {
    KemPublicKey::from_bytes(&key.0)
}
