//! Attention's f16-exact products with AVX2 (`model::attention` holds the scalar order they
//! reproduce). Every product is of two f16 values, exact in f32, so a fused multiply-add
//! equals the reference's multiply then add and the results agree to the bit.

use core::arch::x86_64::*;

/// `out[p] = key row p · q` (rows of `q.len()`, a multiple of `8 N`), summed in llama.cpp's
/// order: element `i` into lane `i % 8N` (`N` registers of 8), the lanes folded to 16 when
/// `N` is 8 (`ggml_vec_dot_f16`: `(a[l] + a[32 + l]) + (a[16 + l] + a[48 + l])`), then
/// `_mm512_reduce_add_ps`'s halving tree.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `N` is 2 or 8, `keys.len() == out.len() * q.len()`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dots<const N: usize>(keys: &[f32], q: &[f32], out: &mut [f32]) {
    let hd = q.len();
    debug_assert!(matches!(N, 2 | 8) && hd.is_multiple_of(8 * N) && keys.len() == out.len() * hd);
    for (key, o) in keys.chunks_exact(hd).zip(out.iter_mut()) {
        let mut acc = [_mm256_setzero_ps(); N];
        for (k, x) in key.chunks_exact(8 * N).zip(q.chunks_exact(8 * N)) {
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: `k` and `x` are 8N readable f32s; loadu has no alignment requirement.
                unsafe {
                    let (kp, xp) = (k.as_ptr().add(8 * r), x.as_ptr().add(8 * r));
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(kp), _mm256_loadu_ps(xp), *a);
                }
            }
        }
        let (lo, hi) = match N {
            2 => (acc[0], acc[1]),
            _ => (
                _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6])),
                _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7])),
            ),
        };
        // t3[l] = a[l + 8] + a[l]; t6[l] = t3[l + 4] + t3[l]; (t6[0] + t6[2]) + (t6[1] + t6[3]).
        let t3 = _mm256_add_ps(hi, lo);
        let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
        let s = _mm_add_ps(t6, _mm_movehl_ps(t6, t6));
        *o = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
    }
}

/// [`dots`] with 16 lanes (`N` = 2) four keys at a time: the query's loads are shared, and
/// the four halving trees run side by side in whole registers, each sum made of the same
/// additions in the same order as `dots` makes it.
///
/// # Safety
/// As [`dots`] with `N` = 2.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dots16_by_four(keys: &[f32], q: &[f32], out: &mut [f32]) {
    let hd = q.len();
    debug_assert!(hd.is_multiple_of(16) && keys.len() == out.len() * hd);
    let mut key_blocks = keys.chunks_exact(4 * hd);
    let mut out_blocks = out.chunks_exact_mut(4);
    for (k4, o4) in (&mut key_blocks).zip(&mut out_blocks) {
        let (mut lo, mut hi) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
        for c in (0..hd).step_by(16) {
            // SAFETY: `c + 16 <= hd`, and each of the four keys is `hd` f32s of `k4`.
            unsafe {
                let x = (
                    _mm256_loadu_ps(q.as_ptr().add(c)),
                    _mm256_loadu_ps(q.as_ptr().add(c + 8)),
                );
                for j in 0..4 {
                    let k = k4.as_ptr().add(j * hd + c);
                    lo[j] = _mm256_fmadd_ps(_mm256_loadu_ps(k), x.0, lo[j]);
                    hi[j] = _mm256_fmadd_ps(_mm256_loadu_ps(k.add(8)), x.1, hi[j]);
                }
            }
        }
        // Per key, t3[l] = a[l + 8] + a[l]; t6[l] = t3[l + 4] + t3[l] (keys 0 and 1 in `ab`,
        // 2 and 3 in `cd`, one per 128-bit half).
        let t3: [__m256; 4] = core::array::from_fn(|j| _mm256_add_ps(hi[j], lo[j]));
        let halves = |a: __m256, b: __m256| {
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x31>(a, b),
                _mm256_permute2f128_ps::<0x20>(a, b),
            )
        };
        let (ab, cd) = (halves(t3[0], t3[1]), halves(t3[2], t3[3]));
        // s = (t6[0] + t6[2], t6[1] + t6[3]): [a, a, c, c | b, b, d, d].
        let s = _mm256_add_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(ab, cd),
            _mm256_shuffle_ps::<0b11_10_11_10>(ab, cd),
        );
        // s[0] + s[1]: [a, c, a, c | b, d, b, d], then [a, b, c, d].
        let sums = _mm256_add_ps(
            _mm256_shuffle_ps::<0b10_00_10_00>(s, s),
            _mm256_shuffle_ps::<0b11_01_11_01>(s, s),
        );
        let abcd = _mm_unpacklo_ps(
            _mm256_castps256_ps128(sums),
            _mm256_extractf128_ps::<1>(sums),
        );
        // SAFETY: `o4` is 4 writable f32s.
        unsafe { _mm_storeu_ps(o4.as_mut_ptr(), abcd) };
    }
    // SAFETY: as this function's, for the last keys.
    unsafe { dots::<2>(key_blocks.remainder(), q, out_blocks.into_remainder()) };
}

