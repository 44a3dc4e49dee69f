//! KV eviction to the host (`feature::KV_EVICT`): a kept KV cache sealed in the guest and
//! handed to the host block by block, and brought back the same way when a later prompt
//! shares its prefix. The host stores ciphertext it cannot read or alter unnoticed: the
//! guest authenticates every block against what it expects (cache, layer, block, epoch).
//!
//! ```text
//! KvEvict:   u32 handle (0: start on the least recently used kept cache) | u32 block
//! KvWant:    u64 request_id | u32 flags (bit 0 force restore, bit 1 force recompute) |
//!            u32 reserved
//! KvRestore: u32 handle | u32 block | u32 data_len (0: the device lacks the block) |
//!            u32 reserved | data
//! KvBlock:   u16 status | u16 reserved | u32 handle | u32 block | u32 n_blocks |
//!            u64 epoch | u32 data_len | u32 reserved | data
//! KvWanted:  u64 request_id | u32 handle | u8 choice | u8[3] reserved | u32 n_blocks |
//!            u32 tokens | u32 restore_us | u32 recompute_us
//! ```

use alloc::vec::Vec;

use crate::error::WireError;
use crate::spec::MAX_KV_BLOCK_BYTES;
use crate::wire::codec::{Reader, Writer, len_u32};
use crate::wire::status::Status;
use crate::wire::{Message, ensure};

/// Message types on the control queues.
pub mod msg_type {
    /// [`super::KvEvict`] (control command).
    pub const KV_EVICT: u16 = 0x010D;
    /// [`super::KvWant`] (control command).
    pub const KV_WANT: u16 = 0x010E;
    /// [`super::KvRestore`] (control command).
    pub const KV_RESTORE: u16 = 0x010F;
    /// [`super::KvBlock`] (control reply).
    pub const KV_BLOCK: u16 = 0x0206;
    /// [`super::KvWanted`] (control reply).
    pub const KV_WANTED: u16 = 0x0207;
}

/// `KvWant` flags: what the device asks for regardless of the driver's estimate (tests and
/// benchmarks). Undefined bits are reserved.
pub mod want_flag {
    /// Restore an evicted cache that matches, whatever it costs.
    pub const FORCE_RESTORE: u32 = 1 << 0;
    /// Recompute rather than restore.
    pub const FORCE_RECOMPUTE: u32 = 1 << 1;
    /// Every defined flag.
    pub const DEFINED: u32 = FORCE_RESTORE | FORCE_RECOMPUTE;
}

/// Asks for block `block` of evicted cache `handle`; `handle` 0 with `block` 0 seals the
/// least recently used kept cache and starts handing it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvEvict {
    pub handle: u32,
    pub block: u32,
}

impl Message<'_> for KvEvict {
    const TYPE: u16 = msg_type::KV_EVICT;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.handle);
        w.u32(self.block);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            handle: r.u32()?,
            block: r.u32()?,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        ensure(
            self.handle != 0 || self.block == 0,
            "kv_evict.block",
            self.block.into(),
        )
    }
}

/// Asks whether request `request_id` (sent before it) would go on from an evicted cache,
/// and whether the driver restores it or recomputes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvWant {
    pub request_id: u64,
    /// [`want_flag`]s.
    pub flags: u32,
}

impl Message<'_> for KvWant {
    const TYPE: u16 = msg_type::KV_WANT;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u64(self.request_id);
        w.u32(self.flags);
        w.zeros(4);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let request_id = r.u64()?;
        let flags = r.u32()?;
        r.reserved(4, "kv_want.reserved")?;
        Ok(Self { request_id, flags })
    }
    fn validate(&self) -> Result<(), WireError> {
        let f = self.flags;
        let both = want_flag::FORCE_RESTORE | want_flag::FORCE_RECOMPUTE;
        ensure(
            f & !want_flag::DEFINED == 0 && f & both != both,
            "kv_want.flags",
            f.into(),
        )
    }
}

/// Block `block` of evicted cache `handle`, as the driver handed it over; empty when the
/// device does not have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRestore<'a> {
    pub handle: u32,
    pub block: u32,
    /// Ciphertext then tag, at most `MAX_KV_BLOCK_BYTES`; empty: missing.
    pub data: &'a [u8],
}

