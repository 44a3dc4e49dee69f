//! The guest's side: accept a header, then open the body's chunks in order.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use hpke::aead::{AeadTag, AesGcm256};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR};
use sha2::{Digest, Sha256};

use crate::chunk::{ChunkCursor, ChunkInfo};
use crate::header::verify_owner_signature;
use crate::keys::{GuestKey, OwnerPublicKey};
use crate::prefix::LayerHashes;
use crate::{Header, Recipient, SIGNATURE_BYTES, SealError, TAG_BYTES, label};
use alloc::vec::Vec;

mod overlap;
use overlap::Unhashed;
pub use overlap::{InOrder, Join};

/// HPKE `info` for wrapping the content key: label, then the content digest.
pub(crate) fn content_key_info(content_digest: &[u8; 32]) -> [u8; 56] {
    let mut info = [0u8; 56];
    let (l, d) = info.split_at_mut(label::CONTENT_KEY_INFO.len());
    l.copy_from_slice(label::CONTENT_KEY_INFO);
    d.copy_from_slice(content_digest);
    info
}

/// What a completed unseal proved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsealed {
    /// The owner whose signature the header carries.
    pub owner: OwnerPublicKey,
    /// SHA-256 of the plaintext body, checked against the header.
    pub content_digest: [u8; 32],
    /// Plaintext bytes opened.
    pub body_bytes: u64,
}

/// Opens one sealed model's chunks, strictly in order, each exactly once.
///
/// Every chunk is authenticated before a byte of its plaintext exists (AES-GCM checks the
/// tag first), and any error ends the stream: later calls return
/// [`SealError::StreamFailed`]. [`Unsealer::finish`] then proves that the body was complete
/// and hashes to the header's `content_digest`.
pub struct Unsealer {
    header: Header,
    header_digest: [u8; 32],
    owner: OwnerPublicKey,
    cipher: Aes256Gcm,
    cursor: ChunkCursor,
    hasher: Sha256,
    /// The hash state at the end of each layer opened so far (a kept prefix resumes there).
    layer_ends: Vec<Sha256>,
    /// The chunk [`Unsealer::open_chunk_overlapped`] opened last, not hashed yet.
    unhashed: Option<Unhashed>,
    failed_at: Option<u64>,
}

impl Unsealer {
    /// Accepts a header for this guest. `header_bytes` is exactly the header and its
    /// signature. Checks, in order: the header's rules; that the owner is in
    /// `accepted_owners` (an empty list accepts any owner, who is then reported by
    /// [`Unsealer::owner`]); the owner's signature; that the model is sealed to `guest`;
    /// that the content key unwraps.
    pub fn new(
        header_bytes: &[u8],
        guest: &GuestKey,
        accepted_owners: &[OwnerPublicKey],
    ) -> Result<Unsealer, SealError> {
        let (header, consumed) = Header::parse(header_bytes)?;
        if consumed != header_bytes.len() {
            return Err(SealError::TrailingBytes {
                extra: (header_bytes.len() - consumed) as u64,
            });
        }
        let owner = header.owner();
        if !accepted_owners.is_empty() && !accepted_owners.contains(&owner) {
            return Err(SealError::UnknownOwner { owner });
        }
        let signed = &header_bytes[..consumed - SIGNATURE_BYTES];
        verify_owner_signature(signed, &owner, &header.signature)?;

        let public = guest.public();
        let (index, recipient) = header
            .recipients()
            .iter()
            .enumerate()
            .find(|(_, r)| r.public_key == public)
            .ok_or(SealError::NotARecipient { guest: public })?;
        let content_key = unwrap_content_key(recipient, guest, &header.content_digest).ok_or(
            SealError::KeyUnwrap {
                recipient: index as u32,
            },
        )?;

        Ok(Unsealer {
            header_digest: Sha256::digest(header_bytes).into(),
            owner,
            cipher: Aes256Gcm::new(&content_key.into()),
            cursor: ChunkCursor::default(),
            hasher: Sha256::new(),
            layer_ends: Vec::new(),
            unhashed: None,
            failed_at: None,
            header,
        })
    }

    /// The accepted header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The owner whose signature verified.
    pub fn owner(&self) -> OwnerPublicKey {
        self.owner
    }

    /// `header_digest`, which every chunk's AAD binds.
    pub fn header_digest(&self) -> &[u8; 32] {
        &self.header_digest
    }

