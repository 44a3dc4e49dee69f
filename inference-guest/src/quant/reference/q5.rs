//! Q5_0 and Q5_1: 32-value blocks with a 5th quant bit per value in a 32-bit `qh`.
//!
//! Q5_0 (22 bytes): f16 d, u32 qh (little-endian), 16 bytes of nibbles; x = d·(q − 16).
//! Q5_1 (24 bytes): f16 d, f16 m, u32 qh, 16 bytes of nibbles; x = d·q + m.
//! Byte j holds value j in its low nibble and value j + 16 in its high nibble; bit i of `qh`
//! is bit 4 of value i.
//!
//! The dots reproduce llama.cpp's x86 AVX2 `ggml_vec_dot_q5_{0,1}_q8_{0,1}` order: eight i32
//! lanes per block (lane m takes values 4m..4m+4), each turned into f32 and accumulated with a
//! fused multiply-add, lanes summed at the end (`hsum_float_8`), Q5_1's min term beside them.

use super::dot::hsum8;
use super::rd_f16;
use crate::quant::f16::f32_to_f16;

/// The 32 unsigned 5-bit quants (0..=31) of a block whose `qh` is at `qh_at` and nibbles
/// follow it, in value order.
pub(crate) fn q5_quants(b: &[u8], qh_at: usize) -> [u8; 32] {
    let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
    let qs = &b[qh_at + 4..qh_at + 20];
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0xf) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

/// Packs 32 quants (0..=31) into `qh` + nibbles at `out[qh_at..qh_at + 20]`.
fn q5_pack(q: &[u8; 32], out: &mut [u8], qh_at: usize) {
    let mut qh = 0u32;
    for j in 0..16 {
        out[qh_at + 4 + j] = (q[j] & 0xf) | ((q[j + 16] & 0xf) << 4);
        qh |= u32::from((q[j] & 0x10) >> 4) << j;
        qh |= u32::from((q[j + 16] & 0x10) >> 4) << (j + 16);
    }
    out[qh_at..qh_at + 4].copy_from_slice(&qh.to_le_bytes());
}

/// ggml `quantize_row_q5_0_ref`.
pub(super) fn quantize_q5_0(x: &[f32], out: &mut [u8]) {
    for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(22)) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        // C: MIN(31, (int8_t)(x*id + 16.5f)) — truncation toward zero.
        let q: [u8; 32] =
            core::array::from_fn(|j| ((xb[j] * id + 16.5) as i32 as i8).min(31) as u8);
        q5_pack(&q, y, 2);
    }
}

/// ggml `quantize_row_q5_1_ref`.
pub(super) fn quantize_q5_1(x: &[f32], out: &mut [u8]) {
    for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(24)) {
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
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        y[2..4].copy_from_slice(&f32_to_f16(min).to_le_bytes());
        // C: (uint8_t)(x + 0.5f) of a value in [0, 31.5]; `& 0x1f` as the packing does.
        let q: [u8; 32] = core::array::from_fn(|j| (((xb[j] - min) * id + 0.5) as u8) & 0x1f);
        q5_pack(&q, y, 4);
    }
}

pub(super) fn dequantize_q5_0(src: &[u8], out: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(out.chunks_exact_mut(32)) {
        let d = rd_f16(b, 0);
        for (o, &q) in y.iter_mut().zip(&q5_quants(b, 2)) {
            *o = (i32::from(q) - 16) as f32 * d;
        }
    }
}

pub(super) fn dequantize_q5_1(src: &[u8], out: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(out.chunks_exact_mut(32)) {
        let (d, m) = (rd_f16(b, 0), rd_f16(b, 2));
        for (o, &q) in y.iter_mut().zip(&q5_quants(b, 4)) {
            *o = f32::from(q) * d + m;
        }
    }
}

/// The eight i32 lanes of one block product: lane m sums values 4m..4m+4.
fn lanes(q: &[i32; 32], a: &[u8]) -> [i32; 8] {
    core::array::from_fn(|m| {
        (4 * m..4 * m + 4)
            .map(|i| q[i] * i32::from(a[i] as i8))
            .sum()
    })
}

pub(super) fn dot_q5_0(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in w.chunks_exact(22).zip(a.chunks_exact(34)) {
        let q5 = q5_quants(x, 2);
        let q: [i32; 32] = core::array::from_fn(|i| i32::from(q5[i]) - 16);
        let d = rd_f16(x, 0) * rd_f16(y, 0);
        for (acc, lane) in acc.iter_mut().zip(lanes(&q, &y[2..34])) {
            *acc = libm::fmaf(d, lane as f32, *acc);
        }
    }
    hsum8(&acc)
}

pub(super) fn dot_q5_1(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (x, y) in w.chunks_exact(24).zip(a.chunks_exact(36)) {
        let q5 = q5_quants(x, 4);
        let q: [i32; 32] = core::array::from_fn(|i| i32::from(q5[i]));
        let d = rd_f16(x, 0) * rd_f16(y, 0);
        summs += rd_f16(x, 2) * rd_f16(y, 2);
        for (acc, lane) in acc.iter_mut().zip(lanes(&q, &y[4..36])) {
            *acc = libm::fmaf(d, lane as f32, *acc);
        }
    }
    hsum8(&acc) + summs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q5_0_known_block() {
        // d = 0.5; value 0 has q = 0x1f (low nibble 0xf, qh bit 0), value 16 q = 0x00,
        // value 17 q = 0x12 (high nibble 2, qh bit 17); the rest q = 16 (0 after the offset).
        let mut b = [0u8; 22];
        b[..2].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
        let qh: u32 = 1 | (1 << 17) | 0x0000_fffe;
        b[2..6].copy_from_slice(&qh.to_le_bytes());
        b[6] = 0x0f;
        b[7] = 0x20;
        let mut y = [9.0f32; 32];
        dequantize_q5_0(&b, &mut y);
        assert_eq!(
            (y[0], y[1], y[16], y[17], y[18]),
            (7.5, 0.0, -8.0, 1.0, -8.0)
        );
    }

    #[test]
    fn q5_quantisers_round_trip_exact_grids() {
        // Values on the Q5_0 grid d·(q − 16) with max = -16·d are reproduced exactly.
        let x: [f32; 32] = core::array::from_fn(|i| -0.25 * (16.0 - (i as f32 % 32.0)));
        let mut b = [0u8; 22];
        quantize_q5_0(&x, &mut b);
        let mut y = [0.0f32; 32];
        dequantize_q5_0(&b, &mut y);
        assert_eq!(x, y);
        // Q5_1: min 1.0, d = 0.125, q = i.
        let x: [f32; 32] = core::array::from_fn(|i| 1.0 + 0.125 * (31 - i) as f32);
        let mut b = [0u8; 24];
        quantize_q5_1(&x, &mut b);
        let mut y = [0.0f32; 32];
        dequantize_q5_1(&b, &mut y);
        assert_eq!(x, y);
    }
}
