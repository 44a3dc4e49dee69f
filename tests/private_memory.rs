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

use flexserve_e2e::{guest_images, model_path, private_memory_or_skip, protected_images};
use guest_programs::canary::{CANARY_BYTES, HASHES_OFFSET, fnv1a};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use virtio_llm::Status;
use virtio_llm::spec::layout::SHARED_WINDOW_BASE;
use virtio_llm::spec::{MEMORY_GRANULE, MIN_MEMORY_BUDGET};
use virtio_llm::wire::probe::ProbeOp;
use virtio_llm::wire::request::{GenerateRequest, Prompt, SamplingParams};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm::guest_vm::{GuestConfig, GuestError, GuestVm};
use vmm::hypervisor::{IsolationLevel, IsolationRequest, NO_GUEST_MEMFD_ENV, PrivateBacking};
use vmm::machine::{Machine, MachineConfig, VmError};
use vmm::memory_broker::{MemoryBroker, MemoryError};

/// How long a cooperating guest gets to meet a lower budget: it meets it in milliseconds on
/// x86_64 KVM; the margin is for the emulated arm64 host (`make test-arm64`), ~10x slower.
const SHRINK_DEADLINE: Duration = Duration::from_secs(10);

/// Which of the two hashes a scan of this process's readable memory found, and how many
/// bytes it read.
fn scan(hash_a: u64, hash_b: u64) -> (bool, bool, u64) {
    let (found, scanned) = scan_for(&[hash_a, hash_b]);
    (!found[0].is_empty(), !found[1].is_empty(), scanned)
}

/// One scan at a time in this process: a scan copies what it reads (another test's shared
/// window, canary included) into its buffer, and a second scan running meanwhile would find
/// that copy in this process's heap. Tests that hold a guest to a budget take it shared
/// ([`no_scans`]): where the pool is ordinary memory (no guest_memfd) a scan's reads map
/// zero pages into every other guest's pool, which the host then counts as held, and a
/// cooperating guest would be stopped for ignoring a shrink.
static SCAN: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Keeps scans out while a test measures what a guest holds.
fn no_scans() -> std::sync::RwLockReadGuard<'static, ()> {
    SCAN.read().unwrap_or_else(|e| e.into_inner())
}

/// Where (host addresses) a scan of this process's readable memory found a 64-byte block
/// with each of `hashes`, and how many bytes it read.
fn scan_for(hashes: &[u64]) -> (Vec<Vec<u64>>, u64) {
    let _one_at_a_time = SCAN.write().unwrap_or_else(|e| e.into_inner());
    let mut maps = String::new();
    std::fs::File::open("/proc/self/maps")
        .and_then(|mut f| f.read_to_string(&mut maps))
        .expect("read /proc/self/maps");
    let mem = std::fs::File::open("/proc/self/mem").expect("open /proc/self/mem");
    let mut found = vec![Vec::new(); hashes.len()];
    let mut scanned = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    // The scan's own buffer holds copies of what it read last; it is not memory to search.
    let own = buf.as_ptr() as u64..buf.as_ptr() as u64 + buf.len() as u64;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            let overlaps_own = at < own.end && own.start < at + n as u64;
            // Pages that cannot be read (the private region among them) are skipped.
            if !overlaps_own && mem.read_exact_at(&mut buf[..n], at).is_ok() {
                scanned += n as u64;
                for (i, block) in buf[..n].chunks_exact(CANARY_BYTES).enumerate() {
                    let h = fnv1a(block);
                    for (want, hits) in hashes.iter().zip(found.iter_mut()) {
                        if h == *want {
                            hits.push(at + (i * CANARY_BYTES) as u64);
                        }
                    }
                }
            }
            at += n as u64;
        }
    }
    // Freed heap stays mapped and readable: leave no copy for the next scan to find.
    buf.fill(0);
    std::hint::black_box(&buf);
    (found, scanned)
}

