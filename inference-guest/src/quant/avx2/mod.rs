//! x86_64 AVX2 + FMA + F16C kernels.
//!
//! Every kernel is an `unsafe fn` with `#[target_feature(enable = "avx2,fma,f16c")]`; the only
//! caller-side obligation is that the CPU has those features. [`Avx2`] can only be created by
//! [`Avx2::detect`], so its safe methods discharge that obligation. Memory safety does not
//! rest on `unsafe`: every vector load goes through [`ld`] on a fixed-size array borrowed from a
//! bounds-checked slice.

mod act;
mod attn;
mod attn512;
mod bf16;
mod blocks32;
mod expf;
mod float;
mod gemm;
mod gemm512;
mod gemm512_q4_0;
mod gemm_q4_0;
mod iq4;
mod kquant;
mod kquant_order;
mod kquant_q4_lanes;
mod kquant_q5_rows;
mod kquant_q6_rows;
mod kquant_rows;
mod kquant_unpack;
mod kquant_vnni;
mod kquant_vnni_q5;
mod kquant_vnni_q6;
mod kquant_vnni_reduce;
mod sink;

use core::arch::x86_64::{__m128i, __m256i, _mm_loadu_si128, _mm256_loadu_si256};

use crate::ggml_type::GgmlType;
use crate::quant::act_format::ActFormat;
use crate::quant::cpu_features::CpuFeatures;

/// Bytes ahead of the block being read that kernels streaming weights from memory ask for.
/// On the 2-core dev VM prefetching took Q8_0 decode from 68 to ~100 tok/s. Since matmul
/// hands each thread long row ranges (`guided_items`), 8 KiB beats 4 KiB by ~10 % on Q4_0
/// with 4 KiB pages and 2 MiB pages alike (6 and 12-16 KiB fall between): two pages ahead
/// starts the next page's TLB walk early.
const PREFETCH_AHEAD: usize = 8192;

/// Asks for `lines` cache lines from [`PREFETCH_AHEAD`] bytes after `at` on. A block at a
/// time, as the kernels read them: a burst of a long row's lines fills the line-fill
/// buffers and stalls the kernel behind them.
#[inline]
fn prefetch_ahead(at: *const u8, lines: usize) {
    for line in 0..lines {
        let ahead = at.wrapping_add(PREFETCH_AHEAD + 64 * line);
        // SAFETY: a prefetch never faults, whatever the address (past a row's end included).
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(ahead.cast())
        };
    }
}

/// Proof that AVX2, FMA, F16C and the OS's saving of YMM state were all detected; `vnni`
/// also proves AVX-512 F/VL/BW/VNNI with the OS saving ZMM and mask state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2 {
    vnni: bool,
}

impl Avx2 {
    /// The AVX2 kernels, with the AVX-512 VNNI variants where `f` allows them; `None` when
    /// `f` lacks anything the AVX2 kernels need. `f` must describe the running CPU and the
    /// XCR0 in force (see [`super::Kernels::for_detected`]).
    pub(crate) fn for_features(f: CpuFeatures) -> Option<Self> {
        f.contains(CpuFeatures::FOR_AVX2).then_some(Self {
            vnni: f.contains(CpuFeatures::FOR_AVX512_VNNI),
        })
    }

    /// Whether the AVX-512 VNNI variants are in use.
    pub(crate) fn has_vnni(self) -> bool {
        self.vnni
    }

    /// The same CPU proof restricted to the AVX2 variants.
    pub(crate) fn without_vnni(self) -> Self {
        Self { vnni: false }
    }

    /// `v[i] = exp(v[i])` with llama.cpp's AVX-512 numerics.
    pub(crate) fn exp_in_place(self, v: &mut [f32]) {
        // SAFETY: an `Avx2` value exists only after detection found AVX2 and FMA.
        unsafe { expf::exp_in_place(v) }
    }

    /// [`super::Kernels::f16_dots`]; `false` for `lanes` other than 16 and 64 or a row length
    /// not a multiple of `lanes`.
    pub(crate) fn f16_dots(self, lanes: usize, keys: &[f32], q: &[f32], out: &mut [f32]) -> bool {
        let hd = q.len();
        if !matches!(lanes, 16 | 64) || !hd.is_multiple_of(lanes) || keys.len() != out.len() * hd {
            return false;
        }
        // SAFETY: `self` proves AVX2/FMA (with `vnni`, AVX-512 F); the lengths were checked
        // just above.
        unsafe {
            match (self.vnni, lanes) {
                (true, 16) => attn512::dots::<1>(keys, q, out),
                (true, _) => attn512::dots::<4>(keys, q, out),
                (false, 16) => attn::dots16_by_four(keys, q, out),
                (false, _) => attn::dots::<8>(keys, q, out),
            }
        }
        true
    }