    /// The chunk expected next (where its plaintext goes), or `None` after the last.
    pub fn next_chunk(&self) -> Option<ChunkInfo> {
        self.cursor.peek(&self.header)
    }

    /// Opens chunk `index` in place: `sealed` is its ciphertext followed by its tag, as on
    /// disk. Returns the plaintext (the front of `sealed`).
    pub fn open_chunk<'b>(
        &mut self,
        index: u64,
        sealed: &'b mut [u8],
    ) -> Result<&'b mut [u8], SealError> {
        let chunk = self.expect_chunk(index)?;
        let expected = (chunk.len() + TAG_BYTES) as u64;
        if sealed.len() as u64 != expected {
            return Err(self.fail(
                &chunk,
                SealError::ChunkLength {
                    index,
                    expected,
                    got: sealed.len() as u64,
                },
            ));
        }
        let (text, tag_bytes) = sealed.split_at_mut(chunk.len());
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(tag_bytes);
        self.decrypt(&chunk, text, &tag)?;
        Ok(text)
    }

    /// Opens chunk `index` in place when its tag travels separately: `text` is exactly the
    /// ciphertext and becomes the plaintext.
    pub fn open_chunk_detached(
        &mut self,
        index: u64,
        text: &mut [u8],
        tag: &[u8; TAG_BYTES],
    ) -> Result<(), SealError> {
        let chunk = self.expect_chunk(index)?;
        self.check_len(&chunk, text.len())?;
        self.decrypt(&chunk, text, tag)
    }

    /// Opens chunk `index` from `ciphertext` (e.g. in memory the host shares) into `out`
    /// (private memory): one copy, then decryption in place in `out`, so the plaintext
    /// exists nowhere else. Both must be exactly the chunk's length.
    pub fn open_chunk_into<'b>(
        &mut self,
        index: u64,
        ciphertext: &[u8],
        tag: &[u8; TAG_BYTES],
        out: &'b mut [u8],
    ) -> Result<&'b mut [u8], SealError> {
        let chunk = self.expect_chunk(index)?;
        self.check_len(&chunk, ciphertext.len())?;
        self.check_len(&chunk, out.len())?;
        out.copy_from_slice(ciphertext);
        self.decrypt(&chunk, out, tag)?;
        Ok(out)
    }

    /// Starts the stream after a kept prefix of this body's first `prefix.layers()` layers
    /// (their plaintext is the caller's to place): the next chunk expected is the first of
    /// the layer after them, and the hash goes on from the state they ended with. Only
    /// before any chunk is opened, with a prefix of a body of this header's
    /// `content_digest` that leaves at least one layer to stream.
    pub fn resume(&mut self, prefix: LayerHashes) -> Result<(), SealError> {
        let layers = prefix.layers();
        let fits = self.cursor.index == 0
            && self.failed_at.is_none()
            && prefix.content_digest == self.header.content_digest
            && layers > 0
            && layers < self.header.layers.len();
        let Some(state) = prefix.ends.last().filter(|_| fits) else {
            return Err(SealError::PrefixMismatch);
        };
        self.hasher = state.clone();
        self.cursor = ChunkCursor::at_layer(&self.header, layers);
        self.layer_ends = prefix.ends;
        Ok(())
    }

    /// Ends the stream: every chunk must have been opened, and the plaintext must hash to
    /// the header's `content_digest`.
    pub fn finish(self) -> Result<Unsealed, SealError> {
        self.finish_with_layers().map(|(proof, _)| proof)
    }

    /// [`Unsealer::finish`], and the hash state at the end of each layer, from which a load
    /// of the same body may later [`Unsealer::resume`].
    pub fn finish_with_layers(self) -> Result<(Unsealed, LayerHashes), SealError> {
        if let Some(index) = self.failed_at {
            return Err(SealError::StreamFailed { index });
        }
        let count = self.header.chunk_count();
        if self.cursor.index != count {
            return Err(SealError::Truncated {
                opened: self.cursor.index,
                count,
            });
        }
        if let Some(u) = self.unhashed {
            return Err(SealError::UnhashedChunk { index: u.index });
        }
        let digest: [u8; 32] = self.hasher.finalize().into();
        if digest != self.header.content_digest {
            return Err(SealError::ContentDigest);
        }
        let proof = Unsealed {
            owner: self.owner,
            content_digest: digest,
            body_bytes: self.header.body_bytes(),
        };
        let layers = LayerHashes {
            content_digest: digest,
            ends: self.layer_ends,
        };
        Ok((proof, layers))
    }

    /// The next chunk, if `index` is it and the stream is alive.
    fn expect_chunk(&mut self, index: u64) -> Result<ChunkInfo, SealError> {
        if let Some(at) = self.failed_at {
            return Err(SealError::StreamFailed { index: at });
        }
        let Some(chunk) = self.cursor.peek(&self.header) else {
            let count = self.header.chunk_count();
            self.failed_at = Some(count);
            return Err(SealError::NoSuchChunk { index, count });
        };
        if index != chunk.index {
            return Err(self.fail(
                &chunk,
                SealError::ChunkOutOfOrder {
                    expected: chunk.index,
                    got: index,
                },
            ));
        }
        Ok(chunk)
    }

    fn check_len(&mut self, chunk: &ChunkInfo, got: usize) -> Result<(), SealError> {
        if got == chunk.len() {
            return Ok(());
        }
        let err = SealError::ChunkLength {
            index: chunk.index,
            expected: chunk.len() as u64,
            got: got as u64,
        };
        Err(self.fail(chunk, err))
    }

    fn fail(&mut self, chunk: &ChunkInfo, err: SealError) -> SealError {
        self.failed_at = Some(chunk.index);
        err
    }

    /// Authenticates and decrypts `text` (exactly the chunk's length) in place, and hashes
    /// it. Not after an overlapped chunk still unhashed: the hash would lose its order.
    fn decrypt(
        &mut self,
        chunk: &ChunkInfo,
        text: &mut [u8],
        tag: &[u8; TAG_BYTES],
    ) -> Result<(), SealError> {
        if let Some(u) = self.unhashed {
            return Err(self.fail(chunk, SealError::UnhashedChunk { index: u.index }));
        }
        let opened = open_in_place(&self.cipher, &self.header_digest, chunk, text, tag);
        if opened.is_err() {
            return Err(self.fail(chunk, chunk_auth(chunk)));
        }
        let ends_layer = self.advance(chunk);
        hash_chunk(&mut self.hasher, &mut self.layer_ends, text, ends_layer);
        Ok(())
    }

    /// Moves past `chunk`, just opened; whether it was its layer's last.
    fn advance(&mut self, chunk: &ChunkInfo) -> bool {
        self.cursor.advance(&self.header, chunk);
        self.cursor.layer_index() > chunk.layer as usize
    }
}

