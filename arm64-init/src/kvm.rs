//! What the emulated host's KVM offers, through raw ioctls (kvm-ioctls), and the VM-creation
//! checks.

use crate::error::Error;
use kvm_ioctls::Kvm;

/// `KVM_VM_TYPE_ARM_PROTECTED`: a pKVM protected VM (upstream, with `kvm-arm.mode=protected`).
pub const VM_TYPE_ARM_PROTECTED: u64 = 1 << 31;
/// Capability numbers of the Linux UAPI (`include/uapi/linux/kvm.h`).
const CAP_ARM_VM_IPA_SIZE: u64 = 165;
const CAP_GUEST_MEMFD: u64 = 234;
const CAP_VM_TYPES: u64 = 235;
const CAP_GUEST_MEMFD_FLAGS: u64 = 244;

/// Which VM type to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmKind {
    Normal,
    Protected,
}

impl VmKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "normal" => Some(VmKind::Normal),
            "protected" => Some(VmKind::Protected),
            _ => None,
        }
    }

    fn vm_type(self) -> u64 {
        match self {
            VmKind::Normal => 0,
            VmKind::Protected => VM_TYPE_ARM_PROTECTED,
        }
    }
}

/// Prints one `ARM64 FACT` line per fact; a missing /dev/kvm is a fact, not an error.
pub fn report_facts() {
    fact("kernel", &kernel_release());
    fact("cmdline", &read_trimmed("/proc/cmdline"));
    let present = std::path::Path::new("/dev/kvm").exists();
    fact("/dev/kvm", if present { "present" } else { "absent" });
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => return fact("kvm", &format!("cannot open /dev/kvm: {e}")),
    };
    fact("KVM_GET_API_VERSION", &kvm.get_api_version().to_string());
    fact("KVM_CAP_ARM_VM_IPA_SIZE", &cap(&kvm, CAP_ARM_VM_IPA_SIZE));
    fact("KVM_CAP_VM_TYPES", &cap(&kvm, CAP_VM_TYPES));
    fact("KVM_CAP_GUEST_MEMFD", &cap(&kvm, CAP_GUEST_MEMFD));
    for kind in [VmKind::Normal, VmKind::Protected] {
        let name = format!("KVM_CREATE_VM {kind:?}");
        match kvm.create_vm_with_type(kind.vm_type()) {
            Ok(vm) => {
                let memfd = vm.check_extension_raw(CAP_GUEST_MEMFD as _);
                let flags = vm.check_extension_raw(CAP_GUEST_MEMFD_FLAGS as _);
                fact(
                    &name,
                    &format!("ok (GUEST_MEMFD {memfd}, GUEST_MEMFD_FLAGS {flags:#x})"),
                );
            }
            Err(e) => fact(&name, &format!("refused: {e}")),
        }
    }
}

/// Creates one VM of `kind`: Ok when KVM accepts it.
pub fn create_vm(kind: VmKind) -> Result<(), Error> {
    let kvm = Kvm::new().map_err(|source| Error::Kvm {
        what: "open /dev/kvm",
        source,
    })?;
    kvm.create_vm_with_type(kind.vm_type())
        .map(drop)
        .map_err(|source| Error::Kvm {
            what: "KVM_CREATE_VM",
            source,
        })
}

fn cap(kvm: &Kvm, c: u64) -> String {
    kvm.check_extension_raw(c as _).to_string()
}

fn fact(name: &str, value: &str) {
    println!("ARM64 FACT {name}: {value}");
}

fn kernel_release() -> String {
    read_trimmed("/proc/sys/kernel/osrelease")
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unreadable: {e}"))
}
