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
//! A pipelined load hashes each chunk's plaintext while the next is decrypted, on another
//! vCPU when the caller's [`Join`] has one (`Unsealer::open_chunk_overlapped`): SHA-256 costs
//! about as much as the decryption.

use crate::arriving::{Appender, ArrivingFile};
use alloc::vec::Vec;
use core::ops::Range;
use inference_guest::parallel::{Parallel, for_each_chunk_mut};
use sealed_model::{ChunkCursor, Join, LayerHashes, SealError, TAG_BYTES, Unsealed, Unsealer};
use virtio_llm::Status;

/// A strawman load's state: the ciphertext stored so far, where the next chunk must fall,
/// and every tag so far.
struct Stored {
    bytes: Vec<u8>,
    cursor: ChunkCursor,
    tags: Vec<[u8; TAG_BYTES]>,
}

/// Where the body goes.
enum Body {
    /// Plaintext, final as it arrives (the engine may read the prefix meanwhile).
    Pipelined(ArrivingFile),
    Strawman(Stored),
}

/// Nanoseconds spent copying ciphertext into private memory and decrypting it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnsealTimes {
    pub copy_ns: u64,
    pub decrypt_ns: u64,
}

/// What opens chunks: the unsealer, the time it took, and the length of the last chunk
/// opened, whose plaintext is hashed with the next (or at the end).
pub struct Opener {
    unsealer: Unsealer,
    times: UnsealTimes,
    unhashed: usize,
}

/// A sealed model's layers: their ranges of the body and the hash state at each one's end
/// (what a kept layer prefix needs to start a later load of the same body).
pub struct SealedLayers {
    pub ranges: Vec<Range<u64>>,
    pub hashes: LayerHashes,
}

/// A finished load: the plaintext, what the unsealer proved, and the layers.
pub type Finished = Result<(Vec<u8>, Unsealed, SealedLayers), SealError>;

/// Why a load could not start after a kept prefix.
pub enum Resume {
    /// The prefix is not this body's: the unsealer, untouched, for a load from the start.
    Mismatch(alloc::boxed::Box<Unsealer>),
    /// Memory ran out (the prefix is gone).
    Refused(Status),
}

