//! Memory queue messages (live with `feature::MEMORY`).
//!
//! Budget changes go device to driver (queue 4); relinquish reports go driver to device
//! (queue 5), answering every budget change (a report shorter than `MAX_RELINQUISH_RANGES`
//! ends the answer), or unsolicited (sequence 0).

use alloc::vec::Vec;

use crate::error::WireError;
use crate::spec::{
    MAX_RELINQUISH_RANGES, MEMORY_GRANULE, MIN_MEMORY_BUDGET, layout::PRIVATE_POOL_BASE,
};
use crate::wire::codec::{Reader, Writer, check_len, decode_frame, len_u32};
use crate::wire::{Message, decode_checked, ensure};

/// Message types of the memory queues.
pub mod msg_type {
    /// [`super::BudgetChange`].
    pub const BUDGET_CHANGE: u16 = 0x0501;
    /// [`super::RelinquishReport`].
    pub const RELINQUISH_REPORT: u16 = 0x0502;
}

/// The host sets a new private memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetChange {
    /// Increases with every change (from 1), so reports can name the change they answer.
    pub sequence: u64,
    /// The new budget in bytes, a multiple of `MEMORY_GRANULE`, at least
    /// `MIN_MEMORY_BUDGET`.
    pub new_budget_bytes: u64,
}

impl Message<'_> for BudgetChange {
    const TYPE: u16 = msg_type::BUDGET_CHANGE;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u64(self.sequence);
        w.u64(self.new_budget_bytes);
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            sequence: r.u64()?,
            new_budget_bytes: r.u64()?,
        })
    }
    fn validate(&self) -> Result<(), WireError> {
        ensure(self.sequence != 0, "sequence", 0)?;
        let b = self.new_budget_bytes;
        let ok = b.is_multiple_of(MEMORY_GRANULE) && b >= MIN_MEMORY_BUDGET;
        ensure(ok, "new_budget_bytes", b)
    }
}

/// A range of private guest-physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRange {
    /// Start, in the private pool, a multiple of `MEMORY_GRANULE`.
    pub guest_phys: u64,
    /// Length, a non-zero multiple of `MEMORY_GRANULE`.
    pub len: u64,
}

/// The guest gives back ranges of private memory (no longer used, contents discarded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelinquishReport {
    /// The `BudgetChange` this answers, or 0 if unsolicited.
    pub sequence: u64,
    /// Up to `MAX_RELINQUISH_RANGES` ranges, ascending and not overlapping, so the device
    /// can check them in one pass.
    pub ranges: Vec<MemRange>,
}

impl Message<'_> for RelinquishReport {
    const TYPE: u16 = msg_type::RELINQUISH_REPORT;
    fn encode_body(&self, w: &mut Writer<'_>) {
        w.u64(self.sequence);
        w.u32(len_u32(self.ranges.len()));
        w.zeros(4);
        for r in &self.ranges {
            w.u64(r.guest_phys);
            w.u64(r.len);
        }
    }
    fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let sequence = r.u64()?;
        let count = r.u32()? as usize;
        r.reserved(4, "relinquish.reserved")?;
        check_len("relinquish ranges", count, MAX_RELINQUISH_RANGES)?;
        // The count is bounded above, so 16 * count cannot overflow; check it is all there
        // before allocating.
        let needed = count * 16;
        if needed > r.remaining() {
            return Err(WireError::Truncated {
                needed,
                available: r.remaining(),
            });
        }
        let mut ranges = Vec::with_capacity(count);
        for _ in 0..count {
            ranges.push(MemRange {
                guest_phys: r.u64()?,
                len: r.u64()?,
            });
        }
        Ok(Self { sequence, ranges })
    }
    fn validate(&self) -> Result<(), WireError> {
        check_len(
            "relinquish ranges",
            self.ranges.len(),
            MAX_RELINQUISH_RANGES,
        )?;
        let mut floor = PRIVATE_POOL_BASE;
        for r in &self.ranges {
            let start_ok = r.guest_phys >= floor && r.guest_phys.is_multiple_of(MEMORY_GRANULE);
            ensure(start_ok, "range.guest_phys", r.guest_phys)?;
            let len_ok = r.len != 0 && r.len.is_multiple_of(MEMORY_GRANULE);
            ensure(len_ok, "range.len", r.len)?;
            floor = r
                .guest_phys
                .checked_add(r.len)
                .ok_or(WireError::FieldOutOfRange {
                    field: "range.len",
                    value: r.len,
                })?;
        }
        Ok(())
    }
}

