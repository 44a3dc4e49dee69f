//! Element-wise operations of the forward pass, written to follow llama.cpp's numerics
//! (the RMS sum kept in f64, RoPE angles stepped by repeated f32 multiplication) so that
//! logits agree with the reference engine. Softmax and SwiGLU live with the attention and
//! the forward pass, where they use the kernels' exp.

/// `out = x / rms(x) * w`, with the sum of squares in f64 as ggml's `rms_norm` does.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    assert!(x.len() == w.len() && x.len() == out.len());
    let scale = rms_scale(x, eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        // ggml scales first (ggml_rms_norm), then multiplies by the weight (ggml_mul).
        *o = (v * scale) * g;
    }
}

/// `1 / sqrt(mean(x²) + eps)`, the mean taken over an f64 sum as ggml's `rms_norm` does.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / libm::sqrtf(mean + eps)
}

/// [`rms_norm`] of every `w.len()`-long row of `x`, in place (Qwen3's per-head Q/K norm,
/// where a row is one head).
pub fn rms_norm_rows_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        let scale = rms_scale(row, eps);
        row.iter_mut()
            .zip(w)
            .for_each(|(v, &g)| *v = (*v * scale) * g);
    }
}

/// [`rms_norm`] of every `w.len()`-long row of `x` into the matching row of `out`.
pub fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        rms_norm(xr, w, eps, or);
    }
}

/// The cos/sin of every rotated pair at one position, stepped the way ggml's rope cache does
/// (`theta *= theta_scale` in f32), so angles match llama.cpp bit for bit. `freq_factors`
/// (llama3's `rope_freqs`, one per pair) divide each pair's angle, as ggml's
/// `ggml_rope_cache_init` divides it before anything else.
pub fn rope_angles(
    pos: usize,
    freq_base: f32,
    freq_factors: Option<&[f32]>,
    cos: &mut [f32],
    sin: &mut [f32],
) {
    let half = cos.len();
    assert!(sin.len() == half && freq_factors.is_none_or(|f| f.len() == half));
    let theta_scale = libm::powf(freq_base, -2.0 / (2 * half) as f32);
    let mut theta = pos as f32;
    for i in 0..half {
        let angle = freq_factors.map_or(theta, |f| theta / f[i]);
        (cos[i], sin[i]) = cos_sin(angle);
        theta *= theta_scale;
    }
}

/// `(a cos - b sin, a sin + b cos)` the way ggml's `rotate_pairs` compiles: GCC contracts
/// the first product of each expression into a fused multiply-add.
#[inline]
fn rotate(a: f32, b: f32, cos: f32, sin: f32) -> (f32, f32) {
    (libm::fmaf(a, cos, -(b * sin)), libm::fmaf(a, sin, b * cos))
}

/// `cos` and `sin` exactly as llama.cpp gets them from glibc on x86_64 (its FMA build):
/// a port of that code, so the host, the guest (no std) and arm64 (musl) all agree bit for
/// bit (`sincosf.rs`, checked against glibc over every f32).
fn cos_sin(theta: f32) -> (f32, f32) {
    let (sin, cos) = crate::sincosf::sincosf(theta);
    (cos, sin)
}

/// Rotates one head (`x.len()` = head dim) by precomputed angles.
pub fn rope_apply(x: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) {
    let half = cos.len();
    if neox {
        let n_dims = half * 2;
        for i in 0..half {
            let (a, b) = (x[i], x[i + n_dims / 2]);
            (x[i], x[i + n_dims / 2]) = rotate(a, b, cos[i], sin[i]);
        }
    } else {
        for i in 0..half {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            (x[2 * i], x[2 * i + 1]) = rotate(a, b, cos[i], sin[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        rope_angles(0, 10000.0, None, &mut cos, &mut sin);
        let orig = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let mut x = orig;
        rope_apply(&mut x, &cos, &sin, false);
        assert_eq!(x, orig);
        rope_angles(17, 10000.0, None, &mut cos, &mut sin);
        for neox in [false, true] {
            let mut x = orig;
            rope_apply(&mut x, &cos, &sin, neox);
            let n0: f32 = orig.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3);
        }
    }

    #[test]
    fn the_in_place_norm_equals_the_copying_one() {
        let x: [f32; 8] = core::array::from_fn(|i| i as f32 * 0.7 - 2.0);
        let w: [f32; 4] = [0.5, 1.5, -1.0, 2.0];
        let mut out = [0.0f32; 8];
        rms_norm_rows(&x, &w, 1e-6, &mut out);
        let mut y = x;
        rms_norm_rows_in_place(&mut y, &w, 1e-6);
        assert_eq!(y, out);
    }

    #[test]
    fn frequency_factors_divide_each_pairs_angle() {
        let (mut c0, mut s0, mut c1, mut s1) = ([0.0; 4], [0.0; 4], [0.0; 4], [0.0; 4]);
        rope_angles(9, 10000.0, None, &mut c0, &mut s0);
        rope_angles(9, 10000.0, Some(&[1.0; 4]), &mut c1, &mut s1);
        assert_eq!((c0, s0), (c1, s1));
        rope_angles(9, 10000.0, Some(&[1.0, 1.0, 1.0, 4.0]), &mut c1, &mut s1);
        assert_eq!((&c0[..3], &s0[..3]), (&c1[..3], &s1[..3]));
        // The last pair's angle, 9 * base^(-3/4), divided by its factor of 4.
        let theta = 9.0 * libm::powf(10000.0, -0.75);
        assert!((s1[3] - libm::sinf(theta / 4.0)).abs() < 1e-6);
    }
}
