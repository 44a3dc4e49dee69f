//! Links the guest executables as `guest-runtime` says (static, no C runtime, at 2 MiB).
//!
//! Link arguments from a dependency's build script never reach this crate's binaries, so
//! `guest-runtime`'s build script publishes them as `links` metadata and this one emits them
//! for the binaries here (`guest-service/build.rs` is the same lines).
fn main() {
    if std::env::var_os("CARGO_FEATURE_GUEST").is_none() {
        return;
    }
    let args = std::env::var("DEP_FLEXSERVE_GUEST_RUNTIME_LINK_ARGS").unwrap_or_default();
    assert!(
        !args.is_empty(),
        "guest programs build for x86_64-unknown-linux-gnu (`make image`) or \
         aarch64-unknown-none (`make image-arm64`), not {}",
        std::env::var("TARGET").unwrap_or_default()
    );
    for arg in args.split(' ') {
        println!("cargo::rustc-link-arg-bins={arg}");
    }
}
