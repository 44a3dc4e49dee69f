//! The header: what the host may know about a sealed model, signed by its owner.
//!
//! Layout (all integers little-endian; `docs/sealed-model.md` has the byte table):
//! magic, version, header_len, then `header_len` bytes of fields, then the 64-byte signature.
//! The parser reads through a bounded cursor over exactly `header_len` bytes, checks every
//! count against its limit before allocating, and checks every rule the spec states, so a
//! [`Header`] value always satisfies them (the chunk plan relies on it).

use alloc::vec::Vec;
use core::ops::Range;

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::chunk::ChunkPlan;
use crate::keys::{GuestPublicKey, OwnerPublicKey};
use crate::{
    MAGIC, MAX_BODY_BYTES, MAX_CHUNK_BYTES, MAX_LAYERS, MAX_RECIPIENTS, MIN_CHUNK_BYTES,
    SIGNATURE_BYTES, SealError, TAG_BYTES, VERSION,
};

/// Bytes before `header_len`'s fields: magic, version, header_len.
const PREFIX_BYTES: usize = 16;
/// `header_len` without layers and recipients: body_bytes, chunk_bytes, context_len,
/// kv_bytes_per_token, content_digest, n_layers, n_recipients, owner_key.
const FIXED_FIELD_BYTES: u32 = 8 + 4 + 4 + 8 + 32 + 4 + 4 + 32;
const LAYER_BYTES: u32 = 16;
const RECIPIENT_BYTES: u32 = 32 + 32 + 48;
const MIN_HEADER_LEN: u32 = FIXED_FIELD_BYTES + LAYER_BYTES + RECIPIENT_BYTES;
const MAX_HEADER_LEN: u32 =
    FIXED_FIELD_BYTES + MAX_LAYERS * LAYER_BYTES + MAX_RECIPIENTS * RECIPIENT_BYTES;

/// One guest the content key is wrapped to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The guest's X25519 sealing public key.
    pub public_key: GuestPublicKey,
    /// HPKE encapsulated key.
    pub enc: [u8; 32],
    /// The 32-byte content key sealed with HPKE, then its 16-byte tag.
    pub wrapped_key: [u8; 48],
}

/// A parsed, rule-checked header (the signature is checked by [`Header::verify_signature`]
/// or [`crate::Unsealer::new`], not by parsing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub(crate) body_bytes: u64,
    pub(crate) chunk_bytes: u32,
    pub(crate) context_len: u32,
    pub(crate) kv_bytes_per_token: u64,
    pub(crate) content_digest: [u8; 32],
    pub(crate) layers: Vec<Range<u64>>,
    pub(crate) recipients: Vec<Recipient>,
    pub(crate) owner_key: OwnerPublicKey,
    pub(crate) signature: [u8; SIGNATURE_BYTES],
    /// Derived: chunks in the whole body.
    pub(crate) chunk_count: u64,
}

/// A cursor over the header's fields that never reads past them.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], SealError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(SealError::FieldTruncated { field })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], SealError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, SealError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, SealError> {
        self.array(field).map(u64::from_le_bytes)
    }
}

