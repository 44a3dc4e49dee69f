//! The host cannot read guest-private memory (under KVM). The `canary` guest program puts a
//! random 64-byte canary A into pages of the private region (guest_memfd) and a canary B
//! into the shared window, and publishes only their hashes. This process (the VMM) then
//! reads every readable mapping it has through `/proc/self/mem` and looks for a 64-byte
//! block with either hash: B must be found (the scan sees guest memory the host may read),
//! A must not; and a direct read of the private region's host mapping must fail.

use flexserve_e2e::guest_images;
use guest_programs::canary::{CANARY_BYTES, HASHES_OFFSET, fnv1a};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use virtio_llm::spec::layout::SHARED_WINDOW_BASE;
use vm_memory::{Bytes, GuestAddress};
use vmm::machine::{Machine, MachineConfig, VmError};

/// Which of the two hashes a scan of this process's readable memory found, and how many
/// bytes it read.
fn scan(hash_a: u64, hash_b: u64) -> (bool, bool, u64) {
    let mut maps = String::new();
    std::fs::File::open("/proc/self/maps")
        .and_then(|mut f| f.read_to_string(&mut maps))
        .expect("read /proc/self/maps");
    let mem = std::fs::File::open("/proc/self/mem").expect("open /proc/self/mem");
    let (mut found_a, mut found_b, mut scanned) = (false, false, 0u64);
    let mut buf = vec![0u8; 1 << 20];
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
            // Pages that cannot be read (the private region among them) are skipped.
            if mem.read_exact_at(&mut buf[..n], at).is_ok() {
                scanned += n as u64;
                for block in buf[..n].chunks_exact(CANARY_BYTES) {
                    let h = fnv1a(block);
                    found_a |= h == hash_a;
                    found_b |= h == hash_b;
                }
            }
            at += n as u64;
        }
    }
    (found_a, found_b, scanned)
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

#[test]
fn the_host_cannot_read_private_memory_but_can_read_the_shared_window() {
    let Some((kernel, canary)) = guest_images("canary") else {
        return;
    };
    let mut m = machine();
    let (shared, stop) = (m.memory_for_tests(), m.stop_handle());
    let private = m.private_memory().expect("a private region");
    let (vm, (found_a, found_b, scanned, direct)) = std::thread::scope(|s| {
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
        let (found_a, found_b, scanned) = scan(hash_a, hash_b);
        // A direct read of the private region's own host mapping faults.
        let mem = std::fs::File::open("/proc/self/mem").expect("open /proc/self/mem");
        let mut page = [0u8; 4096];
        let direct = mem.read_exact_at(&mut page, private.host_range().start);
        stop.stop();
        (
            guest.join().expect("VM thread"),
            (found_a, found_b, scanned, direct),
        )
    });
    assert!(matches!(vm, Err(VmError::StoppedByHost)), "{vm:?}");
    assert!(scanned > 64 << 20, "the scan read only {scanned} bytes");
    assert!(
        found_b,
        "the scan did not find the shared-window canary: it is broken"
    );
    assert!(!found_a, "the private canary is readable by the host");
    assert!(direct.is_err(), "reading the private mapping succeeded");
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
