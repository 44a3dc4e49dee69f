//! Resuming an unseal from a kept layer prefix: a guest that evicted a model may keep the
//! plaintext of its first layers, and with it the SHA-256 state of the body hashed up to
//! the end of each of them. A later load of a model with the same `content_digest` then
//! needs only the chunks of the layers after the prefix: the unsealer starts its counter at
//! the first of them and its hash from the state the prefix ended with, so
//! [`crate::Unsealer::finish`] still proves that the prefix and the new chunks together are
//! the body that hashes to `content_digest`.

use alloc::vec::Vec;
use sha2::Sha256;

/// The hash states of a body at the end of each of its first layers, and the digest of the
/// whole body they were verified against.
#[derive(Clone)]
pub struct LayerHashes {
    pub(crate) content_digest: [u8; 32],
    /// `ends[i]`: SHA-256 of layers `0..=i`, not finalised.
    pub(crate) ends: Vec<Sha256>,
}

impl core::fmt::Debug for LayerHashes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LayerHashes")
            .field("layers", &self.ends.len())
            .finish_non_exhaustive()
    }
}

impl LayerHashes {
    /// The digest of the body these layers began, which [`crate::Unsealer::finish`]
    /// checked.
    pub fn content_digest(&self) -> &[u8; 32] {
        &self.content_digest
    }

    /// How many layers have a hash state.
    pub fn layers(&self) -> usize {
        self.ends.len()
    }

    /// Keeps the states of the first `layers` layers only.
    pub fn truncate(&mut self, layers: usize) {
        self.ends.truncate(layers);
        self.ends.shrink_to_fit();
    }
}

#[cfg(all(test, feature = "seal"))]
mod tests {
    use crate::tests::{guest, owner, plaintext, seal_for, split_chunks};
    use crate::{Header, SealError, Unsealer};

    /// Unseals `file` whole and returns its layer hashes.
    fn whole(file: &[u8]) -> crate::LayerHashes {
        let (header_bytes, chunks) = split_chunks(file);
        let mut u = Unsealer::new(&header_bytes, &guest(), &[]).unwrap();
        for (i, c) in chunks.iter().enumerate() {
            u.open_chunk(i as u64, &mut c.clone()).unwrap();
        }
        u.finish_with_layers().unwrap().1
    }

    /// Opens `file`'s chunks from layer `from` on after resuming from `prefix`.
    fn resumed(file: &[u8], prefix: crate::LayerHashes, from: u32) -> Result<(), SealError> {
        let (header_bytes, chunks) = split_chunks(file);
        let (header, _) = Header::parse(&header_bytes).unwrap();
        let mut u = Unsealer::new(&header_bytes, &guest(), &[])?;
        u.resume(prefix)?;
        for c in header.chunk_plan().filter(|c| c.layer >= from) {
            u.open_chunk(c.index, &mut chunks[c.index as usize].clone())?;
        }
        u.finish().map(|_| ())
    }

    #[test]
    fn a_load_resumes_after_a_kept_prefix_and_still_proves_the_digest() {
        let plain = plaintext(5);
        let file = seal_for(&plain, &[guest().public()], &owner());
        let hashes = whole(&file);
        assert_eq!(hashes.layers(), 4);
        // Another sealing of the same plaintext (new content key): the prefix still fits.
        let resealed = seal_for(&plain, &[guest().public()], &owner());
        for keep in 1..4 {
            let mut prefix = hashes.clone();
            prefix.truncate(keep);
            assert_eq!(
                resumed(&resealed, prefix, keep as u32),
                Ok(()),
                "keep {keep}"
            );
        }
        // Positive control: skipping a layer the prefix does not hold leaves the body short.
        let mut prefix = hashes.clone();
        prefix.truncate(1);
        assert!(matches!(
            resumed(&resealed, prefix, 2),
            Err(SealError::ChunkOutOfOrder { .. })
        ));
    }

    #[test]
    fn a_prefix_of_another_model_or_a_whole_body_is_refused() {
        let hashes = whole(&seal_for(&plaintext(5), &[guest().public()], &owner()));
        let other = seal_for(&plaintext(6), &[guest().public()], &owner());
        let mut prefix = hashes.clone();
        prefix.truncate(2);
        assert_eq!(resumed(&other, prefix, 2), Err(SealError::PrefixMismatch));
        // Every layer kept: nothing would stream, and nothing would end the stream.
        let same = seal_for(&plaintext(5), &[guest().public()], &owner());
        assert_eq!(resumed(&same, hashes, 4), Err(SealError::PrefixMismatch));
        let mut none = whole(&same);
        none.truncate(0);
        assert_eq!(resumed(&same, none, 0), Err(SealError::PrefixMismatch));
        // A forged state (the right digest, another body's hash) fails at the end.
        let mut forged = whole(&other);
        forged.content_digest = *whole(&same).content_digest();
        forged.truncate(2);
        assert_eq!(resumed(&same, forged, 2), Err(SealError::ContentDigest));
    }
}
