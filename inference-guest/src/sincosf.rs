//! Single-precision `sin`/`cos` that reproduce glibc's results bit for bit, so the guest
//! (which has no glibc) computes the same RoPE angles as llama.cpp on an x86_64-linux-gnu
//! host.
//!
//! A port of glibc's `sinf`/`cosf`/`sincosf` (glibc ≥ 2.28, the ARM optimized-routines
//! algorithm: `sysdeps/ieee754/flt-32/s_sinf.c`, `s_cosf.c`, `s_sincosf.c`, `s_sincosf.h`,
//! `s_sincosf_data.c`, `sincosf_poly.h`): the argument is widened to f64, reduced to
//! `[-pi/4, pi/4]` (a single multiply-subtract below 120, a 32x96-bit fixed-point product
//! with 4/pi above), and a short sine or cosine polynomial is evaluated in f64.
//!
//! glibc on x86_64 picks its implementation at load time: on CPUs with FMA and AVX2 it runs
//! `__sinf_fma`/`__cosf_fma` (`sysdeps/x86_64/fpu/multiarch/s_sinf-fma.c`, the same C
//! compiled with `-mfma -mavx2`), where GCC contracts every `a * b + c` of the source into a
//! fused multiply-add (`vfmadd…sd`, and `vfnmadd…sd` for the `x - n * hpi` reduction). That
//! is the variant llama.cpp gets on any current x86_64 machine, and the one ported here: each
//! such expression is an explicit [`libm::fma`], which is correctly rounded in every build
//! (hardware instruction where available, exact software emulation otherwise). Every other
//! operation is a plain IEEE f64 operation in the source's order; Rust never contracts or
//! reassociates them, so the result does not depend on the target.
//!
//! No floating-point exceptions or `errno` are raised: infinities and NaN return NaN.

/// Polynomial and reduction constants (`sincos_t` in glibc).
struct SinCos {
    /// Sign applied to the reduced argument, by quadrant.
    sign: [f64; 4],
    /// 2/pi, prescaled by 2^24 (glibc without `TOINT_INTRINSICS`, as on x86_64).
    hpi_inv: f64,
    /// pi/2.
    hpi: f64,
    /// Cosine polynomial (negated in the second table entry).
    c0: f64,
    c1: f64,
    c2: f64,
    c3: f64,
    c4: f64,
    /// Sine polynomial.
    s1: f64,
    s2: f64,
    s3: f64,
}

const fn d(bits: u64) -> f64 {
    f64::from_bits(bits)
}

/// `__sincosf_table`: the second entry computes -cos(x) so that quadrants 2 and 3 get the
/// negation for free. (Rust has no hexadecimal float literals; the glibc spellings are given
/// alongside the bit patterns.)
static TABLE: [SinCos; 2] = [
    SinCos {
        sign: [1.0, -1.0, -1.0, 1.0],
        hpi_inv: d(0x4164_5f30_6dc9_c883), // 0x1.45F306DC9C883p+23
        hpi: d(0x3ff9_21fb_5444_2d18),     // 0x1.921FB54442D18p0
        c0: 1.0,
        c1: d(0xbfdf_ffff_fd0c_621c), // -0x1.ffffffd0c621cp-2
        c2: d(0x3fa5_5553_e106_8f19), // 0x1.55553e1068f19p-5
        c3: d(0xbf56_c087_e89a_359d), // -0x1.6c087e89a359dp-10
        c4: d(0x3ef9_9343_027b_f8c3), // 0x1.99343027bf8c3p-16
        s1: d(0xbfc5_5554_5995_a603), // -0x1.555545995a603p-3
        s2: d(0x3f81_1076_0523_0bc4), // 0x1.1107605230bc4p-7
        s3: d(0xbf29_94eb_3774_cf24), // -0x1.994eb3774cf24p-13
    },
    SinCos {
        sign: [1.0, -1.0, -1.0, 1.0],
        hpi_inv: d(0x4164_5f30_6dc9_c883),
        hpi: d(0x3ff9_21fb_5444_2d18),
        c0: -1.0,
        c1: d(0x3fdf_ffff_fd0c_621c), // 0x1.ffffffd0c621cp-2
        c2: d(0xbfa5_5553_e106_8f19), // -0x1.55553e1068f19p-5
        c3: d(0x3f56_c087_e89a_359d), // 0x1.6c087e89a359dp-10
        c4: d(0xbef9_9343_027b_f8c3), // -0x1.99343027bf8c3p-16
        s1: d(0xbfc5_5554_5995_a603),
        s2: d(0x3f81_1076_0523_0bc4),
        s3: d(0xbf29_94eb_3774_cf24),
    },
];

