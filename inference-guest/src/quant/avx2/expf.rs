//! The AVX-512 `ggml_v_expf` reproduced with AVX2+FMA, 8 lanes at a time: same operations,
//! same fused multiply-adds, so every lane equals [`reference::ggml_expf`] bit for bit.

use core::arch::x86_64::*;

use crate::quant::reference::expf::{c, ggml_expf};

/// `v[i] = ggml_expf(v[i])`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn exp_in_place(v: &mut [f32]) {
    let k = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
    let mut chunks = v.chunks_exact_mut(8);
    for ch in &mut chunks {
        // SAFETY: `ch` is exactly 8 f32s; loadu/storeu have no alignment requirement.
        let x = unsafe { _mm256_loadu_ps(ch.as_ptr()) };
        let z = _mm256_fmadd_ps(x, k(c::LOG2E), k(c::ROUND));
        let n = _mm256_sub_ps(z, k(c::ROUND));
        let b = _mm256_fnmadd_ps(n, k(c::LN2_LO), _mm256_fnmadd_ps(n, k(c::LN2_HI), x));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(k(c::P4), b, k(c::P3)),
                u,
                _mm256_fmadd_ps(k(c::P2), b, k(c::P1)),
            ),
            u,
            _mm256_fmadd_ps(k(c::P0), b, _mm256_set1_ps(1.0)),
        );
        let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let in_range = _mm256_cmp_ps::<_CMP_LE_OQ>(abs_n, _mm256_set1_ps(126.0));
        if _mm256_movemask_ps(in_range) == 0xff {
            // 2^n built in the exponent field: exact, so `j * 2^n` rounds once like scalef.
            let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            ));
            let r = _mm256_mul_ps(j, _mm256_castsi256_ps(e));
            // SAFETY: as the load above.
            unsafe { _mm256_storeu_ps(ch.as_mut_ptr(), r) };
        } else {
            // Rare (|x| > ~87, or NaN): the scalar reference handles the edges.
            for lane in ch.iter_mut() {
                *lane = ggml_expf(*lane);
            }
        }
    }
    for x in chunks.into_remainder() {
        *x = ggml_expf(*x);
    }
}
