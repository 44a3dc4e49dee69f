//! Q4_0·Q8_0, Q5_0·Q8_0, IQ4_NL·Q8_0, Q8_0·Q8_0, Q4_1·Q8_1 and Q5_1·Q8_1 with register
//! tiling.
//!
//! A tile of R weight rows × C activation columns keeps R·C independent accumulators: each
//! weight block is loaded/unpacked once per tile and reused across C columns, each activation
//! block across R rows. Decode (C = 1) uses R = 4 so four FMA chains hide the add latency;
//! prefill uses 2 × 4 to stay inside 16 YMM registers.
//!
//! Signed weights (Q4_0 as q − 8, Q8_0) use `maddubs(|w|, sign(a, w))`; this is exact because
//! activations lie in [-127, 127] (their quantiser never produces -128), so pair sums stay
//! below i16 saturation. Q4_1 nibbles are unsigned and go straight into `maddubs`.

use core::arch::x86_64::*;

use super::{arr, h2f, hsum, ld, ld16, prefetch_ahead};
use crate::ggml_type::GgmlType;
use crate::quant::reference::IQ4_VALUES;

/// Describes one 32-value weight format and its activation pairing.
trait Fmt {
    const WB: usize;
    const AB: usize;
    /// Offset of the 32 activation quants inside an activation block.
    const AQS: usize;
    const SIGNED: bool;
    const HAS_MIN: bool;
    /// The quants are stored as `q + 8` (Q4_0): `quants` returns `q + 8` unsigned and the
    /// kernel subtracts `8 · Σa` per lane, which is cheaper than the sign trick.
    const OFFSET8: bool;
    /// Sum each block's integer total into a scalar with a fused multiply-add (llama.cpp's
    /// repacked Q4_0 kernels) instead of into 8 float lanes (its `vec_dot` kernels).
    const BLOCK_TOTAL_FMA: bool;
    /// The 32 weight quants in value order (i8 if `SIGNED`, else u8).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    unsafe fn quants(b: &[u8]) -> __m256i;
}

struct Q4_0;
struct Q8_0;
struct Q4_1;
struct Q5_0;
struct Q5_1;
struct Iq4Nl;

/// Unpacks 16 bytes of nibbles: low nibbles are values 0..16, high nibbles 16..32.
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles(b: __m128i) -> __m256i {
    let m4 = _mm_set1_epi8(0xf);
    let lo = _mm_and_si128(b, m4);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), m4);
    _mm256_set_m128i(hi, lo)
}

impl Fmt for Q4_0 {
    const WB: usize = 18;
    const AB: usize = 34;
    const AQS: usize = 2;
    const SIGNED: bool = false;
    const HAS_MIN: bool = false;
    const OFFSET8: bool = true;
    const BLOCK_TOTAL_FMA: bool = true;
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn quants(b: &[u8]) -> __m256i {
        // SAFETY: AVX2 is this function's contract.
        nibbles(unsafe { ld16(arr(b, 2)) })
    }
}

impl Fmt for Q8_0 {
    const WB: usize = 34;
    const AB: usize = 34;
    const AQS: usize = 2;
    const SIGNED: bool = true;
    const HAS_MIN: bool = false;
    const OFFSET8: bool = false;
    const BLOCK_TOTAL_FMA: bool = false;
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn quants(b: &[u8]) -> __m256i {
        // SAFETY: AVX2 is this function's contract.
        unsafe { ld(arr(b, 2)) }
    }
}

impl Fmt for Q4_1 {
    const WB: usize = 20;
    const AB: usize = 36;
    const AQS: usize = 4;
    const SIGNED: bool = false;
    const HAS_MIN: bool = true;
    const OFFSET8: bool = false;
    const BLOCK_TOTAL_FMA: bool = false;
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn quants(b: &[u8]) -> __m256i {
        // SAFETY: AVX2 is this function's contract.
        nibbles(unsafe { ld16(arr(b, 4)) })
    }
}

