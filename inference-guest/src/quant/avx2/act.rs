//! Activation quantisation, instruction for instruction what llama.cpp's AVX2
//! `quantize_row_q8_0/q8_1` do (so the bytes match the scalar reference exactly).

use core::arch::x86_64::*;

use super::hsum_i32;
use crate::quant::act_format::ActFormat;
use crate::quant::f16::f32_to_f16;

/// Returns false for formats handled by the scalar reference (Q8_K, as on x86 llama.cpp).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `out.len() == fmt.row_bytes(x.len())`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_act(fmt: ActFormat, x: &[f32], out: &mut [u8]) -> bool {
    match fmt {
        ActFormat::Q8_0 => {
            for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
                let (d, _) = q8_block(xb, arr_mut(y, 2));
                y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
            }
        }
        ActFormat::Q8_1 => {
            for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(36)) {
                let (d, sum) = q8_block(xb, arr_mut(y, 4));
                y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
                y[2..4].copy_from_slice(&f32_to_f16(d * sum as f32).to_le_bytes());
            }
        }
        ActFormat::F16 => {
            let mut xs = x.chunks_exact(8);
            let mut os = out.chunks_exact_mut(16);
            for (xb, o) in (&mut xs).zip(&mut os) {
                let v = ld_ps(xb);
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                let mut tmp = [0u8; 16];
                // SAFETY: `tmp` is 16 writable bytes; storeu has no alignment requirement.
                unsafe { _mm_storeu_si128(tmp.as_mut_ptr().cast(), h) };
                o.copy_from_slice(&tmp);
            }
            for (v, o) in xs
                .remainder()
                .iter()
                .zip(os.into_remainder().chunks_exact_mut(2))
            {
                o.copy_from_slice(&f32_to_f16(*v).to_le_bytes());
            }
        }
        ActFormat::F32 | ActFormat::BF16 | ActFormat::Q8K => return false,
    }
    true
}

fn arr_mut(s: &mut [u8], at: usize) -> &mut [u8; 32] {
    (&mut s[at..at + 32])
        .try_into()
        .expect("32 bytes by construction")
}

#[inline]
#[target_feature(enable = "avx2")]
fn ld_ps(x: &[f32]) -> __m256 {
    let x: &[f32; 8] = x[..8].try_into().expect("8 floats by construction");
    // SAFETY: `x` is 8 readable f32s; loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

/// One 32-value block: amax, multiplier 127/amax, round half to even, pack to i8.
/// Returns (d, Σq).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_block(x: &[f32], qs: &mut [u8; 32]) -> (f32, i32) {
    let v = [
        ld_ps(&x[0..8]),
        ld_ps(&x[8..16]),
        ld_ps(&x[16..24]),
        ld_ps(&x[24..32]),
    ];
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
    }
    let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    let amax = _mm_cvtss_f32(m4);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let q = v.map(|vi| {
        _mm256_cvtps_epi32(_mm256_round_ps::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(
            vi, id,
        )))
    });
    let sum = hsum_i32(_mm256_add_epi32(
        _mm256_add_epi32(q[0], q[1]),
        _mm256_add_epi32(q[2], q[3]),
    ));
    let p01 = _mm256_packs_epi32(q[0], q[1]);
    let p23 = _mm256_packs_epi32(q[2], q[3]);
    let p = _mm256_packs_epi16(p01, p23);
    // The packs work per 128-bit lane; this restores element order.
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: `qs` is 32 writable bytes; storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), p) };
    (d, sum)
}