impl Header {
    /// Parses and checks a header and its signature from the start of `bytes` (a whole
    /// `.fsm` may follow). Returns the header and the bytes it took, signature included.
    /// Does not verify the signature.
    pub fn parse(bytes: &[u8]) -> Result<(Header, usize), SealError> {
        let mut prefix = Reader { bytes, pos: 0 };
        if prefix.take(MAGIC.len(), "magic").ok() != Some(&MAGIC[..]) {
            return Err(SealError::BadMagic);
        }
        let version = prefix.u32("version")?;
        if version != VERSION {
            return Err(SealError::UnsupportedVersion { version });
        }
        let header_len = prefix.u32("header_len")?;
        if !(MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&header_len) {
            return Err(SealError::HeaderLen {
                header_len,
                min: MIN_HEADER_LEN,
                max: MAX_HEADER_LEN,
            });
        }
        // Both bounded above (header_len ≤ MAX_HEADER_LEN): no overflow.
        let fields_end = PREFIX_BYTES + header_len as usize;
        let consumed = fields_end + SIGNATURE_BYTES;
        if bytes.len() < consumed {
            return Err(SealError::Short {
                needed: consumed as u64,
                got: bytes.len() as u64,
            });
        }

        let mut r = Reader {
            bytes: &bytes[PREFIX_BYTES..fields_end],
            pos: 0,
        };
        let body_bytes = r.u64("body_bytes")?;
        let chunk_bytes = r.u32("chunk_bytes")?;
        let context_len = r.u32("context_len")?;
        let kv_bytes_per_token = r.u64("kv_bytes_per_token")?;
        let content_digest = r.array("content_digest")?;
        check_sizes(body_bytes, chunk_bytes)?;

        let n_layers = r.u32("n_layers")?;
        if !(1..=MAX_LAYERS).contains(&n_layers) {
            return Err(SealError::LayerCount { count: n_layers });
        }
        let mut layers = Vec::with_capacity(n_layers as usize);
        for _ in 0..n_layers {
            let offset = r.u64("layer offset")?;
            let len = r.u64("layer len")?;
            // Saturating: an overflowing end is past body_bytes, which check_layers reports.
            layers.push(offset..offset.saturating_add(len));
        }
        check_layers(&layers, body_bytes)?;

        let n_recipients = r.u32("n_recipients")?;
        if !(1..=MAX_RECIPIENTS).contains(&n_recipients) {
            return Err(SealError::RecipientCount {
                count: n_recipients,
            });
        }
        let mut recipients = Vec::with_capacity(n_recipients as usize);
        for _ in 0..n_recipients {
            recipients.push(Recipient {
                public_key: GuestPublicKey(r.array("recipient public_key")?),
                enc: r.array("recipient enc")?,
                wrapped_key: r.array("recipient wrapped_key")?,
            });
        }
        check_recipients(&recipients)?;
        let owner_key = OwnerPublicKey(r.array("owner_key")?);
        if r.pos != r.bytes.len() {
            return Err(SealError::HeaderTrailing {
                header_len,
                used: r.pos as u32,
            });
        }
        let mut signature = [0u8; SIGNATURE_BYTES];
        signature.copy_from_slice(&bytes[fields_end..consumed]);

        let chunk_count = count_chunks(&layers, chunk_bytes);
        let header = Header {
            body_bytes,
            chunk_bytes,
            context_len,
            kv_bytes_per_token,
            content_digest,
            layers,
            recipients,
            owner_key,
            signature,
            chunk_count,
        };
        Ok((header, consumed))
    }

    /// Splits a whole `.fsm` into its header and sealed body, checking that the body is
    /// exactly [`Header::sealed_body_bytes`] long (nothing missing, nothing after it).
    pub fn split_file(file: &[u8]) -> Result<(Header, &[u8], &[u8]), SealError> {
        let (header, consumed) = Header::parse(file)?;
        let (header_bytes, body) = file.split_at(consumed);
        let expected = header.sealed_body_bytes();
        if body.len() as u64 != expected {
            return Err(SealError::BodyLength {
                expected,
                got: body.len() as u64,
            });
        }
        Ok((header, header_bytes, body))
    }

    /// The header's bytes, signature included (exactly what [`Header::parse`] consumed).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_signed_part();
        out.extend_from_slice(&self.signature);
        out
    }

    /// The bytes the owner signs: from the magic to the end of `owner_key`.
    pub(crate) fn encode_signed_part(&self) -> Vec<u8> {
        let header_len = FIXED_FIELD_BYTES
            + LAYER_BYTES * self.layers.len() as u32
            + RECIPIENT_BYTES * self.recipients.len() as u32;
        let mut out = Vec::with_capacity(PREFIX_BYTES + header_len as usize + SIGNATURE_BYTES);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&header_len.to_le_bytes());
        out.extend_from_slice(&self.body_bytes.to_le_bytes());
        out.extend_from_slice(&self.chunk_bytes.to_le_bytes());
        out.extend_from_slice(&self.context_len.to_le_bytes());
        out.extend_from_slice(&self.kv_bytes_per_token.to_le_bytes());
        out.extend_from_slice(&self.content_digest);
        out.extend_from_slice(&(self.layers.len() as u32).to_le_bytes());
        for layer in &self.layers {
            out.extend_from_slice(&layer.start.to_le_bytes());
            out.extend_from_slice(&(layer.end - layer.start).to_le_bytes());
        }
        out.extend_from_slice(&(self.recipients.len() as u32).to_le_bytes());
        for r in &self.recipients {
            out.extend_from_slice(&r.public_key.0);
            out.extend_from_slice(&r.enc);
            out.extend_from_slice(&r.wrapped_key);
        }
        out.extend_from_slice(&self.owner_key.0);
        out
    }

    /// `header_digest`: SHA-256 over the header and its signature. Every chunk's AAD binds it.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// Checks the owner's Ed25519 signature (strict verification) and returns the owner.
    /// The host may call it to report the signer; the guest's [`crate::Unsealer`] always does.
    pub fn verify_signature(&self) -> Result<OwnerPublicKey, SealError> {
        verify_owner_signature(&self.encode_signed_part(), &self.owner_key, &self.signature)?;
        Ok(self.owner_key)
    }

    /// Plaintext body length.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Most plaintext bytes per chunk.
    pub fn chunk_bytes(&self) -> u32 {
        self.chunk_bytes
    }

    /// The model's context length (for sizing the KV cache without the plaintext).
    pub fn context_len(&self) -> u32 {
        self.context_len
    }

    /// KV-cache bytes per token of context.
    pub fn kv_bytes_per_token(&self) -> u64 {
        self.kv_bytes_per_token
    }

    /// SHA-256 of the whole plaintext body.
    pub fn content_digest(&self) -> &[u8; 32] {
        &self.content_digest
    }

    /// Each layer's plaintext range, in load order: contiguous from 0, non-empty.
    pub fn layers(&self) -> &[Range<u64>] {
        &self.layers
    }

    /// The guests the content key is wrapped to.
    pub fn recipients(&self) -> &[Recipient] {
        &self.recipients
    }

    /// The owner who signed the header (not yet verified: see [`Header::verify_signature`]).
    pub fn owner(&self) -> OwnerPublicKey {
        self.owner_key
    }

    /// Chunks in the body.
    pub fn chunk_count(&self) -> u64 {
        self.chunk_count
    }

    /// The sealed body's length on disk: the plaintext plus one tag per chunk.
    pub fn sealed_body_bytes(&self) -> u64 {
        // body_bytes ≤ 2^48 and chunk_count ≤ body_bytes: no overflow.
        self.body_bytes + self.chunk_count * TAG_BYTES as u64
    }

    /// Every chunk in body order.
    pub fn chunk_plan(&self) -> ChunkPlan<'_> {
        ChunkPlan::new(self)
    }
}

