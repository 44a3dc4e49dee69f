//! Q4_0, Q4_1 and Q8_0: 32-value blocks with an f16 scale (and f16 min for Q4_1).
//!
//! Nibble layout (Q4_0/Q4_1): byte j holds value j in its low nibble and value j + 16 in its
//! high nibble.

use super::num::round_away;
use super::rd_f16;
use crate::quant::f16::f32_to_f16;

pub(super) fn quantize_q4_0(x: &[f32], out: &mut [u8]) {
    for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(18)) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        for j in 0..16 {
            // C: MIN(15, (int8_t)(x*id + 8.5f)) — truncation toward zero.
            let q0 = ((xb[j] * id + 8.5) as i32 as i8).min(15) as u8;
            let q1 = ((xb[j + 16] * id + 8.5) as i32 as i8).min(15) as u8;
            y[2 + j] = q0 | (q1 << 4);
        }
    }
}

pub(super) fn quantize_q4_1(x: &[f32], out: &mut [u8]) {
    for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(20)) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        y[2..4].copy_from_slice(&f32_to_f16(min).to_le_bytes());
        for j in 0..16 {
            let q0 = (((xb[j] - min) * id + 0.5) as i32 as i8).min(15) as u8;
            let q1 = (((xb[j + 16] - min) * id + 0.5) as i32 as i8).min(15) as u8;
            y[4 + j] = q0 | (q1 << 4);
        }
    }
}

pub(super) fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        for (q, &v) in y[2..].iter_mut().zip(xb) {
            *q = round_away(v * id) as i8 as u8;
        }
    }
}

pub(super) fn dequantize_q4_0(src: &[u8], out: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = rd_f16(b, 0);
        for j in 0..16 {
            y[j] = (i32::from(b[2 + j] & 0xf) - 8) as f32 * d;
            y[j + 16] = (i32::from(b[2 + j] >> 4) - 8) as f32 * d;
        }
    }
}

pub(super) fn dequantize_q4_1(src: &[u8], out: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        let d = rd_f16(b, 0);
        let m = rd_f16(b, 2);
        for j in 0..16 {
            y[j] = f32::from(b[4 + j] & 0xf) * d + m;
            y[j + 16] = f32::from(b[4 + j] >> 4) * d + m;
        }
    }
}

pub(super) fn dequantize_q8_0(src: &[u8], out: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = rd_f16(b, 0);
        for (o, &q) in y.iter_mut().zip(&b[2..]) {
            *o = f32::from(q as i8) * d;
        }
    }
}
