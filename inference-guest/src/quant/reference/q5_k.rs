//! Q5_K: 256-value super-blocks (176 bytes): f16 d, f16 dmin, 12 bytes of packed 6-bit
//! sub-block scales and mins (as Q4_K), qh[32], qs[128]. Sub-block j (32 values) is
//! x = d·sc[j]·q − dmin·m[j] with q in 0..=31: each 64-value chunk c uses qs[32c..32c + 32]
//! (low nibbles its first 32 values, high nibbles the next 32) and bits 2c / 2c + 1 of qh[l]
//! as bit 4 of values 64c + l / 64c + 32 + l.

use super::dot::hsum8;
use super::kquant::{q4_k_scales_mins, quantize_k_scales_mins};
use super::{rd_f16, rd_f32};

/// The 256 unsigned 5-bit quants (0..=31) of a Q5_K block, in value order.
pub(crate) fn q5_k_unpack(b: &[u8]) -> [u8; 256] {
    let (qh, qs) = (&b[16..48], &b[48..176]);
    let mut q = [0u8; 256];
    for c in 0..4 {
        for l in 0..32 {
            let ql = qs[32 * c + l];
            q[64 * c + l] = (ql & 0xf) | (((qh[l] >> (2 * c)) & 1) << 4);
            q[64 * c + 32 + l] = (ql >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
        }
    }
    q
}

pub(super) fn dequantize_q5_k(src: &[u8], out: &mut [f32]) {
    for (b, y) in src.chunks_exact(176).zip(out.chunks_exact_mut(256)) {
        let (d, min) = (rd_f16(b, 0), rd_f16(b, 2));
        let (sc, m) = q4_k_scales_mins(&b[4..16]);
        let q = q5_k_unpack(b);
        for (j, (ys, qs)) in y.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
            let (d1, m1) = (d * f32::from(sc[j]), min * f32::from(m[j]));
            for (o, &qv) in ys.iter_mut().zip(qs) {
                *o = d1 * f32::from(qv) - m1;
            }
        }
    }
}

/// ggml `quantize_row_q5_K_ref`.
pub(super) fn quantize_q5_k(x: &[f32], out: &mut [u8]) {
    for (x, y) in x.chunks_exact(256).zip(out.chunks_exact_mut(176)) {
        let l = quantize_k_scales_mins(x, 31, -0.5, 15, y);
        y[16..48].fill(0);
        for c in 0..4 {
            for i in 0..32 {
                let (l1, l2) = (l[64 * c + i], l[64 * c + 32 + i]);
                y[16 + i] |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1));
                y[48 + 32 * c + i] = (l1 & 0xf) | ((l2 & 0xf) << 4);
            }
        }
    }
}

/// Q5_K·Q8_K in llama.cpp's x86 AVX2 order: eight i32 lanes per super-block (lane m takes
/// bytes 4m..4m+4 of every 32-value sub-block, times its scale), one fused multiply-add into
/// eight float lanes, summed at the end; the mins go into one scalar beside them.
pub(super) fn dot_q5_k(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (x, y) in w.chunks_exact(176).zip(a.chunks_exact(292)) {
        let (sc, m) = q4_k_scales_mins(&x[4..16]);
        let q = q5_k_unpack(x);
        let mut lanes = [0i32; 8];
        for (i, (&qv, &yv)) in q.iter().zip(&y[4..260]).enumerate() {
            lanes[(i % 32) / 4] += i32::from(qv) * i32::from(yv as i8) * i32::from(sc[i / 32]);
        }
        let bsum = |g: usize| i32::from(i16::from_le_bytes([y[260 + 2 * g], y[261 + 2 * g]]));
        let msum: i32 = (0..8)
            .map(|j| i32::from(m[j]) * (bsum(2 * j) + bsum(2 * j + 1)))
            .sum();
        let yd = rd_f32(y, 0);
        summs += -yd * rd_f16(x, 2) * msum as f32;
        let d = yd * rd_f16(x, 0);
        for (acc, lane) in acc.iter_mut().zip(lanes) {
            *acc = libm::fmaf(d, lane as f32, *acc);
        }
    }
    hsum8(&acc) + summs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::f16::f32_to_f16;

    #[test]
    fn q5_k_known_block() {
        // d = 1, dmin = 0.5; sub-block 0 scale 2 min 3, sub-block 1 scale 1 min 0.
        let mut b = [0u8; 176];
        b[..2].copy_from_slice(&f32_to_f16(1.0).to_le_bytes());
        b[2..4].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
        b[4] = 2; // sc[0]
        b[5] = 1; // sc[1]
        b[8] = 3; // m[0]
        b[16] = 0b01; // qh[0]: value 0 gets bit 4
        b[17] = 0b10; // qh[1]: value 33 gets bit 4
        b[48] = 0x3f; // value 0 low nibble 15, value 32 nibble 3
        b[49] = 0x50; // value 1 nibble 0, value 33 nibble 5
        let mut y = [9.0f32; 256];
        dequantize_q5_k(&b, &mut y);
        // value 0: 2·31 − 1.5; value 1: 2·0 − 1.5; value 32: 1·3; value 33: 1·(5 + 16).
        assert_eq!((y[0], y[1], y[32], y[33]), (60.5, -1.5, 3.0, 21.0));
        assert!(y[64..].iter().all(|&v| v == 0.0));
    }
}