/// `__inv_pio4`: 4/pi to 192 bits. Only 8 new bits per entry, so that any four consecutive
/// entries (with stride 4) form a window starting at a byte boundary.
static INV_PIO4: [u32; 24] = [
    0xa2, 0xa2f9, 0xa2f983, 0xa2f9836e, 0xf9836e4e, 0x836e4e44, 0x6e4e4415, 0x4e441529, 0x441529fc,
    0x1529fc27, 0x29fc2757, 0xfc2757d1, 0x2757d1f5, 0x57d1f534, 0xd1f534dd, 0xf534ddc0, 0x34ddc0db,
    0xddc0db62, 0xc0db6295, 0xdb629599, 0x6295993c, 0x95993c43, 0x993c4390, 0x3c439041,
];

/// 2pi * 2^-64 (`0x1.921FB54442D18p-62`).
const PI63: f64 = d(0x3c19_21fb_5444_2d18);

/// Top-12-bit thresholds (`abstop12` of pi/4 = `0x1.921FB6p-1f`, 2^-12, 120, infinity).
const TOP12_PIO4: u32 = abstop12(f32::from_bits(0x3f49_0fdb));
const TOP12_TINY: u32 = abstop12(f32::from_bits(0x3980_0000));
const TOP12_120: u32 = abstop12(120.0);
const TOP12_INF: u32 = abstop12(f32::INFINITY);

/// The top 12 bits of the representation with the sign cleared (exponent and 4 mantissa
/// bits).
#[inline(always)]
const fn abstop12(x: f32) -> u32 {
    (x.to_bits() >> 20) & 0x7ff
}

/// `a * b + c` with a single rounding, as GCC emits it in glibc's FMA build.
#[inline(always)]
fn fma(a: f64, b: f64, c: f64) -> f64 {
    libm::fma(a, b, c)
}

/// `sinf_poly`: the sine polynomial of `x` (`x2` = x²) for even `n`, the cosine polynomial
/// for odd `n`.
#[inline(always)]
fn sinf_poly(x: f64, x2: f64, p: &SinCos, n: i32) -> f32 {
    if n & 1 == 0 {
        let x3 = x * x2;
        let s1 = fma(x2, p.s3, p.s2);
        let x7 = x3 * x2;
        let s = fma(x3, p.s1, x);
        fma(x7, s1, s) as f32
    } else {
        let x4 = x2 * x2;
        let c2 = fma(x2, p.c4, p.c3);
        let c1 = fma(x2, p.c1, p.c0);
        let x6 = x4 * x2;
        let c = fma(x4, p.c2, c1);
        fma(x6, c2, c) as f32
    }
}

/// `reduce_fast`: `x` modulo pi/2 in `[-pi/4, pi/4]` and the quadrant, for |x| < 120.
/// `hpi_inv` carries a 2^24 scale, so the rounded quadrant lands in bits 24..31 of the
/// truncated product.
#[inline(always)]
fn reduce_fast(x: f64, p: &SinCos) -> (f64, i32) {
    let r = x * p.hpi_inv;
    // |r| < 120 * 2/pi * 2^24 < 2^31: the C `(int32_t)` truncation is exact here.
    let n = ((r as i32) + 0x80_0000) >> 24;
    // `x - n * hpi`, contracted by GCC to vfnmadd: -(n * hpi) + x in one rounding.
    (fma(-f64::from(n), p.hpi, x), n)
}

/// `reduce_large`: the reduction for 120 <= |x| < inf, from the bit pattern `xi` (sign
/// ignored). A 32x96 -> 128-bit product with a window of 4/pi gives the 2.62 fixed-point
/// remainder exactly.
#[inline(always)]
fn reduce_large(xi: u32) -> (f64, i32) {
    let arr = &INV_PIO4[((xi >> 26) & 15) as usize..];
    let shift = (xi >> 23) & 7;
    let xi = ((xi & 0xff_ffff) | 0x80_0000) << shift;

    // The first product is a 32-bit (wrapping) multiply in the C source.
    let res0 = u64::from(xi.wrapping_mul(arr[0]));
    let res1 = u64::from(xi) * u64::from(arr[4]);
    let res2 = u64::from(xi) * u64::from(arr[8]);
    let res0 = ((res2 >> 32) | (res0 << 32)).wrapping_add(res1);

    let n = res0.wrapping_add(1 << 61) >> 62;
    let res0 = res0.wrapping_sub(n << 62);
    let x = res0 as i64 as f64;
    (x * PI63, n as i32)
}

