//! Receiving a sealed model (docs/sealed-model.md): the header is accepted by an
//! [`Unsealer`], the plaintext body's size is reserved up front (as [`crate::loader`] does
//! for a plaintext file), and each sealed chunk is authenticated and decrypted straight
//! into its place in that buffer: its ciphertext is copied once from the message, which the
//! driver already copied out of the shared window, and decrypted in place, so the plaintext
//! exists nowhere but the reserved private memory.

use alloc::vec::Vec;
use sealed_model::{SealError, TAG_BYTES, Unsealed, Unsealer};
use virtio_llm::Status;

/// A sealed model being received.
pub struct Unsealing {
    pub model_id: u32,
    unsealer: Unsealer,
    /// The plaintext opened so far; capacity for the whole body.
    bytes: Vec<u8>,
}

impl Unsealing {
    /// Reserves the header's `body_bytes`; `OutOfMemory` if the allocator cannot give them.
    pub fn begin(model_id: u32, unsealer: Unsealer) -> Result<Self, Status> {
        let bytes = crate::loader::reserve_model(unsealer.header().body_bytes())?;
        Ok(Self {
            model_id,
            unsealer,
            bytes,
        })
    }

    /// The buffer the plaintext goes into: start address and length.
    pub fn buffer(&self) -> (u64, u64) {
        (
            self.bytes.as_ptr() as u64,
            self.unsealer.header().body_bytes(),
        )
    }

    /// Plaintext bytes opened so far.
    pub fn received(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Who signed the header.
    pub fn owner(&self) -> sealed_model::OwnerPublicKey {
        self.unsealer.owner()
    }

    /// Opens chunk `index` (`sealed`: its ciphertext, then its tag) into the next part of
    /// the buffer. Any error ends the stream (the caller drops `self`).
    pub fn chunk(&mut self, index: u64, sealed: &[u8]) -> Result<(), SealError> {
        let Some(split) = sealed.len().checked_sub(TAG_BYTES) else {
            return Err(SealError::ChunkLength {
                index,
                expected: TAG_BYTES as u64,
                got: sealed.len() as u64,
            });
        };
        let (ciphertext, tag_bytes) = sealed.split_at(split);
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(tag_bytes);
        // The expected chunk's plaintext range lies within the body, whose size is reserved:
        // growing to its end never reallocates. The unsealer checks the index and lengths.
        let start = self.bytes.len();
        let want = self.unsealer.next_chunk().map_or(0, |c| c.len());
        self.bytes.resize(start + want, 0);
        let out = &mut self.bytes[start..];
        if let Err(e) = self.unsealer.open_chunk_into(index, ciphertext, &tag, out) {
            self.bytes.truncate(start);
            return Err(e);
        }
        Ok(())
    }

    /// The whole plaintext, once every chunk opened and it hashes to the header's digest.
    pub fn finish(self) -> Result<(Vec<u8>, Unsealed), SealError> {
        let proof = self.unsealer.finish()?;
        Ok((self.bytes, proof))
    }
}