    pub(crate) fn round_f16_in_place(self, v: &mut [f32]) {
        // SAFETY: `self` proves AVX2/F16C.
        unsafe { attn::round_f16_in_place(v) }
    }

    /// [`super::Kernels::accumulate_strided`]; `false` for a row length not a multiple of 32.
    pub(crate) fn accumulate_strided(
        self,
        w: &[f32],
        rows: &[f32],
        first: usize,
        lanes: usize,
        acc: &mut [f32],
    ) -> bool {
        let hd = acc.len() / lanes;
        if !hd.is_multiple_of(32) || acc.len() != lanes * hd || rows.len() < w.len() * hd {
            return false;
        }
        // SAFETY: `self` proves AVX2/FMA (with `vnni`, AVX-512 F); the lengths were checked
        // just above.
        unsafe {
            if self.vnni && hd.is_multiple_of(64) {
                attn512::accumulate_strided(w, rows, first, lanes, acc);
            } else {
                attn::accumulate_strided(w, rows, first, lanes, acc);
            }
        }
        true
    }

    pub(crate) fn quantize_act(self, fmt: ActFormat, x: &[f32], out: &mut [u8]) -> bool {
        // SAFETY: `self` exists only after `detect` confirmed AVX2/FMA/F16C + OS YMM support;
        // `Kernels::quantize_act` checked `out.len() == fmt.row_bytes(x.len())`.
        unsafe { act::quantize_act(fmt, x, out) }
    }

    pub(crate) fn dot(self, ty: GgmlType, w: &[u8], a: &[u8]) -> Option<f32> {
        // SAFETY: `self` exists only after `detect` confirmed AVX2/FMA/F16C + OS YMM support;
        // `Kernels::dot` checked both row lengths against the same `n`.
        unsafe {
            Some(match ty {
                GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q8_0
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::IQ4NL => {
                    if self.vnni {
                        blocks32::vnni::dot(ty, w, a)
                    } else {
                        blocks32::base::dot(ty, w, a)
                    }
                }
                GgmlType::IQ4XS => iq4::dot_iq4_xs(w, a),
                GgmlType::Q5K if self.vnni => kquant_vnni_q5::dot_q5_k(w, a),
                GgmlType::Q5K => kquant::dot_q5_k(w, a),
                GgmlType::Q4K if self.vnni => kquant_vnni::dot_q4_k(w, a),
                GgmlType::Q6K if self.vnni => kquant_vnni_q6::dot_q6_k(w, a),
                GgmlType::Q4K => kquant::dot_q4_k(w, a),
                GgmlType::Q6K => kquant::dot_q6_k(w, a),
                GgmlType::F16 => float::dot_f16(w, a),
                GgmlType::BF16 => bf16::dot_bf16(w, a),
                GgmlType::F32 => float::dot_f32(w, a),
            })
        }
    }