/// 0xff in byte i of the result where bit i of the little-endian u32 `qh` is set, else 0.
#[inline]
#[target_feature(enable = "avx2")]
fn bits32(qh: &[u8; 4]) -> __m256i {
    let v = _mm256_set1_epi32(i32::from_le_bytes(*qh));
    // Byte i takes byte i / 8 of qh, then keeps only bit i % 8.
    let spread = _mm256_shuffle_epi8(
        v,
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
}

impl Fmt for Q5_0 {
    const WB: usize = 22;
    const AB: usize = 34;
    const AQS: usize = 2;
    const SIGNED: bool = true;
    const HAS_MIN: bool = false;
    const OFFSET8: bool = false;
    const BLOCK_TOTAL_FMA: bool = false;
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn quants(b: &[u8]) -> __m256i {
        // SAFETY: AVX2 is this function's contract.
        let lo4 = nibbles(unsafe { ld16(arr(b, 6)) });
        // q − 16 as i8: a nibble whose 5th bit is clear gets its high bits set (nibble − 16);
        // one whose 5th bit is set is nibble + 16 − 16.
        let neg = _mm256_andnot_si256(bits32(arr(b, 2)), _mm256_set1_epi8(0xf0u8 as i8));
        _mm256_or_si256(lo4, neg)
    }
}

impl Fmt for Q5_1 {
    const WB: usize = 24;
    const AB: usize = 36;
    const AQS: usize = 4;
    const SIGNED: bool = false;
    const HAS_MIN: bool = true;
    const OFFSET8: bool = false;
    const BLOCK_TOTAL_FMA: bool = false;
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn quants(b: &[u8]) -> __m256i {
        // SAFETY: AVX2 is this function's contract.
        let lo4 = nibbles(unsafe { ld16(arr(b, 8)) });
        let hi = _mm256_and_si256(bits32(arr(b, 4)), _mm256_set1_epi8(0x10));
        _mm256_or_si256(lo4, hi)
    }
}

impl Fmt for Iq4Nl {
    const WB: usize = 18;
    const AB: usize = 34;
    const AQS: usize = 2;
    const SIGNED: bool = true;
    const HAS_MIN: bool = false;
    const OFFSET8: bool = false;
    // llama.cpp's x86 build repacks IQ4_NL (`iq4_nl_8x8`), with Q4_0's per-block arithmetic.
    const BLOCK_TOTAL_FMA: bool = true;
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn quants(b: &[u8]) -> __m256i {
        // ggml `kvalues_iq4nl` as an immediate (a constant the compiler hoists out of loops).
        let table = _mm_setr_epi8(
            -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
        );
        debug_assert_eq!(IQ4_VALUES[0], -127);
        // SAFETY: AVX2 is this function's contract.
        let idx = nibbles(unsafe { ld16(arr(b, 2)) });
        // |T[q]| <= 127, so the sign trick's products stay exact.
        _mm256_shuffle_epi8(_mm256_set_m128i(table, table), idx)
    }
}

fn arr4(s: &[f32], at: usize) -> &[f32; 4] {
    s[at..at + 4]
        .try_into()
        .expect("length is 4 by construction")
}

/// The horizontal sums of four vectors of 8 i32 lanes, as one vector of 4.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum4_i32(v: &[__m256i]) -> __m128i {
    let a = _mm256_hadd_epi32(v[0], v[1]);
    let b = _mm256_hadd_epi32(v[2], v[3]);
    let c = _mm256_hadd_epi32(a, b);
    _mm_add_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256::<1>(c))
}

/// Four adjacent u8·i8 products summed into each i32 lane (`maddubs` + `madd`).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn pairsum_avx2(wabs: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, y), _mm256_set1_epi16(1))
}

/// The same lanes with one AVX-512 VNNI instruction (exact, so results are identical).
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) fn pairsum_vnni(wabs: __m256i, y: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), wabs, y)
}

