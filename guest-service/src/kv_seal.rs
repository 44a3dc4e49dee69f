//! Sealed KV blocks: a kept KV cache cut into blocks the host stores for the guest
//! (`feature::KV_EVICT`). Each block is one part of one layer's keys and values, sealed with
//! AES-256-GCM under a key of its own eviction: HKDF-SHA256 from the key root, the image
//! measurement, random bytes and the eviction's epoch. The nonce is the block's index (the
//! key seals nothing else), and the AAD binds the cache's handle, the layer, the block's
//! index and the epoch, so a block altered, moved, swapped with another cache's or kept from
//! an earlier eviction of the same cache does not open.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use alloc::vec::Vec;
use hkdf::Hkdf;
use sha2::Sha256;
use virtio_llm::spec::MAX_KV_BLOCK_BYTES;

/// The AES-GCM tag after each block's ciphertext.
pub const TAG_BYTES: usize = 16;
/// Plaintext bytes of a full block: a sealed block fills a `KvBlock` message.
pub const BLOCK_PLAIN_BYTES: usize = MAX_KV_BLOCK_BYTES - TAG_BYTES;
/// HKDF salt of eviction keys: unrelated to the sealing and session keys' salts.
const SALT: &[u8] = b"flexserve kv evict v1";
/// First bytes of every block's AAD.
const AAD_LABEL: &[u8; 16] = b"flexserve kv v1\0";

/// Why a block handed back was refused (the cache is then recomputed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvRefusal {
    #[error("block {block} of evicted cache {handle} is missing: the host did not return it")]
    Missing { handle: u32, block: u32 },
    #[error("evicted cache {handle} came back out of order: block {got} where {expected} was due")]
    OutOfOrder {
        handle: u32,
        expected: u32,
        got: u32,
    },
    #[error("block {block} of evicted cache {handle} is {got} bytes, not {expected}")]
    Length {
        handle: u32,
        block: u32,
        expected: usize,
        got: usize,
    },
    #[error(
        "block {block} (layer {layer}) of evicted cache {handle} does not authenticate: \
         altered, from another cache or from an earlier eviction (stale)"
    )]
    Unauthentic { handle: u32, block: u32, layer: u32 },
    #[error("no evicted cache {handle} is held: unknown or already brought back (stale)")]
    UnknownHandle { handle: u32 },
    #[error("the restored cache of {tokens} tokens does not fit the session")]
    DoesNotFit { tokens: usize },
}

/// How a cache of `layers` layers of `layer_bytes` each is cut into blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPlan {
    pub layers: usize,
    pub layer_bytes: usize,
}

impl BlockPlan {
    /// Blocks of one layer (a layer never shares a block with another).
    pub fn per_layer(&self) -> usize {
        self.layer_bytes.div_ceil(BLOCK_PLAIN_BYTES).max(1)
    }

    /// Blocks of the whole cache.
    pub fn n_blocks(&self) -> usize {
        self.layers * self.per_layer()
    }

    /// Block `block`'s layer and the range of that layer's bytes it holds.
    pub fn locate(&self, block: usize) -> (usize, core::ops::Range<usize>) {
        let per = self.per_layer();
        let start = (block % per) * BLOCK_PLAIN_BYTES;
        let end = (start + BLOCK_PLAIN_BYTES).min(self.layer_bytes);
        (block / per, start..end)
    }

    /// Bytes the whole cache takes sealed.
    pub fn sealed_bytes(&self) -> u64 {
        (self.layers * self.layer_bytes + self.n_blocks() * TAG_BYTES) as u64
    }
}

/// One eviction's key and the values its blocks are bound to.
pub struct EvictionKey {
    cipher: Aes256Gcm,
    pub handle: u32,
    pub epoch: u64,
}