    #[allow(clippy::too_many_arguments)] // mirrors Kernels::matmul
    pub(crate) fn matmul(
        self,
        ty: GgmlType,
        n: usize,
        w: &[u8],
        nrows: usize,
        act: &[u8],
        ncols: usize,
        out: &mut [f32],
    ) -> bool {
        match ty {
            // Prefill (two or more columns) in 512-bit tiles where AVX-512 VNNI is there.
            _ if ncols > 1 && self.vnni && Self::tiles_512(ty) => {
                let mut sink = sink::RowMajor { out, ncols };
                self.matmul_512(ty, w, nrows, act, ncols, &mut sink)
            }
            GgmlType::Q4_0 if ncols > 1 => {
                // SAFETY: `self` proves AVX2/FMA/F16C; the kernel checks the lengths.
                unsafe {
                    gemm_q4_0::matmul_q4_0(w, nrows, act, ncols, &mut sink::RowMajor { out, ncols })
                };
                true
            }
            _ if ncols > 1 && gemm::handles(ty) => {
                // SAFETY: `self` proves AVX2/FMA/F16C; `gemm::base::matmul` checks the lengths.
                unsafe { gemm::base::matmul(ty, w, nrows, act, ncols, out) };
                true
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q5_0 | GgmlType::Q5_1 => {
                // SAFETY: `self` proves AVX2/FMA/F16C (with `vnni`, AVX-512 F/VL/BW/VNNI);
                // `Kernels::matmul` checked `w`, `act` and `out` against `n`, `nrows`, `ncols`.
                unsafe {
                    if self.vnni {
                        blocks32::vnni::matmul(ty, n, w, nrows, act, ncols, out);
                    } else {
                        blocks32::base::matmul(ty, n, w, nrows, act, ncols, out);
                    }
                }
                true
            }
            // Decode (one column) keeps the per-row dot `Kernels::matmul` falls back to.
            GgmlType::Q5K if ncols > 1 && self.vnni => {
                // SAFETY: `vnni` proves AVX2/FMA/F16C and AVX-512 F/VL/BW/VNNI;
                // `Kernels::matmul` checked that `w` holds `nrows` rows and `act` `ncols`
                // rows of `n` values and `out` is `nrows * ncols` long.
                unsafe {
                    kquant_vnni::panels::<kquant_vnni_q5::Q5K>(w, nrows, act, ncols, out);
                }
                true
            }
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K if ncols > 1 => {
                // SAFETY: `self` proves AVX2/FMA/F16C (with `vnni`, AVX-512 F/VL/BW/VNNI);
                // `Kernels::matmul` checked that `w` holds `nrows` rows and `act` `ncols`
                // rows of `n` values and `out` is `nrows * ncols` long.
                unsafe {
                    match (ty, self.vnni) {
                        (GgmlType::Q4K, true) => {
                            kquant_vnni::panels::<kquant_vnni::Q4K>(w, nrows, act, ncols, out)
                        }
                        (GgmlType::Q6K, true) => {
                            kquant_vnni::panels::<kquant_vnni_q6::Q6K>(w, nrows, act, ncols, out)
                        }
                        (GgmlType::Q4K, false) => kquant::matmul_q4_k(w, nrows, act, ncols, out),
                        (GgmlType::Q5K, false) => kquant::matmul_q5_k(w, nrows, act, ncols, out),
                        _ => kquant::matmul_q6_k(w, nrows, act, ncols, out),
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Whether [`Self::matmul_to_cols`] takes `ty`'s products.
    fn tiles_512(ty: GgmlType) -> bool {
        matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_1 | GgmlType::Q4_0)
    }

    /// [`super::Kernels::matmul_to_cols`]: `false` where no kernel writes by column (without
    /// AVX-512 VNNI every type but Q4_0, or a single column, which decode's row kernels take).
    pub(crate) fn matmul_to_cols(
        self,
        ty: GgmlType,
        w: &[u8],
        nrows: usize,
        act: &[u8],
        cols: &mut [&mut [f32]],
    ) -> bool {
        let ncols = cols.len();
        if ncols < 2 {
            return false;
        }
        if self.vnni && Self::tiles_512(ty) {
            return self.matmul_512(ty, w, nrows, act, ncols, &mut sink::ByColumn { cols });
        }
        if ty != GgmlType::Q4_0 {
            return false;
        }
        // SAFETY: `self` proves AVX2/FMA/F16C; the kernel checks the lengths and the sink
        // every index.
        unsafe { gemm_q4_0::matmul_q4_0(w, nrows, act, ncols, &mut sink::ByColumn { cols }) };
        true
    }

    /// The 512-bit tiles of `ty` (one of [`Self::tiles_512`]); needs `vnni`.
    fn matmul_512(
        self,
        ty: GgmlType,
        w: &[u8],
        nrows: usize,
        act: &[u8],
        ncols: usize,
        out: &mut impl sink::Sink,
    ) -> bool {
        debug_assert!(self.vnni);
        // SAFETY: the callers check `vnni`, which proves AVX2/FMA/F16C and AVX-512
        // F/VL/BW/VNNI; the kernels check the lengths and the sink every index.
        unsafe {
            if ty == GgmlType::Q4_0 {
                gemm512_q4_0::matmul_q4_0(w, nrows, act, ncols, out);
            } else {
                gemm512::matmul(ty, w, nrows, act, ncols, out);
            }
        }
        true
    }
}

/// Borrows `N` bytes at `at` as an array (bounds-checked; the check folds away in loops over
/// `chunks_exact`).
#[inline(always)]
fn arr<const N: usize>(s: &[u8], at: usize) -> &[u8; N] {
    s[at..at + N]
        .try_into()
        .expect("length is N by construction")
}

/// Unaligned 32-byte load.
///
/// # Safety
/// The CPU must support AVX.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ld(b: &[u8; 32]) -> __m256i {
    // SAFETY: `b` is 32 readable bytes and loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// Unaligned 16-byte load.
///
/// # Safety
/// The CPU must support SSE2 (always true on x86_64).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn ld16(b: &[u8; 16]) -> __m128i {
    // SAFETY: `b` is 16 readable bytes and loadu has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// f16 bits to f32 with F16C.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn h2f(b: &[u8], at: usize) -> f32 {
    use core::arch::x86_64::{_mm_cvtph_ps, _mm_cvtsi32_si128, _mm_cvtss_f32};
    let h = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// Horizontal sum of 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum(v: core::arch::x86_64::__m256) -> f32 {
    use core::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Horizontal sum of 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_i32(v: __m256i) -> i32 {
    use core::arch::x86_64::*;
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}
