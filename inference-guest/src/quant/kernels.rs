//! The safe, run-time dispatched entry points: length checks once per call, then the best
//! kernel this CPU supports, falling back to the scalar reference for anything a SIMD back end
//! does not cover.

use super::act_format::ActFormat;
use super::reference;
use crate::ggml_type::GgmlType;

/// Instruction set a [`Kernels`] value dispatches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2Fma,
    /// AVX2 kernels with AVX-512 VNNI integer products and wider register tiles.
    Avx512Vnni,
    Neon,
}

impl Isa {
    /// Every kernel set, weakest first.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2Fma, Isa::Avx512Vnni, Isa::Neon];

    /// The number virtio-llm's `StatsReply` carries for it.
    pub const fn code(self) -> u32 {
        match self {
            Isa::Scalar => 0,
            Isa::Avx2Fma => 1,
            Isa::Avx512Vnni => 2,
            Isa::Neon => 3,
        }
    }

    /// The kernel set numbered `code` (`None`: a number this build does not know).
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.code() == code)
    }
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(super::avx2::Avx2),
    #[cfg(target_arch = "aarch64")]
    Neon(super::neon::Neon),
}

/// Kernel set chosen for this CPU. Only [`Kernels::detect`] can select a SIMD back end, so
/// holding one is proof that its instructions are available.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    backend: Backend,
}

impl Kernels {
    /// The best back end this CPU supports (cpuid + XCR0 on x86_64; NEON is baseline on
    /// aarch64). Works without std.
    pub fn detect() -> Self {
        Self::for_features(super::CpuFeatures::detect())
    }

    /// The kernels for `cpu`, which the caller detected on the running CPU some other way
    /// than [`Kernels::detect`]: a guest whose vCPUs run user code under an XCR0 their CPUID
    /// does not admit to ([`super::CpuFeatures::detect_with_xcr0`]). On a nested paravirtual
    /// KVM the guest's CPUID says OSXSAVE is off while its user code runs, natively, with the
    /// host's XCR0.
    ///
    /// # Safety
    /// `cpu` must hold only features of the CPU every thread using the kernels runs on, with
    /// the register state XCR0 enables there.
    pub unsafe fn for_detected(cpu: super::CpuFeatures) -> Self {
        Self::for_features(cpu)
    }

