//! A request's user content sealed with HPKE base mode to the guest's session key.
//!
//! `info` is `label::REQUEST_INFO || session public key`; the AAD is the request's
//! *binding*: its public fields as the guest sees them, encoded by the caller (virtio-llm's
//! `sealed_binding`), so a daemon that changes one makes the request fail to open. The wire
//! form is `enc (32) || ciphertext || tag (16)`.

use alloc::vec::Vec;

use hpke::aead::{AeadTag, AesGcm256};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR};

use crate::keys::SessionKey;
use crate::response::{ResponseSealer, response_cipher};
use crate::{ENC_BYTES, SessionError, SessionPublicKey, TAG_BYTES, label};

type EncappedKey = <X25519HkdfSha256 as Kem>::EncappedKey;

fn info(guest: &SessionPublicKey) -> [u8; label::REQUEST_INFO.len() + 32] {
    let mut info = [0u8; label::REQUEST_INFO.len() + 32];
    info[..label::REQUEST_INFO.len()].copy_from_slice(label::REQUEST_INFO);
    info[label::REQUEST_INFO.len()..].copy_from_slice(&guest.0);
    info
}

/// A sealed request as it travels: HPKE's encapsulated key and the ciphertext with its tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedRequest {
    pub enc: [u8; ENC_BYTES],
    /// The content's ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl SealedRequest {
    /// `enc || ciphertext`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENC_BYTES + self.ciphertext.len());
        out.extend_from_slice(&self.enc);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SessionError> {
        let min = ENC_BYTES + TAG_BYTES;
        if bytes.len() < min {
            return Err(SessionError::RequestShort {
                got: bytes.len() as u64,
                min: min as u64,
            });
        }
        let mut enc = [0u8; ENC_BYTES];
        enc.copy_from_slice(&bytes[..ENC_BYTES]);
        Ok(Self {
            enc,
            ciphertext: bytes[ENC_BYTES..].to_vec(),
        })
    }
}

/// Seals `content` to `guest`, bound to `binding`; returns the request and the opener of
/// its answer.
#[cfg(feature = "client")]
pub fn seal_request<R: rand_core::CryptoRng>(
    guest: &SessionPublicKey,
    binding: &[u8],
    content: &[u8],
    rng: &mut R,
) -> Result<(SealedRequest, crate::ResponseOpener), SessionError> {
    use hpke::{OpModeS, Serializable};
    let public = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(&guest.0).map_err(|_| {
        SessionError::Seal {
            why: "not an X25519 public key",
        }
    })?;
    let (enc, mut ctx) = hpke::setup_sender::<AesGcm256, HkdfSha256, X25519HkdfSha256, _>(
        &OpModeS::Base,
        &public,
        &info(guest),
        rng,
    )
    .map_err(|_| SessionError::Seal {
        why: "HPKE key encapsulation failed (a low-order point)",
    })?;
    let mut ciphertext = content.to_vec();
    let tag = ctx
        .seal_in_place_detached(&mut ciphertext, binding)
        .map_err(|_| SessionError::Seal {
            why: "HPKE sealing failed",
        })?;
    ciphertext.extend_from_slice(&tag.to_bytes());
    let cipher = response_cipher(|out| ctx.export(label::RESPONSE_KEY, out));
    let request = SealedRequest {
        enc: enc.to_bytes().into(),
        ciphertext,
    };
    Ok((request, crate::ResponseOpener::new(cipher)))
}

/// The guest's side: opens `request` with its session key, checking `binding` (the public
/// fields as the guest received them). Returns the content and the sealer of the answer.
pub fn open_request(
    key: &SessionKey,
    request: &SealedRequest,
    binding: &[u8],
) -> Result<(Vec<u8>, ResponseSealer), SessionError> {
    let body_len =
        request
            .ciphertext
            .len()
            .checked_sub(TAG_BYTES)
            .ok_or(SessionError::RequestShort {
                got: (ENC_BYTES + request.ciphertext.len()) as u64,
                min: (ENC_BYTES + TAG_BYTES) as u64,
            })?;
    let enc = EncappedKey::from_bytes(&request.enc).map_err(|_| SessionError::RequestOpen)?;
    let mut ctx = hpke::setup_receiver::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        key.secret(),
        &enc,
        &info(&key.public()),
    )
    .map_err(|_| SessionError::RequestOpen)?;
    let (body, tag) = request.ciphertext.split_at(body_len);
    let tag = AeadTag::<AesGcm256>::from_bytes(tag).map_err(|_| SessionError::RequestOpen)?;
    let mut content = body.to_vec();
    ctx.open_in_place_detached(&mut content, binding, &tag)
        .map_err(|_| SessionError::RequestOpen)?;
    let cipher = response_cipher(|out| ctx.export(label::RESPONSE_KEY, out));
    Ok((content, ResponseSealer::new(cipher)))
}
