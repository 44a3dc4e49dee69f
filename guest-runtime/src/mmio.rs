//! The guest's MMIO pages (`guest_abi`) as user mode reads them: each access is one
//! naturally aligned load or store that the VMM (or KVM) emulates, made by
//! [`crate::arch`] so that it can be emulated on every architecture.

use crate::arch;
use guest_abi as abi;

/// The u64 field at `offset` of the control page (`abi::CONTROL_*`).
pub fn control(offset: u64) -> u64 {
    assert!(
        offset < 4096 && offset.is_multiple_of(8),
        "control field {offset:#x}"
    );
    // SAFETY: the control page is identity-mapped for user mode and `offset` is an aligned
    // u64 inside it (checked above).
    unsafe { arch::mmio_read_u64(abi::CONTROL + offset) }
}

/// Where the private region starts and how large it is (size 0: the VM has none), as the
/// host reports it: unchecked. The global allocator owns the region once anything is
/// allocated (it checks it first), so only test programs that allocate nothing write it
/// directly.
pub fn private_region() -> (u64, u64) {
    (
        control(abi::CONTROL_PRIVATE_BASE),
        control(abi::CONTROL_PRIVATE_SIZE),
    )
}