impl EvictionKey {
    /// The key of eviction `epoch` of cache `handle`: HKDF-SHA256 (salt
    /// `flexserve kv evict v1`, ikm `root`, info `measurement || random || epoch`).
    pub fn derive(
        root: &[u8; 32],
        measurement: &[u8; 32],
        random: &[u8; 16],
        handle: u32,
        epoch: u64,
    ) -> Self {
        let mut info = [0u8; 56];
        info[..32].copy_from_slice(measurement);
        info[32..48].copy_from_slice(random);
        info[48..].copy_from_slice(&epoch.to_le_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit: this cannot fail.
        let _ = Hkdf::<Sha256>::new(Some(SALT), root).expand(&info, &mut key);
        Self {
            cipher: Aes256Gcm::new(&key.into()),
            handle,
            epoch,
        }
    }

    fn aad(&self, layer: u32, block: u32) -> [u8; 36] {
        let mut aad = [0u8; 36];
        aad[..16].copy_from_slice(AAD_LABEL);
        aad[16..20].copy_from_slice(&self.handle.to_le_bytes());
        aad[20..24].copy_from_slice(&layer.to_le_bytes());
        aad[24..28].copy_from_slice(&block.to_le_bytes());
        aad[28..].copy_from_slice(&self.epoch.to_le_bytes());
        aad
    }

    fn nonce(block: u32) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&block.to_le_bytes());
        n.into()
    }

    /// Seals `plain` as block `block` of `layer`: ciphertext then tag.
    pub fn seal(&self, layer: u32, block: u32, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + TAG_BYTES);
        out.extend_from_slice(plain);
        // Encryption fails only past AES-GCM's 64 GiB message limit; a block is 64 KiB.
        let tag = self
            .cipher
            .encrypt_in_place_detached(&Self::nonce(block), &self.aad(layer, block), &mut out)
            .unwrap_or_default();
        out.extend_from_slice(&tag);
        out
    }

    /// Opens block `block` of `layer` in place; `Unauthentic` unless it is exactly what
    /// [`seal`](Self::seal) made of it under this key.
    pub fn open<'b>(
        &self,
        layer: u32,
        block: u32,
        sealed: &'b mut [u8],
    ) -> Result<&'b [u8], KvRefusal> {
        let refused = KvRefusal::Unauthentic {
            handle: self.handle,
            block,
            layer,
        };
        if sealed.len() < TAG_BYTES {
            return Err(refused);
        }
        let (text, tag) = sealed.split_at_mut(sealed.len() - TAG_BYTES);
        let tag = Tag::clone_from_slice(tag);
        self.cipher
            .decrypt_in_place_detached(&Self::nonce(block), &self.aad(layer, block), text, &tag)
            .map_err(|_| refused)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn key(handle: u32, epoch: u64) -> EvictionKey {
        EvictionKey::derive(&[7; 32], &[9; 32], &[3; 16], handle, epoch)
    }

    #[test]
    fn a_plan_cuts_every_layer_into_whole_blocks() {
        let plan = BlockPlan {
            layers: 3,
            layer_bytes: 2 * BLOCK_PLAIN_BYTES + 10,
        };
        assert_eq!((plan.per_layer(), plan.n_blocks()), (3, 9));
        assert_eq!(plan.locate(0), (0, 0..BLOCK_PLAIN_BYTES));
        let last = 2 * BLOCK_PLAIN_BYTES..2 * BLOCK_PLAIN_BYTES + 10;
        assert_eq!(plan.locate(5), (1, last.clone()));
        assert_eq!(plan.locate(8), (2, last));
        assert_eq!(
            plan.sealed_bytes(),
            (3 * plan.layer_bytes + 9 * TAG_BYTES) as u64
        );
    }

    #[test]
    fn a_block_opens_only_where_and_when_it_was_sealed() {
        let plain = vec![0x42u8; 1000];
        let k = key(5, 2);
        let sealed = k.seal(1, 4, &plain);
        assert_eq!(sealed.len(), plain.len() + TAG_BYTES);
        assert_ne!(
            &sealed[..plain.len()],
            &plain[..],
            "the host sees no plaintext"
        );
        // Positive control: the block opens where it was sealed.
        assert_eq!(k.open(1, 4, &mut sealed.clone()).unwrap(), &plain[..]);
        // Another block index or layer (reordered), another cache, another epoch (stale),
        // a flipped byte, a cut tag: each refused.
        let refused = |k: &EvictionKey, layer, block, bytes: &mut [u8]| {
            matches!(
                k.open(layer, block, bytes),
                Err(KvRefusal::Unauthentic { .. })
            )
        };
        assert!(refused(&k, 1, 5, &mut sealed.clone()));
        assert!(refused(&k, 2, 4, &mut sealed.clone()));
        assert!(refused(&key(6, 2), 1, 4, &mut sealed.clone()));
        assert!(refused(&key(5, 3), 1, 4, &mut sealed.clone()));
        for at in [0, 500, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[at] ^= 1;
            assert!(refused(&k, 1, 4, &mut t), "a flip at {at} opened");
        }
        assert!(refused(&k, 1, 4, &mut sealed.clone()[..10]));
        // The same key under another random value (another boot) is unrelated.
        let other_boot = EvictionKey::derive(&[7; 32], &[9; 32], &[4; 16], 5, 2);
        assert!(refused(&other_boot, 1, 4, &mut sealed.clone()));
    }
}