impl<'a> Message<'a> for KvRestore<'a> {
    const TYPE: u16 = msg_type::KV_RESTORE;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u32(self.handle);
        w.u32(self.block);
        w.u32(len_u32(self.data.len()));
        w.zeros(4);
        w.bytes(self.data);
    }
    fn decode_body(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let handle = r.u32()?;
        let block = r.u32()?;
        let len = r.u32()?;
        r.reserved(4, "kv_restore.reserved")?;
        ensure(
            len as usize <= MAX_KV_BLOCK_BYTES,
            "kv_restore.data_len",
            len.into(),
        )?;
        Ok(Self {
            handle,
            block,
            data: r.bytes(len as usize)?,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        let len = self.data.len();
        ensure(len <= MAX_KV_BLOCK_BYTES, "kv_restore.data_len", len as u64)?;
        ensure(self.handle != 0, "kv_restore.handle", 0)
    }
}

/// The answer to [`KvEvict`]: one sealed block and how many the cache has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvBlock {
    /// `Ok`; `NoSuchSession` when there is no kept cache (or no such handle); `Unsupported`
    /// without a key root; `BadRequest` for a block out of order.
    pub status: Status,
    pub handle: u32,
    pub block: u32,
    pub n_blocks: u32,
    /// The eviction's epoch (informational: the driver checks its own).
    pub epoch: u64,
    /// Ciphertext then tag, 1..=`MAX_KV_BLOCK_BYTES` with `Ok`, else empty.
    pub data: Vec<u8>,
}

impl Message<'_> for KvBlock {
    const TYPE: u16 = msg_type::KV_BLOCK;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u16(self.status.to_u16());
        w.zeros(2);
        w.u32(self.handle);
        w.u32(self.block);
        w.u32(self.n_blocks);
        w.u64(self.epoch);
        w.u32(len_u32(self.data.len()));
        w.zeros(4);
        w.bytes(&self.data);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let status = Status::try_from(r.u16()?)?;
        r.reserved(2, "kv_block.reserved")?;
        let handle = r.u32()?;
        let block = r.u32()?;
        let n_blocks = r.u32()?;
        let epoch = r.u64()?;
        let len = r.u32()?;
        r.reserved(4, "kv_block.reserved2")?;
        ensure(
            len as usize <= MAX_KV_BLOCK_BYTES,
            "kv_block.data_len",
            len.into(),
        )?;
        Ok(Self {
            status,
            handle,
            block,
            n_blocks,
            epoch,
            data: r.bytes(len as usize)?.to_vec(),
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        let len = self.data.len();
        ensure(len <= MAX_KV_BLOCK_BYTES, "kv_block.data_len", len as u64)?;
        if self.status == Status::Ok {
            ensure(len > 0, "kv_block.data_len", 0)?;
            ensure(
                self.block < self.n_blocks,
                "kv_block.block",
                self.block.into(),
            )
        } else {
            ensure(len == 0, "kv_block.data_len", len as u64)
        }
    }
}

/// What the driver does for a request's prompt with the evicted caches it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvChoice {
    /// No evicted cache matches: nothing to send.
    None = 0,
    /// The device sends the cache's `n_blocks` blocks with `KvRestore`, in order.
    Restore = 1,
    /// The driver evaluates the prompt instead; the device may delete the cache's blocks.
    Recompute = 2,
}

impl KvChoice {
    fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            0 => Self::None,
            1 => Self::Restore,
            2 => Self::Recompute,
            _ => {
                return Err(WireError::FieldOutOfRange {
                    field: "kv_wanted.choice",
                    value: v.into(),
                });
            }
        })
    }
}

/// The answer to [`KvWant`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvWanted {
    pub request_id: u64,
    /// The evicted cache that matches (0 with [`KvChoice::None`]).
    pub handle: u32,
    pub choice: KvChoice,
    /// Its blocks (0 with [`KvChoice::None`]).
    pub n_blocks: u32,
    /// Prompt tokens it holds.
    pub tokens: u32,
    /// The driver's estimates of either way, microseconds (0 when nothing matched).
    pub restore_us: u32,
    pub recompute_us: u32,
}

impl Message<'_> for KvWanted {
    const TYPE: u16 = msg_type::KV_WANTED;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u64(self.request_id);
        w.u32(self.handle);
        w.u8(self.choice as u8);
        w.zeros(3);
        w.u32(self.n_blocks);
        w.u32(self.tokens);
        w.u32(self.restore_us);
        w.u32(self.recompute_us);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let request_id = r.u64()?;
        let handle = r.u32()?;
        let choice = KvChoice::from_u8(r.u8()?)?;
        r.reserved(3, "kv_wanted.reserved")?;
        Ok(Self {
            request_id,
            handle,
            choice,
            n_blocks: r.u32()?,
            tokens: r.u32()?,
            restore_us: r.u32()?,
            recompute_us: r.u32()?,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        let none = self.choice == KvChoice::None;
        ensure(
            none == (self.handle == 0),
            "kv_wanted.handle",
            self.handle.into(),
        )?;
        let restore = self.choice == KvChoice::Restore;
        ensure(
            !restore || self.n_blocks > 0,
            "kv_wanted.n_blocks",
            self.n_blocks.into(),
        )
    }
}

#[cfg(test)]
#[path = "kv_evict_tests.rs"]
mod tests;