/// AES-256-GCM in place under `chunk`'s nonce and AAD: the tag is checked first.
fn open_in_place(
    cipher: &Aes256Gcm,
    header_digest: &[u8; 32],
    chunk: &ChunkInfo,
    text: &mut [u8],
    tag: &[u8; TAG_BYTES],
) -> Result<(), aes_gcm::Error> {
    let nonce = chunk.nonce();
    let aad = chunk.aad(header_digest);
    cipher.decrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, text, Tag::from_slice(tag))
}

fn chunk_auth(chunk: &ChunkInfo) -> SealError {
    SealError::ChunkAuth {
        index: chunk.index,
        layer: chunk.layer,
    }
}

/// Adds a chunk's plaintext to the body's hash; at a layer's end keeps the state there.
fn hash_chunk(hasher: &mut Sha256, layer_ends: &mut Vec<Sha256>, text: &[u8], ends_layer: bool) {
    hasher.update(text);
    if ends_layer {
        layer_ends.push(hasher.clone());
    }
}

/// The content key from this guest's recipient entry, or `None` if it does not open.
fn unwrap_content_key(
    recipient: &Recipient,
    guest: &GuestKey,
    content_digest: &[u8; 32],
) -> Option<[u8; 32]> {
    let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&recipient.enc).ok()?;
    let (sealed_key, tag) = recipient.wrapped_key.split_at(32);
    let tag = AeadTag::<AesGcm256>::from_bytes(tag).ok()?;
    let mut key = [0u8; 32];
    key.copy_from_slice(sealed_key);
    hpke::single_shot_open_in_place_detached::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        guest.secret(),
        &enc,
        &content_key_info(content_digest),
        &mut key,
        &[],
        &tag,
    )
    .ok()?;
    Some(key)
}
