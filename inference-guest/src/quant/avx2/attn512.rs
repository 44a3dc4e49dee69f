//! Attention's f16-exact products in 512-bit registers (see `attn` for the order they keep).
//!
//! A query-key dot product sums element `i` into lane `i % 16`, which is one ZMM accumulator,
//! (or `i % 64`, four accumulators added pairwise into one) then folds the lanes with
//! `_mm512_reduce_add_ps`'s tree. With a 64-wide head the fold costs more than the FMAs, so
//! [`dots`] folds four keys' accumulators together:
//! every step of the tree adds the same lane pairs as the one-key fold, only several keys'
//! pairs per instruction, so each result is bit for bit the one-key result.

use core::arch::x86_64::*;

/// `out[p] = key row p · q` (rows of `q.len()`, a multiple of `16 N`), as `attn::dots`:
/// element `i` into lane `i % 16N` (`N` registers), folded to 16 lanes when `N` is 4.
///
/// # Safety
/// The CPU must support AVX-512 F; `N` is 1 or 4, `keys.len() == out.len() * q.len()`.
#[target_feature(enable = "avx2,fma,avx512f")]
pub(super) unsafe fn dots<const N: usize>(keys: &[f32], q: &[f32], out: &mut [f32]) {
    let hd = q.len();
    debug_assert!(matches!(N, 1 | 4) && hd.is_multiple_of(16 * N) && keys.len() == out.len() * hd);
    let mut quads = keys.chunks_exact(4 * hd);
    let mut outs = out.chunks_exact_mut(4);
    for (four, o) in (&mut quads).zip(&mut outs) {
        let mut acc = [[_mm512_setzero_ps(); N]; 4];
        for (i, x) in q.chunks_exact(16 * N).enumerate() {
            for r in 0..N {
                // SAFETY: `x` and each key's 16N values at `16N i` are readable f32s.
                unsafe {
                    let x = _mm512_loadu_ps(x.as_ptr().add(16 * r));
                    for (k, a) in acc.iter_mut().enumerate() {
                        let key = _mm512_loadu_ps(four.as_ptr().add(k * hd + 16 * (N * i + r)));
                        a[r] = _mm512_fmadd_ps(key, x, a[r]);
                    }
                }
            }
        }
        let sums = fold4([to16(acc[0]), to16(acc[1]), to16(acc[2]), to16(acc[3])]);
        // SAFETY: `o` is 4 writable f32s.
        unsafe { _mm_storeu_ps(o.as_mut_ptr(), sums) };
    }
    for (key, o) in quads
        .remainder()
        .chunks_exact(hd)
        .zip(outs.into_remainder())
    {
        let mut acc = [_mm512_setzero_ps(); N];
        for (k, x) in key.chunks_exact(16 * N).zip(q.chunks_exact(16 * N)) {
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: `k` and `x` are 16N readable f32s.
                *a = unsafe {
                    _mm512_fmadd_ps(
                        _mm512_loadu_ps(k.as_ptr().add(16 * r)),
                        _mm512_loadu_ps(x.as_ptr().add(16 * r)),
                        *a,
                    )
                };
            }
        }
        let z = _mm512_setzero_ps();
        *o = _mm_cvtss_f32(fold4([to16(acc), z, z, z]));
    }
}

/// A key's `N` accumulators as 16 lanes: `N` is 1, or 4 folded as `ggml_vec_dot_f16` does,
/// `(a[l] + a[32 + l]) + (a[16 + l] + a[48 + l])`.
#[inline]
#[target_feature(enable = "avx2,avx512f")]
fn to16<const N: usize>(a: [__m512; N]) -> __m512 {
    match N {
        1 => a[0],
        _ => _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3])),
    }
}

/// The 16-lane fold of four accumulators, result k in lane k:
/// `t3[l] = a[l + 8] + a[l]`, `t6[l] = t3[l + 4] + t3[l]`, `(t6[0] + t6[2]) + (t6[1] + t6[3])`.
#[inline]
#[target_feature(enable = "avx2,avx512f")]
fn fold4(a: [__m512; 4]) -> __m128 {
    // 128-bit lanes (a0.0, a0.1, a1.0, a1.1) and (a0.2, a0.3, a1.2, a1.3): the low and high
    // halves of keys 0 and 1, so one add gives [t3 of key 0 | t3 of key 1].
    let t3_01 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b11_10_11_10>(a[0], a[1]),
        _mm512_shuffle_f32x4::<0b01_00_01_00>(a[0], a[1]),
    );
    let t3_23 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b11_10_11_10>(a[2], a[3]),
        _mm512_shuffle_f32x4::<0b01_00_01_00>(a[2], a[3]),
    );
    // t3[4..8] of keys 0..3 plus their t3[0..4]: [t6 of key 0 | key 1 | key 2 | key 3].
    let t6 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b11_01_11_01>(t3_01, t3_23),
        _mm512_shuffle_f32x4::<0b10_00_10_00>(t3_01, t3_23),
    );
    // Per key: u = (t6[2] + t6[0], t6[3] + t6[1], ..), then u[1] + u[0].
    let u = _mm512_add_ps(_mm512_permute_ps::<0b01_00_11_10>(t6), t6);
    let v = _mm512_add_ps(_mm512_permute_ps::<0b10_11_00_01>(u), u);
    // Lane 0 of each 128-bit lane holds one key's sum; gather them into lanes 0..4.
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castps512_ps128(_mm512_permutexvar_ps(idx, v))
}

/// As `attn::accumulate_strided`, 64 values of a row per step (`hd` a multiple of 64).
///
/// # Safety
/// The CPU must support AVX-512 F; `rows.len() >= w.len() * hd`.
#[target_feature(enable = "avx2,fma,avx512f")]
pub(super) unsafe fn accumulate_strided(
    w: &[f32],
    rows: &[f32],
    first: usize,
    lanes: usize,
    acc: &mut [f32],
) {
    let hd = acc.len() / lanes;
    debug_assert!(hd.is_multiple_of(64) && rows.len() >= w.len() * hd);
    for (l, lane) in acc.chunks_exact_mut(hd).enumerate() {
        // The first position at or after `first` that falls in lane `l`.
        let start = first + (l + lanes - first % lanes) % lanes;
        for d0 in (0..hd).step_by(64) {
            let dst = &mut lane[d0..d0 + 64];
            let mut r = [_mm512_setzero_ps(); 4];
            for (k, rk) in r.iter_mut().enumerate() {
                // SAFETY: `dst` is 64 f32s.
                *rk = unsafe { _mm512_loadu_ps(dst.as_ptr().add(16 * k)) };
            }
            for p in (start..w.len()).step_by(lanes) {
                let wp = _mm512_set1_ps(w[p]);
                let src = &rows[p * hd + d0..p * hd + d0 + 64];
                for (k, rk) in r.iter_mut().enumerate() {
                    // SAFETY: `src` is 64 readable f32s.
                    *rk = _mm512_fmadd_ps(
                        wp,
                        unsafe { _mm512_loadu_ps(src.as_ptr().add(16 * k)) },
                        *rk,
                    );
                }
            }
            for (k, rk) in r.iter().enumerate() {
                // SAFETY: `dst` is 64 writable f32s.
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(16 * k), *rk) };
            }
        }
    }
}
