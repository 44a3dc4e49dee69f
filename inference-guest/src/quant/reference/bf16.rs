//! bfloat16: conversions with ggml's rounding and the BF16·BF16 dot in llama.cpp's x86 AVX2
//! order (`ggml_vec_dot_bf16`).

use super::dot::hsum8;

/// ggml `ggml_compute_fp32_to_bf16`: round to nearest even; NaNs stay NaN (made quiet).
pub(crate) fn f32_to_bf16(v: f32) -> u16 {
    let u = v.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Exact widening.
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

fn rd(b: &[u8], i: usize) -> f32 {
    bf16_to_f32(u16::from_le_bytes([b[2 * i], b[2 * i + 1]]))
}

/// Four accumulators of eight lanes over 32-value chunks, each product rounded then added
/// (no fused multiply-add, as the C `_mm256_add_ps(_mm256_mul_ps(..))`), combined as
/// (c1 + c3) + (c2 + c4) and summed by halves; the tail is added in f64 (`ggml_float`).
pub(crate) fn dot_bf16(w: &[u8], a: &[u8]) -> f32 {
    let n = w.len() / 2;
    let mut c = [[0.0f32; 8]; 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, ck) in c.iter_mut().enumerate() {
            for (l, acc) in ck.iter_mut().enumerate() {
                let j = i + 8 * k + l;
                *acc += rd(w, j) * rd(a, j);
            }
        }
        i += 32;
    }
    let lanes: [f32; 8] = core::array::from_fn(|l| (c[0][l] + c[2][l]) + (c[1][l] + c[3][l]));
    let mut sum = f64::from(hsum8(&lanes));
    for j in i..n {
        sum += f64::from(rd(w, j) * rd(a, j));
    }
    sum as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: rounds up to even.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16(-2.5), 0xc020);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(bf16_to_f32(0xc020), -2.5);
    }
}
