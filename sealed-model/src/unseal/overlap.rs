//! Opening chunks with the body's hash a chunk behind, on another thread: SHA-256 of the
//! plaintext costs about as much as AES-256-GCM itself, so a guest with a second vCPU hashes
//! chunk *i − 1* while it authenticates and decrypts chunk *i*. Order and completeness stay
//! the unsealer's to check: each chunk is hashed once, next after the one before, with the
//! plaintext's own length, and [`Unsealer::finish`] refuses a body whose last chunk was not.

use super::{Unsealer, chunk_auth, hash_chunk, open_in_place};
use crate::{SealError, TAG_BYTES};

/// Runs two pieces of work and returns once both have finished, at once on two threads
/// where the caller has them.
pub trait Join {
    fn join(&self, a: &mut (dyn FnMut() + Send), b: &mut (dyn FnMut() + Send));
}

/// Both on the calling thread, one after the other.
pub struct InOrder;

impl Join for InOrder {
    fn join(&self, a: &mut (dyn FnMut() + Send), b: &mut (dyn FnMut() + Send)) {
        a();
        b();
    }
}

/// A chunk opened but not hashed yet.
#[derive(Clone, Copy, Debug)]
pub(super) struct Unhashed {
    pub index: u64,
    pub len: usize,
    pub ends_layer: bool,
}

impl Unsealer {
    /// Opens chunk `index` in place (`text`: exactly its ciphertext, which becomes the
    /// plaintext; `tag` apart) while `join` hashes `previous`: the plaintext of the chunk
    /// the last call opened (empty for the first chunk of the stream). This chunk is hashed
    /// in turn by the next call, or by [`Unsealer::hash_last`] after the last chunk. Mixing
    /// this with the other ways to open a chunk is refused, as is a `previous` that is not
    /// as long as that chunk; a `previous` with the wrong bytes fails [`Unsealer::finish`]'s
    /// content digest.
    pub fn open_chunk_overlapped(
        &mut self,
        index: u64,
        text: &mut [u8],
        tag: &[u8; TAG_BYTES],
        previous: &[u8],
        join: &dyn Join,
    ) -> Result<(), SealError> {
        let chunk = self.expect_chunk(index)?;
        self.check_len(&chunk, text.len())?;
        let pending = self.unhashed.take();
        if pending.map_or(0, |u| u.len) != previous.len() {
            let index = pending.map_or(index, |u| u.index);
            return Err(self.fail(&chunk, SealError::UnhashedChunk { index }));
        }
        let ends_layer = pending.is_some_and(|u| u.ends_layer);
        let (cipher, digest) = (&self.cipher, &self.header_digest);
        let (hasher, layer_ends) = (&mut self.hasher, &mut self.layer_ends);
        let mut opened = Ok(());
        join.join(
            &mut || opened = open_in_place(cipher, digest, &chunk, text, tag),
            &mut || {
                if pending.is_some() {
                    hash_chunk(hasher, layer_ends, previous, ends_layer);
                }
            },
        );
        if opened.is_err() {
            return Err(self.fail(&chunk, chunk_auth(&chunk)));
        }
        let ends_layer = self.advance(&chunk);
        self.unhashed = Some(Unhashed {
            index,
            len: text.len(),
            ends_layer,
        });
        Ok(())
    }

    /// Hashes `text`, the plaintext of the chunk [`Unsealer::open_chunk_overlapped`] opened
    /// last (after the stream's last chunk, before [`Unsealer::finish`]). Nothing to do if
    /// every chunk opened is hashed and `text` is empty.
    pub fn hash_last(&mut self, text: &[u8]) -> Result<(), SealError> {
        match self.unhashed.take() {
            Some(u) if u.len == text.len() => {
                hash_chunk(&mut self.hasher, &mut self.layer_ends, text, u.ends_layer);
                Ok(())
            }
            None if text.is_empty() => Ok(()),
            other => {
                let index = other.map_or(self.cursor.index, |u| u.index);
                self.failed_at = Some(index);
                Err(SealError::UnhashedChunk { index })
            }
        }
    }
}
