//! What the CPU and its OS let the kernels use, as a plain report: decoded from CPUID and
//! XCR0 on x86_64 (NEON is baseline on aarch64). The kernels choose from it
//! ([`super::Kernels::detect`]), and the guest sends it to the host so the VMM can say why a
//! guest runs weaker kernels than the host engine would.
//!
//! A `CpuFeatures` value is only data: holding one proves nothing, so it can come from the
//! wire. Only detection on the running CPU can select SIMD kernels.

use super::Isa;

/// A set of CPU features, as bits (stable: they cross virtio-llm in `StatsReply`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures(u32);

impl CpuFeatures {
    pub const AVX: Self = Self(1 << 0);
    pub const FMA: Self = Self(1 << 1);
    pub const F16C: Self = Self(1 << 2);
    pub const AVX2: Self = Self(1 << 3);
    /// XCR0 enables the SSE and AVX (YMM) register state.
    pub const YMM_STATE: Self = Self(1 << 4);
    pub const AVX512F: Self = Self(1 << 5);
    pub const AVX512BW: Self = Self(1 << 6);
    pub const AVX512VL: Self = Self(1 << 7);
    pub const AVX512VNNI: Self = Self(1 << 8);
    /// XCR0 enables the opmask, ZMM_Hi256 and Hi16_ZMM state.
    pub const ZMM_STATE: Self = Self(1 << 9);
    pub const NEON: Self = Self(1 << 10);

    /// What [`Isa::Avx2Fma`] needs.
    pub const FOR_AVX2: Self =
        Self(Self::AVX.0 | Self::FMA.0 | Self::F16C.0 | Self::AVX2.0 | Self::YMM_STATE.0);
    /// What [`Isa::Avx512Vnni`] needs.
    pub const FOR_AVX512_VNNI: Self = Self(
        Self::FOR_AVX2.0
            | Self::AVX512F.0
            | Self::AVX512BW.0
            | Self::AVX512VL.0
            | Self::AVX512VNNI.0
            | Self::ZMM_STATE.0,
    );

    const NAMES: [(Self, &'static str); 11] = [
        (Self::AVX, "AVX"),
        (Self::FMA, "FMA"),
        (Self::F16C, "F16C"),
        (Self::AVX2, "AVX2"),
        (Self::YMM_STATE, "YMM state in XCR0"),
        (Self::AVX512F, "AVX-512F"),
        (Self::AVX512BW, "AVX-512BW"),
        (Self::AVX512VL, "AVX-512VL"),
        (Self::AVX512VNNI, "AVX-512 VNNI"),
        (Self::ZMM_STATE, "AVX-512 state in XCR0"),
        (Self::NEON, "NEON"),
    ];

    /// The set with exactly these bits (unknown bits are kept: a newer guest may send more).
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Decodes CPUID leaf 1 ECX, leaf 7 (sub-leaf 0) EBX and ECX, and the XCR0 the OS set
    /// (0 when the OS enables no extended state or it cannot be read).
    pub fn from_x86_cpuid(leaf1_ecx: u32, leaf7_ebx: u32, leaf7_ecx: u32, xcr0: u64) -> Self {
        let bit = |word: u32, n: u32, f: Self| if word & (1 << n) != 0 { f.0 } else { 0 };
        let mut bits = bit(leaf1_ecx, 12, Self::FMA)
            | bit(leaf1_ecx, 28, Self::AVX)
            | bit(leaf1_ecx, 29, Self::F16C)
            | bit(leaf7_ebx, 5, Self::AVX2)
            | bit(leaf7_ebx, 16, Self::AVX512F)
            | bit(leaf7_ebx, 30, Self::AVX512BW)
            | bit(leaf7_ebx, 31, Self::AVX512VL)
            | bit(leaf7_ecx, 11, Self::AVX512VNNI);
        // XCR0 bits 1-2: SSE and AVX state; 5-7: opmask, ZMM_Hi256, Hi16_ZMM.
        if xcr0 & 0b110 == 0b110 {
            bits |= Self::YMM_STATE.0;
        }
        if xcr0 & 0b1110_0000 == 0b1110_0000 {
            bits |= Self::ZMM_STATE.0;
        }
        Self(bits)
    }

    /// The best kernels a CPU with these features can run.
    pub const fn best_isa(self) -> Isa {
        if self.contains(Self::NEON) {
            Isa::Neon
        } else if self.contains(Self::FOR_AVX512_VNNI) {
            Isa::Avx512Vnni
        } else if self.contains(Self::FOR_AVX2) {
            Isa::Avx2Fma
        } else {
            Isa::Scalar
        }
    }

    /// The features `isa` needs that this set lacks, by name (empty: it can run `isa`).
    pub fn missing_for(self, isa: Isa) -> impl Iterator<Item = &'static str> {
        let need = match isa {
            Isa::Scalar => Self(0),
            Isa::Avx2Fma => Self::FOR_AVX2,
            Isa::Avx512Vnni => Self::FOR_AVX512_VNNI,
            Isa::Neon => Self::NEON,
        };
        Self::NAMES
            .into_iter()
            .filter(move |(f, _)| need.contains(*f) && !self.contains(*f))
            .map(|(_, name)| name)
    }

