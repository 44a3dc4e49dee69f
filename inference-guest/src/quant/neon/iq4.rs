//! IQ4_NL·Q8_0 and IQ4_XS·Q8_K: table lookups with `tbl`, integer sums exact, one float
//! multiply-add per block (per super-block for IQ4_XS).

use core::arch::aarch64::*;

use super::dot::{h, mac16, rd_f32};
use super::{arr, ld_s8, ld_u8};
use crate::quant::reference::{IQ4_VALUES, iq4_xs_scales};

/// The 32 table values of 16 bytes of nibbles: values 0..16 and 16..32.
#[inline]
#[target_feature(enable = "neon")]
fn lookup(table: int8x16_t, qs: &[u8; 16]) -> (int8x16_t, int8x16_t) {
    let q = ld_u8(qs);
    let lo = vandq_u8(q, vdupq_n_u8(0xf));
    let hi = vshrq_n_u8::<4>(q);
    (vqtbl1q_s8(table, lo), vqtbl1q_s8(table, hi))
}

#[inline]
#[target_feature(enable = "neon")]
fn table() -> int8x16_t {
    ld_s8(&IQ4_VALUES.map(|v| v as u8))
}

#[target_feature(enable = "neon")]
pub(super) fn dot_iq4_nl(w: &[u8], a: &[u8]) -> f32 {
    let t = table();
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let (lo, hi) = lookup(t, arr(x, 2));
        let acc = mac16(vdupq_n_s32(0), lo, ld_s8(arr(y, 2)));
        let acc = mac16(acc, hi, ld_s8(arr(y, 18)));
        sum += vaddvq_s32(acc) as f32 * (h(x, 0) * h(y, 0));
    }
    sum
}

#[target_feature(enable = "neon")]
pub(super) fn dot_iq4_xs(w: &[u8], a: &[u8]) -> f32 {
    let t = table();
    let mut sum = 0.0f32;
    for (x, y) in w.chunks_exact(136).zip(a.chunks_exact(292)) {
        let mut isum = 0i32;
        for (ib, ls) in iq4_xs_scales(x).into_iter().enumerate() {
            let (lo, hi) = lookup(t, arr(x, 8 + 16 * ib));
            let acc = mac16(vdupq_n_s32(0), lo, ld_s8(arr(y, 4 + 32 * ib)));
            let acc = mac16(acc, hi, ld_s8(arr(y, 20 + 32 * ib)));
            isum += vaddvq_s32(acc) * ls;
        }
        sum += h(x, 0) * rd_f32(y, 0) * isum as f32;
    }
    sum
}
