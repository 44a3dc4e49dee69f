//! The owner's side (feature `seal`, host only): owner keys and sealing a whole body.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use ed25519_dalek::{Signer, SigningKey};
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{OpModeS, Serializable};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

use crate::header::{check_layers, check_recipients, check_sizes, count_chunks};
use crate::keys::{GuestPublicKey, OwnerPublicKey, kem_public};
use crate::unseal::content_key_info;
use crate::{Header, Recipient, SIGNATURE_BYTES, SealError, TAG_BYTES};

/// First word of an owner secret key file.
const SECRET_KEY_TAG: &str = "flexserve-owner-secret-v1";

/// A model owner's Ed25519 signing key.
///
/// Key file (`flexserve-model keygen`): one line of text,
/// `flexserve-owner-secret-v1 <64 hex digits of the 32-byte seed>`; keep it private (mode
/// 0600). The public key is 64 hex digits ([`OwnerPublicKey`]'s `Display`), the same form a
/// guest is told to accept and `inspect` prints.
pub struct OwnerKey(SigningKey);

impl OwnerKey {
    /// A new random key.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> OwnerKey {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        OwnerKey(SigningKey::from_bytes(&seed))
    }

    /// The key for a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> OwnerKey {
        OwnerKey(SigningKey::from_bytes(seed))
    }

    /// The public key.
    pub fn public(&self) -> OwnerPublicKey {
        OwnerPublicKey(self.0.verifying_key().to_bytes())
    }

    /// The secret key file's text (one line, with its newline).
    pub fn to_secret_text(&self) -> String {
        format!("{SECRET_KEY_TAG} {}\n", OwnerPublicKey(self.0.to_bytes()))
    }

    /// Reads a secret key file's text (surrounding whitespace ignored).
    pub fn from_secret_text(text: &str) -> Result<OwnerKey, SealError> {
        let (tag, hex) = text
            .trim()
            .split_once(' ')
            .ok_or(SealError::SecretKeyText)?;
        if tag != SECRET_KEY_TAG {
            return Err(SealError::SecretKeyText);
        }
        let seed: OwnerPublicKey = hex.parse()?;
        Ok(OwnerKey::from_seed(&seed.0))
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_BYTES] {
        self.0.sign(message).to_bytes()
    }
}

/// What to seal and for whom.
#[derive(Clone, Debug)]
pub struct SealRequest<'a> {
    /// The whole plaintext body (the re-laid GGUF).
    pub plaintext: &'a [u8],
    /// Each layer's range in `plaintext`, in load order: contiguous from 0, non-empty,
    /// covering all of it.
    pub layers: &'a [Range<u64>],
    /// Plaintext per chunk, 4096..=1 MiB ([`crate::MAX_CHUNK_BYTES`] unless testing).
    pub chunk_bytes: u32,
    /// Copied into the header for the host's memory sizing.
    pub context_len: u32,
    /// Copied into the header for the host's memory sizing.
    pub kv_bytes_per_token: u64,
    /// The guests that may unseal (1..=64, distinct).
    pub recipients: &'a [GuestPublicKey],
}

/// Seals `request.plaintext` under a fresh content key, wraps the key to every recipient,
/// signs the header with `owner`, and returns the whole `.fsm` (header, signature, body).
pub fn seal<R: CryptoRng>(
    request: &SealRequest<'_>,
    owner: &OwnerKey,
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    let body_bytes = request.plaintext.len() as u64;
    check_sizes(body_bytes, request.chunk_bytes)?;
    check_layers(request.layers, body_bytes)?;
    let content_digest: [u8; 32] = Sha256::digest(request.plaintext).into();

    let mut content_key = [0u8; 32];
    rng.fill_bytes(&mut content_key);
    let info = content_key_info(&content_digest);
    let mut recipients = Vec::with_capacity(request.recipients.len());
    for (i, guest) in request.recipients.iter().enumerate() {
        let wrap_error = SealError::KeyWrap {
            recipient: i as u32,
        };
        let public = kem_public(guest).map_err(|_| wrap_error.clone())?;
        let mut sealed_key = content_key;
        let (enc, tag) = hpke::single_shot_seal_in_place_detached::<
            AesGcm256,
            HkdfSha256,
            X25519HkdfSha256,
            _,
        >(&OpModeS::Base, &public, &info, &mut sealed_key, &[], rng)
        .map_err(|_| wrap_error)?;
        let mut wrapped_key = [0u8; 48];
        wrapped_key[..32].copy_from_slice(&sealed_key);
        wrapped_key[32..].copy_from_slice(&tag.to_bytes());
        let mut enc_bytes = [0u8; 32];
        enc_bytes.copy_from_slice(&enc.to_bytes());
        recipients.push(Recipient {
            public_key: *guest,
            enc: enc_bytes,
            wrapped_key,
        });
    }
    check_recipients(&recipients)?;

    let mut header = Header {
        body_bytes,
        chunk_bytes: request.chunk_bytes,
        context_len: request.context_len,
        kv_bytes_per_token: request.kv_bytes_per_token,
        content_digest,
        layers: request.layers.to_vec(),
        recipients,
        owner_key: owner.public(),
        signature: [0u8; SIGNATURE_BYTES],
        chunk_count: count_chunks(request.layers, request.chunk_bytes),
    };
    header.signature = owner.sign(&header.encode_signed_part());
    let mut out = header.encode();
    let header_digest: [u8; 32] = Sha256::digest(&out).into();

    let cipher = Aes256Gcm::new(&content_key.into());
    out.reserve(header.sealed_body_bytes() as usize);
    for chunk in header.chunk_plan() {
        let start = out.len();
        // Ranges were checked against plaintext.len() above.
        out.extend_from_slice(&request.plaintext[chunk.plaintext.start as usize..][..chunk.len()]);
        let tag = cipher
            .encrypt_in_place_detached(
                Nonce::from_slice(&chunk.nonce()),
                &chunk.aad(&header_digest),
                &mut out[start..],
            )
            .expect("AES-GCM seals up to 64 GiB per message; a chunk is at most 1 MiB");
        debug_assert_eq!(tag.len(), TAG_BYTES);
        out.extend_from_slice(&tag);
    }
    Ok(out)
}
