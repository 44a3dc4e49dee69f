//! Which compute kernels the guest's engine runs, next to the ones the host engine would run
//! on this CPU: a guest several times slower than the host must say so, and why.

use inference_guest::quant::{CpuFeatures, Isa, Kernels};
use virtio_llm::wire::control::StatsReply;

/// The guest engine's kernels, as it reported them, and the host engine's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestKernels {
    /// `None`: a kernel number this VMM does not know.
    pub guest: Option<Isa>,
    /// The CPU features the guest chose from.
    pub guest_cpu: CpuFeatures,
    /// What the host engine runs here.
    pub host: Isa,
}

impl GuestKernels {
    /// From the guest's `StatsReply`, beside this host's own detection.
    pub fn from_stats(stats: &StatsReply) -> Self {
        Self::compare(stats, Kernels::detect().isa())
    }

    fn compare(stats: &StatsReply, host: Isa) -> Self {
        Self {
            guest: Isa::from_code(stats.engine_kernels),
            guest_cpu: CpuFeatures::from_bits(stats.cpu_features),
            host,
        }
    }

    /// `None` when the guest runs the host's kernels; else one line saying which it runs
    /// instead and what its vCPUs lack.
    pub fn weaker_than_host(&self) -> Option<String> {
        if self.guest == Some(self.host) {
            return None;
        }
        let guest = self
            .guest
            .map_or_else(|| "unknown".to_string(), |i| format!("{i:?}"));
        let missing: Vec<_> = self.guest_cpu.missing_for(self.host).collect();
        let why = if missing.is_empty() {
            "its CPU features would allow them, so its engine chose differently".to_string()
        } else {
            format!("its vCPUs lack {}", missing.join(", "))
        };
        Some(format!(
            "the guest engine runs {guest} kernels, not the {:?} the host engine runs on this \
             CPU, so it computes several times slower: {why} (the guest sees: {})",
            self.host, self.guest_cpu
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(kernels: Isa, cpu: CpuFeatures) -> StatsReply {
        StatsReply {
            engine_kernels: kernels.code(),
            cpu_features: cpu.bits(),
            ..StatsReply::default()
        }
    }

    #[test]
    fn the_same_kernels_say_nothing() {
        let s = stats(Isa::Avx512Vnni, CpuFeatures::FOR_AVX512_VNNI);
        assert_eq!(
            GuestKernels::compare(&s, Isa::Avx512Vnni).weaker_than_host(),
            None
        );
    }

    #[test]
    fn scalar_in_the_guest_names_what_its_vcpus_lack() {
        // What a nested paravirtual KVM showed before the fix: XCR0 without YMM state.
        let cpu = CpuFeatures::from_x86_cpuid(0xf7f8_3203, 0xf1bf_2bfb, 0x1a00_5f46, 0);
        let k = GuestKernels::compare(&stats(Isa::Scalar, cpu), Isa::Avx512Vnni);
        let msg = k.weaker_than_host().expect("a warning");
        assert!(
            msg.contains("runs Scalar kernels, not the Avx512Vnni"),
            "{msg}"
        );
        assert!(
            msg.contains("lack YMM state in XCR0, AVX-512 state in XCR0"),
            "{msg}"
        );
    }

    #[test]
    fn an_unknown_kernel_number_is_reported_as_such() {
        let s = StatsReply {
            engine_kernels: 99,
            ..StatsReply::default()
        };
        let msg = GuestKernels::compare(&s, Isa::Avx2Fma)
            .weaker_than_host()
            .unwrap();
        assert!(msg.contains("runs unknown kernels"), "{msg}");
    }
}
