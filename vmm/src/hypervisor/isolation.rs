//! Isolation: what kind of VM to ask for, the level a VM got, and the policy that refuses to
//! run below a minimum. Three levels, named the same in every report (CLI, daemon, metrics,
//! benchmarks):
//!
//! | level | who can read the private pool |
//! | --- | --- |
//! | `protected-vm` | the guest only: the hypervisor (pKVM at EL2) keeps the host kernel out |
//! | `private-memory` | the guest and the host kernel: guest_memfd keeps host user space out |
//! | `none` | everyone on the host: ordinary memory |

use super::PrivateBacking;

/// How strongly the guest's memory is kept from the host, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IsolationLevel {
    /// The pool is ordinary host memory: the host reads everything.
    None,
    /// The pool is guest_memfd with private pages: host user space (the VMM included) cannot
    /// read it; the host kernel can, and the VMM still writes the guest's boot region.
    PrivateMemory,
    /// An arm64 pKVM protected VM: the hypervisor keeps the host kernel and the VMM out.
    ProtectedVm,
}

impl IsolationLevel {
    pub const ALL: [Self; 3] = [Self::None, Self::PrivateMemory, Self::ProtectedVm];

    /// The level's name in flags, config files, logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::PrivateMemory => "private-memory",
            Self::ProtectedVm => "protected-vm",
        }
    }

    /// Who can read the guest's private pool at this level.
    pub const fn who_can_read(self) -> &'static str {
        match self {
            Self::None => "the host kernel, the VMM and anyone who can read its memory",
            Self::PrivateMemory => {
                "the host kernel (host user space, the VMM included, cannot read private pages)"
            }
            Self::ProtectedVm => "the guest alone (the hypervisor keeps the host kernel out)",
        }
    }

    /// What gives a host this level, for errors that refuse to run below it.
    pub const fn provided_by(self) -> &'static str {
        match self {
            Self::None => "any KVM host",
            Self::PrivateMemory => {
                "a host kernel with guest_memfd that user space can map (Linux 6.18 or later: \
                 KVM_CAP_GUEST_MEMFD with GUEST_MEMFD_FLAG_MMAP)"
            }
            Self::ProtectedVm => {
                "an arm64 host booted with kvm-arm.mode=protected on a kernel with pKVM \
                 protected VMs (6.19 or later)"
            }
        }
    }
}

impl core::fmt::Display for IsolationLevel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A level name that is not one of the three.
#[derive(Debug, thiserror::Error)]
#[error("unknown isolation level {0:?}; use none, private-memory or protected-vm")]
pub struct UnknownIsolationLevel(pub String);

impl core::str::FromStr for IsolationLevel {
    type Err = UnknownIsolationLevel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| UnknownIsolationLevel(s.to_string()))
    }
}

/// What kind of VM to create.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IsolationRequest {
    /// The strongest the host offers: a protected VM where there is one (arm64 pKVM), else
    /// a normal VM with a guest_memfd pool where the host has one, else ordinary memory.
    #[default]
    Best,
    /// A normal VM even where protected VMs exist (tests that read guest memory).
    Normal,
    /// A normal VM whose private pool is anonymous host memory on transparent huge pages:
    /// the host can read all of it. Only for `bench-e2e --host-readable-pool`, which measures
    /// what private memory's 4 KiB pages cost (guest_memfd has no huge pages) by running the
    /// same guest on 2 MiB pages. Never for serving.
    HostReadableHugePages,
}

/// `FLEXSERVE_NO_GUEST_MEMFD=1` puts the pool on ordinary memory even where guest_memfd
/// exists, so a host that has it can run what hosts without it run (CI does, both ways).
pub const NO_GUEST_MEMFD_ENV: &str = "FLEXSERVE_NO_GUEST_MEMFD";

/// Whether [`NO_GUEST_MEMFD_ENV`] asks for the fallback.
pub fn guest_memfd_disabled_by_env() -> bool {
    std::env::var(NO_GUEST_MEMFD_ENV).is_ok_and(|v| v == "1")
}

/// The isolation a VM got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation {
    /// An arm64 pKVM protected VM: the hypervisor keeps the host kernel out of its memory.
    pub protected_vm: bool,
    /// How the private pool is backed (`None` before it exists).
    pub private: Option<PrivateBacking>,
    /// Why the level is not the next one up: what this host lacks (empty at the top).
    pub limit: String,
}

