//! Whether AES-256-GCM runs on the CPU's AES and carry-less-multiply instructions here.
//!
//! `aes` 0.8 and `polyval` 0.6 (under `aes-gcm`) choose at run time through `cpufeatures`,
//! falling back to constant-time software (several times slower):
//!
//! - **x86_64 with an OS** (`x86_64-unknown-linux-gnu`: the host tools and the x86_64 guest
//!   engine, which is built for that target): AES-NI and PCLMULQDQ are detected with CPUID
//!   at run time. Nothing to configure.
//! - **x86_64-unknown-none**: `cpufeatures` does no detection on `target_os = "none"`; only
//!   `-C target-feature=+aes,+pclmulqdq` (with SSE enabled) turns the instructions on.
//! - **aarch64** (`aarch64-unknown-none`, the arm64 guest engine): the ARMv8 backends are
//!   compiled only with `--cfg aes_armv8 --cfg polyval_armv8`, and on a target without an
//!   OS `cpufeatures` reports them present only when compiled with
//!   `-C target-feature=+aes` (which implies NEON; PMULL comes with it). So the engine's
//!   RUSTFLAGS need all three: `--cfg aes_armv8 --cfg polyval_armv8 -C target-feature=+aes`.
//!   The result then assumes the Cryptography Extensions, which every pKVM-capable core has
//!   (and QEMU's `-cpu max`).

/// Whether this build, on this CPU, seals and opens chunks with hardware AES and GHASH.
pub fn aes_gcm_accelerated() -> bool {
    imp::accelerated()
}

#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
mod imp {
    cpufeatures::new!(aes_clmul, "aes", "pclmulqdq");

    pub(super) fn accelerated() -> bool {
        aes_clmul::get()
    }
}

#[cfg(target_arch = "aarch64")]
mod imp {
    cpufeatures::new!(armv8_aes, "aes");

    pub(super) fn accelerated() -> bool {
        cfg!(all(aes_armv8, polyval_armv8)) && armv8_aes::get()
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64")))]
mod imp {
    pub(super) fn accelerated() -> bool {
        false
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    extern crate std;

    #[test]
    fn x86_64_reports_what_cpuid_says() {
        let cpu =
            std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("pclmulqdq");
        assert_eq!(super::aes_gcm_accelerated(), cpu);
    }
}
