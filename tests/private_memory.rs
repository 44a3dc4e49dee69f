//! Flexible protected memory under KVM: the host cannot read guest-private memory, memory
//! the guest gives back is scrubbed, budgets shrink the guest's share, and a guest that
//! ignores a shrink loses its memory by force.
//!
//! "Cannot read": a random 64-byte canary goes into pages of the private region
//! (guest_memfd) and the host learns only its hash. This process (the VMM) then reads every
//! readable mapping it has through `/proc/self/mem` and looks for a 64-byte block with that
//! hash. It must not find it; it must find the same canary once the guest copies it to the
//! shared window (so the scan sees guest memory the host may read); and a direct read of
//! the private region's host mapping must fail. Both the bare `canary` program and the
//! engine (with a model loaded, through a test-only memory probe) are checked.

use flexserve_e2e::memscan::{readable_guest_bytes, scan_process};
use flexserve_e2e::{
    engine_with_model, guest_images, machine_with_64_mib_private, private_memory_or_skip,
};
use guest_programs::canary::{CANARY_BYTES, HASHES_OFFSET, fnv1a};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use virtio_llm::spec::layout::SHARED_WINDOW_BASE;
use virtio_llm::wire::probe::ProbeOp;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm::hypervisor::{IsolationLevel, IsolationRequest, NO_GUEST_MEMFD_ENV, PrivateBacking};
use vmm::machine::{Machine, MachineConfig, VmError};

/// Which of the two hashes a scan of this process's readable memory found, and how many
/// bytes it read.
fn scan(hash_a: u64, hash_b: u64) -> (bool, bool, u64) {
    let (found, scanned) = scan_for(&[hash_a, hash_b]);
    (!found[0].is_empty(), !found[1].is_empty(), scanned)
}

/// Where (host addresses) a scan of this process's readable memory found a 64-byte block
/// with each of `hashes`, and how many bytes it read. (Tests that hold a guest to a budget
/// live in `memory_budget.rs`, another process: where the pool is ordinary memory, a scan's
/// reads map zero pages into every guest's pool, which the host would count as held.)
fn scan_for(hashes: &[u64]) -> (Vec<Vec<u64>>, u64) {
    let mut found = vec![Vec::new(); hashes.len()];
    let scanned = scan_process(0, &mut |at, piece| {
        for (i, block) in piece.chunks_exact(CANARY_BYTES).enumerate() {
            let h = fnv1a(block);
            for (want, hits) in hashes.iter().zip(found.iter_mut()) {
                if h == *want {
                    hits.push(at + (i * CANARY_BYTES) as u64);
                }
            }
        }
    });
    (found, scanned)
}

/// What [`boot_canary_and_scan`] saw.
struct CanaryScan {
    /// The scan found the canary the guest keeps in its private pool.
    found_private: bool,
    /// The scan found the copy the guest put in the shared window.
    found_shared: bool,
    /// Bytes the scan read.
    scanned: u64,
    /// A direct read of the pool's host mapping: whether it returned the private canary.
    direct: std::io::Result<bool>,
}

