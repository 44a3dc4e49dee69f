//! Checking a relinquish report before anything of it is released. The wire decoder already
//! bounds the range count and requires ascending, granule-aligned ranges; this checks what
//! only the host knows: every range lies in this guest's pool, and the report answers a
//! budget change that was actually sent. A report that fails is refused whole: nothing of
//! it is released, and it answers nothing.

use std::ops::Range;
use virtio_llm::spec::{MAX_RELINQUISH_RANGES, MEMORY_GRANULE};
use virtio_llm::wire::memory::RelinquishReport;

/// Why a relinquish report was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("it lists {count} ranges, at most {MAX_RELINQUISH_RANGES} are allowed")]
    TooManyRanges { count: usize },
    #[error("range {index} ({start:#x}+{len:#x}) is empty or not a multiple of 2 MiB")]
    Unaligned { index: usize, start: u64, len: u64 },
    #[error(
        "range {index} ({start:#x}+{len:#x}) is outside the private pool \
         ({:#x}..{:#x})", pool.start, pool.end
    )]
    OutsidePool {
        index: usize,
        start: u64,
        len: u64,
        pool: Range<u64>,
    },
    #[error("range {index} ({start:#x}) overlaps or precedes the range before it")]
    Unordered { index: usize, start: u64 },
    #[error("it answers budget change {sequence}, but only {sent} were sent")]
    UnknownSequence { sequence: u64, sent: u64 },
}

/// Checks `report` against the guest's pool (guest-physical addresses) and the latest
/// budget change sent. The work is one pass over at most `MAX_RELINQUISH_RANGES` ranges.
pub fn check_report(
    report: &RelinquishReport,
    pool: &Range<u64>,
    sent: u64,
) -> Result<(), ReportError> {
    let count = report.ranges.len();
    if count > MAX_RELINQUISH_RANGES {
        return Err(ReportError::TooManyRanges { count });
    }
    if report.sequence > sent {
        return Err(ReportError::UnknownSequence {
            sequence: report.sequence,
            sent,
        });
    }
    let mut floor = pool.start;
    for (index, r) in report.ranges.iter().enumerate() {
        let (start, len) = (r.guest_phys, r.len);
        if len == 0 || !start.is_multiple_of(MEMORY_GRANULE) || !len.is_multiple_of(MEMORY_GRANULE)
        {
            return Err(ReportError::Unaligned { index, start, len });
        }
        let end = start.checked_add(len);
        if start < pool.start || end.is_none_or(|e| e > pool.end) {
            return Err(ReportError::OutsidePool {
                index,
                start,
                len,
                pool: pool.clone(),
            });
        }
        if start < floor {
            return Err(ReportError::Unordered { index, start });
        }
        floor = start + len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_llm::wire::memory::MemRange;

    const G: u64 = MEMORY_GRANULE;
    const POOL: Range<u64> = (1 << 32)..(1 << 32) + 64 * G;

    fn report(sequence: u64, ranges: &[(u64, u64)]) -> RelinquishReport {
        RelinquishReport {
            sequence,
            ranges: ranges
                .iter()
                .map(|&(guest_phys, len)| MemRange { guest_phys, len })
                .collect(),
        }
    }

    fn check(sequence: u64, ranges: &[(u64, u64)]) -> Result<(), ReportError> {
        check_report(&report(sequence, ranges), &POOL, 3)
    }

    #[test]
    fn good_reports_pass() {
        let p = POOL.start;
        assert_eq!(check(0, &[]), Ok(()));
        assert_eq!(check(3, &[(p, G), (p + 2 * G, 62 * G)]), Ok(()));
        assert_eq!(check(1, &[(p, 64 * G)]), Ok(()), "the whole pool");
    }

    #[test]
    fn ranges_outside_the_pool_are_refused() {
        let p = POOL.start;
        for (start, len) in [
            (p - G, G),            // before it
            (p + 63 * G, 2 * G),   // past its end
            (0, G),                // the boot region
            (p, u64::MAX - G + 1), // overflows
            (u64::MAX - G + 1, G), // wraps to 0
        ] {
            assert!(
                matches!(
                    check(0, &[(start, len)]),
                    Err(ReportError::OutsidePool { index: 0, .. })
                ),
                "{start:#x}+{len:#x}"
            );
        }
    }

    #[test]
    fn unaligned_or_empty_ranges_are_refused() {
        let p = POOL.start;
        for (start, len) in [(p + 4096, G), (p, G + 4096), (p, 0)] {
            assert!(matches!(
                check(0, &[(p, G), (start + 2 * G, len)]),
                Err(ReportError::Unaligned { index: 1, .. })
            ));
        }
    }

    #[test]
    fn overlapping_or_unordered_ranges_are_refused() {
        let p = POOL.start;
        assert!(matches!(
            check(0, &[(p, 2 * G), (p + G, G)]),
            Err(ReportError::Unordered { index: 1, .. })
        ));
        assert!(matches!(
            check(0, &[(p + 4 * G, G), (p, G)]),
            Err(ReportError::Unordered { index: 1, .. })
        ));
        assert!(matches!(
            check(0, &[(p, G), (p, G)]),
            Err(ReportError::Unordered { index: 1, .. })
        ));
    }

    #[test]
    fn huge_counts_and_unknown_sequences_are_refused() {
        let p = POOL.start;
        let many: Vec<_> = (0..MAX_RELINQUISH_RANGES as u64 + 1)
            .map(|i| (p + i * G, G))
            .collect();
        assert!(matches!(
            check(0, &many),
            Err(ReportError::TooManyRanges { count }) if count == MAX_RELINQUISH_RANGES + 1
        ));
        assert_eq!(
            check(4, &[(p, G)]),
            Err(ReportError::UnknownSequence {
                sequence: 4,
                sent: 3
            })
        );
    }
}
