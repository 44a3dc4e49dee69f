//! IQ4_NL and IQ4_XS: 4-bit indices into ggml's non-linear table `kvalues_iq4nl`.
//!
//! IQ4_NL (18 bytes per 32 values): f16 d, 16 bytes of nibbles (byte j: value j low, value
//! j + 16 high); x = d·T[q].
//! IQ4_XS (136 bytes per 256 values): f16 d, u16 scales_h, u8 scales_l[4], 128 bytes of
//! nibbles (16 per 32-value sub-block, laid out as IQ4_NL's); sub-block ib has the 6-bit
//! scale ls = (scales_l[ib/2] >> 4·(ib%2) & 15) | ((scales_h >> 2·ib & 3) << 4) and
//! x = d·(ls − 32)·T[q].

use super::dot::hsum8;
use super::num::nearest_int;
use super::{rd_f16, rd_f32};
use crate::quant::f16::f32_to_f16;

/// ggml `kvalues_iq4nl`.
pub(crate) const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml `best_index_int8` over [`KVALUES`]: the index of the nearest table value.
fn best_index(x: f32) -> u8 {
    let val = |i: usize| f32::from(KVALUES[i]);
    if x <= val(0) {
        return 0;
    }
    if x >= val(15) {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < val(mav) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - val(mu - 1) < val(mu) - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// The scale of one 32-value block and its indices, ggml `quantize_row_iq4_nl_impl`'s
/// per-block search without importance weights (weights x², `ntry` = 7); 0 for a block
/// below `GROUP_MAX_EPS`.
fn block_scale(xb: &[f32], l: &mut [u8]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let t0 = f32::from(KVALUES[0]);
    let mut id = 1.0 / (-max / t0);
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for (lj, &v) in l.iter_mut().zip(xb) {
        *lj = best_index(id * v);
        let (q, w) = (f32::from(KVALUES[usize::from(*lj)]), v * v);
        sumqx += w * q * v;
        sumq2 += w * q * q;
    }
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -7i32..=7 {
        id = (itry + i32::from(KVALUES[0])) as f32 / max;
        (sumqx, sumq2) = (0.0, 0.0);
        for &v in xb {
            let q = f32::from(KVALUES[usize::from(best_index(id * v))]);
            let w = v * v;
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Packs 32 indices as IQ4_NL/IQ4_XS nibbles.
fn pack(l: &[u8], q4: &mut [u8]) {
    for j in 0..16 {
        q4[j] = l[j] | (l[16 + j] << 4);
    }
}

/// IQ4_NL as `llama-quantize` writes it without an importance matrix (ggml `quantize_iq4_nl`,
/// `ntry` = 7). ggml's `quantize_row_iq4_nl_ref` skips the scale search (`ntry` = -1); the
/// searched scale is what real files hold, so the converter reproduces that.
pub(super) fn quantize_iq4_nl(x: &[f32], out: &mut [u8]) {
    for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(18)) {
        let mut l = [0u8; 32];
        let d = block_scale(xb, &mut l);
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (lj, &v) in l.iter_mut().zip(xb) {
            *lj = best_index(id * v);
        }
        pack(&l, &mut y[2..18]);
    }
}

/// ggml `quantize_row_iq4_xs_ref` (`quantize_iq4_xs` without importance weights).
pub(super) fn quantize_iq4_xs(x: &[f32], out: &mut [u8]) {
    for (xs, y) in x.chunks_exact(256).zip(out.chunks_exact_mut(136)) {
        let mut l = [0u8; 256];
        let mut scales = [0.0f32; 8];
        let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
        for ib in 0..8 {
            scales[ib] = block_scale(&xs[32 * ib..32 * ib + 32], &mut l[32 * ib..32 * ib + 32]);
            if scales[ib].abs() > amax_scale {
                amax_scale = scales[ib].abs();
                max_scale = scales[ib];
            }
        }
        y.fill(0);
        let d = -max_scale / 32.0;
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut scales_h = 0u16;
        for ib in 0..8 {
            let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for (lj, &v) in l[32 * ib..32 * ib + 32].iter_mut().zip(&xs[32 * ib..]) {
                *lj = best_index(idl * v);
            }
            let u = (ls + 32) as u8;
            y[4 + ib / 2] |= (u & 0xf) << (4 * (ib % 2));
            scales_h |= u16::from(u >> 4) << (2 * ib);
        }
        y[2..4].copy_from_slice(&scales_h.to_le_bytes());
        for ib in 0..8 {
            pack(&l[32 * ib..32 * ib + 32], &mut y[8 + 16 * ib..24 + 16 * ib]);
        }
    }
}

/// The 32 table values of 16 bytes of nibbles, in value order.
pub(crate) fn iq4_values(qs: &[u8]) -> [i8; 32] {
    core::array::from_fn(|i| {
        KVALUES[usize::from(if i < 16 { qs[i] & 0xf } else { qs[i - 16] >> 4 })]
    })
}

/// The eight signed 6-bit sub-block scales (ls − 32) of an IQ4_XS block.
pub(crate) fn iq4_xs_scales(b: &[u8]) -> [i32; 8] {
    let sh = u16::from_le_bytes([b[2], b[3]]);
    core::array::from_fn(|ib| {
        let lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0xf;
        let hi = ((sh >> (2 * ib)) & 3) as u8;
        i32::from(lo | (hi << 4)) - 32
    })
}

pub(super) fn dequantize_iq4_nl(src: &[u8], out: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = rd_f16(b, 0);
        for (o, &q) in y.iter_mut().zip(&iq4_values(&b[2..18])) {
            *o = d * f32::from(q);
        }
    }
}

pub(super) fn dequantize_iq4_xs(src: &[u8], out: &mut [f32]) {
    for (b, y) in src.chunks_exact(136).zip(out.chunks_exact_mut(256)) {
        let d = rd_f16(b, 0);
        for (ib, (ys, ls)) in y.chunks_exact_mut(32).zip(iq4_xs_scales(b)).enumerate() {
            let dl = d * ls as f32;
            for (o, &q) in ys
                .iter_mut()
                .zip(&iq4_values(&b[8 + 16 * ib..24 + 16 * ib]))
            {
                *o = dl * f32::from(q);
            }
        }
    }
}

/// IQ4_NL·Q8_0 as llama.cpp's x86 build runs it: its repacked `iq4_nl_8x8` kernels share
/// Q4_0's arithmetic, one fused multiply-add of each block's integer total.
pub(super) fn dot_iq4_nl(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let isum: i32 = iq4_values(&x[2..18])
            .iter()
            .zip(&y[2..34])
            .map(|(&q, &v)| i32::from(q) * i32::from(v as i8))
            .sum();
        sum = libm::fmaf(isum as f32, rd_f16(x, 0) * rd_f16(y, 0), sum);
    }
    sum
}

/// IQ4_XS·Q8_K in llama.cpp's x86 AVX2 order: eight i32 lanes per super-block (lane m takes
/// values 4m..4m+4 of every sub-block, times its scale), one fused multiply-add each.
pub(super) fn dot_iq4_xs(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in w.chunks_exact(136).zip(a.chunks_exact(292)) {
        let mut lanes = [0i32; 8];
        for (ib, ls) in iq4_xs_scales(x).into_iter().enumerate() {
            let q = iq4_values(&x[8 + 16 * ib..24 + 16 * ib]);
            let ys = &y[4 + 32 * ib..36 + 32 * ib];
            for (i, (&qv, &yv)) in q.iter().zip(ys).enumerate() {
                lanes[i / 4] += i32::from(qv) * i32::from(yv as i8) * ls;
            }
        }
        let d = rd_f16(x, 0) * rd_f32(y, 0);
        for (acc, lane) in acc.iter_mut().zip(lanes) {
            *acc = libm::fmaf(d, lane as f32, *acc);
        }
    }
    hsum8(&acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_picks_the_nearest_table_value() {
        assert_eq!(best_index(-200.0), 0);
        assert_eq!(best_index(0.0), 8); // 1 is nearer than -10
        assert_eq!(best_index(-4.5), 8); // tie between -10 and 1 goes up
        assert_eq!(best_index(-4.6), 7);
        assert_eq!(best_index(200.0), 15);
    }

    #[test]
    fn iq4_known_blocks() {
        let mut b = [0u8; 18];
        b[..2].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
        b[2] = 0xf0; // value 0: T[0] = -127, value 16: T[15] = 113
        let mut y = [0.0f32; 32];
        dequantize_iq4_nl(&b, &mut y);
        assert_eq!((y[0], y[16], y[1]), (-63.5, 56.5, -63.5));
        // IQ4_XS: d = 1, sub-block 0 ls = 33 (scale 1), sub-block 5 ls = 0b10_0000 + 2 (2).
        let mut b = [0u8; 136];
        b[..2].copy_from_slice(&f32_to_f16(1.0).to_le_bytes());
        let sh: u16 = 2 | (2 << 10);
        b[2..4].copy_from_slice(&sh.to_le_bytes());
        b[4] = 1; // ls_l of sub-block 0
        b[6] = 0x20; // ls_l of sub-block 5
        b[8] = 0x8f; // value 0: T[15], value 16: T[8]
        b[8 + 16 * 5] = 0x08; // value 160: T[8]
        let mut y = [0.0f32; 256];
        dequantize_iq4_xs(&b, &mut y);
        assert_eq!((y[0], y[16], y[160], y[1]), (113.0, 1.0, 2.0, -127.0));
        assert_eq!(y[32], 4064.0); // sub-block 1: ls = 0 (scale -32), value T[0] = -127
    }
}
