//! The arm64 kernel's stage-1 translation tables (docs/arm64.md), as plain functions of the
//! entry index so the host can test them: a 4 KiB granule, 39-bit VAs (`T0SZ = 25`, walks
//! start at level 1), identity-mapped:
//!
//! | range | mapping |
//! | --- | --- |
//! | `[0, 2 MiB)` | Normal WB, EL1 only (boot info, tables, kernel, kernel stacks) |
//! | `[2 MiB, 3 GiB)` | Normal WB, EL0 RW + exec (user program, stacks, heap, shared window) |
//! | `[3 GiB, 4 GiB)` | Device-nGnRE, EL0 RW, never executable (the MMIO pages) |
//! | `[4 GiB, private end)` | Normal WB, EL0 RW, never executable (the private pool) |
//!
//! Two tables: the level-1 table at `PAGE_TABLES` (1 GiB blocks) and the level-2 table of
//! the first GiB right after it (2 MiB blocks).

use crate::abi::aarch64::{MAX_MAPPED_GIB, PAGE_TABLES};

/// Guest-physical address of the level-1 table (`TTBR0_EL1`).
pub const L1_TABLE: u64 = PAGE_TABLES;
/// Guest-physical address of the first GiB's level-2 table.
pub const L2_TABLE: u64 = PAGE_TABLES + 0x1000;
/// Entries per table.
pub const ENTRIES: usize = 512;

/// `MAIR_EL1`: attribute 0 Normal write-back (inner and outer), attribute 1 Device-nGnRE.
pub const MAIR: u64 = 0xff | (0x04 << 8);
/// `TCR_EL1`: `T0SZ = 25`, table walks write-back cacheable and inner shareable, 4 KiB
/// granule, no TTBR1 walks (`EPD1`); the IPS field is added from `ID_AA64MMFR0_EL1`.
pub const TCR: u64 = 25 | (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (1 << 23);
/// Bit position of `TCR_EL1.IPS`.
pub const TCR_IPS_SHIFT: u64 = 32;

const VALID_BLOCK: u64 = 0b01;
const VALID_TABLE: u64 = 0b11;
const ATTR_NORMAL: u64 = 0 << 2;
const ATTR_DEVICE: u64 = 1 << 2;
/// `AP[2:1] = 01`: read-write at EL1 and EL0 (`00`: EL1 only).
const AP_EL0_RW: u64 = 0b01 << 6;
const SH_INNER: u64 = 0b11 << 8;
/// Access flag: set, so no access-flag faults.
const AF: u64 = 1 << 10;
/// Privileged and unprivileged execute-never.
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;

/// Level-1 entry `i`: the first GiB through the level-2 table, then 1 GiB blocks up to
/// `mapped_end` (the private pool's end, at least 4 GiB, at most `MAX_MAPPED_GIB` GiB).
pub fn l1_entry(i: usize, mapped_end: u64) -> u64 {
    let end_gib = mapped_end.div_ceil(GIB).clamp(4, MAX_MAPPED_GIB);
    let base = i as u64 * GIB;
    match i {
        0 => L2_TABLE | VALID_TABLE,
        1 | 2 => base | VALID_BLOCK | ATTR_NORMAL | SH_INNER | AF | AP_EL0_RW | PXN,
        3 => base | VALID_BLOCK | ATTR_DEVICE | AF | AP_EL0_RW | PXN | UXN,
        _ if (i as u64) < end_gib => {
            base | VALID_BLOCK | ATTR_NORMAL | SH_INNER | AF | AP_EL0_RW | PXN | UXN
        }
        _ => 0,
    }
}

/// Level-2 entry `i` of the first GiB: the kernel's 2 MiB for EL1 alone, the rest for EL0.
pub fn l2_entry(i: usize) -> u64 {
    let base = i as u64 * MIB2;
    let normal = base | VALID_BLOCK | ATTR_NORMAL | SH_INNER | AF;
    if i == 0 {
        normal | UXN
    } else {
        normal | AP_EL0_RW | PXN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables for `va` like the MMU: the descriptor that maps it.
    fn walk(va: u64, mapped_end: u64) -> Option<u64> {
        let l1 = l1_entry(((va >> 30) & 511) as usize, mapped_end);
        match l1 & 0b11 {
            0b01 => Some(l1),
            0b11 => {
                assert_eq!(l1 & 0x0000_ffff_ffff_f000, L2_TABLE);
                let l2 = l2_entry(((va >> 21) & 511) as usize);
                (l2 & 1 == 1).then_some(l2)
            }
            _ => None,
        }
    }

    fn output(desc: u64, va: u64, block: u64) -> u64 {
        (desc & 0x0000_ffff_ffff_f000 & !(block - 1)) | (va & (block - 1))
    }

    #[test]
    fn identity_map_with_the_documented_permissions() {
        let end = 6 * GIB;
        // Kernel: EL1 only, executable at EL1.
        let k = walk(0x10_0000, end).unwrap();
        assert_eq!(output(k, 0x10_0000, MIB2), 0x10_0000);
        assert_eq!(k & AP_EL0_RW, 0, "the kernel is not EL0-accessible");
        assert_eq!(k & PXN, 0, "the kernel is executable at EL1");
        // User program at 2 MiB and the shared window at 1 GiB: EL0 RW + exec.
        for va in [0x20_0000, 0x4000_0000 + 0x1234, 0xbfff_f000] {
            let d = walk(va, end).unwrap();
            assert_eq!(output(d, va, if va < GIB { MIB2 } else { GIB }), va);
            assert_eq!(d & (AP_EL0_RW | UXN), AP_EL0_RW, "{va:#x}");
            assert_eq!((d >> 2) & 7, 0, "normal memory");
        }
        // MMIO: device memory, EL0 RW, never executable.
        let m = walk(0xd000_4000, end).unwrap();
        assert_eq!(output(m, 0xd000_4000, GIB), 0xd000_4000);
        assert_eq!((m >> 2) & 7, 1, "device attribute");
        assert_eq!(m & (AP_EL0_RW | UXN | PXN), AP_EL0_RW | UXN | PXN);
        // Private pool up to the end, nothing beyond.
        let p = walk(end - 4096, end).unwrap();
        assert_eq!(output(p, end - 4096, GIB), end - 4096);
        assert_eq!(p & (AP_EL0_RW | UXN), AP_EL0_RW | UXN);
        assert_eq!(walk(end, end), None);
        // Every valid descriptor has the access flag.
        for i in 0..ENTRIES {
            let e = l1_entry(i, end);
            assert!(e == 0 || e & 0b11 == 0b11 || e & AF != 0);
            assert_ne!(l2_entry(i) & AF, 0);
        }
    }

    #[test]
    fn the_mapped_range_is_clamped() {
        assert_ne!(l1_entry(3, 0), 0, "the MMIO GiB is always mapped");
        assert_eq!(l1_entry(4, 0), 0);
        assert_ne!(l1_entry(63, u64::MAX), 0);
        assert_eq!(l1_entry(64, u64::MAX), 0);
    }
}