/// Any message of the memory queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryMsg {
    /// See [`BudgetChange`].
    BudgetChange(BudgetChange),
    /// See [`RelinquishReport`].
    Relinquish(RelinquishReport),
}

impl MemoryMsg {
    /// Decodes whichever memory message `buf` holds.
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let (t, r) = decode_frame(buf)?;
        Ok(match t {
            msg_type::BUDGET_CHANGE => Self::BudgetChange(decode_checked(r)?),
            msg_type::RELINQUISH_REPORT => Self::Relinquish(decode_checked(r)?),
            other => return Err(WireError::UnknownType(other)),
        })
    }

    /// Appends the frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            Self::BudgetChange(m) => m.encode(out),
            Self::Relinquish(m) => m.encode(out),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use alloc::vec;

    use super::*;
    use crate::wire::testutil::{assert_every_truncation_fails, with_trailing_byte};

    const G: u64 = MEMORY_GRANULE;

    pub(crate) fn samples() -> Vec<MemoryMsg> {
        vec![
            MemoryMsg::BudgetChange(BudgetChange {
                sequence: 3,
                new_budget_bytes: 512 * G,
            }),
            MemoryMsg::Relinquish(RelinquishReport {
                sequence: 3,
                ranges: vec![
                    MemRange {
                        guest_phys: PRIVATE_POOL_BASE,
                        len: 4 * G,
                    },
                    MemRange {
                        guest_phys: PRIVATE_POOL_BASE + 8 * G,
                        len: G,
                    },
                ],
            }),
        ]
    }

    fn frame(i: usize) -> Vec<u8> {
        let mut out = Vec::new();
        samples()[i].encode(&mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_truncation_and_trailing() {
        for (i, msg) in samples().into_iter().enumerate() {
            let buf = frame(i);
            assert_eq!(MemoryMsg::decode(&buf), Ok(msg));
            assert_every_truncation_fails(&buf, |b| MemoryMsg::decode(b).is_err());
            assert_eq!(
                MemoryMsg::decode(&with_trailing_byte(&buf)),
                Err(WireError::TrailingBytes { count: 1 })
            );
        }
    }

    #[test]
    fn range_count_is_checked_before_allocating() {
        let mut buf = frame(1);
        buf[16..20].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            MemoryMsg::decode(&buf),
            Err(WireError::Truncated {
                needed: 48,
                available: 32
            })
        );
        buf[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            MemoryMsg::decode(&buf),
            Err(WireError::TooLong { .. })
        ));
    }

    #[test]
    fn bad_values_are_rejected() {
        let mut buf = frame(0);
        buf[16..24].copy_from_slice(&(G + 1).to_le_bytes());
        assert_eq!(
            MemoryMsg::decode(&buf),
            Err(WireError::FieldOutOfRange {
                field: "new_budget_bytes",
                value: G + 1
            })
        );
        let report = |ranges: Vec<MemRange>| RelinquishReport {
            sequence: 0,
            ranges,
        };
        let at = |guest_phys, len| MemRange { guest_phys, len };
        let p = PRIVATE_POOL_BASE;
        let bad = [
            (vec![at(p - G, G)], "range.guest_phys"),
            (vec![at(p + 1, G)], "range.guest_phys"),
            (vec![at(p, 0)], "range.len"),
            (vec![at(p, 2 * G), at(p + G, G)], "range.guest_phys"),
            (vec![at(u64::MAX - G + 1, 2 * G)], "range.len"),
            (vec![at(p, u64::MAX - G + 1)], "range.len"),
        ];
        for (ranges, field) in bad {
            let err = report(ranges).encode(&mut Vec::new()).unwrap_err();
            assert!(
                matches!(err, WireError::FieldOutOfRange { field: f, .. } if f == field),
                "{err:?}"
            );
        }
    }
}
