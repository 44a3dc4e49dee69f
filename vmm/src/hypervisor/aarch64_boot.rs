//! What an arm64 vCPU starts with, as plain logic (built on every host so it is tested on
//! x86_64 too): `KVM_{GET,SET}_ONE_REG` register ids, the initial `PSTATE`, how PSCI system
//! events map to exits, and the boot info page the kernel reads (docs/arm64.md).

use super::VmExit;
use guest_kernel::abi::MAX_VCPUS;
use guest_kernel::abi::aarch64::{BOOT_INFO_MAGIC, boot_info};

const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
const KVM_REG_ARM_CORE: u64 = 0x0010 << 16;
const KVM_REG_ARM64_SYSREG: u64 = 0x0013 << 16;

/// The id of the 64-bit core register at byte `offset` of `struct kvm_regs`
/// (`regs[31]`, `sp`, `pc`, `pstate`, `sp_el1`, `elr_el1`, ...), counted in u32s.
pub const fn core_reg(offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offset / 4)
}

/// General register `xi`.
pub const fn x(i: u64) -> u64 {
    core_reg(8 * i)
}

/// `SP_EL0` (`kvm_regs.regs.sp`).
pub const SP_EL0: u64 = core_reg(8 * 31);
pub const PC: u64 = core_reg(8 * 32);
pub const PSTATE: u64 = core_reg(8 * 33);
pub const SP_EL1: u64 = core_reg(8 * 34);

/// The id of system register `op0, op1, CRn, CRm, op2`.
pub const fn sys_reg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

pub const MPIDR_EL1: u64 = sys_reg(3, 0, 0, 0, 5);
pub const ESR_EL1: u64 = sys_reg(3, 0, 5, 2, 0);
pub const FAR_EL1: u64 = sys_reg(3, 0, 6, 0, 0);

/// `PSTATE.{D,A,I,F}`: every exception source masked.
pub const PSTATE_DAIF: u64 = 0xf << 6;
/// `PSTATE.M`: EL1 with `SP_EL1` (EL1h), EL0 (EL0t).
pub const PSTATE_EL1H: u64 = 0b0101;
pub const PSTATE_EL0T: u64 = 0b0000;

/// The exception level a `PSTATE` value is in.
pub fn exception_level(pstate: u64) -> u8 {
    ((pstate >> 2) & 3) as u8
}

/// `KVM_ARM_VCPU_INIT` feature bits (`kvm_vcpu_init.features[0]`).
pub const FEATURE_PSCI_0_2: u32 = 1 << 2;
pub const FEATURE_PTRAUTH_ADDRESS: u32 = 1 << 5;
pub const FEATURE_PTRAUTH_GENERIC: u32 = 1 << 6;

/// `kvm_run.system_event.type` values (uapi `KVM_SYSTEM_EVENT_*`).
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;
const SYSTEM_EVENT_WAKEUP: u32 = 4;
const SYSTEM_EVENT_SUSPEND: u32 = 5;

/// What a `KVM_EXIT_SYSTEM_EVENT` of `type_` means to the VMM: PSCI `SYSTEM_OFF` and
/// `SYSTEM_RESET` end the VM cleanly; the rest are unexpected for our guests.
pub fn system_event_exit(type_: u32) -> VmExit<'static> {
    match type_ {
        SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff,
        SYSTEM_EVENT_RESET => VmExit::Reset,
        SYSTEM_EVENT_CRASH => VmExit::Other("the guest reported a crash (PSCI)"),
        SYSTEM_EVENT_WAKEUP => VmExit::Other("PSCI wake-up event"),
        SYSTEM_EVENT_SUSPEND => VmExit::Other("PSCI SYSTEM_SUSPEND (not supported)"),
        _ => VmExit::Other("unknown system event"),
    }
}

/// What the VMM tells the arm64 kernel in the boot info page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    pub user_entry: u64,
    /// One user stack top per vCPU.
    pub user_stacks: Vec<u64>,
    pub mem_size: u64,
    pub private_base: u64,
    pub private_size: u64,
}

impl BootInfo {
    /// The page's bytes (up to the last field written), or `None` with more vCPUs than the
    /// kernel has state for.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        if self.user_stacks.len() > MAX_VCPUS {
            return None;
        }
        let mut page = vec![0u8; (boot_info::USER_STACKS as usize) + 8 * MAX_VCPUS];
        let mut put = |at: u64, v: u64| {
            page[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        };
        put(boot_info::MAGIC, BOOT_INFO_MAGIC);
        put(boot_info::USER_ENTRY, self.user_entry);
        put(boot_info::VCPUS, self.user_stacks.len() as u64);
        put(boot_info::MEM_SIZE, self.mem_size);
        put(boot_info::PRIVATE_BASE, self.private_base);
        put(boot_info::PRIVATE_SIZE, self.private_size);
        for (i, &top) in self.user_stacks.iter().enumerate() {
            put(boot_info::USER_STACKS + 8 * i as u64, top);
        }
        Some(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ids_match_the_kernel_uapi() {
        // Values from arch/arm64/include/uapi/asm/kvm.h, as QEMU and crosvm use them.
        assert_eq!(x(0), 0x6030_0000_0010_0000);
        assert_eq!(x(2), 0x6030_0000_0010_0004);
        assert_eq!(SP_EL0, 0x6030_0000_0010_003e);
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(SP_EL1, 0x6030_0000_0010_0044);
        assert_eq!(MPIDR_EL1, 0x6030_0000_0013_c005);
        assert_eq!(ESR_EL1, 0x6030_0000_0013_c290);
        assert_eq!(FAR_EL1, 0x6030_0000_0013_c300);
    }

    #[test]
    fn pstate_and_levels() {
        assert_eq!(PSTATE_DAIF | PSTATE_EL1H, 0x3c5);
        assert_eq!(exception_level(0x3c5), 1);
        assert_eq!(exception_level(PSTATE_DAIF | PSTATE_EL0T), 0);
        assert_eq!(exception_level(0x6000_0000), 0);
    }

    #[test]
    fn system_events() {
        assert_eq!(system_event_exit(1), VmExit::PowerOff);
        assert_eq!(system_event_exit(2), VmExit::Reset);
        assert!(matches!(system_event_exit(3), VmExit::Other(m) if m.contains("crash")));
        assert!(matches!(system_event_exit(99), VmExit::Other(_)));
    }

    #[test]
    fn boot_info_layout() {
        let info = BootInfo {
            user_entry: 0x20_1234,
            user_stacks: vec![0x100_0000, 0xf0_0000],
            mem_size: 64 << 20,
            private_base: 1 << 32,
            private_size: 2 << 20,
        };
        let page = info.to_bytes().unwrap();
        let get =
            |at: u64| u64::from_le_bytes(page[at as usize..at as usize + 8].try_into().unwrap());
        assert_eq!(&page[..8], b"FLEXBOOT");
        assert_eq!(get(boot_info::USER_ENTRY), 0x20_1234);
        assert_eq!(get(boot_info::VCPUS), 2);
        assert_eq!(get(boot_info::MEM_SIZE), 64 << 20);
        assert_eq!(get(boot_info::PRIVATE_BASE), 1 << 32);
        assert_eq!(get(boot_info::PRIVATE_SIZE), 2 << 20);
        assert_eq!(get(boot_info::USER_STACKS + 8), 0xf0_0000);
        assert!(page.len() <= 4096);
        let too_many = BootInfo {
            user_stacks: vec![0; MAX_VCPUS + 1],
            ..info
        };
        assert_eq!(too_many.to_bytes(), None);
    }
}
