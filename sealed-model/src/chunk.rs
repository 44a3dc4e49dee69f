//! The body's chunks: where each lies, and the nonce and AAD that pin it to its place.
//!
//! Each layer is cut into `ceil(len / chunk_bytes)` chunks (the last of a layer may be
//! short), numbered from 0 across the body. A chunk's nonce is its index (u64 big-endian),
//! three zero bytes and the last-chunk flag (the STREAM construction); its AAD adds the label,
//! the header digest, the index, the layer and the flag. So a chunk opens only at its own
//! place in its own model's body, and a body cut after any chunk but the real last one is
//! detected by the missing last flag.

use core::ops::Range;

use crate::label;
use crate::{Header, TAG_BYTES};

/// AAD length: label, header digest, index u64, layer u32, last u8.
pub(crate) const AAD_BYTES: usize = label::CHUNK_AAD.len() + 32 + 8 + 4 + 1;

/// One chunk of the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Position in the body, from 0.
    pub index: u64,
    /// The layer the chunk belongs to.
    pub layer: u32,
    /// Its plaintext bytes within the body.
    pub plaintext: Range<u64>,
    /// Whether it is the body's last chunk.
    pub last: bool,
}

impl ChunkInfo {
    /// Plaintext (= ciphertext) length: at most `chunk_bytes` ≤ 1 MiB.
    pub fn len(&self) -> usize {
        (self.plaintext.end - self.plaintext.start) as usize
    }

    /// Never true: chunks are non-empty (clippy wants the pair).
    pub fn is_empty(&self) -> bool {
        self.plaintext.is_empty()
    }

    /// Where the sealed chunk (ciphertext then tag) lies in the sealed body.
    pub fn sealed(&self) -> Range<u64> {
        let start = self.plaintext.start + self.index * TAG_BYTES as u64;
        start..start + self.len() as u64 + TAG_BYTES as u64
    }

    /// The AES-GCM nonce: index u64 big-endian, three zero bytes, last flag.
    pub(crate) fn nonce(&self) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.index.to_be_bytes());
        nonce[11] = u8::from(self.last);
        nonce
    }

    /// The AAD: label, header digest, index u64 LE, layer u32 LE, last u8.
    pub(crate) fn aad(&self, header_digest: &[u8; 32]) -> [u8; AAD_BYTES] {
        let mut aad = [0u8; AAD_BYTES];
        let (l, rest) = aad.split_at_mut(label::CHUNK_AAD.len());
        l.copy_from_slice(label::CHUNK_AAD);
        let (d, rest) = rest.split_at_mut(32);
        d.copy_from_slice(header_digest);
        let (i, rest) = rest.split_at_mut(8);
        i.copy_from_slice(&self.index.to_le_bytes());
        let (layer, last) = rest.split_at_mut(4);
        layer.copy_from_slice(&self.layer.to_le_bytes());
        last[0] = u8::from(self.last);
        aad
    }
}

/// A position in a header's chunk plan that does not borrow the header (the unsealer keeps
/// one; so does a receiver that stores chunks before opening them). Start at `default()`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkCursor {
    /// Index of the next chunk.
    pub(crate) index: u64,
    layer: usize,
    /// Next plaintext offset.
    pos: u64,
}

impl ChunkCursor {
    /// The chunk at the cursor in `header`'s plan, or `None` past the last.
    pub fn peek(&self, header: &Header) -> Option<ChunkInfo> {
        let layer = header.layers.get(self.layer)?;
        let end = layer.end.min(self.pos + u64::from(header.chunk_bytes));
        Some(ChunkInfo {
            index: self.index,
            layer: self.layer as u32, // ≤ MAX_LAYERS
            plaintext: self.pos..end,
            last: self.index + 1 == header.chunk_count,
        })
    }

    /// Moves past `chunk` (the one `peek` gave for the same header).
    pub fn advance(&mut self, header: &Header, chunk: &ChunkInfo) {
        self.index += 1;
        self.pos = chunk.plaintext.end;
        if header
            .layers
            .get(self.layer)
            .is_some_and(|l| l.end == self.pos)
        {
            self.layer += 1;
        }
    }

    /// The first chunk of layer `layer` of `header` (past the last chunk if `layer` is
    /// past the last layer).
    pub fn at_layer(header: &Header, layer: usize) -> Self {
        let chunk = u64::from(header.chunk_bytes);
        let before = header.layers.get(..layer).unwrap_or(&header.layers);
        Self {
            index: before
                .iter()
                .map(|l| (l.end - l.start).div_ceil(chunk))
                .sum(),
            layer,
            pos: before.last().map_or(0, |l| l.end),
        }
    }

    /// The layer the chunk at the cursor belongs to.
    pub fn layer_index(&self) -> usize {
        self.layer
    }

    /// Index of the chunk at the cursor (the count of chunks passed).
    pub fn index(&self) -> u64 {
        self.index
    }
}

/// Every chunk of a body, in order (from [`Header::chunk_plan`]).
#[derive(Clone, Debug)]
pub struct ChunkPlan<'a> {
    header: &'a Header,
    cursor: ChunkCursor,
}

impl<'a> ChunkPlan<'a> {
    pub(crate) fn new(header: &'a Header) -> Self {
        ChunkPlan {
            header,
            cursor: ChunkCursor::default(),
        }
    }
}

impl Iterator for ChunkPlan<'_> {
    type Item = ChunkInfo;

    fn next(&mut self) -> Option<ChunkInfo> {
        let chunk = self.cursor.peek(self.header)?;
        self.cursor.advance(self.header, &chunk);
        Some(chunk)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.header.chunk_count - self.cursor.index;
        let exact = usize::try_from(left).ok();
        (exact.unwrap_or(usize::MAX), exact)
    }
}