/// Bytes of guest memory the host maps readable (boot memory and the shared window; the
/// private pool is not part of it). A scan that read less than this missed memory it should
/// have seen, so it would prove nothing by not finding a canary.
fn readable_guest_bytes(mem: &vm_memory::GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// A machine with 64 MiB of private memory.
fn machine() -> Machine {
    Machine::new(MachineConfig {
        private_size: 64 << 20,
        deadline: Duration::from_secs(60),
        ..MachineConfig::default()
    })
    .expect("create VM")
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
    let m = machine();
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
    let m = machine();
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
fn released_private_pages_come_back_zeroed() {
    use guest_programs::scrub::{MAILBOX_OFFSET, SCRUB_BYTES, state};
    let Some((kernel, scrub)) = guest_images("scrub") else {
        return;
    };
    let mut m = machine();
    let (shared, stop) = (m.memory_for_tests(), m.stop_handle());
    let private = m.private_memory().expect("a private region");
    let mailbox = GuestAddress(SHARED_WINDOW_BASE + MAILBOX_OFFSET);
    let wait_for = |want: &[u64]| {
        let start = Instant::now();
        loop {
            let s: u64 = shared.read_obj(mailbox).expect("read mailbox");
            if want.contains(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "guest stuck in state {s}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let (vm, result) = std::thread::scope(|s| {
        let guest = s.spawn(|| m.boot(&kernel, &scrub, 1));
        wait_for(&[state::FILLED]);
        private
            .release(private.guest_addr(), SCRUB_BYTES)
            .expect("release the filled pages");
        shared
            .write_obj(state::RELEASED, mailbox)
            .expect("write mailbox");
        let result = wait_for(&[state::ALL_ZERO, state::NOT_ZERO]);
        stop.stop();
        (guest.join().expect("VM thread"), result)
    });
    assert!(matches!(vm, Err(VmError::StoppedByHost)), "{vm:?}");
    assert_eq!(
        result,
        state::ALL_ZERO,
        "released pages kept their contents"
    );
    // Releasing outside the region is refused.
    assert!(
        private
            .release(private.guest_addr() + (64 << 20), 4096)
            .is_err()
    );
}

/// A guest with the engine and memory probes, and the tiny model loaded as model 1.
fn engine_with_model(private_mib: usize) -> Option<(GuestVm, Vec<u8>)> {
    let (images, path) = (protected_images()?, model_path("tiny.Q8_0.gguf")?);
    let file = std::fs::read(path).expect("read the tiny model");
    let mut vm = GuestVm::start(
        &images,
        GuestConfig {
            vcpus: 2,
            private_bytes: private_mib << 20,
            diagnostics: true,
            isolation: Default::default(),
            min_isolation: IsolationLevel::None,
        },
    )
    .expect("guest boots");
    vm.load_model(1, &file, None, &mut |_| {})
        .expect("model loads");
    Some((vm, file))
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

#[test]
fn memory_the_engine_relinquishes_comes_back_zeroed() {
    let _no_scans = no_scans();
    let Some((mut vm, _)) = engine_with_model(128) else {
        return;
    };
    vm.probe(ProbeOp::PlaceCanary).expect("place a canary");
    vm.probe(ProbeOp::DropCanary).expect("drop it");
    // Freed but not relinquished: the guest still backs it, with the canary in it.
    let kept = vm.probe(ProbeOp::CheckCanaryBlock).expect("check");
    assert!(kept.nonzero_bytes > 0, "the canary block was cleared early");
    // A budget of exactly what is in use: every free page must be given back.
    let in_use = vm.stats().expect("stats").memory_used_bytes;
    let budget = in_use.next_multiple_of(MEMORY_GRANULE);
    vm.set_budget(budget, SHRINK_DEADLINE)
        .expect("the guest shrinks in time");
    let m = vm.memory().expect("memory status");
    assert!(m.resident_bytes <= budget, "{m:?}");
    assert!(m.broker.released_bytes >= MEMORY_GRANULE, "{m:?}");
    vm.set_budget(m.max_bytes, SHRINK_DEADLINE)
        .expect("raise the budget again");
    let after = vm.probe(ProbeOp::CheckCanaryBlock).expect("check again");
    assert_eq!(
        after.block_addr, kept.block_addr,
        "the same guest-physical pages"
    );
    assert_eq!(
        after.nonzero_bytes, 0,
        "relinquished pages kept their contents"
    );
    vm.shutdown().expect("clean shutdown");
}

fn greedy(request_id: u64, session_id: u32, prompt: &[u32]) -> GenerateRequest {
    GenerateRequest {
        request_id,
        session_id,
        sampling: SamplingParams::greedy(12),
        prompt: Prompt::Tokens(prompt.to_vec()),
    }
}

fn run(vm: &mut GuestVm, req: &GenerateRequest) -> Result<Vec<u32>, GuestError> {
    let mut out = Vec::new();
    vm.generate(req, &mut |t| out.extend_from_slice(t), &|| false)?;
    Ok(out)
}

#[test]
fn a_lower_budget_evicts_idle_kv_caches_and_generation_continues() {
    let _no_scans = no_scans();
    let Some((mut vm, file)) = engine_with_model(256) else {
        return;
    };
    let (turn1, turn2) = ([1u32, 400, 401, 402, 403], [404u32, 405, 406]);
    // What the model (and the engine's message buffers) need, without any session.
    let model_only = vm.stats().expect("stats").memory_used_bytes;
    // Session 1 runs two turns with its cache evicted in between; session 2 runs the same
    // two turns undisturbed.
    vm.open_session(1, 1, 256).expect("open session 1");
    let first = run(&mut vm, &greedy(1, 1, &turn1)).expect("turn 1");
    let before = vm.memory().expect("memory status");
    // Room for the model and nothing else: every KV cache and scratch buffer goes.
    let budget = model_only.next_multiple_of(MEMORY_GRANULE);
    assert!(model_only >= file.len() as u64);
    let took = vm
        .set_budget(budget, SHRINK_DEADLINE)
        .expect("the guest fits the budget in time");
    let after = vm.memory().expect("memory status");
    assert!(after.resident_bytes <= budget, "{after:?}");
    assert!(
        after.resident_bytes < before.resident_bytes,
        "{before:?} -> {after:?}"
    );
    let stats = vm.stats().expect("stats");
    assert_eq!((stats.models_loaded, stats.sessions_open), (1, 1));
    eprintln!(
        "shrink {} -> {} MiB resident in {took:?}",
        before.resident_bytes >> 20,
        after.resident_bytes >> 20
    );
    vm.set_budget(before.max_bytes, SHRINK_DEADLINE)
        .expect("raise the budget");
    let second = run(&mut vm, &greedy(2, 1, &turn2)).expect("turn 2 after eviction");
    vm.open_session(2, 1, 256).expect("open session 2");
    assert_eq!(run(&mut vm, &greedy(3, 2, &turn1)).unwrap(), first);
    assert_eq!(
        run(&mut vm, &greedy(4, 2, &turn2)).unwrap(),
        second,
        "the rebuilt cache continues exactly like one never evicted"
    );
    vm.shutdown().expect("clean shutdown");
}

#[test]
fn the_smallest_budget_evicts_models_and_their_sessions_fail_clearly() {
    let _no_scans = no_scans();
    let Some((mut vm, _)) = engine_with_model(128) else {
        return;
    };
    vm.open_session(1, 1, 128).expect("open a session");
    run(&mut vm, &greedy(1, 1, &[1, 400])).expect("generate");
    assert!(matches!(
        vm.set_budget(0, SHRINK_DEADLINE),
        Err(GuestError::Memory(MemoryError::BadBudget { .. }))
    ));
    vm.set_budget(MIN_MEMORY_BUDGET, SHRINK_DEADLINE)
        .expect("the guest gives back all but its message buffers");
    let m = vm.memory().expect("memory status");
    assert!(m.resident_bytes <= MIN_MEMORY_BUDGET, "{m:?}");
    let stats = vm.stats().expect("stats");
    assert_eq!((stats.models_loaded, stats.sessions_open), (0, 0));
    match run(&mut vm, &greedy(2, 1, &[1, 400])) {
        Err(GuestError::Request { status, message }) => {
            assert_eq!(status, Status::NoSuchSession);
            assert!(message.contains("evicted"), "{message}");
        }
        other => panic!("expected NoSuchSession, got {other:?}"),
    }
    vm.set_budget(m.max_bytes, SHRINK_DEADLINE)
        .expect("raise the budget");
    let file = std::fs::read(model_path("tiny.Q8_0.gguf").unwrap()).unwrap();
    vm.load_model(1, &file, None, &mut |_| {})
        .expect("the model loads again");
    vm.shutdown().expect("clean shutdown");
}

#[test]
fn a_guest_that_ignores_a_shrink_is_stopped_and_its_memory_freed() {
    let _no_scans = no_scans();
    use guest_programs::hog::HOG_BYTES;
    let Some((kernel, hog)) = guest_images("hog") else {
        return;
    };
    let mut m = machine();
    let (llm, stop) = (m.llm(), m.stop_handle());
    let private = m.private_memory().expect("a private region");
    let broker = MemoryBroker::start(llm.clone(), private.clone(), stop).expect("broker");
    let (vm, result) = std::thread::scope(|s| {
        let guest = s.spawn(|| m.boot(&kernel, &hog, 1));
        llm.wait_ready(Duration::from_secs(10))
            .expect("the hog brings virtio-llm up");
        let start = Instant::now();
        while private.resident_bytes().unwrap() < HOG_BYTES {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the hog never ate"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let result = broker.set_budget(MIN_MEMORY_BUDGET, Duration::from_millis(300));
        (guest.join().expect("VM thread"), result)
    });
    match result {
        Err(MemoryError::ShrinkIgnored {
            resident, budget, ..
        }) => {
            assert!(resident >= HOG_BYTES && budget == MIN_MEMORY_BUDGET);
        }
        other => panic!("expected the shrink to be ignored, got {other:?}"),
    }
    assert!(matches!(vm, Err(VmError::StoppedByHost)), "{vm:?}");
    assert_eq!(private.resident_bytes().unwrap(), 0, "the memory was freed");
}

#[test]
fn a_budget_change_during_a_generation_is_served_at_once() {
    let _no_scans = no_scans();
    let Some((mut vm, _)) = engine_with_model(256) else {
        return;
    };
    vm.open_session(1, 1, 512).expect("open session 1");
    vm.open_session(2, 1, 512).expect("open session 2");
    let prompt = [1u32, 400, 401, 402, 403];
    run(&mut vm, &greedy(1, 1, &prompt)).expect("warm session 1");
    run(&mut vm, &greedy(2, 2, &prompt)).expect("warm session 2");
    // Session 2's cache and buffers are freed but still backed: the shrink below can be met
    // by relinquishing them, with no eviction, while session 1 keeps generating.
    vm.close_session(2).expect("close session 2");
    // The budget leaves room for what the generation itself allocates: its scratch takes
    // whole 2 MiB granules, and on a pool of huge pages the host counts each one whole.
    let in_use = vm.stats().expect("stats").memory_used_bytes;
    let budget = (in_use + (8 << 20)).next_multiple_of(MEMORY_GRANULE);
    let broker = vm.memory_broker().expect("a broker");
    let (go, started) = std::sync::mpsc::channel::<()>();
    let shrunk = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shrink = {
        let shrunk = shrunk.clone();
        std::thread::spawn(move || {
            started.recv().expect("the generation started");
            let r = broker.set_budget(budget, SHRINK_DEADLINE);
            shrunk.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        })
    };
    let mut req = greedy(3, 1, &[404, 405]);
    req.sampling = SamplingParams {
        ignore_eog: true,
        ..SamplingParams::greedy(480)
    };
    let (mut tokens, mut after_shrink) = (0, 0);
    let end = vm
        .generate(
            &req,
            &mut |t| {
                if tokens == 0 {
                    let _ = go.send(());
                }
                tokens += t.len();
                if shrunk.load(std::sync::atomic::Ordering::SeqCst) {
                    after_shrink += t.len();
                }
            },
            &|| false,
        )
        .expect("the generation completes");
    let took = shrink
        .join()
        .expect("shrink thread")
        .expect("the shrink was served while generating");
    assert_eq!(end.generated_tokens, 480);
    assert!(
        after_shrink > 0,
        "the shrink was answered only after the generation ended"
    );
    let m = vm.memory().expect("memory status");
    assert!(m.resident_bytes <= budget, "{m:?}");
    let stats = vm.stats().expect("stats");
    assert_eq!((stats.models_loaded, stats.sessions_open), (1, 1));
    eprintln!("shrink during generation took {took:?}");
    vm.shutdown().expect("clean shutdown");
}

#[test]
fn sessions_that_do_not_fit_together_evict_each_other_and_still_agree() {
    let _no_scans = no_scans();
    let Some((mut vm, file)) = engine_with_model(256) else {
        return;
    };
    let base = vm.stats().expect("stats").memory_used_bytes;
    // The guest admits a session with its KV cache plus a 32 MiB scratch reserve. A budget
    // with room for that once (and less than one session's real use more) makes opening the
    // second session evict the first one's cache, and using the first again the second's.
    let gguf = inference_guest::gguf::Gguf::parse(&file).unwrap();
    let model =
        inference_guest::model::Model::from_gguf(&gguf, inference_guest::quant::Kernels::detect())
            .unwrap();
    let admit = model.cfg.kv_cache_bytes(512) as u64 + (32 << 20);
    let budget = (base + admit).next_multiple_of(MEMORY_GRANULE) + MEMORY_GRANULE;
    vm.set_budget(budget, SHRINK_DEADLINE)
        .expect("set the budget");
    let (a1, a2, b1) = ([1u32, 400, 401], [402u32, 403], [1u32, 500, 501]);
    vm.open_session(1, 1, 512).expect("open session 1");
    let first = run(&mut vm, &greedy(1, 1, &a1)).expect("session 1, turn 1");
    let one_session = vm.stats().unwrap().memory_used_bytes - base;
    assert!(one_session > MEMORY_GRANULE, "{one_session}");
    vm.open_session(2, 1, 512)
        .expect("open session 2 (evicts session 1's cache)");
    let other = run(&mut vm, &greedy(2, 2, &b1)).expect("session 2");
    let second = run(&mut vm, &greedy(3, 1, &a2)).expect("session 1, turn 2, rebuilt");
    let again = run(&mut vm, &greedy(4, 2, &a2)).expect("session 2, turn 2, rebuilt");
    assert!(vm.memory().unwrap().resident_bytes <= budget);
    // The same turns with room for everything.
    vm.set_budget(256 << 20, SHRINK_DEADLINE)
        .expect("raise the budget");
    vm.open_session(3, 1, 512).unwrap();
    vm.open_session(4, 1, 512).unwrap();
    assert_eq!(run(&mut vm, &greedy(5, 3, &a1)).unwrap(), first);
    assert_eq!(run(&mut vm, &greedy(6, 4, &b1)).unwrap(), other);
    assert_eq!(run(&mut vm, &greedy(7, 3, &a2)).unwrap(), second);
    assert_eq!(run(&mut vm, &greedy(8, 4, &a2)).unwrap(), again);
    vm.shutdown().expect("clean shutdown");
}

/// pKVM (arm64): a protected VM's pages stay pinned until it is destroyed, so the host
/// refuses a lower budget up front rather than letting the guest drop caches it could not
/// give back, and the guest goes on serving at its budget. Raising it stays possible.
#[test]
fn a_protected_vm_keeps_its_budget_and_keeps_serving() {
    let _no_scans = no_scans();
    let Some((mut vm, _)) = engine_with_model(128) else {
        return;
    };
    if !vm.isolation().protected_vm {
        eprintln!("SKIPPED: not a protected VM (arm64 pKVM only; make test-arm64 runs it)");
        vm.shutdown().expect("clean shutdown");
        return;
    }
    let m = vm.memory().expect("memory status");
    let lower = m.max_bytes / 2 / MEMORY_GRANULE * MEMORY_GRANULE;
    let refused = vm.set_budget(lower, SHRINK_DEADLINE);
    assert!(
        matches!(refused, Err(GuestError::Memory(MemoryError::CannotShrink))),
        "{refused:?}"
    );
    assert_eq!(
        vm.memory().expect("memory status").budget_bytes,
        m.budget_bytes
    );
    vm.open_session(1, 1, 64).expect("open a session");
    let tokens = run(&mut vm, &greedy(1, 1, &[1, 400, 401])).expect("generate");
    assert!(!tokens.is_empty(), "the guest stopped serving");
    vm.shutdown().expect("clean shutdown");
}