/// A sealed model being received.
pub struct Unsealing {
    pub model_id: u32,
    /// How many owners the load accepts (0: any whose signature verifies), for the log.
    pub accepted_owners: usize,
    opener: Opener,
    body: Body,
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
        let total = unsealer.header().body_bytes();
        let body = if strawman {
            let count = usize::try_from(unsealer.header().chunk_count())
                .map_err(|_| Status::OutOfMemory)?;
            let mut tags = Vec::new();
            tags.try_reserve_exact(count)
                .map_err(|_| Status::OutOfMemory)?;
            Body::Strawman(Stored {
                bytes: crate::loader::reserve_model(total)?,
                cursor: ChunkCursor::default(),
                tags,
            })
        } else {
            Body::Pipelined(ArrivingFile::reserve(total)?)
        };
        Ok(Self::new(model_id, unsealer, body))
    }

    fn new(model_id: u32, unsealer: Unsealer, body: Body) -> Self {
        Self {
            model_id,
            accepted_owners: 0,
            opener: Opener {
                unsealer,
                times: UnsealTimes::default(),
                unhashed: 0,
            },
            body,
        }
    }

    /// Starts a load after a kept prefix of the body's first layers (`bytes`, their
    /// plaintext, and `hashes`, their hash states): the unsealer expects the first chunk of
    /// the next layer, and the plaintext file starts with the prefix, final. The prefix's
    /// allocation grows to the whole body. A prefix that does not fit the header gives the
    /// unsealer back untouched ([`Resume::Mismatch`]).
    pub fn resume(
        model_id: u32,
        mut unsealer: Unsealer,
        bytes: Vec<u8>,
        hashes: LayerHashes,
    ) -> Result<Self, Resume> {
        let layers = hashes.layers();
        let fits = layers > 0
            && unsealer
                .header()
                .layers()
                .get(layers - 1)
                .is_some_and(|l| l.end == bytes.len() as u64);
        // `Unsealer::resume` changes nothing when it refuses.
        if !fits || unsealer.resume(hashes).is_err() {
            return Err(Resume::Mismatch(alloc::boxed::Box::new(unsealer)));
        }
        let total = unsealer.header().body_bytes();
        let file = ArrivingFile::from_prefix(bytes, total).map_err(Resume::Refused)?;
        Ok(Self::new(model_id, unsealer, Body::Pipelined(file)))
    }

    /// The buffer the body goes into: start address and length.
    pub fn buffer(&self) -> (u64, u64) {
        let address = match &self.body {
            Body::Pipelined(f) => f.address(),
            Body::Strawman(s) => s.bytes.as_ptr() as u64,
        };
        (address, self.opener.unsealer.header().body_bytes())
    }

    /// Body bytes received so far (plaintext, or in a strawman load ciphertext).
    pub fn received(&self) -> u64 {
        match &self.body {
            Body::Pipelined(f) => f.len() as u64,
            Body::Strawman(s) => s.bytes.len() as u64,
        }
    }

    /// Whether this is a strawman load.
    pub fn strawman(&self) -> bool {
        matches!(self.body, Body::Strawman(_))
    }

    /// Who signed the header.
    pub fn owner(&self) -> sealed_model::OwnerPublicKey {
        self.opener.unsealer.owner()
    }

    /// The header's layers (the engine's layers are inside them, in order).
    pub fn header(&self) -> &sealed_model::Header {
        self.opener.unsealer.header()
    }

    /// For the pipeline: the plaintext file (for a [`crate::arriving::Gate`]) and what
    /// opens chunks into it; `None` for a strawman load, which has no plaintext until the
    /// end.
    pub fn split(&mut self) -> Option<(&mut ArrivingFile, &mut Opener)> {
        match &mut self.body {
            Body::Pipelined(f) => Some((f, &mut self.opener)),
            Body::Strawman(_) => None,
        }
    }

    /// Takes chunk `index` (`sealed`: its ciphertext, then its tag) into the next part of
    /// the buffer: opened there (pipelined) or stored (strawman). `clock` reads nanoseconds.
    /// Any error ends the stream (the caller drops `self`).
    pub fn chunk(
        &mut self,
        index: u64,
        sealed: &[u8],
        clock: &dyn Fn() -> u64,
        join: &dyn Join,
    ) -> Result<(), SealError> {
        match &mut self.body {
            Body::Pipelined(f) => self
                .opener
                .open(&mut f.appender(), index, sealed, clock, join),
            Body::Strawman(s) => {
                let (ciphertext, tag) = split_tag(index, sealed)?;
                store(
                    s,
                    self.opener.unsealer.header(),
                    index,
                    ciphertext,
                    tag,
                    &mut self.opener.times,
                    clock,
                )
            }
        }
    }

    /// The whole plaintext, once every chunk opened and it hashes to the header's digest,
    /// with its layers, and the time spent copying and decrypting (a strawman load decrypts
    /// the stored body in place here first, chunk by chunk in order).
    pub fn finish(self, clock: &dyn Fn() -> u64, join: &dyn Join) -> (Finished, UnsealTimes) {
        let Opener {
            mut unsealer,
            mut times,
            unhashed,
        } = self.opener;
        let bytes = match self.body {
            Body::Pipelined(f) => {
                // An incomplete file: `Unsealer::finish` names the missing chunks.
                let missing = f.len();
                let complete = f.into_complete().ok_or(missing);
                if let Ok(bytes) = &complete {
                    let t0 = clock();
                    let last = unsealer.hash_last(&bytes[bytes.len() - unhashed..]);
                    times.decrypt_ns = times.decrypt_ns.saturating_add(clock().saturating_sub(t0));
                    if let Err(e) = last {
                        return (Err(e), times);
                    }
                }
                complete
            }
            Body::Strawman(mut stored) => {
                let t0 = clock();
                let opened = open_stored(&mut unsealer, &mut stored.bytes, &stored.tags, join);
                times.decrypt_ns = times.decrypt_ns.saturating_add(clock().saturating_sub(t0));
                match opened {
                    Ok(()) => Ok(stored.bytes),
                    Err(e) => return (Err(e), times),
                }
            }
        };
        let ranges = unsealer.header().layers().to_vec();
        let result = unsealer
            .finish_with_layers()
            .and_then(|(proof, hashes)| match bytes {
                Ok(bytes) => Ok((bytes, proof, SealedLayers { ranges, hashes })),
                // `finish` accepted every chunk, yet the file is short: cannot happen, as each
                // opened chunk appended its plaintext; refuse rather than trust it.
                Err(got) => Err(SealError::BodyLength {
                    expected: proof.body_bytes,
                    got: got as u64,
                }),
            });
        (result, times)
    }
}

