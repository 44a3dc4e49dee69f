//! Declares the cfgs `accel.rs` reads (set by RUSTFLAGS for the arm64 guest) so that
//! `unexpected_cfgs` knows them.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(aes_armv8)");
    println!("cargo::rustc-check-cfg=cfg(polyval_armv8)");
}
