//! IEEE 754 binary16 <-> binary32 conversion in software (no F16C needed), round to nearest even.
//!
//! The SIMD back ends use hardware conversion (F16C); both give identical bits for every
//! non-NaN value, and NaNs keep their sign and top payload bits with the quiet bit set.

/// Widens an f16 bit pattern to f32 (exact for every value).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match exp {
        0 if man == 0 => sign,
        // Subnormal: man * 2^-24 is exact in f32.
        0 => return f32::from_bits(sign | (man as f32 * (1.0 / 16_777_216.0)).to_bits()),
        31 => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// Narrows an f32 to f16 bits, rounding to nearest even; overflow gives infinity.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        if man == 0 {
            return sign | 0x7c00;
        }
        // Quiet NaN with the top payload bits, like vcvtps2ph.
        return sign | 0x7e00 | (man >> 13) as u16;
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // Result is an f16 subnormal (or zero): k * 2^-24 with k = m / 2^(14 - e).
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let mut k = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let half = 1 << (shift - 1);
        if rem > half || (rem == half && k & 1 == 1) {
            k += 1; // may carry into the smallest normal, whose encoding is the same bits
        }
        return sign | k as u16;
    }
    let mut h = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && h & 1 == 1) {
        h += 1; // a carry into the exponent is the correct rounding, up to infinity
    }
    sign | h as u16
}
