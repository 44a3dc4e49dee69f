//! Receiving a sealed model (docs/sealed-model.md): the header is accepted by an
//! [`Unsealer`], the plaintext body's size is reserved up front (as [`crate::loader`] does
//! for a plaintext file), and the chunks arrive in order. Two modes:
//!
//! - **pipelined** (the default): each chunk's ciphertext is copied once from the message,
//!   which the driver already copied out of the shared window, into its place in that buffer
//!   and authenticated and decrypted there at once, so the plaintext exists nowhere but the
//!   reserved private memory;
//! - **strawman** (`sealed_flag::STRAWMAN`, for benchmarks): each chunk's ciphertext is
//!   copied to the same place and its tag kept aside, nothing is decrypted until the body is
//!   complete, and [`Unsealing::finish`] then decrypts the whole body in place. Only the
//!   arrival checks (index, length) run as chunks arrive; authentication waits for the end.
//!
//! Either way the time spent copying and decrypting is counted, for the load's console line.

use alloc::vec::Vec;
use sealed_model::{ChunkCursor, SealError, TAG_BYTES, Unsealed, Unsealer};
use virtio_llm::Status;

/// A strawman load's state: where the next chunk must fall, and every tag so far.
struct Stored {
    cursor: ChunkCursor,
    tags: Vec<[u8; TAG_BYTES]>,
}

/// Nanoseconds spent copying ciphertext into private memory and decrypting it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnsealTimes {
    pub copy_ns: u64,
    pub decrypt_ns: u64,
}

/// A sealed model being received.
pub struct Unsealing {
    pub model_id: u32,
    /// How many owners the load accepts (0: any whose signature verifies), for the log.
    pub accepted_owners: usize,
    unsealer: Unsealer,
    /// The plaintext opened so far (strawman: the ciphertext stored so far); capacity for
    /// the whole body.
    bytes: Vec<u8>,
    /// `Some` for a strawman load.
    stored: Option<Stored>,
    times: UnsealTimes,
}

impl Unsealing {
    /// Private memory a load of `unsealer`'s model needs: the body, and for a strawman load
    /// every chunk's tag as well.
    pub fn needs(unsealer: &Unsealer, strawman: bool) -> u64 {
        let header = unsealer.header();
        let tags = if strawman {
            header.chunk_count() * TAG_BYTES as u64
        } else {
            0
        };
        header.body_bytes() + tags
    }

    /// Reserves [`Unsealing::needs`]; `OutOfMemory` if the allocator cannot give it.
    pub fn begin(model_id: u32, unsealer: Unsealer, strawman: bool) -> Result<Self, Status> {
        let bytes = crate::loader::reserve_model(unsealer.header().body_bytes())?;
        let stored = if strawman {
            let count = usize::try_from(unsealer.header().chunk_count())
                .map_err(|_| Status::OutOfMemory)?;
            let mut tags = Vec::new();
            tags.try_reserve_exact(count)
                .map_err(|_| Status::OutOfMemory)?;
            Some(Stored {
                cursor: ChunkCursor::default(),
                tags,
            })
        } else {
            None
        };
        Ok(Self {
            model_id,
            accepted_owners: 0,
            unsealer,
            bytes,
            stored,
            times: UnsealTimes::default(),
        })
    }

    /// The buffer the body goes into: start address and length.
    pub fn buffer(&self) -> (u64, u64) {
        (
            self.bytes.as_ptr() as u64,
            self.unsealer.header().body_bytes(),
        )
    }

