//! `arm64-init`: PID 1 of the emulated arm64 host that `make test-arm64` boots under QEMU
//! (see docs/testing.md), and the small helper commands its checks use.
//!
//! - as PID 1: mounts proc, sysfs and devtmpfs, raises RLIMIT_MEMLOCK, prints
//!   `ARM64 FACT` lines about KVM, runs the checks of /checks, prints
//!   `FLEXSERVE-ARM64: PASS` or `FLEXSERVE-ARM64: FAIL` and powers the machine off;
//! - `arm64-init kvm-vm normal|protected [--expect-refused]`: creates one VM of that type;
//! - `arm64-init expect-output FILE PROGRAM [ARG ...]`: PROGRAM's stdout must equal FILE.

mod checks;
mod error;
mod expect;
mod init;
mod kvm;
mod sys;

use error::Error;
use std::process::ExitCode;

const USAGE: &str = "arm64-init (as PID 1) | kvm-vm normal|protected [--expect-refused] \
                     | expect-output FILE PROGRAM [ARG ...]";

fn main() -> ExitCode {
    if std::process::id() == 1 {
        init::run();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("kvm-vm") => kvm_vm(&args[1..]),
        Some("expect-output") => expect::run(&args[1..]),
        _ => Err(Error::Usage(USAGE)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("arm64-init: {e}");
            ExitCode::from(2)
        }
    }
}

/// `kvm-vm KIND [--expect-refused]`: true when KVM accepts (or, with the flag, refuses) it.
fn kvm_vm(args: &[String]) -> Result<bool, Error> {
    const U: &str = "kvm-vm normal|protected [--expect-refused]";
    let (kind, expect_refused) = match args {
        [k] => (k, false),
        [k, f] if f == "--expect-refused" => (k, true),
        _ => return Err(Error::Usage(U)),
    };
    let kind = kvm::VmKind::parse(kind).ok_or(Error::Usage(U))?;
    let created = kvm::create_vm(kind);
    match &created {
        Ok(()) => println!("kvm-vm: KVM_CREATE_VM {kind:?}: created"),
        Err(e) => println!("kvm-vm: {kind:?}: {e}"),
    }
    Ok(created.is_ok() != expect_refused)
}