/// `v[i] = f16(v[i])` rounded to nearest even, as `kv_cache::round_f16`.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn round_f16_in_place(v: &mut [f32]) {
    let mut chunks = v.chunks_exact_mut(8);
    for ch in &mut chunks {
        // SAFETY: `ch` is 8 f32s; loadu/storeu have no alignment requirement.
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(ch.as_ptr()));
            _mm256_storeu_ps(ch.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    for x in chunks.into_remainder() {
        let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(*x));
        *x = _mm_cvtss_f32(_mm_cvtph_ps(h));
    }
}

/// `acc[(p % lanes) * hd + d] += w[p] · rows[p * hd + d]` for `p` in `first..w.len()`, each
/// element's terms added in `p` order (`hd = acc.len() / lanes`, a multiple of 32).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `rows.len() >= w.len() * hd`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn accumulate_strided(
    w: &[f32],
    rows: &[f32],
    first: usize,
    lanes: usize,
    acc: &mut [f32],
) {
    let hd = acc.len() / lanes;
    debug_assert!(hd.is_multiple_of(32) && rows.len() >= w.len() * hd);
    // 64 columns a pass where the head has them: eight independent chains of fused
    // multiply-adds keep both FMA pipes busy, where four (32 columns) waited on the
    // latency of each add before the next position's.
    // SAFETY: as this function's; `hd` is a multiple of the columns each pass takes.
    unsafe {
        if hd.is_multiple_of(64) {
            accumulate_columns::<8>(w, rows, first, lanes, hd, acc);
        } else {
            accumulate_columns::<4>(w, rows, first, lanes, hd, acc);
        }
    }
}

/// [`accumulate_strided`] `8 R` columns of a lane at a time.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `hd` is a multiple of `8 R`, `acc.len()` of `hd` and
/// `rows.len() >= w.len() * hd`.
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_columns<const R: usize>(
    w: &[f32],
    rows: &[f32],
    first: usize,
    lanes: usize,
    hd: usize,
    acc: &mut [f32],
) {
    for (l, lane) in acc.chunks_exact_mut(hd).enumerate() {
        // The first position at or after `first` that falls in lane `l`.
        let start = first + (l + lanes - first % lanes) % lanes;
        for d0 in (0..hd).step_by(8 * R) {
            let dst = &mut lane[d0..d0 + 8 * R];
            // SAFETY: `dst` is 8R f32s; loadu has no alignment requirement.
            let mut r: [__m256; R] =
                core::array::from_fn(|k| unsafe { _mm256_loadu_ps(dst.as_ptr().add(8 * k)) });
            for p in (start..w.len()).step_by(lanes) {
                let wp = _mm256_set1_ps(w[p]);
                let src = &rows[p * hd + d0..p * hd + d0 + 8 * R];
                for (k, rk) in r.iter_mut().enumerate() {
                    // SAFETY: `src` is 8R readable f32s.
                    *rk = _mm256_fmadd_ps(
                        wp,
                        unsafe { _mm256_loadu_ps(src.as_ptr().add(8 * k)) },
                        *rk,
                    );
                }
            }
            for (k, rk) in r.iter().enumerate() {
                // SAFETY: `dst` is 8R writable f32s.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(8 * k), *rk) };
            }
        }
    }
}