/// The reduced argument (sign applied), its square, the table entry and the quadrant, for
/// 2^-12 <= |y| < inf: the part `sinf`, `cosf` and `sincosf` share.
#[inline(always)]
fn reduce(y: f32) -> (f64, f64, &'static SinCos, i32) {
    let top = abstop12(y);
    let x = f64::from(y);
    if top < TOP12_PIO4 {
        (x, x * x, &TABLE[0], 0)
    } else if top < TOP12_120 {
        let (x, n) = reduce_fast(x, &TABLE[0]);
        let s = TABLE[0].sign[(n & 3) as usize];
        let p = &TABLE[usize::from(n & 2 != 0)];
        (x * s, x * x, p, n)
    } else {
        let xi = y.to_bits();
        let sign = (xi >> 31) as i32;
        let (x, n) = reduce_large(xi);
        let q = n + sign;
        let s = TABLE[0].sign[(q & 3) as usize];
        let p = &TABLE[usize::from(q & 2 != 0)];
        (x * s, x * x, p, n)
    }
}

/// glibc's `__math_invalidf` result for infinities and NaN: `(y - y) / (y - y)`.
#[allow(clippy::eq_op)] // The NaN the arithmetic produces is the point.
#[inline(never)]
fn invalid(y: f32) -> f32 {
    (y - y) / (y - y)
}

/// `sin(x)`, bit-identical to glibc's `sinf` (FMA variant).
pub fn sinf(y: f32) -> f32 {
    let top = abstop12(y);
    if top < TOP12_TINY {
        return y;
    }
    if top >= TOP12_INF {
        return invalid(y);
    }
    let (x, x2, p, n) = reduce(y);
    sinf_poly(x, x2, p, n)
}

/// `cos(x)`, bit-identical to glibc's `cosf` (FMA variant).
pub fn cosf(y: f32) -> f32 {
    let top = abstop12(y);
    if top < TOP12_TINY {
        return 1.0;
    }
    if top >= TOP12_INF {
        return invalid(y);
    }
    let (x, x2, p, n) = reduce(y);
    sinf_poly(x, x2, p, n ^ 1)
}

/// `(sin(x), cos(x))` with one range reduction; always equal to `(sinf(x), cosf(x))`, as is
/// glibc's `sincosf` (same polynomials in the same order; checked over all 2^32 inputs
/// against glibc 2.36's FMA build), so GCC merging a `sinf`/`cosf` pair into `sincosf`
/// changes nothing.
pub fn sincosf(y: f32) -> (f32, f32) {
    let top = abstop12(y);
    if top < TOP12_TINY {
        return (y, 1.0);
    }
    if top >= TOP12_INF {
        #[allow(clippy::eq_op)] // glibc's `y - y`: NaN for infinities and NaN.
        let nan = y - y;
        return (nan, nan);
    }
    let (x, x2, p, n) = reduce(y);
    (sinf_poly(x, x2, p, n), sinf_poly(x, x2, p, n ^ 1))
}

