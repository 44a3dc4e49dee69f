//! PID 1: set up the machine, report the KVM facts, run /checks, print the marker, power off.

use crate::checks::{self, Outcome};
use crate::{kvm, sys};
use std::io::Write;
use std::time::Instant;

const CHECKS: &str = "/checks";

/// Never returns: the machine powers off (or, should that fail, PID 1 exits and the kernel
/// panics, which ends QEMU under `-no-reboot`).
pub fn run() -> ! {
    let pass = match setup() {
        Ok(()) => {
            kvm::report_facts();
            run_checks()
        }
        Err(e) => {
            println!("ARM64 INIT FAIL: {e}");
            false
        }
    };
    println!("FLEXSERVE-ARM64: {}", if pass { "PASS" } else { "FAIL" });
    let _ = std::io::stdout().flush();
    let e = sys::power_off();
    println!("arm64-init: {e}");
    std::process::exit(1)
}

fn setup() -> Result<(), crate::error::Error> {
    sys::mount("proc", "/proc")?;
    sys::mount("sysfs", "/sys")?;
    sys::mount("devtmpfs", "/dev")?;
    // No tmpfs on /tmp: the initramfs root is already writable, and the staged tree may
    // itself live under /tmp (a checkout in /tmp keeps its absolute paths in the image).
    std::fs::create_dir_all("/tmp").map_err(|source| crate::error::Error::Sys {
        what: "mkdir /tmp".into(),
        source,
    })?;
    sys::unlimit_memlock()?;
    sys::loopback_up()
}

/// Runs every check in order; true when there were checks and all passed.
fn run_checks() -> bool {
    let text = match std::fs::read_to_string(CHECKS) {
        Ok(t) => t,
        Err(e) => {
            println!("ARM64 CHECK FAIL {CHECKS}: cannot read it: {e}");
            return false;
        }
    };
    let list = match checks::parse(&text) {
        Ok(list) => list,
        Err(e) => {
            println!("ARM64 CHECK FAIL {CHECKS}: {e}");
            return false;
        }
    };
    let mut failed = Vec::new();
    for check in &list {
        println!("ARM64 CHECK RUN {}: {}", check.name, check.argv.join(" "));
        let start = Instant::now();
        match checks::run(check) {
            Outcome::Pass => println!(
                "ARM64 CHECK PASS {} ({:.1}s)",
                check.name,
                start.elapsed().as_secs_f64()
            ),
            Outcome::Fail(why) => {
                println!("ARM64 CHECK FAIL {}: {why}", check.name);
                failed.push(check.name.as_str());
            }
        }
    }
    println!(
        "ARM64 CHECKS: {} passed, {} failed{}",
        list.len() - failed.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(", "))
        }
    );
    failed.is_empty()
}