/// Stamps out the tiled kernels for one instruction set: `$feat` are its target features,
/// `$pairsum` its integer block product and `$pr` the weight rows of a prefill tile (AVX2 has
/// 16 YMM registers, AVX-512VL 32, which fit a 4 x 4 tile of accumulators).
macro_rules! tiled_kernels {
    ($name:ident, $feat:literal, $pairsum:ident, $pr:literal, $dr:literal) => {
        pub(super) mod $name {
            #[allow(unused_imports)]
            use super::*;

            /// One weight row · one activation row.
            ///
            /// # Safety
            /// The CPU must support AVX2, FMA and F16C; `w` and `a` are rows of the same length in `ty`
            /// and its activation format.
            #[target_feature(enable = $feat)]
            pub(in super::super) unsafe fn dot(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
                let mut out = [0.0f32];
                // SAFETY: forwarded contract; one row and one column.
                unsafe { matmul_rows(ty, w, w.len(), 1, a, a.len(), 1, &mut out, 1) };
                out[0]
            }

            /// # Safety
            /// The CPU must support AVX2, FMA and F16C; `w` holds `nrows` rows and `act` `ncols` rows
            /// of `n` values; `out.len() == nrows * ncols`.
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = $feat)]
            pub(in super::super) unsafe fn matmul(
                ty: GgmlType,
                n: usize,
                w: &[u8],
                nrows: usize,
                act: &[u8],
                ncols: usize,
                out: &mut [f32],
            ) {
                let wrb = w.len() / nrows;
                let arb = act.len() / ncols;
                debug_assert_eq!(wrb, ty.row_bytes(n).unwrap_or(0));
                // Column panels small enough for L1 so the weight tile streams past cached activations.
                const PANEL: usize = 16;
                let mut j0 = 0;
                while j0 < ncols {
                    let nc = PANEL.min(ncols - j0);
                    let a = &act[j0 * arb..(j0 + nc) * arb];
                    // SAFETY: forwarded contract, restricted to columns j0..j0 + nc.
                    unsafe { matmul_rows(ty, w, wrb, nrows, a, arb, nc, &mut out[j0..], ncols) };
                    j0 += nc;
                }
            }

            /// All rows against `nc` columns; writes `out[i * stride + j]`.
            ///
            /// # Safety
            /// As [`matmul`].
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = $feat)]
            unsafe fn matmul_rows(
                ty: GgmlType,
                w: &[u8],
                wrb: usize,
                nrows: usize,
                a: &[u8],
                arb: usize,
                nc: usize,
                out: &mut [f32],
                stride: usize,
            ) {
                // SAFETY: forwarded contract (every arm).
                unsafe {
                    match ty {
                        GgmlType::Q4_0 => rows::<Q4_0>(w, wrb, nrows, a, arb, nc, out, stride),
                        GgmlType::Q8_0 => rows::<Q8_0>(w, wrb, nrows, a, arb, nc, out, stride),
                        GgmlType::Q4_1 => rows::<Q4_1>(w, wrb, nrows, a, arb, nc, out, stride),
                        GgmlType::Q5_0 => rows::<Q5_0>(w, wrb, nrows, a, arb, nc, out, stride),
                        GgmlType::Q5_1 => rows::<Q5_1>(w, wrb, nrows, a, arb, nc, out, stride),
                        GgmlType::IQ4NL => rows::<Iq4Nl>(w, wrb, nrows, a, arb, nc, out, stride),
                        _ => unreachable!("blocks32 handles only 32-value block types"),
                    }
                }
            }

            /// # Safety
            /// As [`matmul`]; `out` starts at this panel's first column and has row stride `stride`.
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = $feat)]
            unsafe fn rows<F: Fmt>(
                w: &[u8],
                wrb: usize,
                nrows: usize,
                a: &[u8],
                arb: usize,
                nc: usize,
                out: &mut [f32],
                stride: usize,
            ) {
                let nb = wrb / F::WB;
                let mut i = 0;
                // SAFETY: forwarded contract for every call below; slicing keeps ranges in bounds.
                unsafe {
                    if nc == 1 {
                        while i + $dr <= nrows {
                            tile::<F, $dr, 1>(
                                &w[i * wrb..],
                                wrb,
                                a,
                                arb,
                                nb,
                                &mut out[i * stride..],
                                stride,
                            );
                            i += $dr;
                        }
                    } else {
                        while i + $pr <= nrows {
                            cols::<F, $pr>(
                                &w[i * wrb..],
                                wrb,
                                a,
                                arb,
                                nb,
                                nc,
                                &mut out[i * stride..],
                                stride,
                            );
                            i += $pr;
                        }
                    }
                    while i < nrows {
                        cols::<F, 1>(
                            &w[i * wrb..],
                            wrb,
                            a,
                            arb,
                            nb,
                            nc,
                            &mut out[i * stride..],
                            stride,
                        );
                        i += 1;
                    }
                }
            }

            /// R rows against all `nc` columns in tiles of 4, 3, 2 or 1 columns.
            ///
            /// # Safety
            /// As [`matmul`].
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = $feat)]
            unsafe fn cols<F: Fmt, const R: usize>(
                w: &[u8],
                wrb: usize,
                a: &[u8],
                arb: usize,
                nb: usize,
                nc: usize,
                out: &mut [f32],
                stride: usize,
            ) {
                let mut j = 0;
                // SAFETY: forwarded contract for every call below; slicing keeps ranges in bounds.
                unsafe {
                    while j + 4 <= nc {
                        tile::<F, R, 4>(w, wrb, &a[j * arb..], arb, nb, &mut out[j..], stride);
                        j += 4;
                    }
                    match nc - j {
                        3 => tile::<F, R, 3>(w, wrb, &a[j * arb..], arb, nb, &mut out[j..], stride),
                        2 => tile::<F, R, 2>(w, wrb, &a[j * arb..], arb, nb, &mut out[j..], stride),
                        1 => tile::<F, R, 1>(w, wrb, &a[j * arb..], arb, nb, &mut out[j..], stride),
                        _ => {}
                    }
                }
            }

            /// The register tile: rows `0..R` of `w` (stride `wrb`) × columns `0..C` of `a` (stride
            /// `arb`), `nb` blocks each; writes `out[r * stride + c]`.
            ///
            /// # Safety
            /// The CPU must support AVX2, FMA and F16C. (Slice bounds are checked.)
            #[allow(clippy::too_many_arguments)]
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn tile<F: Fmt, const R: usize, const C: usize>(
                w: &[u8],
                wrb: usize,
                a: &[u8],
                arb: usize,
                nb: usize,
                out: &mut [f32],
                stride: usize,
            ) {
                let mut acc = [[_mm256_setzero_ps(); C]; R];
                let mut msum = [[0.0f32; C]; R];
                // BLOCK_TOTAL_FMA: per-output sums, four outputs per SSE register (output k = r * C + c).
                let mut total = [_mm_setzero_ps(); 4];
                let mut block_p = [_mm256_setzero_si256(); 16];
                let mut block_scale = [0.0f32; 16];
                for b in 0..nb {
                    let mut wq = [_mm256_setzero_si256(); R];
                    let mut wabs = [_mm256_setzero_si256(); R];
                    let mut wd = [0.0f32; R];
                    let mut wm = [0.0f32; R];
                    for r in 0..R {
                        let at = r * wrb + b * F::WB;
                        if C == 1 {
                            // Decode streams weights from DRAM, and the hardware prefetcher of a nested
                            // VM does not keep up: ask for them well ahead (a prefetch never faults).
                            prefetch_ahead(w.as_ptr().wrapping_add(at), 1);
                        }
                        let blk = &w[at..at + F::WB];
                        // SAFETY: AVX2 is this function's contract.
                        wq[r] = unsafe { F::quants(blk) };
                        wabs[r] = if F::SIGNED {
                            _mm256_sign_epi8(wq[r], wq[r])
                        } else {
                            wq[r]
                        };
                        wd[r] = h2f(blk, 0);
                        if F::HAS_MIN {
                            wm[r] = h2f(blk, 2);
                        }
                    }
                    for c in 0..C {
                        let blk = &a[c * arb + b * F::AB..c * arb + (b + 1) * F::AB];
                        // SAFETY: AVX2 is this function's contract.
                        let aq = unsafe { ld(arr(blk, F::AQS)) };
                        let ad = h2f(blk, 0);
                        let as_ = if F::HAS_MIN { h2f(blk, 2) } else { 0.0 };
                        // 8 · Σa per lane, shared by every row of the tile (exact integers).
                        let offset = if F::OFFSET8 {
                            $pairsum(_mm256_set1_epi8(8), aq)
                        } else {
                            _mm256_setzero_si256()
                        };
                        for r in 0..R {
                            let y = if F::SIGNED {
                                _mm256_sign_epi8(aq, wq[r])
                            } else {
                                aq
                            };
                            let mut p = $pairsum(wabs[r], y);
                            if F::OFFSET8 {
                                p = _mm256_sub_epi32(p, offset);
                            }
                            if F::BLOCK_TOTAL_FMA {
                                block_p[r * C + c] = p;
                                block_scale[r * C + c] = wd[r] * ad;
                                continue;
                            }
                            let d = _mm256_set1_ps(wd[r] * ad);
                            acc[r][c] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[r][c]);
                            if F::HAS_MIN {
                                msum[r][c] += wm[r] * as_;
                            }
                        }
                    }
                    if F::BLOCK_TOTAL_FMA {
                        // Integer block totals of four outputs at once (exact), then one fused
                        // multiply-add each, in block order: the per-output arithmetic of ggml's
                        // repacked kernels.
                        for g in 0..(R * C).div_ceil(4) {
                            let totals = hsum4_i32(&block_p[4 * g..4 * g + 4]);
                            let scale: &[f32; 4] = arr4(&block_scale, 4 * g);
                            // SAFETY: `scale` is 4 readable f32s; loadu has no alignment requirement.
                            let scale = unsafe { _mm_loadu_ps(scale.as_ptr()) };
                            total[g] = _mm_fmadd_ps(_mm_cvtepi32_ps(totals), scale, total[g]);
                        }
                    }
                }
                // SAFETY: AVX2 is this function's contract, and `store_tile`'s.
                unsafe { store_tile::<F, R, C>(&acc, &msum, &total, out, stride) };
            }

            /// Writes a finished tile: each output's block totals, or its accumulator's lanes
            /// summed plus its min term.
            ///
            /// # Safety
            /// The CPU must support AVX2. (Slice bounds are checked.)
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn store_tile<F: Fmt, const R: usize, const C: usize>(
                acc: &[[__m256; C]; R],
                msum: &[[f32; C]; R],
                total: &[__m128; 4],
                out: &mut [f32],
                stride: usize,
            ) {
                let mut totals = [0.0f32; 16];
                for (g, t) in total.iter().enumerate() {
                    let dst: &mut [f32; 4] =
                        (&mut totals[4 * g..4 * g + 4]).try_into().expect("4 lanes");
                    // SAFETY: `dst` is 4 writable f32s; storeu has no alignment requirement.
                    unsafe { _mm_storeu_ps(dst.as_mut_ptr(), *t) };
                }
                for r in 0..R {
                    for c in 0..C {
                        out[r * stride + c] = if F::BLOCK_TOTAL_FMA {
                            totals[r * C + c]
                        } else {
                            hsum(acc[r][c]) + msum[r][c]
                        };
                    }
                }
            }
        }
    };
}

tiled_kernels!(base, "avx2,fma,f16c", pairsum_avx2, 2, 4);
tiled_kernels!(
    vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni",
    pairsum_vnni,
    4,
    8
);