    /// This CPU's features as the running OS enables them: CPUID, and XCR0 read with
    /// `xgetbv` only when CPUID says the OS enabled it (OSXSAVE).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let osxsave = core::arch::x86_64::__cpuid_count(1, 0).ecx & (1 << 27) != 0;
            // SAFETY: with OSXSAVE set, xgetbv is enabled and reads XCR0.
            let xcr0 = if osxsave { unsafe { xgetbv0() } } else { 0 };
            Self::from_x86_cpuid_with_xcr0(xcr0)
        }
        #[cfg(target_arch = "aarch64")]
        {
            Self::NEON
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            Self(0)
        }
    }

    /// As [`CpuFeatures::detect`], with `xcr0` as the XCR0 in force, however the caller
    /// read it (see [`super::Kernels::for_detected`]); `xcr0` is ignored off x86_64.
    pub fn detect_with_xcr0(xcr0: u64) -> Self {
        #[cfg(target_arch = "x86_64")]
        return Self::from_x86_cpuid_with_xcr0(xcr0);
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = xcr0;
            Self::detect()
        }
    }

    /// CPUID of this CPU with `xcr0` as the OS's XCR0.
    #[cfg(target_arch = "x86_64")]
    fn from_x86_cpuid_with_xcr0(xcr0: u64) -> Self {
        use core::arch::x86_64::__cpuid_count;
        if __cpuid_count(0, 0).eax < 7 {
            return Self(0);
        }
        let l1 = __cpuid_count(1, 0);
        let l7 = __cpuid_count(7, 0);
        Self::from_x86_cpuid(l1.ecx, l7.ebx, l7.ecx, xcr0)
    }
}

/// # Safety
/// The CPU must support xsave and the OS must have set CR4.OSXSAVE (cpuid.1:ecx bit 27).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    // SAFETY: guaranteed by this function's contract.
    unsafe { core::arch::x86_64::_xgetbv(0) }
}

impl core::fmt::Display for CpuFeatures {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut first = true;
        for (feature, name) in Self::NAMES {
            if self.contains(feature) {
                f.write_str(if first { "" } else { ", " })?;
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    /// CPUID words of an AVX-512 VNNI CPU (Zen 4, read off a development machine) and of an
    /// AVX2-only one (Zen 3).
    const ZEN4: (u32, u32, u32) = (0xf7f8_3203, 0xf1bf_2bfb, 0x1a00_5f46);
    const ZEN3_L7EBX: u32 = 0x219c_07ab;

    #[test]
    fn a_full_xcr0_on_zen4_selects_the_vnni_kernels() {
        let f = CpuFeatures::from_x86_cpuid(ZEN4.0, ZEN4.1, ZEN4.2, 0xe7);
        assert_eq!(f.best_isa(), Isa::Avx512Vnni, "{f}");
        assert_eq!(f.missing_for(Isa::Avx512Vnni).count(), 0);
    }

    #[test]
    fn without_avx512_state_in_xcr0_the_same_cpu_runs_avx2_and_says_why() {
        let f = CpuFeatures::from_x86_cpuid(ZEN4.0, ZEN4.1, ZEN4.2, 0b111);
        assert_eq!(f.best_isa(), Isa::Avx2Fma);
        assert_eq!(
            f.missing_for(Isa::Avx512Vnni).collect::<Vec<_>>(),
            ["AVX-512 state in XCR0"]
        );
    }

    #[test]
    fn an_os_that_enables_no_extended_state_gets_scalar_kernels() {
        let f = CpuFeatures::from_x86_cpuid(ZEN4.0, ZEN4.1, ZEN4.2, 0);
        assert_eq!(f.best_isa(), Isa::Scalar);
        assert!(
            f.missing_for(Isa::Avx2Fma).eq(["YMM state in XCR0"]),
            "{:?}",
            f.missing_for(Isa::Avx2Fma).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_avx2_cpu_lacks_only_the_avx512_features() {
        let f = CpuFeatures::from_x86_cpuid(ZEN4.0, ZEN3_L7EBX, 0, 0b111);
        assert_eq!(f.best_isa(), Isa::Avx2Fma);
        assert_eq!(f.missing_for(Isa::Avx512Vnni).count(), 5);
    }

    #[test]
    fn bits_round_trip_and_print_by_name() {
        let f = CpuFeatures::AVX.union(CpuFeatures::FMA);
        assert_eq!(CpuFeatures::from_bits(f.bits()), f);
        assert_eq!(f.to_string(), "AVX, FMA");
        assert_eq!(CpuFeatures::default().to_string(), "none");
        assert_eq!(CpuFeatures::NEON.best_isa(), Isa::Neon);
    }

    #[test]
    fn detection_agrees_with_the_kernels_chosen() {
        assert_eq!(
            CpuFeatures::detect().best_isa(),
            super::super::Kernels::detect().isa()
        );
    }
}
