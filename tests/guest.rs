//! Boots the real guest kernel (`make image`, `make image-arm64` on arm64) with small user
//! programs under /dev/kvm.
//!
//! Skips with a visible message when /dev/kvm or the images are missing, unless
//! `FLEXSERVE_REQUIRE_KVM=1` (set by `.ci/run` when /dev/kvm exists), where it fails.

use flexserve_e2e::{MAKE_IMAGE, kernel_path, program_path};
use std::time::Duration;
use vmm::machine::{Machine, MachineConfig, VmError};

fn required() -> bool {
    std::env::var("FLEXSERVE_REQUIRE_KVM").as_deref() == Ok("1")
}

/// Boots `program` under the guest kernel; `None` (after saying why) when it cannot run here.
/// Exit code or error, and console lines.
fn boot(program: &str, vcpus: u8) -> Option<(Result<u32, VmError>, Vec<String>)> {
    let (m, result) = boot_machine(program, vcpus)?;
    Some((result, m.console().lines()))
}

/// As [`boot`], returning the machine itself for tests that read more of it after the run.
fn boot_machine(program: &str, vcpus: u8) -> Option<(Machine, Result<u32, VmError>)> {
    let (kernel, user) = (kernel_path(), program_path(program));
    let missing = [&kernel, &user].into_iter().find(|p| !p.exists());
    if !std::path::Path::new("/dev/kvm").exists() || missing.is_some() {
        assert!(
            !required(),
            "cannot boot guests: /dev/kvm or {missing:?} missing (run `{MAKE_IMAGE}`)"
        );
        eprintln!("SKIPPED: /dev/kvm or guest images missing ({missing:?}); run `{MAKE_IMAGE}`");
        return None;
    }
    let (kernel, user) = (std::fs::read(kernel).ok()?, std::fs::read(user).ok()?);
    let config = MachineConfig {
        deadline: Duration::from_secs(20),
        ..MachineConfig::default()
    };
    let mut m = Machine::new(config).expect("create VM");
    let result = m.boot(&kernel, &user, vcpus);
    Some((m, result))
}

#[test]
fn user_program_prints_through_the_syscall_and_exits_with_7() {
    let Some((result, lines)) = boot("exit7", 1) else {
        return;
    };
    assert_eq!(result.expect("clean exit"), 7);
    assert_eq!(lines, ["hello from guest user mode"]);
}

/// arm64 integer division does not trap, so this is x86_64 only.
#[cfg(target_arch = "x86_64")]
#[test]
fn user_divide_by_zero_is_reported_as_such() {
    let Some((result, _)) = boot("divzero", 1) else {
        return;
    };
    match result {
        Err(VmError::UserException { report, name }) => {
            assert_eq!(report.vector, 0, "{name}");
            assert_eq!(report.cs & 3, 3);
            assert!(
                report.rip >= 0x20_0000,
                "rip {:#x} is in the user program",
                report.rip
            );
        }
        other => panic!("expected a user divide error, got {other:?}"),
    }
}

#[test]
fn user_wild_pointer_is_a_page_fault_with_its_address() {
    let Some((result, _)) = boot("wildptr", 1) else {
        return;
    };
    match result {
        #[cfg(target_arch = "x86_64")]
        Err(VmError::UserException { report, .. }) => {
            assert_eq!(report.vector, 14);
            assert_eq!(report.cr2, 0x7fff_dead_0000);
            assert_eq!(report.error_code & 4, 4, "user-mode access");
        }
        // A data abort from EL0 (ESR_EL1.EC 0x24) with FAR_EL1 = the address.
        #[cfg(target_arch = "aarch64")]
        Err(VmError::UserException { report, name }) => {
            assert_eq!(report.vector, 0x24, "{name}");
            assert_eq!(report.error_code >> 26, 0x24, "ESR_EL1");
            assert_eq!(report.cr2, 0x7fff_dead_0000);
            assert_eq!(report.cs, 3, "from EL0");
            assert!(
                report.rip >= 0x20_0000,
                "pc {:#x} in the program",
                report.rip
            );
        }
        other => panic!("expected a user page fault, got {other:?}"),
    }
}

