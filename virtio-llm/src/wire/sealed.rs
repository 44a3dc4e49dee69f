//! Sealed-model loading (`feature::SEALED`, docs/sealed-model.md): the host streams an
//! `.fsm` file's header, then its sealed chunks in order; `LoadModelEnd` ends the load as it
//! does a plaintext one. The bytes are opaque here: the driver's unsealer checks them.

use crate::error::WireError;
use crate::spec::{MAX_ACCEPTED_OWNERS, MAX_CHUNK_BYTES, MAX_SEALED_HEADER_BYTES, SEAL_TAG_BYTES};
use crate::wire::codec::{Reader, Writer, check_len, len_u32};
use crate::wire::control::msg_type;
use crate::wire::{Message, ensure};

/// Starts loading a sealed model: how to load it, the owners to accept, and its header and
/// owner signature, exactly as in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSealedBegin<'a> {
    /// Id the device chooses for the model.
    pub model_id: u32,
    /// [`crate::spec::sealed_flag`] bits. Undefined bits pass the codec (so that the driver
    /// can answer the command itself) and are refused by the driver with `BadRequest`.
    pub flags: u32,
    /// The owners' Ed25519 public keys the driver accepts, 0..=`MAX_ACCEPTED_OWNERS`; none
    /// accepts any owner whose signature verifies (the host's policy, not a protection
    /// against the host).
    pub accepted_owners: &'a [[u8; 32]],
    /// The `.fsm` header and its signature, 1..=`MAX_SEALED_HEADER_BYTES` bytes.
    pub header: &'a [u8],
}

impl<'a> Message<'a> for LoadSealedBegin<'a> {
    const TYPE: u16 = msg_type::LOAD_SEALED_BEGIN;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.model_id);
        w.u32(len_u32(self.header.len()));
        w.u32(self.flags);
        w.u32(len_u32(self.accepted_owners.len()));
        self.accepted_owners.iter().for_each(|k| w.bytes(k));
        w.bytes(self.header);
    }
    fn decode_body(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let model_id = r.u32()?;
        let len = r.u32()? as usize;
        check_len("sealed header", len, MAX_SEALED_HEADER_BYTES)?;
        let flags = r.u32()?;
        let owners = r.u32()? as usize;
        check_len("accepted owners", owners, MAX_ACCEPTED_OWNERS)?;
        // At most 16 × 32 bytes: no overflow.
        let (accepted_owners, rest) = r.bytes(owners * 32)?.as_chunks::<32>();
        debug_assert!(rest.is_empty());
        Ok(Self {
            model_id,
            flags,
            accepted_owners,
            header: r.bytes(len)?,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        check_len("sealed header", self.header.len(), MAX_SEALED_HEADER_BYTES)?;
        check_len(
            "accepted owners",
            self.accepted_owners.len(),
            MAX_ACCEPTED_OWNERS,
        )?;
        ensure(!self.header.is_empty(), "sealed header_len", 0)
    }
}

/// One sealed chunk: its ciphertext then its 16-byte tag, as on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSealedChunk<'a> {
    /// The model being loaded.
    pub model_id: u32,
    /// The chunk's index in the body; chunks arrive in order from 0.
    pub index: u64,
    /// `SEAL_TAG_BYTES + 1..=MAX_CHUNK_BYTES + SEAL_TAG_BYTES` bytes.
    pub data: &'a [u8],
}

impl<'a> Message<'a> for LoadSealedChunk<'a> {
    const TYPE: u16 = msg_type::LOAD_SEALED_CHUNK;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.model_id);
        w.u32(len_u32(self.data.len()));
        w.u64(self.index);
        w.bytes(self.data);
    }
    fn decode_body(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let model_id = r.u32()?;
        let len = r.u32()? as usize;
        check_len("sealed chunk", len, MAX_CHUNK_BYTES + SEAL_TAG_BYTES)?;
        let index = r.u64()?;
        Ok(Self {
            model_id,
            index,
            data: r.bytes(len)?,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        let len = self.data.len();
        check_len("sealed chunk", len, MAX_CHUNK_BYTES + SEAL_TAG_BYTES)?;
        ensure(len > SEAL_TAG_BYTES, "sealed chunk data_len", len as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_messages_round_trip_and_bounds_hold() {
        let header = [7u8; 300];
        let owners = [[1u8; 32], [2u8; 32]];
        let b = LoadSealedBegin {
            model_id: 3,
            flags: crate::spec::sealed_flag::STRAWMAN,
            accepted_owners: &owners,
            header: &header,
        };
        let mut out = alloc::vec::Vec::new();
        b.encode(&mut out).unwrap();
        assert_eq!(out.len(), 8 + 16 + 64 + 300);
        assert_eq!(LoadSealedBegin::decode(&out).unwrap(), b);
        // The resume flag travels as any other.
        let resume = LoadSealedBegin {
            flags: crate::spec::sealed_flag::RESUME,
            ..b.clone()
        };
        out.clear();
        resume.encode(&mut out).unwrap();
        assert_eq!(LoadSealedBegin::decode(&out).unwrap().flags, 2);
        out.clear();
        b.encode(&mut out).unwrap();
        // Undefined flags travel: the driver, not the codec, refuses them.
        let odd = LoadSealedBegin {
            flags: 0x8000_0002,
            accepted_owners: &[],
            ..b
        };
        out.clear();
        odd.encode(&mut out).unwrap();
        assert_eq!(LoadSealedBegin::decode(&out).unwrap(), odd);
        let many = [[3u8; 32]; MAX_ACCEPTED_OWNERS + 1];
        let too_many = LoadSealedBegin {
            accepted_owners: &many,
            ..b
        };
        assert!(too_many.encode(&mut out).is_err());
        // A count over the limit is refused before the keys are read.
        let mut forged = out.clone();
        forged[8 + 12..8 + 16].copy_from_slice(&17u32.to_le_bytes());
        assert!(LoadSealedBegin::decode(&forged).is_err());
        // A count the body does not hold is truncated.
        forged[8 + 12..8 + 16].copy_from_slice(&16u32.to_le_bytes());
        assert!(LoadSealedBegin::decode(&forged).is_err());

        let data = [1u8; 17];
        let c = LoadSealedChunk {
            model_id: 3,
            index: 9,
            data: &data,
        };
        out.clear();
        c.encode(&mut out).unwrap();
        assert_eq!(LoadSealedChunk::decode(&out).unwrap(), c);
        let tag_only = LoadSealedChunk {
            data: &data[..16],
            ..c
        };
        assert!(tag_only.encode(&mut out).is_err());
        let empty = LoadSealedBegin { header: &[], ..b };
        assert!(empty.encode(&mut out).is_err());
    }
}
