//! Scalar numeric helpers with ggml's exact rounding behaviour, usable without std.

/// ggml's `nearest_int`: round half to even via the 1.5·2^23 trick (valid for |f| < 2^22).
#[inline(always)]
pub(crate) fn nearest_int(f: f32) -> i32 {
    let v = f + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// C `roundf`: round half away from zero.
#[inline]
pub(crate) fn round_away(v: f32) -> f32 {
    if v.is_nan() || v.abs() >= 8_388_608.0 {
        return v; // already integral, or NaN
    }
    let t = v as i32 as f32;
    let frac = v - t; // exact: t and v share the exponent range
    if frac >= 0.5 {
        t + 1.0
    } else if frac <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

/// Correctly rounded `sqrtf` (core has no sqrt without std): integer square root of the
/// mantissa with a sticky bit, then one rounding to f32.
pub(crate) fn sqrt(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 || x.is_infinite() {
        return x;
    }
    let bits = x.to_bits();
    let (mut m, mut e) = if bits >> 23 == 0 {
        (u64::from(bits), -149i32) // subnormal: m * 2^-149
    } else {
        (
            u64::from((bits & 0x7f_ffff) | 0x80_0000),
            ((bits >> 23) as i32) - 150,
        )
    };
    // Scale so that m has 49-50 significant bits and the exponent is even.
    while m < (1 << 48) {
        m <<= 1;
        e -= 1;
    }
    if e & 1 != 0 {
        m <<= 1;
        e -= 1;
    }
    let r = isqrt(m);
    let sticky = u64::from(r * r != m);
    // 2r + sticky has <= 27 bits: exact in f64, and its one rounding to f32 is correct.
    let v = (2 * r + sticky) as f64 * pow2(e / 2 - 1);
    v as f32
}

fn isqrt(n: u64) -> u64 {
    let mut rem = n;
    let mut res = 0u64;
    let mut bit = 1u64 << 62;
    while bit > n {
        bit >>= 2;
    }
    while bit != 0 {
        if rem >= res + bit {
            rem -= res + bit;
            res = (res >> 1) + bit;
        } else {
            res >>= 1;
        }
        bit >>= 2;
    }
    res
}

fn pow2(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_round_like_c() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(round_away(2.5), 3.0);
        assert_eq!(round_away(-2.5), -3.0);
        assert_eq!(round_away(0.499_999_97), 0.0);
        assert_eq!(sqrt(4.0), 2.0);
        assert_eq!(sqrt(2.0), core::f32::consts::SQRT_2);
        #[cfg(feature = "std")]
        {
            let mut s = 0x1234_5678u32;
            for _ in 0..200_000 {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let x = f32::from_bits(s & 0x7fff_ffff);
                if x.is_finite() {
                    assert_eq!(sqrt(x).to_bits(), x.sqrt().to_bits(), "{x:e}");
                }
            }
        }
    }
}
