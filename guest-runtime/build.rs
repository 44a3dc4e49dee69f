//! How guest executables are linked: static, position-dependent, no C runtime, loaded at
//! 2 MiB (the user program's place in the guest's layout, docs/arm64.md).
//!
//! - x86_64 builds for the host target, linked by `cc` with rust-lld, whose default image
//!   base on x86_64 is already 2 MiB.
//! - aarch64 builds for `aarch64-unknown-none`, linked by rust-lld directly (no cross C
//!   toolchain): its default image base is not 2 MiB, so it is set, and pages are 4 KiB like
//!   the kernel's granule (the default maximum page size of 64 KiB would pad each segment).
//!
//! Link arguments a build script emits (`cargo::rustc-link-arg*`) apply to its own package's
//! targets only; they never reach the executables of crates that depend on this one. So
//! this script does not link anything: it publishes the arguments as `links` metadata, which
//! Cargo hands to the build scripts of the direct dependents (`guest-programs`,
//! `guest-service`) as `DEP_FLEXSERVE_GUEST_RUNTIME_LINK_ARGS`; each of them has a
//! three-line build script that emits them for its own binaries. The knowledge stays here,
//! in one place.
fn main() {
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
        // Not a guest target (host tests on other targets build the library only): the
        // dependents' build scripts refuse to link a guest executable without arguments.
        _ => &[],
    };
    // Space-separated: none of the arguments contains a space.
    println!("cargo::metadata=link_args={}", args.join(" "));
    println!("cargo::rerun-if-changed=build.rs");
}
