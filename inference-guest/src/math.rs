//! The element-wise operations of the forward pass, written to follow llama.cpp's numerics
//! (where the sum is kept in f64, which exp approximation is used, how RoPE angles are
//! stepped) so that logits agree closely with the reference engine.

/// `out = x / rms(x) * w`, with the sum of squares in f64 as ggml's `rms_norm` does.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    assert!(x.len() == w.len() && x.len() == out.len());
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / libm::sqrtf(mean + eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        // ggml scales first (ggml_rms_norm), then multiplies by the weight (ggml_mul).
        *o = (v * scale) * g;
    }
}

/// `exp(x)` for f32 with ~1.5 ulp error: ggml's vectorised `ggml_v_expf`, written so the
/// compiler can vectorise loops over it. Out-of-range inputs fall back to libm.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23: rounds to an integer by addition
    let z = x * f32::from_bits(0x3fb8_aa3b) + r; // x * log2(e)
    let n = z - r;
    let b = x - n * f32::from_bits(0x3f31_7200) - n * f32::from_bits(0x35bf_be8e); // x - n ln2
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1.0f32.to_bits()));
    let u = b * b;
    let j = ((f32::from_bits(0x3c07_2010) * b + f32::from_bits(0x3d2b_9f17)) * u
        + (f32::from_bits(0x3e2a_af33) * b + f32::from_bits(0x3efffedb)))
        * u
        + f32::from_bits(0x3f7f_fff6) * b;
    if libm::fabsf(n) > 126.0 {
        return libm::expf(x);
    }
    j * k + k
}

/// `gate[i] = silu(gate[i]) * up[i]`, ggml's SwiGLU, in place.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + fast_exp(-*g)) * u;
    }
}

/// In-place softmax of `x`; the sum is kept in f64 like ggml's `soft_max`.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = fast_exp(*v - max);
        sum += f64::from(*v);
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// The cos/sin of every rotated pair at one position, stepped the way ggml's rope cache does
/// (`theta *= theta_scale` in f32), so angles match llama.cpp bit for bit.
pub fn rope_angles(pos: usize, freq_base: f32, rope_dims: usize, cos: &mut [f32], sin: &mut [f32]) {
    let half = rope_dims / 2;
    assert!(cos.len() == half && sin.len() == half);
    let theta_scale = libm::powf(freq_base, -2.0 / rope_dims as f32);
    let mut theta = pos as f32;
    for i in 0..half {
        cos[i] = libm::cosf(theta);
        sin[i] = libm::sinf(theta);
        theta *= theta_scale;
    }
}

/// Rotates one head (`x.len()` = head dim) by precomputed angles.
pub fn rope_apply(x: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) {
    let half = cos.len();
    if neox {
        let n_dims = half * 2;
        for i in 0..half {
            let (a, b) = (x[i], x[i + n_dims / 2]);
            x[i] = a * cos[i] - b * sin[i];
            x[i + n_dims / 2] = a * sin[i] + b * cos[i];
        }
    } else {
        for i in 0..half {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            x[2 * i] = a * cos[i] - b * sin[i];
            x[2 * i + 1] = a * sin[i] + b * cos[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_close_to_libm() {
        let mut x = -100.0f32;
        while x < 88.0 {
            let (a, b) = (fast_exp(x), libm::expf(x));
            assert!(((a - b) / b).abs() < 1e-6, "x={x} fast={a} libm={b}");
            x += 0.0137;
        }
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn softmax_sums_to_one_and_masks() {
        let mut v = [1.0, 2.0, f32::NEG_INFINITY, 0.5];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(v[2], 0.0);
        assert!(v[1] > v[0] && v[0] > v[3]);
    }

    #[test]
    fn rms_norm_of_constant_is_weight() {
        let x = [3.0f32; 8];
        let w = [0.5f32; 8];
        let mut out = [0.0f32; 8];
        rms_norm(&x, &w, 0.0, &mut out);
        assert!(out.iter().all(|&o| (o - 0.5).abs() < 1e-6));
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let mut cos = [0.0; 4];
        let mut sin = [0.0; 4];
        rope_angles(0, 10000.0, 8, &mut cos, &mut sin);
        let orig = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let mut x = orig;
        rope_apply(&mut x, &cos, &sin, false);
        assert_eq!(x, orig);
        rope_angles(17, 10000.0, 8, &mut cos, &mut sin);
        for neox in [false, true] {
            let mut x = orig;
            rope_apply(&mut x, &cos, &sin, neox);
            let n0: f32 = orig.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3);
        }
    }
}
