//! Memory probes: test-only control commands that let the host check, from outside, what the
//! private pool does with a guest's data. Only meaningful with `feature::DIAGNOSTICS`, which
//! a production VMM never offers; a driver that did not negotiate it answers `Unsupported`.
//!
//! Nothing private crosses the wire: a probe names a canary only by its hash.

use crate::error::WireError;
use crate::wire::codec::{Reader, Writer};
use crate::wire::status::Status;
use crate::wire::{Message, ensure};

/// Message types of the probe pair.
pub mod msg_type {
    /// [`super::MemoryProbe`], on the control command queue.
    pub const MEMORY_PROBE: u16 = 0x0108;
    /// [`super::ProbeReply`], on the control reply queue.
    pub const PROBE_REPLY: u16 = 0x0203;
}

/// Bytes of a canary.
pub const CANARY_BYTES: usize = 64;

/// What a probe asks the driver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ProbeOp {
    /// Allocate one granule of the private pool, fill it with a fresh random canary and keep
    /// it. The reply gives the block and the canary's hash.
    PlaceCanary = 1,
    /// Write the same canary into the shared window too (the reply gives where), so a host
    /// scan can show it finds what the host is allowed to read.
    ExposeCanary = 2,
    /// Free the canary block (its contents stay until reclaimed or reused).
    DropCanary = 3,
    /// Read the last canary block's pages again and count the bytes that are not zero.
    CheckCanaryBlock = 4,
}

impl ProbeOp {
    fn from_u32(v: u32) -> Option<Self> {
        [
            Self::PlaceCanary,
            Self::ExposeCanary,
            Self::DropCanary,
            Self::CheckCanaryBlock,
        ]
        .into_iter()
        .find(|op| *op as u32 == v)
    }
}

/// A probe command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryProbe {
    pub op: ProbeOp,
}

impl Message<'_> for MemoryProbe {
    const TYPE: u16 = msg_type::MEMORY_PROBE;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.op as u32);
        w.zeros(4);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let raw = r.u32()?;
        r.reserved(4, "memory_probe.reserved")?;
        let op = ProbeOp::from_u32(raw).ok_or(WireError::FieldOutOfRange {
            field: "memory_probe.op",
            value: u64::from(raw),
        })?;
        Ok(Self { op })
    }
}

/// The driver's answer to a [`MemoryProbe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeReply {
    pub op: ProbeOp,
    pub status: Status,
    /// Guest-physical start of the canary block (0 if none).
    pub block_addr: u64,
    /// Bytes of the block.
    pub block_len: u64,
    /// FNV-1a of the private canary (`PlaceCanary`).
    pub private_hash: u64,
    /// Bytes of the block that are not zero (`CheckCanaryBlock`).
    pub nonzero_bytes: u64,
    /// Guest-physical address of the exposed copy in the shared window (`ExposeCanary`).
    pub exposed_addr: u64,
}

impl Message<'_> for ProbeReply {
    const TYPE: u16 = msg_type::PROBE_REPLY;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.op as u32);
        w.u16(self.status.to_u16());
        w.zeros(2);
        w.u64(self.block_addr);
        w.u64(self.block_len);
        w.u64(self.private_hash);
        w.u64(self.nonzero_bytes);
        w.u64(self.exposed_addr);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let raw_op = r.u32()?;
        let op = ProbeOp::from_u32(raw_op).ok_or(WireError::FieldOutOfRange {
            field: "probe_reply.op",
            value: u64::from(raw_op),
        })?;
        let status = Status::try_from(r.u16()?)?;
        r.reserved(2, "probe_reply.reserved")?;
        Ok(Self {
            op,
            status,
            block_addr: r.u64()?,
            block_len: r.u64()?,
            private_hash: r.u64()?,
            nonzero_bytes: r.u64()?,
            exposed_addr: r.u64()?,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        ensure(
            self.nonzero_bytes <= self.block_len,
            "probe_reply.nonzero_bytes",
            self.nonzero_bytes,
        )
    }
}

/// 64-bit FNV-1a, the hash probes name canaries by.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn probes_round_trip_and_unknown_ops_are_refused() {
        for op in [
            ProbeOp::PlaceCanary,
            ProbeOp::ExposeCanary,
            ProbeOp::DropCanary,
            ProbeOp::CheckCanaryBlock,
        ] {
            let mut buf = Vec::new();
            MemoryProbe { op }.encode(&mut buf).unwrap();
            assert_eq!(MemoryProbe::decode(&buf).unwrap(), MemoryProbe { op });
            let reply = ProbeReply {
                op,
                status: Status::Ok,
                block_addr: 4 << 30,
                block_len: 2 << 20,
                private_hash: 7,
                nonzero_bytes: 3,
                exposed_addr: 0x4100_0000,
            };
            buf.clear();
            reply.encode(&mut buf).unwrap();
            assert_eq!(ProbeReply::decode(&buf).unwrap(), reply);
        }
        let mut buf = Vec::new();
        MemoryProbe {
            op: ProbeOp::DropCanary,
        }
        .encode(&mut buf)
        .unwrap();
        buf[8] = 99;
        assert!(MemoryProbe::decode(&buf).is_err());
    }
}
