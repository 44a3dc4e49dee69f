//! Activation quantisation, reproducing llama.cpp's x86 build bit for bit.
//!
//! Q8_0/Q8_1 follow its AVX2 `quantize_row_q8_0/1` (not the `_ref` versions): the multiplier is
//! `127 / amax` rather than `1 / d`, rounding is half to even, and Q8_1's `s` is
//! `f16(d · Σq)` with the unrounded f32 `d`. Q8_K is `quantize_row_q8_K_ref`, which x86 runs.

use super::num::nearest_int;
use crate::quant::act_format::ActFormat;
use crate::quant::f16::f32_to_f16;

/// Quantises one activation row; lengths are checked by the caller.
pub(crate) fn quantize_act(fmt: ActFormat, x: &[f32], out: &mut [u8]) {
    match fmt {
        ActFormat::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        ActFormat::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f32_to_f16(*v).to_le_bytes());
            }
        }
        ActFormat::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&super::bf16::f32_to_bf16(*v).to_le_bytes());
            }
        }
        ActFormat::Q8_0 => {
            for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
                let (d, _) = q8_block(xb, &mut y[2..34]);
                y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
            }
        }
        ActFormat::Q8_1 => {
            for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(36)) {
                let (d, sum) = q8_block(xb, &mut y[4..36]);
                y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
                y[2..4].copy_from_slice(&f32_to_f16(d * sum as f32).to_le_bytes());
            }
        }
        ActFormat::Q8K => {
            for (xb, y) in x.chunks_exact(256).zip(out.chunks_exact_mut(292)) {
                q8_k_block(xb, y);
            }
        }
    }
}

/// One 32-value block the AVX2 way; returns (d, Σq).
fn q8_block(xb: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0;
    for (q, &v) in qs.iter_mut().zip(xb) {
        // |v·id| <= 127 (+ rounding), well inside nearest_int's exact range.
        let i = nearest_int(v * id);
        sum += i;
        *q = i as i8 as u8;
    }
    (d, sum)
}

/// ggml `quantize_row_q8_K_ref` for one block: f32 d, 256 × i8, 16 × i16 sums.
fn q8_k_block(x: &[f32], y: &mut [u8]) {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        // ggml leaves bsums untouched here; zero is what a zeroed buffer would hold.
        y.fill(0);
        return;
    }
    let iscale = -127.0 / max;
    for (q, &v) in y[4..260].iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let s: i32 = y[4 + 16 * j..20 + 16 * j]
            .iter()
            .map(|&q| i32::from(q as i8))
            .sum();
        y[260 + 2 * j..262 + 2 * j].copy_from_slice(&(s as i16).to_le_bytes());
    }
    y[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}
