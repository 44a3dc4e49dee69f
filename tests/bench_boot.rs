//! `make bench-boot`: VM create → guest user mode → clean exit, over 20 boots; and a fixed
//! compute kernel in guest user mode vs the same kernel on the host (expected ≈ 1.0 on these
//! machines, where ring-3 code runs natively). Last line: one JSON object.

use guest_programs::compute_kernel;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vmm::machine::{Machine, MachineConfig};

const BOOTS: usize = 20;
const COMPUTE_REPS: usize = 3;
/// Must equal `ITERATIONS` in guest-programs/src/bin/compute.rs.
const ITERATIONS: u64 = 300_000_000;

fn image(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e}; run `{}`", p.display(), flexserve_e2e::MAKE_IMAGE))
}

fn boot_once(kernel: &[u8], user: &[u8]) -> (Duration, u32) {
    let t = Instant::now();
    let config = MachineConfig {
        deadline: Duration::from_secs(120),
        ..MachineConfig::default()
    };
    let mut m = Machine::new(config).expect("create VM");
    let code = m.boot(kernel, user, 1).expect("guest ran to its exit");
    (t.elapsed(), code)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes the harness; nothing to list.
    }
    let kernel = image(flexserve_e2e::kernel_path());
    let exit7 = image(flexserve_e2e::program_path("exit7"));
    let compute = image(flexserve_e2e::program_path("compute"));

    let mut boots: Vec<f64> = (0..BOOTS)
        .map(|_| {
            let (t, code) = boot_once(&kernel, &exit7);
            assert_eq!(code, 7);
            t.as_secs_f64() * 1e3
        })
        .collect();
    boots.sort_by(f64::total_cmp);
    let (p50, p90) = (percentile(&boots, 0.5), percentile(&boots, 0.9));

    let expected = (compute_kernel(ITERATIONS) & 0xff) as u32;
    let (mut guest, mut host) = (Vec::new(), Vec::new());
    for _ in 0..COMPUTE_REPS {
        let (t, code) = boot_once(&kernel, &compute);
        assert_eq!(code, expected, "guest computed a different result");
        guest.push((t.as_secs_f64() * 1e3 - p50).max(0.0));
        let t = Instant::now();
        std::hint::black_box(compute_kernel(std::hint::black_box(ITERATIONS)));
        host.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (g, h) = (median(guest), median(host));
    println!("boot (create -> user mode -> exit), {BOOTS} boots: p50 {p50:.2} ms, p90 {p90:.2} ms");
    println!("compute kernel ({ITERATIONS} iterations): guest user mode {g:.1} ms, host {h:.1} ms");
    println!(
        "{{\"bench\":\"boot\",\"boot_ms_p50\":{p50:.3},\"boot_ms_p90\":{p90:.3},\"compute_ratio_guest_vs_host\":{:.3}}}",
        g / h
    );
}