    /// Body bytes received so far (plaintext, or in a strawman load ciphertext).
    pub fn received(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Whether this is a strawman load.
    pub fn strawman(&self) -> bool {
        self.stored.is_some()
    }

    /// Who signed the header.
    pub fn owner(&self) -> sealed_model::OwnerPublicKey {
        self.unsealer.owner()
    }

    /// Takes chunk `index` (`sealed`: its ciphertext, then its tag) into the next part of
    /// the buffer: opened there (pipelined) or stored (strawman). `clock` reads nanoseconds.
    /// Any error ends the stream (the caller drops `self`).
    pub fn chunk(
        &mut self,
        index: u64,
        sealed: &[u8],
        clock: &dyn Fn() -> u64,
    ) -> Result<(), SealError> {
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
        if self.stored.is_some() {
            return self.store(index, ciphertext, tag, clock);
        }
        // The expected chunk's plaintext range lies within the body, whose size is reserved:
        // growing to its end never reallocates. The unsealer checks the index and lengths.
        let start = self.bytes.len();
        let want = self.unsealer.next_chunk().map_or(0, |c| c.len());
        if want != ciphertext.len() {
            // The unsealer names the mismatch (index, or length) and ends the stream.
            return self
                .unsealer
                .open_chunk_into(index, ciphertext, &tag, &mut [])
                .map(|_| ());
        }
        let t0 = clock();
        self.bytes.extend_from_slice(ciphertext);
        let t1 = clock();
        let opened = self
            .unsealer
            .open_chunk_detached(index, &mut self.bytes[start..], &tag);
        self.times.copy_ns += t1 - t0;
        self.times.decrypt_ns += clock() - t1;
        if let Err(e) = opened {
            // Ciphertext that did not authenticate is not kept either.
            self.bytes.truncate(start);
            return Err(e);
        }
        Ok(())
    }

    /// Strawman: checks that chunk `index` is the next one and of its length, then stores
    /// its ciphertext and tag unopened.
    fn store(
        &mut self,
        index: u64,
        ciphertext: &[u8],
        tag: [u8; TAG_BYTES],
        clock: &dyn Fn() -> u64,
    ) -> Result<(), SealError> {
        let Some(stored) = self.stored.as_mut() else {
            return Err(SealError::StreamFailed { index });
        };
        let header = self.unsealer.header();
        let Some(chunk) = stored.cursor.peek(header) else {
            let count = header.chunk_count();
            return Err(SealError::NoSuchChunk { index, count });
        };
        if index != chunk.index {
            return Err(SealError::ChunkOutOfOrder {
                expected: chunk.index,
                got: index,
            });
        }
        if ciphertext.len() != chunk.len() {
            return Err(SealError::ChunkLength {
                index,
                expected: chunk.len() as u64,
                got: ciphertext.len() as u64,
            });
        }
        let t0 = clock();
        // Within the reserved capacity: the chunk's range lies within the body.
        self.bytes.extend_from_slice(ciphertext);
        self.times.copy_ns += clock() - t0;
        stored.tags.push(tag);
        stored.cursor.advance(header, &chunk);
        Ok(())
    }

    /// The whole plaintext, once every chunk opened and it hashes to the header's digest,
    /// and the time spent copying and decrypting (a strawman load decrypts the stored body
    /// in place here first, chunk by chunk in order).
    pub fn finish(
        mut self,
        clock: &dyn Fn() -> u64,
    ) -> (Result<(Vec<u8>, Unsealed), SealError>, UnsealTimes) {
        let mut opened = Ok(());
        if let Some(stored) = self.stored.take() {
            let t0 = clock();
            opened = open_stored(&mut self.unsealer, &mut self.bytes, &stored.tags);
            self.times.decrypt_ns += clock() - t0;
        }
        let times = self.times;
        let result = opened
            .and_then(|()| self.unsealer.finish())
            .map(|proof| (self.bytes, proof));
        (result, times)
    }
}

/// Opens every stored chunk in place, in order; the first failure ends it.
fn open_stored(
    unsealer: &mut Unsealer,
    body: &mut [u8],
    tags: &[[u8; TAG_BYTES]],
) -> Result<(), SealError> {
    while let Some(chunk) = unsealer.next_chunk() {
        let Some(tag) = tags.get(chunk.index as usize) else {
            // Not all chunks arrived: `Unsealer::finish` reports the truncation.
            return Ok(());
        };
        let range = chunk.plaintext.start as usize..chunk.plaintext.end as usize;
        unsealer.open_chunk_detached(chunk.index, &mut body[range], tag)?;
    }
    Ok(())
}