/// Boots the `canary` program on `m`, waits for its hashes, scans this process's memory for
/// both canaries and reads the private pool's host mapping directly; `None` without images.
fn boot_canary_and_scan(mut m: Machine) -> Option<CanaryScan> {
    let (kernel, canary) = guest_images("canary")?;
    let (shared, stop) = (m.memory_for_tests(), m.stop_handle());
    let private = m.private_memory().expect("a private region");
    let (vm, result) = std::thread::scope(|s| {
        let guest = s.spawn(|| m.boot(&kernel, &canary, 1));
        let hashes = GuestAddress(SHARED_WINDOW_BASE + HASHES_OFFSET);
        let start = Instant::now();
        let (hash_a, hash_b) = loop {
            let a: u64 = shared.read_obj(hashes).expect("read shared window");
            let b: u64 = shared
                .read_obj(GuestAddress(hashes.0 + 8))
                .expect("read shared window");
            if a != 0 && b != 0 {
                break (a, b);
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the canary program never ran"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let (found_private, found_shared, scanned) = scan(hash_a, hash_b);
        let mem = std::fs::File::open("/proc/self/mem").expect("open /proc/self/mem");
        let mut page = [0u8; 4096];
        let direct = mem
            .read_exact_at(&mut page, private.host_range().start)
            .map(|()| fnv1a(&page[..CANARY_BYTES]) == hash_a);
        stop.stop();
        (
            guest.join().expect("VM thread"),
            CanaryScan {
                found_private,
                found_shared,
                scanned,
                direct,
            },
        )
    });
    assert!(matches!(vm, Err(VmError::StoppedByHost)), "{vm:?}");
    let readable = readable_guest_bytes(&shared);
    eprintln!(
        "scan: {} bytes read, {readable} of readable guest memory",
        result.scanned
    );
    assert!(
        result.scanned >= readable,
        "the scan read only {} bytes, less than the {readable} of readable guest memory",
        result.scanned
    );
    assert!(
        result.found_shared,
        "the scan did not find the shared-window canary: it is broken"
    );
    Some(result)
}

#[test]
fn the_host_cannot_read_private_memory_but_can_read_the_shared_window() {
    let m = machine_with_64_mib_private();
    if !private_memory_or_skip(
        "the_host_cannot_read_private_memory_but_can_read_the_shared_window",
        m.isolation(),
    ) {
        return;
    }
    let protected_vm = m.isolation().protected_vm;
    let Some(r) = boot_canary_and_scan(m) else {
        return;
    };
    assert!(
        !r.found_private,
        "the private canary is readable by the host"
    );
    // The canary sits at the start of the region. guest_memfd: a host read faults. pKVM: the
    // read of a page donated to the protected VM completes but never yields the guest's data.
    if protected_vm {
        assert!(
            !matches!(r.direct, Ok(true)),
            "a direct read of the private mapping returned the canary"
        );
    } else {
        assert!(r.direct.is_err(), "reading the private mapping succeeded");
    }
}

/// The benchmark's comparison pool (`bench-e2e --host-readable-pool`) is what it says: the
/// same scan that finds nothing in a private pool finds the canary there, and the VM reports
/// it as host-readable. This is also the control that shows the scan can see a pool at all.
#[test]
fn the_benchmarks_host_readable_pool_is_readable_and_reported_so() {
    let m = Machine::new(MachineConfig {
        private_size: 64 << 20,
        deadline: Duration::from_secs(60),
        isolation: IsolationRequest::HostReadableHugePages,
        ..MachineConfig::default()
    })
    .expect("create VM");
    let isolation = m.isolation();
    assert_eq!(
        isolation.private,
        Some(PrivateBacking::AnonymousHugePages),
        "{isolation:?}"
    );
    assert!(!isolation.protected_vm);
    assert!(
        isolation.describe().contains("can read guest memory"),
        "{}",
        isolation.describe()
    );
    let Some(r) = boot_canary_and_scan(m) else {
        return;
    };
    assert!(
        r.found_private,
        "the scan missed the host-readable pool's canary"
    );
    assert!(
        matches!(r.direct, Ok(true)),
        "a direct read of the host-readable pool did not return the canary: {:?}",
        r.direct
    );
}

/// `GUEST_MEMFD_FLAG_MMAP` (kvm-bindings lacks the guest_memfd flags).
const GUEST_MEMFD_FLAG_MMAP: u64 = 1;

/// The level a VM reports is what the host offers, asked of KVM here independently of the
/// VMM's own probe: `private-memory` where the host has guest_memfd (unless
/// `FLEXSERVE_NO_GUEST_MEMFD=1` forces ordinary memory), `none` with the reason otherwise.
#[test]
fn the_isolation_level_is_what_the_host_offers() {
    if flexserve_e2e::guest_images("canary").is_none() {
        return;
    }
    let m = machine_with_64_mib_private();
    let isolation = m.isolation();
    if isolation.protected_vm {
        assert_eq!(isolation.level(), IsolationLevel::ProtectedVm);
        return;
    }
    // A private (not INIT_SHARED) guest_memfd the VMM may map: what the private pool needs.
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("create a VM");
    let has_gmem = vm.check_extension_raw(kvm_bindings::KVM_CAP_GUEST_MEMFD.into()) > 0
        && vm
            .create_guest_memfd(kvm_bindings::kvm_create_guest_memfd {
                size: 2 << 20,
                flags: GUEST_MEMFD_FLAG_MMAP,
                ..Default::default()
            })
            .map(|fd| {
                use std::os::fd::FromRawFd;
                // SAFETY: KVM_CREATE_GUEST_MEMFD just returned this fd and nothing else owns
                // it; the OwnedFd closes it once.
                drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
            })
            .is_ok();
    let forced_off = std::env::var(NO_GUEST_MEMFD_ENV).as_deref() == Ok("1");
    eprintln!(
        "guest_memfd: {has_gmem}, forced off: {forced_off}: {}",
        isolation.describe()
    );
    if has_gmem && !forced_off {
        assert_eq!(
            isolation.level(),
            IsolationLevel::PrivateMemory,
            "{isolation:?}"
        );
        assert_eq!(isolation.private, Some(PrivateBacking::GuestMemfd));
    } else {
        assert_eq!(isolation.level(), IsolationLevel::None, "{isolation:?}");
        let why = if forced_off {
            NO_GUEST_MEMFD_ENV
        } else {
            "no guest_memfd"
        };
        assert!(isolation.limit.contains(why), "{isolation:?}");
        assert!(
            isolation.describe().starts_with("none: "),
            "{}",
            isolation.describe()
        );
    }
}

/// A policy above what the VM got refuses to create it, naming the level and what is
/// missing; the host-readable pool makes that happen on every host.
#[test]
fn a_minimum_isolation_above_the_vms_refuses_it() {
    if flexserve_e2e::guest_images("canary").is_none() {
        return;
    }
    let r = Machine::new(MachineConfig {
        private_size: 64 << 20,
        isolation: IsolationRequest::HostReadableHugePages,
        min_isolation: IsolationLevel::PrivateMemory,
        ..MachineConfig::default()
    });
    let Err(VmError::IsolationTooWeak(e)) = r else {
        panic!("a host-readable pool passed a private-memory policy");
    };
    assert_eq!(
        (e.got, e.min),
        (IsolationLevel::None, IsolationLevel::PrivateMemory)
    );
    let msg = e.to_string();
    assert!(
        msg.contains("`none`") && msg.contains("guest_memfd"),
        "{msg}"
    );
}

#[test]
fn the_host_cannot_read_a_canary_the_engine_holds_beside_a_model() {
    let Some((mut vm, _)) = engine_with_model(128) else {
        return;
    };
    if !private_memory_or_skip(
        "the_host_cannot_read_a_canary_the_engine_holds_beside_a_model",
        vm.isolation(),
    ) {
        vm.shutdown().expect("clean shutdown");
        return;
    }
    let placed = vm.probe(ProbeOp::PlaceCanary).expect("place a canary");
    // The guest copies the canary to the shared window and keeps the private copy: one scan
    // must then find it exactly once, in the window (which proves the scan sees guest memory
    // the host may read) and nowhere in the private pool.
    let exposed = vm.probe(ProbeOp::ExposeCanary).expect("expose the canary");
    assert_eq!(exposed.private_hash, placed.private_hash);
    let window = vm.memory_for_tests();
    let host_addr = window
        .get_host_address(GuestAddress(exposed.exposed_addr))
        .expect("the exposed canary lies in guest memory") as u64;
    let (found, scanned) = scan_for(&[placed.private_hash]);
    let readable = readable_guest_bytes(&window);
    eprintln!("scan: {scanned} bytes read, {readable} of readable guest memory");
    assert!(
        scanned >= readable,
        "the scan read only {scanned} bytes, less than the {readable} of readable guest memory"
    );
    assert_eq!(
        found[0],
        [host_addr],
        "the canary must be found in the shared window at {host_addr:#x} and nowhere else"
    );
    if vm.isolation().protected_vm {
        // pKVM: the scan's reads of pages donated to the protected VM leave them unusable for
        // the guest (its next KVM_RUN fails with EFAULT). Reading is still denied, which is
        // what this test is about; a host can always stop its guest.
        let _ = vm.shutdown();
    } else {
        vm.shutdown().expect("clean shutdown");
    }
}

/// A memory probe reads private memory for the host (a freed block's contents, among
/// others), so only the test build of the engine answers one: the production engine refuses
/// the feature when the VMM offers it, and answers a probe sent anyway `Unsupported`.
/// Control: the test build, offered the same, answers.
#[test]
fn the_production_engine_refuses_memory_probes_and_the_test_build_answers() {
    use virtio_llm::Status;
    use vmm::guest_vm::{GuestConfig, GuestError, GuestVm};
    let (Some(production), Some(test_build)) = (
        flexserve_e2e::protected_images(),
        flexserve_e2e::probe_images(),
    ) else {
        return;
    };
    let config = GuestConfig {
        vcpus: 1,
        private_bytes: 32 << 20,
        diagnostics: true,
        isolation: Default::default(),
        min_isolation: IsolationLevel::None,
        key_root: None,
        kv_reuse: true,
    };
    let mut vm = GuestVm::start(&production, config).expect("the production engine boots");
    assert!(
        !vm.answers_probes(),
        "the production engine accepted memory probes"
    );
    match vm.probe(ProbeOp::PlaceCanary) {
        Err(GuestError::Refused {
            status: Status::Unsupported,
            ..
        }) => {}
        other => panic!("the production engine answered a memory probe: {other:?}"),
    }
    vm.shutdown().expect("clean shutdown");

    let mut vm = GuestVm::start(&test_build, config).expect("the test build boots");
    assert!(vm.answers_probes(), "the test build refused memory probes");
    vm.probe(ProbeOp::PlaceCanary)
        .expect("the test build places a canary");
    vm.shutdown().expect("clean shutdown");
}
