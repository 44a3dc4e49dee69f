//! The guest executable is static and position-dependent, with no C runtime.
fn main() {
    if std::env::var("CARGO_FEATURE_GUEST").is_ok() {
        for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie"] {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
    }
}
