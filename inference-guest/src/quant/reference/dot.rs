//! Scalar dot products of one weight row with one activation row in its paired format.
//!
//! Integer parts are exact; only the float accumulation order differs from the SIMD versions.

use super::kquant::{q4_k_scales_mins, q6_k_unpack};
use super::{rd_f16, rd_f32};
use crate::ggml_type::GgmlType;

/// Lengths are checked by the caller.
pub(crate) fn dot(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
    match ty {
        GgmlType::F32 => w
            .chunks_exact(4)
            .zip(a.chunks_exact(4))
            .map(|(x, y)| rd_f32(x, 0) * rd_f32(y, 0))
            .sum(),
        GgmlType::F16 => w
            .chunks_exact(2)
            .zip(a.chunks_exact(2))
            .map(|(x, y)| rd_f16(x, 0) * rd_f16(y, 0))
            .sum(),
        GgmlType::BF16 => super::bf16::dot_bf16(w, a),
        GgmlType::Q4_0 => dot_q4_0(w, a),
        GgmlType::Q4_1 => dot_q4_1(w, a),
        GgmlType::Q5_0 => super::q5::dot_q5_0(w, a),
        GgmlType::Q5_1 => super::q5::dot_q5_1(w, a),
        GgmlType::Q8_0 => dot_q8_0(w, a),
        GgmlType::Q4K => dot_q4_k(w, a),
        GgmlType::Q5K => super::q5_k::dot_q5_k(w, a),
        GgmlType::Q6K => dot_q6_k(w, a),
        GgmlType::IQ4NL => super::iq4::dot_iq4_nl(w, a),
        GgmlType::IQ4XS => super::iq4::dot_iq4_xs(w, a),
    }
}

fn dot_q4_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let mut isum = 0i32;
        for j in 0..16 {
            isum += (i32::from(x[2 + j] & 0xf) - 8) * i32::from(y[2 + j] as i8);
            isum += (i32::from(x[2 + j] >> 4) - 8) * i32::from(y[18 + j] as i8);
        }
        // llama.cpp's x86 build runs Q4_0 through its repacked 8x8 kernels, which add each
        // block's integer total to the row sum with one fused multiply-add.
        sum = libm::fmaf(isum as f32, rd_f16(x, 0) * rd_f16(y, 0), sum);
    }
    sum
}

fn dot_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(34).zip(a.chunks_exact(34)) {
        let isum: i32 = x[2..]
            .iter()
            .zip(&y[2..])
            .map(|(&p, &q)| i32::from(p as i8) * i32::from(q as i8))
            .sum();
        sum += isum as f32 * (rd_f16(x, 0) * rd_f16(y, 0));
    }
    sum
}

fn dot_q4_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(20).zip(a.chunks_exact(36)) {
        let mut isum = 0i32;
        for j in 0..16 {
            isum += i32::from(x[4 + j] & 0xf) * i32::from(y[4 + j] as i8);
            isum += i32::from(x[4 + j] >> 4) * i32::from(y[20 + j] as i8);
        }
        sum += isum as f32 * (rd_f16(x, 0) * rd_f16(y, 0)) + rd_f16(x, 2) * rd_f16(y, 2);
    }
    sum
}

fn dot_q4_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(292)) {
        let yd = rd_f32(y, 0);
        let (sc, m) = q4_k_scales_mins(&x[4..16]);
        let mut isum = 0i32;
        for c in 0..4 {
            let q = &x[16 + 32 * c..48 + 32 * c];
            let (lo, hi) = (&y[4 + 64 * c..36 + 64 * c], &y[36 + 64 * c..68 + 64 * c]);
            let (mut s0, mut s1) = (0i32, 0i32);
            for l in 0..32 {
                s0 += i32::from(q[l] & 0xf) * i32::from(lo[l] as i8);
                s1 += i32::from(q[l] >> 4) * i32::from(hi[l] as i8);
            }
            isum += s0 * i32::from(sc[2 * c]) + s1 * i32::from(sc[2 * c + 1]);
        }
        let mut msum = 0i32;
        for j in 0..16 {
            let bs = i16::from_le_bytes([y[260 + 2 * j], y[261 + 2 * j]]);
            msum += i32::from(bs) * i32::from(m[j / 2]);
        }
        sum += rd_f16(x, 0) * yd * isum as f32 - rd_f16(x, 2) * yd * msum as f32;
    }
    sum
}

/// `hsum_float_8` of ggml's x86 kernels: halves, then pairs.
pub(crate) fn hsum8(acc: &[f32; 8]) -> f32 {
    let r: [f32; 4] = core::array::from_fn(|l| acc[4 + l] + acc[l]);
    (r[0] + r[2]) + (r[1] + r[3])
}

/// Q6_K·Q8_K as llama.cpp's x86 kernel sums it: eight i32 lanes (lane m takes bytes 4m..4m+4
/// of every 32-value chunk, minus 32 × its two 16-value groups' scaled sums), each turned
/// into f32 and accumulated with one fused multiply-add per super-block.
fn dot_q6_k(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
        let q = q6_k_unpack(x);
        let sc = |g: usize| i32::from(x[192 + g] as i8);
        let bsum = |g: usize| i32::from(i16::from_le_bytes([y[260 + 2 * g], y[261 + 2 * g]]));
        let mut lanes = [0i32; 8];
        for (i, (&qv, &yv)) in q.iter().zip(&y[4..260]).enumerate() {
            lanes[(i % 32) / 4] += i32::from(qv) * i32::from(yv as i8) * sc(i / 16);
        }
        let d = rd_f32(y, 0) * rd_f16(x, 208);
        for (m, (lane, acc)) in lanes.iter().zip(acc.iter_mut()).enumerate() {
            let corr = bsum(2 * m) * sc(2 * m) + bsum(2 * m + 1) * sc(2 * m + 1);
            *acc = libm::fmaf(d, (lane - 32 * corr) as f32, *acc);
        }
    }
    hsum8(&acc)
}
