//! Boots real guests under /dev/kvm: tiny hand-assembled user-mode programs (ring 3 on
//! x86_64, EL0 with the MMU off on arm64) that talk to the VMM through the MMIO console and
//! control pages, without the guest kernel.
//!
//! Without /dev/kvm these tests print a visible SKIPPED line, unless
//! `FLEXSERVE_REQUIRE_KVM=1` (set by `.ci/run` when /dev/kvm exists), where they fail.

use std::time::Duration;
use vmm::hypervisor::{Ring, VcpuInit};
use vmm::machine::{Machine, MachineConfig, VmError, layout};

const CODE: u64 = 0x10000;
const STACK: u64 = 0x20000;

fn machine(deadline: Duration) -> Option<Machine> {
    if !std::path::Path::new("/dev/kvm").exists() {
        assert!(
            std::env::var("FLEXSERVE_REQUIRE_KVM").as_deref() != Ok("1"),
            "/dev/kvm is missing but FLEXSERVE_REQUIRE_KVM=1"
        );
        eprintln!("SKIPPED: /dev/kvm absent");
        return None;
    }
    Some(
        Machine::new(MachineConfig {
            deadline,
            ..MachineConfig::default()
        })
        .expect("create VM"),
    )
}

/// How a run ended, the console lines, and whether the VM was a protected one.
type Run = (Result<u32, VmError>, Vec<String>, bool);

fn run_in(code: &[u8], ring: Ring, deadline: Duration) -> Option<Run> {
    let mut m = machine(deadline)?;
    m.load(CODE, code).expect("load code");
    let result = m.run(&[VcpuInit {
        entry: CODE,
        stack: STACK,
        ring,
        args: [0; 3],
    }]);
    Some((result, m.console().lines(), m.isolation().protected_vm))
}

fn run(code: &[u8], deadline: Duration) -> Option<Run> {
    run_in(code, Ring::User, deadline)
}

fn assert_timeout(result: Result<u32, VmError>, deadline: Duration) {
    match result {
        Err(VmError::Timeout(after)) => assert!(after >= deadline),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use super::*;

    /// `mov rax, imm64`
    fn mov_rax(v: u64) -> Vec<u8> {
        let mut c = vec![0x48, 0xb8];
        c.extend_from_slice(&v.to_le_bytes());
        c
    }

    /// `mov rbx, imm64`
    fn mov_rbx(v: u64) -> Vec<u8> {
        let mut c = vec![0x48, 0xbb];
        c.extend_from_slice(&v.to_le_bytes());
        c
    }

    const SPIN: [u8; 2] = [0xeb, 0xfe]; // jmp $

    #[test]
    fn user_program_prints_and_exits_with_7() {
        let mut code = mov_rax(layout::CONSOLE_BASE);
        for &b in b"hello from ring 3\n" {
            code.extend_from_slice(&[0xc6, 0x00, b]); // mov byte [rax], b
        }
        code.extend(mov_rbx(layout::CONTROL_BASE));
        code.extend_from_slice(&[0xc7, 0x03, 7, 0, 0, 0]); // mov dword [rbx], 7
        code.extend_from_slice(&SPIN);
        let Some((result, lines, _)) = run(&code, Duration::from_secs(10)) else {
            return;
        };
        assert_eq!(result.expect("clean exit"), 7);
        assert_eq!(lines, ["hello from ring 3"]);
    }

    #[test]
    fn wild_pointer_is_reported_with_its_address() {
        let mut code = mov_rax(0xc000_0000);
        code.extend_from_slice(&[0x48, 0x8b, 0x00]); // mov rax, [rax]
        code.extend_from_slice(&SPIN);
        let Some((result, _, _)) = run(&code, Duration::from_secs(10)) else {
            return;
        };
        match result {
            Err(VmError::WildAccess {
                addr,
                write: false,
                regs,
                ..
            }) => {
                assert_eq!(addr, 0xc000_0000);
                assert!(regs.user, "the fault happened in user mode");
                assert_eq!(regs.privilege, 3);
            }
            other => panic!("expected a wild access, got {other:?}"),
        }
    }

    #[test]
    fn invalid_instruction_without_handlers_is_a_triple_fault() {
        let Some((result, _, _)) = run(&[0x0f, 0x0b], Duration::from_secs(10)) else {
            return;
        }; // ud2
        assert!(
            matches!(result, Err(VmError::TripleFault { .. })),
            "got {result:?}"
        );
    }

    #[test]
    fn spinning_guest_is_stopped_at_the_deadline() {
        let deadline = Duration::from_millis(300);
        let Some((result, _, _)) = run(&SPIN, deadline) else {
            return;
        };
        assert_timeout(result, deadline);
    }
}

#[cfg(target_arch = "aarch64")]
mod aarch64 {
    use super::*;
    use flexserve_e2e::a64::{self, HVC0, SPIN};

    #[test]
    fn user_program_prints_and_exits_with_7() {
        let mut code = a64::mov_imm(0, layout::CONSOLE_BASE);
        for &b in b"hello from EL0\n" {
            code.extend(a64::mov_imm(1, u64::from(b)));
            code.push(a64::strb(1, 0));
        }
        code.extend(a64::mov_imm(2, layout::CONTROL_BASE));
        code.extend(a64::mov_imm(1, 7));
        code.push(a64::str_w(1, 2));
        code.push(SPIN);
        let Some((result, lines, _)) = run(&a64::bytes(&code), Duration::from_secs(60)) else {
            return;
        };
        assert_eq!(result.expect("clean exit"), 7);
        assert_eq!(lines, ["hello from EL0"]);
    }

    #[test]
    fn wild_pointer_is_reported_with_its_address() {
        let mut code = a64::mov_imm(0, 0xc000_0000);
        code.push(a64::ldr_x(1, 0));
        code.push(SPIN);
        let Some((result, _, protected)) = run(&a64::bytes(&code), Duration::from_secs(60)) else {
            return;
        };
        match result {
            Err(VmError::WildAccess {
                addr,
                write: false,
                regs,
                ..
            }) => {
                assert_eq!(addr, 0xc000_0000);
                // A protected VM's registers are hidden from the host.
                if !protected {
                    assert!(regs.user, "the fault happened at EL0: {regs:x?}");
                    assert_eq!(regs.privilege, 0);
                    assert_eq!(regs.pc, CODE + 4 * 2, "pc of the ldr");
                }
            }
            other => panic!("expected a wild access, got {other:?}"),
        }
    }

    #[test]
    fn psci_system_off_is_a_clean_exit_and_reset_is_reported() {
        for (function, expect_reset) in [(0x8400_0008u64, false), (0x8400_0009, true)] {
            let mut code = a64::mov_imm(0, function);
            code.push(HVC0);
            code.push(SPIN);
            let Some((result, _, _)) =
                run_in(&a64::bytes(&code), Ring::Kernel, Duration::from_secs(60))
            else {
                return;
            };
            match result {
                Ok(0) if !expect_reset => {}
                Err(VmError::GuestReset) if expect_reset => {}
                other => panic!("PSCI {function:#x}: got {other:?}"),
            }
        }
    }

    #[test]
    fn spinning_guest_is_stopped_at_the_deadline() {
        let deadline = Duration::from_millis(500);
        let Some((result, _, _)) = run(&a64::bytes(&[SPIN]), deadline) else {
            return;
        };
        assert_timeout(result, deadline);
    }
}