#[test]
fn both_vcpus_run_user_code_at_the_same_time() {
    // Each vCPU waits for the other to start before it computes, so a VM that ran them one
    // after the other would time out instead of printing both checksums.
    let Some((result, lines)) = boot("pair", 2) else {
        return;
    };
    assert_eq!(result.expect("clean exit"), 42);
    let expect = |vcpu: u64| {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ vcpu;
        for i in 0..1_000_000u64 {
            h = (h ^ (i * (vcpu + 1))).wrapping_mul(0x0100_0000_01b3);
        }
        format!("vcpu{vcpu} {h:#018x}")
    };
    let mut lines = lines;
    lines.sort();
    assert_eq!(lines, [expect(0), expect(1)]);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_fma_in_guest_user_mode_matches_the_host() {
    if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
        eprintln!("SKIPPED: this host has no AVX2/FMA");
        return;
    }
    let Some((result, lines)) = boot("avxdot", 1) else {
        return;
    };
    assert_eq!(result.expect("clean exit"), 0);
    // SAFETY: AVX2 and FMA were detected above.
    let host = unsafe { guest_programs::avx::dot_bits() };
    assert_eq!(lines, [format!("avxdot {:#018x}", u64::from(host))]);
}

#[test]
fn spinning_guest_is_stopped_at_the_deadline() {
    if !std::path::Path::new("/dev/kvm").exists() {
        return;
    }
    let (Ok(kernel), Ok(user)) = (
        std::fs::read(kernel_path()),
        std::fs::read(program_path("spin")),
    ) else {
        assert!(!required(), "guest images missing: run `{MAKE_IMAGE}`");
        return;
    };
    let config = MachineConfig {
        deadline: Duration::from_millis(500),
        ..MachineConfig::default()
    };
    let mut m = Machine::new(config).expect("create VM");
    assert!(matches!(
        m.boot(&kernel, &user, 2),
        Err(VmError::Timeout(_))
    ));
}

#[test]
fn waiting_vcpu_sleeps_in_the_vmm_without_spinning() {
    let Some((m, result)) = boot_machine("sleeper", 1) else {
        return;
    };
    assert_eq!(result.expect("clean exit"), 0);
    let lines = m.console().lines_with_writer_cpu();
    let line = |prefix: &str| {
        lines
            .iter()
            .find_map(|(l, cpu)| Some((l.strip_prefix(prefix)?, *cpu)))
            .unwrap_or_else(|| panic!("the guest printed no `{prefix}` line: {lines:?}"))
    };
    let (_, cpu_before) = line("waiting 1 s");
    let (hex, cpu_after) = line("slept ns 0x");
    let slept = u64::from_str_radix(hex, 16).expect("hex sleep time");
    assert!(
        slept >= 1_000_000_000,
        "guest clock says it slept {slept} ns"
    );
    // The two lines bracket the wait on the vCPU's own thread, so the boot (seconds of CPU
    // for a pKVM guest under emulation, and noisy) is outside the measurement. A spinning
    // vCPU would burn the whole second; parked in the VMM it burns almost none (~2 ms here,
    // the two clock reads and the second line's exits). Half the wait leaves room for those
    // exits' cost under emulation while any spin still fails.
    let waiting = cpu_after.saturating_sub(cpu_before);
    eprintln!("sleeper: vCPU thread used {waiting:?} of host CPU over a 1 s wait");
    assert!(
        waiting < Duration::from_millis(500),
        "vCPU used {waiting:?} of host CPU while it waited 1 s"
    );
}

#[test]
fn map_and_unmap_hand_out_heap_chunks() {
    let Some((result, lines)) = boot("mapper", 1) else {
        return;
    };
    assert_eq!(result.expect("clean exit"), 0);
    let heap = guest_kernel::abi::HEAP_BASE;
    let chunks = (MachineConfig::default().boot_size as u64 - heap) / guest_kernel::abi::HEAP_CHUNK;
    let hex = |v: u64| format!("{v:#018x}");
    assert_eq!(
        lines,
        [
            format!("map {}", hex(heap)),
            format!("last {}", hex((3 << 20) / 8 - 1)),
            format!("unmap {}", hex(0)),
            format!("unmap again {}", hex(u64::MAX)),
            format!("remap {}", hex(heap)),
            format!("chunks {}", hex(chunks)),
        ]
    );
}