// The comparisons need std (threads, and `f32::sin`, i.e. the host libm).
#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    /// Same value, or both NaN (NaN payloads are not part of the contract).
    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn special_values() {
        for x in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN] {
            assert!(sinf(x).is_nan() && cosf(x).is_nan(), "{x}");
            let (s, c) = sincosf(x);
            assert!(s.is_nan() && c.is_nan(), "{x}");
        }
        for x in [
            0.0f32,
            -0.0,
            f32::from_bits(1),
            -f32::MIN_POSITIVE,
            1e-30,
            -2.4e-4,
        ] {
            assert_eq!(sinf(x).to_bits(), x.to_bits());
            assert_eq!(cosf(x).to_bits(), 1.0f32.to_bits());
            assert_eq!(sincosf(x).0.to_bits(), x.to_bits());
        }
        assert_eq!(sinf(0.5), 0.479_425_55);
        assert_eq!(cosf(0.5), 0.877_582_55);
    }

    /// Inputs around the reduction's boundaries and a few typical ones.
    fn edge_cases() -> Vec<f32> {
        let mut v = vec![
            0.0,
            f32::from_bits(1),
            f32::from_bits(0x007f_ffff),
            f32::MIN_POSITIVE,
            1e-30,
            1e-10,
            f32::from_bits(0x397f_ffff), // just below 2^-12
            f32::from_bits(0x3980_0000), // 2^-12
            1e-3,
            0.5,
            1.0,
            2.0,
            3.0,
            10.0,
            100.0,
            119.999_99,
            120.0,
            120.000_01,
            127.999_99,
            128.0,
            1e3,
            1e4,
            1e5,
            1e6,
            1e10,
            1e20,
            1e30,
            f32::from_bits(0x4b80_0000), // 2^24
            f32::MAX,
            f32::INFINITY,
            f32::NAN,
        ];
        // Neighbourhoods of multiples of pi/4, where the reduction cancels most.
        for k in 1..=400u32 {
            let m = (f64::from(k) * core::f64::consts::FRAC_PI_4) as f32;
            for delta in -4i32..=4 {
                v.push(f32::from_bits(m.to_bits().wrapping_add_signed(delta)));
            }
        }
        // Around pi/4 itself (the polynomial/reduction switch) and powers of two.
        for base in [0x3f49_0fdbu32, 0x42f0_0000] {
            for delta in -64i32..=64 {
                v.push(f32::from_bits(base.wrapping_add_signed(delta)));
            }
        }
        for e in 0..255u32 {
            v.push(f32::from_bits(e << 23));
            v.push(f32::from_bits((e << 23) | 0x7f_ffff));
        }
        let neg: Vec<f32> = v.iter().map(|x| -x).collect();
        v.extend(neg);
        v
    }

    /// Whether the host's libm is glibc's FMA variant, which this port reproduces: glibc on
    /// x86_64 selects `__sinf_fma`/`__cosf_fma` when the CPU has FMA and AVX2.
    fn host_is_glibc_fma() -> bool {
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        {
            let ok = std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2");
            if !ok {
                eprintln!("host CPU lacks FMA/AVX2: glibc uses its non-FMA sinf; skipping");
            }
            ok
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
        {
            eprintln!("host libm is not x86_64 glibc; skipping the comparison");
            false
        }
    }

    /// Counts the bit patterns in `lo..=hi` (with `stride`) where `sinf`, `cosf` or
    /// `sincosf` disagree with the host's `f32::sin`/`f32::cos` (glibc), on all threads.
    /// Returns (sin mismatches, cos mismatches, values checked).
    fn mismatches(lo: u32, hi: u32, stride: u32) -> (u64, u64, u64) {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let span = u64::from(hi - lo) / u64::from(stride) + 1; // values to check
        let per = span.div_ceil(u64::from(threads));
        std::thread::scope(|sc| {
            let handles: Vec<_> = (0..u64::from(threads))
                .map(|t| {
                    sc.spawn(move || {
                        let (mut bad_s, mut bad_c, mut n) = (0u64, 0u64, 0u64);
                        let first = t * per;
                        let last = ((t + 1) * per).min(span);
                        for i in first..last {
                            let bits = lo + (i * u64::from(stride)) as u32;
                            let x = f32::from_bits(bits);
                            let (s, c) = sincosf(x);
                            let (gs, gc) = (x.sin(), x.cos());
                            if !same(sinf(x), gs) || !same(s, gs) {
                                if bad_s < 5 {
                                    eprintln!("sin mismatch {bits:#010x}: {} vs {gs}", sinf(x));
                                }
                                bad_s += 1;
                            }
                            if !same(cosf(x), gc) || !same(c, gc) {
                                if bad_c < 5 {
                                    eprintln!("cos mismatch {bits:#010x}: {} vs {gc}", cosf(x));
                                }
                                bad_c += 1;
                            }
                            n += 1;
                        }
                        (bad_s, bad_c, n)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
        })
    }

    #[test]
    fn edge_cases_match_glibc() {
        if !host_is_glibc_fma() {
            return;
        }
        for x in edge_cases() {
            assert!(
                same(sinf(x), x.sin()),
                "sinf({x:e}) = {} glibc {}",
                sinf(x),
                x.sin()
            );
            assert!(
                same(cosf(x), x.cos()),
                "cosf({x:e}) = {} glibc {}",
                cosf(x),
                x.cos()
            );
            let (s, c) = sincosf(x);
            assert!(same(s, x.sin()) && same(c, x.cos()), "sincosf({x:e})");
        }
    }

    /// Every 37th bit pattern with |x| < 2^20, both signs (67 million inputs), plus every 5th
    /// of [pi/4, 120], where the fast reduction runs (13 million): ~4 s in the opt-level-3
    /// test profile on two cores.
    #[test]
    fn sampled_match_glibc() {
        if !host_is_glibc_fma() {
            return;
        }
        let two20 = 0x4980_0000u32;
        for (lo, hi, stride) in [
            (0, two20 - 1, 37),
            (0x8000_0000, 0x8000_0000 | (two20 - 1), 19),
            (0x3f49_0fdb, 0x42f0_0000, 5),
        ] {
            let (s, c, n) = mismatches(lo, hi, stride);
            assert_eq!(
                (s, c),
                (0, 0),
                "mismatches over {n} values in {lo:#x}..={hi:#x}"
            );
        }
    }

    /// All 2^32 inputs: `cargo test -p inference-guest --release --lib sincosf -- --ignored`.
    #[test]
    #[ignore = "exhaustive, a few minutes"]
    fn exhaustive_match_glibc() {
        if !host_is_glibc_fma() {
            return;
        }
        let start = std::time::Instant::now();
        let (s, c, n) = mismatches(0, u32::MAX, 1);
        eprintln!(
            "exhaustive: {n} inputs, {s} sin and {c} cos mismatches, {:.1?}",
            start.elapsed()
        );
        assert_eq!(n, 1 << 32);
        assert_eq!((s, c), (0, 0));
    }
}
