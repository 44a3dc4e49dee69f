//! `exp` exactly as llama.cpp's AVX-512 build computes it (`ggml_v_expf`, the `__m512`
//! variant): a degree-5 polynomial evaluated with fused multiply-adds and scaled by 2^n.
//!
//! The engine reproduces it bit for bit because softmax probabilities and SwiGLU outputs
//! are later rounded (to f16, or into Q8 activations), where a one-ulp difference can flip
//! a rounding and, through 30 layers, change a greedy token.

/// Constants of `ggml_v_expf`, as bit patterns of the C hex-float literals.
pub(crate) mod c {
    pub const ROUND: u32 = 0x4b40_0000; // 0x1.8p23
    pub const LOG2E: u32 = 0x3fb8_aa3b; // 0x1.715476p+0
    pub const LN2_HI: u32 = 0x3f31_7200; // 0x1.62e4p-1
    pub const LN2_LO: u32 = 0x35bf_be8e; // 0x1.7f7d1cp-20
    pub const P4: u32 = 0x3c07_2010; // 0x1.0e4020p-7
    pub const P3: u32 = 0x3d2b_9f17; // 0x1.573e2ep-5
    pub const P2: u32 = 0x3e2a_af33; // 0x1.555e66p-3
    pub const P1: u32 = 0x3eff_fedb; // 0x1.fffdb6p-2
    pub const P0: u32 = 0x3f7f_fff6; // 0x1.ffffecp-1
}

fn f(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// `x * 2^n` for an integral `n`, rounded once (`_mm512_scalef_ps` for finite inputs).
pub(crate) fn scale_by_pow2(x: f32, n: f32) -> f32 {
    let n = n as i32;
    if (-126..=127).contains(&n) {
        return x * f32::from_bits(((n + 127) as u32) << 23);
    }
    // Outside the normal exponent range: split so each factor is a normal power of two.
    // (Results this small or large end as 0 or inf after the callers' rounding anyway.)
    let half = n / 2;
    x * f32::from_bits(((half + 127).clamp(1, 254) as u32) << 23)
        * f32::from_bits(((n - half + 127).clamp(1, 254) as u32) << 23)
}

/// One lane of the AVX-512 `ggml_v_expf`.
pub fn ggml_expf(x: f32) -> f32 {
    let fma = libm::fmaf;
    let z = fma(x, f(c::LOG2E), f(c::ROUND));
    let n = z - f(c::ROUND);
    let b = fma(-n, f(c::LN2_LO), fma(-n, f(c::LN2_HI), x));
    let u = b * b;
    let j = fma(
        fma(fma(f(c::P4), b, f(c::P3)), u, fma(f(c::P2), b, f(c::P1))),
        u,
        fma(f(c::P0), b, 1.0),
    );
    if libm::fabsf(n) > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    if x.is_nan() {
        return x;
    }
    scale_by_pow2(j, n)
}

/// `v[i] = ggml_expf(v[i])` for every element.
pub fn exp_in_place(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = ggml_expf(*x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_to_libm_over_the_useful_range() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (ggml_expf(x), libm::expf(x));
            assert!(((a - b) / b).abs() < 5e-7, "x={x}: {a} vs {b}");
            x += 0.01371;
        }
        assert_eq!(ggml_expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(ggml_expf(-1000.0), 0.0);
        assert_eq!(ggml_expf(1000.0), f32::INFINITY);
        assert_eq!(ggml_expf(0.0), 1.0);
    }
}
