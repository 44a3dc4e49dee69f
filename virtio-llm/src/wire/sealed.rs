//! Sealed-model loading (`feature::SEALED`, docs/sealed-model.md): the host streams an
//! `.fsm` file's header, then its sealed chunks in order; `LoadModelEnd` ends the load as it
//! does a plaintext one. The bytes are opaque here: the driver's unsealer checks them.

use crate::error::WireError;
use crate::spec::{MAX_CHUNK_BYTES, MAX_SEALED_HEADER_BYTES, SEAL_TAG_BYTES};
use crate::wire::codec::{Reader, Writer, check_len, len_u32};
use crate::wire::control::msg_type;
use crate::wire::{Message, ensure};

/// Starts loading a sealed model: its header and owner signature, exactly as in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadSealedBegin<'a> {
    /// Id the device chooses for the model.
    pub model_id: u32,
    /// The `.fsm` header and its signature, 1..=`MAX_SEALED_HEADER_BYTES` bytes.
    pub header: &'a [u8],
}

impl<'a> Message<'a> for LoadSealedBegin<'a> {
    const TYPE: u16 = msg_type::LOAD_SEALED_BEGIN;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.model_id);
        w.u32(len_u32(self.header.len()));
        w.bytes(self.header);
    }
    fn decode_body(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let model_id = r.u32()?;
        let len = r.u32()? as usize;
        check_len("sealed header", len, MAX_SEALED_HEADER_BYTES)?;
        Ok(Self {
            model_id,
            header: r.bytes(len)?,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        check_len("sealed header", self.header.len(), MAX_SEALED_HEADER_BYTES)?;
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
        let b = LoadSealedBegin {
            model_id: 3,
            header: &header,
        };
        let mut out = alloc::vec::Vec::new();
        b.encode(&mut out).unwrap();
        assert_eq!(LoadSealedBegin::decode(&out).unwrap(), b);
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