    /// The kernels for features detected on the running CPU (private: a `CpuFeatures` from
    /// anywhere else proves nothing).
    fn for_features(f: super::CpuFeatures) -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = super::avx2::Avx2::for_features(f) {
            return Self {
                backend: Backend::Avx2(k),
            };
        }
        #[cfg(target_arch = "aarch64")]
        if f.contains(super::CpuFeatures::NEON) {
            return Self {
                backend: Backend::Neon(super::neon::Neon::new()),
            };
        }
        let _ = f;
        Self::scalar()
    }

    /// Every SIMD kernel set this CPU can run, best first (for parity tests of each path).
    pub fn available() -> alloc::vec::Vec<Self> {
        let best = Self::detect();
        #[cfg(target_arch = "x86_64")]
        if let Backend::Avx2(k) = best.backend
            && k.has_vnni()
        {
            let avx2_only = Self {
                backend: Backend::Avx2(k.without_vnni()),
            };
            return alloc::vec![best, avx2_only];
        }
        alloc::vec![best]
    }

    /// The scalar reference kernels.
    pub fn scalar() -> Self {
        Self {
            backend: Backend::Scalar,
        }
    }

    /// Which instruction set this value dispatches to.
    pub fn isa(&self) -> Isa {
        match self.backend {
            Backend::Scalar => Isa::Scalar,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(k) if k.has_vnni() => Isa::Avx512Vnni,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(_) => Isa::Avx2Fma,
            #[cfg(target_arch = "aarch64")]
            Backend::Neon(_) => Isa::Neon,
        }
    }

    /// Quantises an activation row; `out.len()` must be `fmt.row_bytes(x.len())`.
    pub fn quantize_act(&self, fmt: ActFormat, x: &[f32], out: &mut [u8]) {
        assert_eq!(
            out.len(),
            fmt.row_bytes(x.len()),
            "quantize_act {fmt:?}: bad output length"
        );
        let done = match self.backend {
            Backend::Scalar => false,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(k) => k.quantize_act(fmt, x, out),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon(k) => k.quantize_act(fmt, x, out),
        };
        if !done {
            reference::quantize_act(fmt, x, out);
        }
    }

    /// Dot product of one weight row of `w_ty` with one activation row in
    /// `ActFormat::for_weights(w_ty)`, both `n` values long.
    pub fn dot(&self, w_ty: GgmlType, n: usize, w_row: &[u8], act_row: &[u8]) -> f32 {
        let fmt = ActFormat::for_weights(w_ty);
        assert_eq!(
            Some(w_row.len()),
            w_ty.row_bytes(n),
            "dot {}: bad weight row length",
            w_ty.name()
        );
        assert_eq!(
            act_row.len(),
            fmt.row_bytes(n),
            "dot {}: bad activation row length",
            w_ty.name()
        );
        let r = match self.backend {
            Backend::Scalar => None,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(k) => k.dot(w_ty, w_row, act_row),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon(k) => k.dot(w_ty, w_row, act_row),
        };
        r.unwrap_or_else(|| reference::dot(w_ty, w_row, act_row))
    }

    /// `out[i * ncols + j] = dot(weight row i, activation row j)` for `i < nrows`, `j < ncols`.
    #[allow(clippy::too_many_arguments)] // the contract's signature
    pub fn matmul(
        &self,
        w_ty: GgmlType,
        n: usize,
        w: &[u8],
        nrows: usize,
        act: &[u8],
        ncols: usize,
        out: &mut [f32],
    ) {
        let (wrb, arb) = operand_rows(w_ty, n, w, nrows, act, ncols);
        assert_eq!(
            out.len(),
            nrows * ncols,
            "matmul {}: bad output length",
            w_ty.name()
        );
        if nrows == 0 || ncols == 0 {
            return;
        }
        let done = match self.backend {
            Backend::Scalar => false,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(k) => k.matmul(w_ty, n, w, nrows, act, ncols, out),
            #[cfg(target_arch = "aarch64")]
            Backend::Neon(k) => k.matmul(w_ty, n, w, nrows, act, ncols, out),
        };
        if done {
            return;
        }
        for (i, w_row) in w.chunks_exact(wrb).enumerate() {
            for (j, a_row) in act.chunks_exact(arb).enumerate() {
                out[i * ncols + j] = self.dot(w_ty, n, w_row, a_row);
            }
        }
    }

    /// [`Self::matmul`] with the outputs by activation column, `cols[j][i]` (each of
    /// `nrows`), where a kernel writes that layout directly; `false` (nothing written) where
    /// none does, and the caller computes row-major and transposes.
    pub fn matmul_to_cols(
        &self,
        w_ty: GgmlType,
        n: usize,
        w: &[u8],
        nrows: usize,
        act: &[u8],
        cols: &mut [&mut [f32]],
    ) -> bool {
        operand_rows(w_ty, n, w, nrows, act, cols.len());
        assert!(
            cols.iter().all(|c| c.len() == nrows),
            "matmul {}: bad output length",
            w_ty.name()
        );
        if nrows == 0 {
            return false;
        }
        match self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(k) => k.matmul_to_cols(w_ty, w, nrows, act, cols),
            _ => false,
        }
    }

    /// `v[i] = exp(v[i])`, bit-identical to llama.cpp's AVX-512 `ggml_v_expf` on every back
    /// end (softmax and SwiGLU outputs are rounded later, so ulps matter).
    pub fn exp_in_place(&self, v: &mut [f32]) {
        match self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(k) => k.exp_in_place(v),
            _ => reference::expf::exp_in_place(v),
        }
    }

    /// `out[p] = key row p · q` for rows of `q.len()` f16-exact values, summed as llama.cpp
    /// does in attention: element `i` into lane `i % lanes`, the lanes folded to 16
    /// (`lanes` 64: `ggml_vec_dot_f16`, a one-token batch) or not (16: tinyBLAS, a
    /// multi-token batch), then a halving tree. `false`: this back end has no such kernel
    /// for these lengths; the caller sums itself.
    pub fn f16_dots(&self, lanes: usize, keys: &[f32], q: &[f32], out: &mut [f32]) -> bool {
        match self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(k) => k.f16_dots(lanes, keys, q, out),
            _ => {
                let _ = (lanes, keys, q, out);
                false
            }
        }
    }

    /// `v[i]` rounded to the nearest f16 (ties to even), kept as f32.
    pub fn round_f16_in_place(&self, v: &mut [f32]) {
        match self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(k) => k.round_f16_in_place(v),
            _ => v
                .iter_mut()
                .for_each(|x| *x = super::f16::f16_to_f32(super::f16::f32_to_f16(*x))),
        }
    }

    /// `acc[(p % lanes) * hd + d] += w[p] · rows[p * hd + d]` for `p` in `first..w.len()`
    /// (`hd = acc.len() / lanes`), every term added in `p` order; `w` and `rows` must hold
    /// f16-exact values, whose products are exact. `false`: not done here.
    pub fn accumulate_strided(
        &self,
        w: &[f32],
        rows: &[f32],
        first: usize,
        lanes: usize,
        acc: &mut [f32],
    ) -> bool {
        match self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2(k) => k.accumulate_strided(w, rows, first, lanes, acc),
            _ => {
                let _ = (w, rows, first, lanes, acc);
                false
            }
        }
    }

    /// Expands one row of `ty` into `out.len()` f32 values.
    pub fn dequantize_row(&self, ty: GgmlType, src: &[u8], out: &mut [f32]) {
        assert_eq!(
            Some(src.len()),
            ty.row_bytes(out.len()),
            "dequantize_row {}: bad length",
            ty.name()
        );
        reference::dequantize_row(ty, src, out);
    }
}

/// The weight and activation row lengths in bytes of an `nrows` × `ncols` product of rows of
/// `n` values.
///
/// # Panics
/// If `n` is not whole weight blocks or `w`/`act` do not hold exactly those rows.
fn operand_rows(
    w_ty: GgmlType,
    n: usize,
    w: &[u8],
    nrows: usize,
    act: &[u8],
    ncols: usize,
) -> (usize, usize) {
    let wrb = w_ty
        .row_bytes(n)
        .expect("matmul: n is not a whole number of weight blocks");
    let arb = ActFormat::for_weights(w_ty).row_bytes(n);
    let name = w_ty.name();
    assert_eq!(w.len(), wrb * nrows, "matmul {name}: bad weight length");
    assert_eq!(
        act.len(),
        arb * ncols,
        "matmul {name}: bad activation length"
    );
    (wrb, arb)
}
