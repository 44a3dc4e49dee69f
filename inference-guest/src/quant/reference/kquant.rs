//! Q4_K and Q6_K: 256-value super-blocks (ggml "k-quants").
//!
//! Q4_K (144 bytes): f16 d, f16 dmin, 12 bytes of packed 6-bit sub-block scales and mins,
//! 128 bytes of nibbles; sub-block j (32 values) is x = d·sc[j]·q − dmin·m[j]. Each 64-value
//! chunk uses 32 bytes: low nibbles are its first 32 values, high nibbles the next 32.
//!
//! Q6_K (210 bytes): ql[128] low nibbles, qh[64] 2-bit high parts, i8 scales[16] (one per 16
//! values), f16 d last; x = d·scale·(q − 32).

use super::num::{nearest_int, sqrt};
use super::rd_f16;
use crate::quant::f16::{f16_to_f32, f32_to_f16};

const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml `get_scale_min_k4` for all eight sub-blocks.
pub(crate) fn q4_k_scales_mins(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = q[j] & 63;
            m[j] = q[j + 4] & 63;
        } else {
            sc[j] = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
            m[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }
    (sc, m)
}

/// The 256 unsigned 6-bit quants (0..=63) of a Q6_K block, in value order.
pub(crate) fn q6_k_unpack(b: &[u8]) -> [u8; 256] {
    let mut q = [0u8; 256];
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let o = &mut q[128 * half..128 * half + 128];
        for l in 0..32 {
            o[l] = (ql[l] & 0xf) | ((qh[l] & 3) << 4);
            o[l + 32] = (ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4);
            o[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            o[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    q
}

pub(super) fn dequantize_q4_k(src: &[u8], out: &mut [f32]) {
    for (b, y) in src.chunks_exact(144).zip(out.chunks_exact_mut(256)) {
        let d = rd_f16(b, 0);
        let min = rd_f16(b, 2);
        let (sc, m) = q4_k_scales_mins(&b[4..16]);
        for c in 0..4 {
            let q = &b[16 + 32 * c..48 + 32 * c];
            let (d1, m1) = (d * f32::from(sc[2 * c]), min * f32::from(m[2 * c]));
            let (d2, m2) = (d * f32::from(sc[2 * c + 1]), min * f32::from(m[2 * c + 1]));
            for l in 0..32 {
                y[64 * c + l] = d1 * f32::from(q[l] & 0xf) - m1;
                y[64 * c + 32 + l] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

pub(super) fn dequantize_q6_k(src: &[u8], out: &mut [f32]) {
    for (b, y) in src.chunks_exact(210).zip(out.chunks_exact_mut(256)) {
        let d = rd_f16(b, 208);
        let q = q6_k_unpack(b);
        for (i, o) in y.iter_mut().enumerate() {
            let sc = f32::from(b[192 + i / 16] as i8);
            *o = d * sc * f32::from(q[i] as i8 - 32);
        }
    }
}

/// ggml `make_qkx2_quants`: scale and (negated) min for one sub-block, quants into `l`.
#[allow(clippy::too_many_arguments)] // mirrors the C signature it ports
pub(super) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * f32::from(l[i]) + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, lf) = (weights[i], q as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml `make_qx_quants` with `rmse_type == 1` and no importance weights (what Q6_K uses).
fn make_qx_quants_rmse1(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &v) in x.iter().enumerate() {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        l[i] = (q + nmax) as i8;
        let (w, qf) = (v * v, q as f32);
        sumlx += w * v * qf;
        suml2 += w * qf * qf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
                l[i] = (nmax + q) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The part ggml's `quantize_row_q4_K_ref` and `quantize_row_q5_K_ref` share, for one
/// 256-value super-block `x`: each 32-value sub-block's scale and min searched with
/// `make_qkx2_quants` (quants 0..=`nmax`; its `rmin` and `nstep`), both packed into 6 bits
/// under the f16 super-scales; writes `header` (d, dmin, the 12 bytes of scales and mins)
/// and returns the quant of every value against the packed scales.
pub(super) fn quantize_k_scales_mins(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    header: &mut [u8],
) -> [u8; 256] {
    let mut l = [0u8; 256];
    let mut laux = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2 = xs.iter().fold(0.0f32, |s, v| s + v * v);
        let av_x = sqrt(sum_x2 / 32.0);
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let lj = &mut l[32 * j..32 * j + 32];
        (scales[j], mins[j]) =
            make_qkx2_quants(nmax, xs, &weights, lj, &mut laux, rmin, 0.1, nstep);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut header[4..16];
    sc.fill(0);
    for j in 0..8 {
        // C stores nearest_int into a uint8_t (wrapping) before clamping to 63.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    let dh = f32_to_f16(max_scale / 63.0);
    let dminh = f32_to_f16(max_min / 63.0);
    header[0..2].copy_from_slice(&dh.to_le_bytes());
    header[2..4].copy_from_slice(&dminh.to_le_bytes());
    let (scs, ms) = q4_k_scales_mins(&header[4..16]);
    for j in 0..8 {
        let d = f16_to_f32(dh) * f32::from(scs[j]);
        if d == 0.0 {
            continue;
        }
        let dm = f16_to_f32(dminh) * f32::from(ms[j]);
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    l
}

pub(super) fn quantize_q4_k(x: &[f32], out: &mut [u8]) {
    for (x, y) in x.chunks_exact(256).zip(out.chunks_exact_mut(144)) {
        let l = quantize_k_scales_mins(x, 15, -1.0, 20, y);
        for c in 0..4 {
            for i in 0..32 {
                y[16 + 32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
            }
        }
    }
}

pub(super) fn quantize_q6_k(x: &[f32], out: &mut [u8]) {
    for (x, y) in x.chunks_exact(256).zip(out.chunks_exact_mut(210)) {
        let mut l = [0i8; 256];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for ib in 0..16 {
            let s =
                make_qx_quants_rmse1(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        y.fill(0);
        if max_abs_scale < GROUP_MAX_EPS {
            continue;
        }
        let iscale = -128.0 / max_scale;
        let dh = f32_to_f16(1.0 / iscale);
        y[208..210].copy_from_slice(&dh.to_le_bytes());
        for ib in 0..16 {
            y[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
        }
        for j in 0..16 {
            let d = f16_to_f32(dh) * f32::from(y[192 + j] as i8);
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        for half in 0..2 {
            let (j, lo) = (128 * half, 64 * half);
            for i in 0..32 {
                let q = |k: usize| l[j + i + 32 * k] as u8;
                y[lo + i] = (q(0) & 0xf) | ((q(2) & 0xf) << 4);
                y[lo + i + 32] = (q(1) & 0xf) | ((q(3) & 0xf) << 4);
                y[128 + 32 * half + i] =
                    (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
    }
}
