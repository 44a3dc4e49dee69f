//! `make bench-memory`: the cost of moving memory between host and guest, for 1, 4 and 8 GiB
//! of guest_memfd private memory:
//! - donate: the guest (2 vCPUs) first-touches every 4 KiB page of fresh private memory,
//!   which is how memory becomes the guest's on demand;
//! - reclaim: the host releases all of it (`fallocate(PUNCH_HOLE)`);
//! - strawman: the host reserves and zeroes the whole region at VM start (`fallocate`),
//!   then the guest touches it.
//!
//! The paper's anchor (Flex-Mem): 8 GB allocated in 568.58 ms, reclaimed in 80.50 ms.
//! Last line: one JSON object.

use flexserve_e2e::guest_images;
use std::time::{Duration, Instant};
use vmm::machine::{Machine, MachineConfig};

const GIB: u64 = 1 << 30;

/// Boots the floor program over `size` bytes of private memory; returns the guest's touch
/// time, the host's up-front reservation time (strawman only) and the reclaim time.
fn run(kernel: &[u8], toucher: &[u8], size: u64, strawman: bool) -> (Duration, Duration, Duration) {
    let mut m = Machine::new(MachineConfig {
        private_size: size as usize,
        deadline: Duration::from_secs(600),
        ..MachineConfig::default()
    })
    .expect("create VM");
    let private = m.private_memory().expect("a private region");
    let reserve = if strawman {
        let t = Instant::now();
        private.preallocate().expect("preallocate");
        t.elapsed()
    } else {
        Duration::ZERO
    };
    let code = m.boot(kernel, toucher, 2).expect("the floor program runs");
    assert_eq!(code, 0);
    let touch_ns = m
        .console()
        .lines()
        .iter()
        .find_map(|l| l.strip_prefix("elapsed ns 0x"))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .expect("the floor program prints its time");
    let t = Instant::now();
    private
        .release(private.guest_addr(), size)
        .expect("release");
    (Duration::from_nanos(touch_ns), reserve, t.elapsed())
}

fn gib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / GIB as f64 / d.as_secs_f64().max(1e-9)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes the harness; nothing to list.
    }
    let Some((kernel, toucher)) = guest_images("touch-private") else {
        eprintln!("bench-memory needs /dev/kvm and `make image`");
        std::process::exit(1);
    };
    println!(
        "size   donate (guest touch)      reclaim (punch hole)     strawman (reserve + touch)"
    );
    let mut rows = Vec::new();
    for gib in [1u64, 4, 8] {
        let size = gib * GIB;
        let (touch, _, reclaim) = run(&kernel, &toucher, size, false);
        let (s_touch, s_reserve, _) = run(&kernel, &toucher, size, true);
        let strawman = s_reserve + s_touch;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let rate = |d| gib_per_s(size, d);
        println!(
            "{gib} GiB  {:>8.1} ms {:>6.2} GiB/s   {:>8.1} ms {:>6.2} GiB/s   {:>8.1} ms ({:.1} + {:.1}) {:>6.2} GiB/s",
            ms(touch),
            rate(touch),
            ms(reclaim),
            rate(reclaim),
            ms(strawman),
            ms(s_reserve),
            ms(s_touch),
            rate(strawman),
        );
        rows.push(format!(
            "{{\"gib\":{gib},\"donate_ms\":{:.1},\"donate_gib_s\":{:.3},\"reclaim_ms\":{:.1},\"reclaim_gib_s\":{:.3},\"strawman_ms\":{:.1},\"strawman_reserve_ms\":{:.1},\"strawman_gib_s\":{:.3}}}",
            ms(touch),
            rate(touch),
            ms(reclaim),
            rate(reclaim),
            ms(strawman),
            ms(s_reserve),
            rate(strawman),
        ));
    }
    println!(
        "{{\"bench\":\"memory\",\"anchor\":{{\"alloc_8gb_ms\":568.58,\"reclaim_8gb_ms\":80.50}},\"rows\":[{}]}}",
        rows.join(",")
    );
}