pub(crate) fn check_sizes(body_bytes: u64, chunk_bytes: u32) -> Result<(), SealError> {
    if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&chunk_bytes) {
        return Err(SealError::ChunkBytes { chunk_bytes });
    }
    if !(1..=MAX_BODY_BYTES).contains(&body_bytes) {
        return Err(SealError::BodyBytes { body_bytes });
    }
    Ok(())
}

/// Layers contiguous from 0, each non-empty, ending exactly at `body_bytes`.
pub(crate) fn check_layers(layers: &[Range<u64>], body_bytes: u64) -> Result<(), SealError> {
    if !(1..=MAX_LAYERS as usize).contains(&layers.len()) {
        return Err(SealError::LayerCount {
            count: layers.len().min(u32::MAX as usize) as u32,
        });
    }
    let mut expected = 0u64;
    for (i, layer) in layers.iter().enumerate() {
        let layer_index = i as u32; // ≤ MAX_LAYERS
        if layer.start != expected {
            return Err(SealError::LayerOffset {
                layer: layer_index,
                offset: layer.start,
                expected,
            });
        }
        if layer.end <= layer.start {
            return Err(SealError::EmptyLayer { layer: layer_index });
        }
        if layer.end > body_bytes {
            return Err(SealError::LayerPastBody {
                layer: layer_index,
                end: layer.end,
                body_bytes,
            });
        }
        expected = layer.end;
    }
    if expected != body_bytes {
        return Err(SealError::LayerSum {
            covered: expected,
            body_bytes,
        });
    }
    Ok(())
}

pub(crate) fn check_recipients(recipients: &[Recipient]) -> Result<(), SealError> {
    if !(1..=MAX_RECIPIENTS as usize).contains(&recipients.len()) {
        let count = recipients.len().min(u32::MAX as usize) as u32;
        return Err(SealError::RecipientCount { count });
    }
    for (i, r) in recipients.iter().enumerate() {
        if let Some(first) = recipients[..i]
            .iter()
            .position(|p| p.public_key == r.public_key)
        {
            return Err(SealError::DuplicateRecipient {
                index: i as u32,
                first: first as u32,
            });
        }
    }
    Ok(())
}

/// Chunks a layer list is cut into (each layer separately, the last of a layer may be short).
pub(crate) fn count_chunks(layers: &[Range<u64>], chunk_bytes: u32) -> u64 {
    layers
        .iter()
        .map(|l| (l.end - l.start).div_ceil(u64::from(chunk_bytes)))
        .sum()
}

/// Strict Ed25519 verification of `signed` by `owner`.
pub(crate) fn verify_owner_signature(
    signed: &[u8],
    owner: &OwnerPublicKey,
    signature: &[u8; SIGNATURE_BYTES],
) -> Result<(), SealError> {
    let key = VerifyingKey::from_bytes(&owner.0).map_err(|_| SealError::BadOwnerKey)?;
    key.verify_strict(signed, &Signature::from_bytes(signature))
        .map_err(|_| SealError::BadSignature)
}