impl Opener {
    /// Opens chunk `index` (`sealed`: ciphertext, then tag) onto the end of the plaintext:
    /// copied in once, then authenticated and decrypted in place, so the plaintext exists
    /// nowhere but there; a chunk that does not open leaves nothing behind.
    pub fn open(
        &mut self,
        to: &mut Appender<'_>,
        index: u64,
        sealed: &[u8],
        clock: &dyn Fn() -> u64,
        join: &dyn Join,
    ) -> Result<(), SealError> {
        let (ciphertext, tag) = split_tag(index, sealed)?;
        let want = self.unsealer.next_chunk().map_or(0, |c| c.len());
        if want != ciphertext.len() {
            // The unsealer names the mismatch (index, or length) and ends the stream.
            return self
                .unsealer
                .open_chunk_into(index, ciphertext, &tag, &mut [])
                .map(|_| ());
        }
        let t0 = clock();
        let mut t1 = t0;
        let unsealer = &mut self.unsealer;
        let opened = to.append_with(
            ciphertext,
            self.unhashed,
            |previous, text| {
                t1 = clock();
                unsealer.open_chunk_overlapped(index, text, &tag, previous, join)
            },
            SealError::StreamFailed { index },
        );
        if opened.is_ok() {
            self.unhashed = ciphertext.len();
        }
        self.times.copy_ns = self.times.copy_ns.saturating_add(t1.saturating_sub(t0));
        self.times.decrypt_ns = self
            .times
            .decrypt_ns
            .saturating_add(clock().saturating_sub(t1));
        opened
    }
}

/// The unsealer's two pieces of work (a chunk's decryption, the chunk before's hash) on
/// two vCPUs of the engine's pool, when it has them.
pub struct OnVcpus<'a>(pub &'a dyn Parallel);

impl Join for OnVcpus<'_> {
    fn join(&self, a: &mut (dyn FnMut() + Send), b: &mut (dyn FnMut() + Send)) {
        let mut work: [&mut (dyn FnMut() + Send); 2] = [a, b];
        for_each_chunk_mut(self.0, &mut work, 1, &|_, w| {
            for f in w {
                f();
            }
        });
    }
}

/// A sealed chunk's ciphertext and tag.
fn split_tag(index: u64, sealed: &[u8]) -> Result<(&[u8], [u8; TAG_BYTES]), SealError> {
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
    Ok((ciphertext, tag))
}

/// Strawman: checks that chunk `index` is the next one and of its length, then stores its
/// ciphertext and tag unopened.
fn store(
    stored: &mut Stored,
    header: &sealed_model::Header,
    index: u64,
    ciphertext: &[u8],
    tag: [u8; TAG_BYTES],
    times: &mut UnsealTimes,
    clock: &dyn Fn() -> u64,
) -> Result<(), SealError> {
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
    stored.bytes.extend_from_slice(ciphertext);
    times.copy_ns = times.copy_ns.saturating_add(clock().saturating_sub(t0));
    stored.tags.push(tag);
    stored.cursor.advance(header, &chunk);
    Ok(())
}

/// Opens every stored chunk in place, in order, each hashed while the next decrypts (as a
/// pipelined load does, so that the two modes differ only in when they decrypt); the first
/// failure ends it.
fn open_stored(
    unsealer: &mut Unsealer,
    body: &mut [u8],
    tags: &[[u8; TAG_BYTES]],
    join: &dyn Join,
) -> Result<(), SealError> {
    let mut previous = 0..0;
    while let Some(chunk) = unsealer.next_chunk() {
        let Some(tag) = tags.get(chunk.index as usize) else {
            // Not all chunks arrived: `Unsealer::finish` reports the truncation.
            return Ok(());
        };
        let range = chunk.plaintext.start as usize..chunk.plaintext.end as usize;
        let (done, rest) = body.split_at_mut(range.start);
        let text = &mut rest[..range.len()];
        unsealer.open_chunk_overlapped(chunk.index, text, tag, &done[previous], join)?;
        previous = range;
    }
    unsealer.hash_last(&body[previous])
}
