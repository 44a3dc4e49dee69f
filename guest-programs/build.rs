//! Guest programs (and the engine, whose manifest points here) are static, position-dependent
//! executables with no C runtime, loaded at 2 MiB (the user program's place in the guest's
//! layout, docs/arm64.md).
//!
//! - x86_64 builds for the host target, linked by `cc` with rust-lld, whose default image
//!   base on x86_64 is already 2 MiB.
//! - aarch64 builds for `aarch64-unknown-none`, linked by rust-lld directly (no cross C
//!   toolchain): its default image base is not 2 MiB, so it is set, and pages are 4 KiB like
//!   the kernel's granule (the default maximum page size of 64 KiB would pad each segment).
fn main() {
    if std::env::var("CARGO_FEATURE_GUEST").is_err() {
        return;
    }
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let args: &[&str] = match (arch.as_str(), os.as_str()) {
        ("x86_64", "linux") => &["-nostartfiles", "-nostdlib", "-static", "-no-pie"],
        ("aarch64", "none") => &[
            "--image-base=0x200000",
            "-zmax-page-size=4096",
            "-static",
            "--no-pie",
        ],
        _ => panic!(
            "guest programs build for x86_64-unknown-linux-gnu (`make image`) or \
             aarch64-unknown-none (`make image-arm64`), not {arch}-{os}"
        ),
    };
    for arg in args {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
