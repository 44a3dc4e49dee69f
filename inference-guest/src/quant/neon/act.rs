//! Q8_0/Q8_1 activation quantisation with llama.cpp's x86 numerics (multiplier 127/amax,
//! round half to even via `vcvtnq`), bit-identical to the scalar reference. (llama.cpp's own
//! ARM path uses 1/d; matching the x86 bytes keeps one reference for every host.)

use core::arch::aarch64::*;

use super::ld_f32;
use crate::quant::act_format::ActFormat;
use crate::quant::f16::f32_to_f16;

#[target_feature(enable = "neon")]
pub(super) fn quantize_act(fmt: ActFormat, x: &[f32], out: &mut [u8]) -> bool {
    match fmt {
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
        ActFormat::F32 | ActFormat::F16 | ActFormat::BF16 | ActFormat::Q8K => return false,
    }
    true
}

#[target_feature(enable = "neon")]
fn q8_block(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let v: [float32x4_t; 8] = core::array::from_fn(|i| ld_f32(&x[4 * i..4 * i + 4]));
    let mut m = vabsq_f32(v[0]);
    for vi in &v[1..] {
        m = vmaxq_f32(m, vabsq_f32(*vi));
    }
    let amax = vmaxvq_f32(m);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = vdupq_n_s32(0);
    let mut q = [0i8; 32];
    for (i, chunk) in q.chunks_exact_mut(8).enumerate() {
        let a = vcvtnq_s32_f32(vmulq_n_f32(v[2 * i], id));
        let b = vcvtnq_s32_f32(vmulq_n_f32(v[2 * i + 1], id));
        sum = vaddq_s32(sum, vaddq_s32(a, b));
        let n8 = vqmovn_s16(vcombine_s16(vqmovn_s32(a), vqmovn_s32(b)));
        let mut tmp = [0i8; 8];
        // SAFETY: `tmp` is 8 writable bytes.
        unsafe { vst1_s8(tmp.as_mut_ptr(), n8) };
        chunk.copy_from_slice(&tmp);
    }
    for (o, v) in qs.iter_mut().zip(q) {
        *o = v as u8;
    }
    (d, vaddvq_s32(sum))
}
