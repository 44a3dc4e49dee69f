//! Boots real guests under /dev/kvm: tiny hand-assembled ring-3 programs that talk to the
//! VMM through the MMIO console and control pages.
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

fn run(code: &[u8], deadline: Duration) -> Option<(Result<u32, VmError>, Vec<String>)> {
    let mut m = machine(deadline)?;
    m.load(CODE, code).expect("load code");
    let result = m.run(&[VcpuInit {
        entry: CODE,
        stack: STACK,
        ring: Ring::User,
        args: [0; 3],
    }]);
    Some((result, m.console().lines()))
}

#[test]
fn user_program_prints_and_exits_with_7() {
    let mut code = mov_rax(layout::CONSOLE_BASE);
    for &b in b"hello from ring 3\n" {
        code.extend_from_slice(&[0xc6, 0x00, b]); // mov byte [rax], b
    }
    code.extend(mov_rbx(layout::CONTROL_BASE));
    code.extend_from_slice(&[0xc7, 0x03, 7, 0, 0, 0]); // mov dword [rbx], 7
    code.extend_from_slice(&SPIN);
    let Some((result, lines)) = run(&code, Duration::from_secs(10)) else {
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
    let Some((result, _)) = run(&code, Duration::from_secs(10)) else {
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
    let Some((result, _)) = run(&[0x0f, 0x0b], Duration::from_secs(10)) else {
        return;
    }; // ud2
    assert!(
        matches!(result, Err(VmError::TripleFault { .. })),
        "got {result:?}"
    );
}

#[test]
fn spinning_guest_is_stopped_at_the_deadline() {
    let Some((result, _)) = run(&SPIN, Duration::from_millis(300)) else {
        return;
    };
    match result {
        Err(VmError::Timeout(after)) => assert!(after >= Duration::from_millis(300)),
        other => panic!("expected a timeout, got {other:?}"),
    }
}