impl Isolation {
    /// The level: protected VM, else private memory where the pool is private guest_memfd.
    pub fn level(&self) -> IsolationLevel {
        if self.protected_vm {
            IsolationLevel::ProtectedVm
        } else if self.private == Some(PrivateBacking::GuestMemfd) {
            IsolationLevel::PrivateMemory
        } else {
            IsolationLevel::None
        }
    }

    /// One line: the level, who can read guest memory, the pool, and why not stronger.
    pub fn describe(&self) -> String {
        let level = self.level();
        let backing = self
            .private
            .map_or("no private pool", PrivateBacking::describe);
        let mut line = format!(
            "{level}: {} can read guest memory (private pool: {backing})",
            level.who_can_read()
        );
        if !self.limit.is_empty() {
            line.push_str("; not stronger because ");
            line.push_str(&self.limit);
        }
        line
    }

    /// `Ok` when the level is at least `min`; otherwise the error that names what is missing.
    pub fn check_at_least(&self, min: IsolationLevel) -> Result<(), IsolationTooWeak> {
        let got = self.level();
        if got >= min {
            return Ok(());
        }
        Err(IsolationTooWeak {
            got,
            min,
            limit: self.limit.clone(),
        })
    }
}

/// The VM's isolation is below the minimum the policy asks for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "this host gives the guest isolation level `{got}`, below the required `{min}`: {limit}. \
     `{min}` needs {}; run on such a host, or lower the minimum (flexserve run \
     --min-isolation, the daemon's guest.min_isolation) if you accept that {} can read the \
     model and the prompts",
    min.provided_by(),
    got.who_can_read()
)]
pub struct IsolationTooWeak {
    pub got: IsolationLevel,
    pub min: IsolationLevel,
    /// What this host lacks.
    pub limit: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isolation(protected_vm: bool, private: Option<PrivateBacking>) -> Isolation {
        Isolation {
            protected_vm,
            private,
            limit: "the host lacks it".into(),
        }
    }

    #[test]
    fn levels_follow_the_vm_and_its_pool() {
        use PrivateBacking::*;
        assert_eq!(
            isolation(true, Some(AnonymousProtected)).level(),
            IsolationLevel::ProtectedVm
        );
        assert_eq!(
            isolation(false, Some(GuestMemfd)).level(),
            IsolationLevel::PrivateMemory
        );
        for pool in [GuestMemfdShared, Anonymous, AnonymousHugePages] {
            assert_eq!(
                isolation(false, Some(pool)).level(),
                IsolationLevel::None,
                "{pool:?}"
            );
        }
        assert_eq!(isolation(false, None).level(), IsolationLevel::None);
    }

    #[test]
    fn names_parse_back_and_order_weakest_first() {
        for level in IsolationLevel::ALL {
            assert_eq!(level.name().parse::<IsolationLevel>().unwrap(), level);
        }
        assert!(IsolationLevel::None < IsolationLevel::PrivateMemory);
        assert!(IsolationLevel::PrivateMemory < IsolationLevel::ProtectedVm);
        let e = "private".parse::<IsolationLevel>().unwrap_err().to_string();
        assert!(e.contains("none, private-memory or protected-vm"), "{e}");
    }

    #[test]
    fn a_policy_refuses_a_weaker_vm_naming_what_is_missing() {
        let vm = isolation(false, Some(PrivateBacking::Anonymous));
        assert!(vm.check_at_least(IsolationLevel::None).is_ok());
        let e = vm
            .check_at_least(IsolationLevel::PrivateMemory)
            .unwrap_err();
        let msg = e.to_string();
        for want in [
            "`none`",
            "`private-memory`",
            "the host lacks it",
            "guest_memfd",
            "--min-isolation",
        ] {
            assert!(msg.contains(want), "{want:?} missing from {msg}");
        }
        let private = isolation(false, Some(PrivateBacking::GuestMemfd));
        assert!(
            private
                .check_at_least(IsolationLevel::PrivateMemory)
                .is_ok()
        );
        assert!(private.check_at_least(IsolationLevel::ProtectedVm).is_err());
    }

    #[test]
    fn the_description_leads_with_the_level_and_says_why_not_stronger() {
        let d = isolation(false, Some(PrivateBacking::Anonymous)).describe();
        assert!(d.starts_with("none: "), "{d}");
        assert!(d.ends_with("not stronger because the host lacks it"), "{d}");
    }
}
