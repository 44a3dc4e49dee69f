//! Every SIMD kernel against the scalar reference on seeded random data, plus known answers
//! and quantise/dequantise error bounds. Runs natively (AVX2 if present) and under
//! qemu-aarch64 (NEON).

use inference_guest::ggml_type::GgmlType;
use inference_guest::quant::f16::{f16_to_f32, f32_to_f16};
use inference_guest::quant::{ActFormat, Isa, Kernels, quantize_row};

const ALL: [GgmlType; GgmlType::ALL.len()] = GgmlType::ALL;

/// xorshift64* — deterministic, no crates.
struct Rng(u64);
impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn f32(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-s, s).
    fn sym(&mut self, s: f32) -> f32 {
        (self.f32() * 2.0 - 1.0) * s
    }
    fn bytes(&mut self, out: &mut [u8]) {
        out.iter_mut().for_each(|b| *b = self.u64() as u8);
    }
    fn f16(&mut self, lo: f32, hi: f32) -> [u8; 2] {
        f32_to_f16(lo + (hi - lo) * self.f32()).to_le_bytes()
    }
}

/// Random valid weight rows: sane f16 scales, arbitrary quant bits.
fn random_weights(rng: &mut Rng, ty: GgmlType, n: usize, rows: usize) -> Vec<u8> {
    let mut w = vec![0u8; ty.row_bytes(n).unwrap() * rows];
    match ty {
        GgmlType::F32 => w
            .chunks_exact_mut(4)
            .for_each(|c| c.copy_from_slice(&rng.sym(2.0).to_le_bytes())),
        GgmlType::F16 => w
            .chunks_exact_mut(2)
            .for_each(|c| c.copy_from_slice(&f32_to_f16(rng.sym(2.0)).to_le_bytes())),
        GgmlType::BF16 => w.chunks_exact_mut(2).for_each(|c| {
            c.copy_from_slice(&((rng.sym(2.0).to_bits() >> 16) as u16).to_le_bytes())
        }),
        _ => {
            rng.bytes(&mut w);
            for b in w.chunks_exact_mut(ty.block_bytes()) {
                match ty {
                    GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4NL => {
                        b[..2].copy_from_slice(&rng.f16(-0.05, 0.05))
                    }
                    GgmlType::Q4_1 | GgmlType::Q5_1 => {
                        b[..2].copy_from_slice(&rng.f16(0.001, 0.05));
                        b[2..4].copy_from_slice(&rng.f16(-0.5, 0.5));
                    }
                    GgmlType::Q4K | GgmlType::Q5K => {
                        b[..2].copy_from_slice(&rng.f16(0.0001, 0.01));
                        b[2..4].copy_from_slice(&rng.f16(0.0001, 0.01));
                    }
                    GgmlType::Q6K => b[208..210].copy_from_slice(&rng.f16(0.0001, 0.01)),
                    GgmlType::IQ4XS => b[..2].copy_from_slice(&rng.f16(-0.001, 0.001)),
                    _ => unreachable!(),
                }
            }
        }
    }
    w
}

fn random_x(rng: &mut Rng, n: usize) -> Vec<f32> {
    let scale = 0.1 + 4.0 * rng.f32();
    let mut x: Vec<f32> = (0..n).map(|_| rng.sym(scale)).collect();
    if n >= 64 && rng.u64().is_multiple_of(4) {
        x[..32].fill(0.0); // an all-zero block exercises the d = 0 paths
    }
    x
}

fn lens(ty: GgmlType) -> Vec<usize> {
    let b = ActFormat::for_weights(ty).block_len().max(ty.block_len());
    if b == 1 {
        vec![1, 7, 8, 31, 64, 100, 576]
    } else {
        vec![b, 2 * b, 3 * b, 9 * b.min(64)]
            .into_iter()
            .filter(|n| n % b == 0)
            .collect()
    }
}

fn quant_act(k: &Kernels, ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let fmt = ActFormat::for_weights(ty);
    let mut a = vec![0u8; fmt.row_bytes(x.len())];
    k.quantize_act(fmt, x, &mut a);
    a
}

/// Σ|w_k·x_k|: the scale of the rounding error a reordered float sum can have.
fn magnitude(ty: GgmlType, n: usize, w_row: &[u8], x: &[f32]) -> f32 {
    let mut wf = vec![0.0; n];
    Kernels::scalar().dequantize_row(ty, w_row, &mut wf);
    wf.iter().zip(x).map(|(a, b)| (a * b).abs()).sum::<f32>()
}

fn close(got: f32, want: f32, mag: f32) -> bool {
    (got - want).abs() <= 2e-5 * mag + 1e-6 * want.abs() + 1e-30
}

#[test]
fn activation_quantisation_is_bit_identical() {
    let (k, s) = (Kernels::detect(), Kernels::scalar());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for fmt in [
        ActFormat::F32,
        ActFormat::F16,
        ActFormat::BF16,
        ActFormat::Q8_0,
        ActFormat::Q8_1,
        ActFormat::Q8K,
    ] {
        for &n in &[256usize, 512, 1536] {
            for _ in 0..20 {
                let mut x = random_x(&mut rng, n);
                // Exact .5 ties: a block whose amax is 127 has multiplier 1.
                if rng.u64().is_multiple_of(2) {
                    x[0] = 127.0;
                    for v in &mut x[1..32] {
                        *v = (rng.u64() % 200) as f32 / 2.0 - 50.0;
                    }
                }
                let mut a = vec![0u8; fmt.row_bytes(n)];
                let mut b = vec![0xaa; fmt.row_bytes(n)];
                s.quantize_act(fmt, &x, &mut a);
                k.quantize_act(fmt, &x, &mut b);
                assert_eq!(a, b, "{fmt:?} n={n} isa={:?}", k.isa());
            }
        }
    }
}

#[test]
fn activation_known_answers_round_half_even() {
    let mut x = [0.0f32; 32];
    x[..6].copy_from_slice(&[127.0, 2.5, -3.5, 0.5, 1.5, -0.5]);
    for k in [Kernels::scalar(), Kernels::detect()] {
        let a = quant_act(&k, GgmlType::Q8_0, &x);
        assert_eq!(u16::from_le_bytes([a[0], a[1]]), f32_to_f16(1.0));
        assert_eq!(
            a[2..8].iter().map(|&b| b as i8).collect::<Vec<_>>(),
            [127, 2, -4, 0, 2, 0]
        );
        let a = quant_act(&k, GgmlType::Q4_1, &[1.0; 32]);
        assert_eq!(u16::from_le_bytes([a[0], a[1]]), f32_to_f16(1.0 / 127.0));
        assert_eq!(u16::from_le_bytes([a[2], a[3]]), f32_to_f16(32.0)); // d·Σq = 32·127/127
        assert!(a[4..].iter().all(|&q| q == 127));
    }
}

#[test]
fn dot_matches_reference_for_every_type() {
    for k in Kernels::available() {
        dot_matches_reference(k);
    }
}

fn dot_matches_reference(k: Kernels) {
    let s = Kernels::scalar();
    let mut rng = Rng(12345);
    for ty in ALL {
        for n in lens(ty) {
            for _ in 0..10 {
                let w = random_weights(&mut rng, ty, n, 1);
                let x = random_x(&mut rng, n);
                let a = quant_act(&s, ty, &x);
                let (got, want) = (k.dot(ty, n, &w, &a), s.dot(ty, n, &w, &a));
                let mag = magnitude(ty, n, &w, &x);
                assert!(
                    close(got, want, mag),
                    "{} n={n}: {got} vs {want} (mag {mag})",
                    ty.name()
                );
            }
        }
    }
}

/// The Q5, BF16 and IQ4 references sum in llama.cpp's x86 order, and the AVX2 kernels (decode
/// tiles and prefill tiles alike) reproduce it bit for bit.
#[cfg(target_arch = "x86_64")]
#[test]
fn new_types_avx2_are_bit_identical_to_reference() {
    let s = Kernels::scalar();
    let mut rng = Rng(5150);
    for k in Kernels::available() {
        for ty in [
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q5K,
            GgmlType::BF16,
        ] {
            let n = 4 * ty.block_len().max(64) + if ty == GgmlType::BF16 { 7 } else { 0 };
            let (nrows, ncols) = (5, 3);
            let w = random_weights(&mut rng, ty, n, nrows);
            let xs: Vec<Vec<f32>> = (0..ncols).map(|_| random_x(&mut rng, n)).collect();
            let act: Vec<u8> = xs.iter().flat_map(|x| quant_act(&s, ty, x)).collect();
            let (wrb, arb) = (w.len() / nrows, act.len() / ncols);
            let mut out = vec![f32::NAN; nrows * ncols];
            k.matmul(ty, n, &w, nrows, &act, ncols, &mut out);
            for i in 0..nrows {
                for j in 0..ncols {
                    let (wr, ar) = (&w[i * wrb..(i + 1) * wrb], &act[j * arb..(j + 1) * arb]);
                    let want = s.dot(ty, n, wr, ar);
                    assert_eq!(
                        k.dot(ty, n, wr, ar).to_bits(),
                        want.to_bits(),
                        "{}",
                        ty.name()
                    );
                    assert_eq!(
                        out[i * ncols + j].to_bits(),
                        want.to_bits(),
                        "{}",
                        ty.name()
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_matches_dot_for_every_shape() {
    for k in Kernels::available() {
        matmul_matches_dot(k);
    }
}

fn matmul_matches_dot(k: Kernels) {
    let s = Kernels::scalar();
    let mut rng = Rng(777);
    for ty in ALL {
        let n = *lens(ty).iter().find(|&&n| n >= 64).unwrap_or(&lens(ty)[0]);
        let (wrb, arb) = (
            ty.row_bytes(n).unwrap(),
            ActFormat::for_weights(ty).row_bytes(n),
        );
        for nrows in 1..=9 {
            for ncols in [1usize, 2, 3, 4, 5, 7, 20] {
                let w = random_weights(&mut rng, ty, n, nrows);
                let xs: Vec<Vec<f32>> = (0..ncols).map(|_| random_x(&mut rng, n)).collect();
                let act: Vec<u8> = xs.iter().flat_map(|x| quant_act(&s, ty, x)).collect();
                for kk in [k, s] {
                    let mut out = vec![f32::NAN; nrows * ncols];
                    kk.matmul(ty, n, &w, nrows, &act, ncols, &mut out);
                    for i in 0..nrows {
                        for j in 0..ncols {
                            let (wr, ar) =
                                (&w[i * wrb..(i + 1) * wrb], &act[j * arb..(j + 1) * arb]);
                            let want = s.dot(ty, n, wr, ar);
                            let mag = magnitude(ty, n, wr, &xs[j]);
                            let got = out[i * ncols + j];
                            assert!(
                                close(got, want, mag),
                                "{} {:?} {nrows}x{ncols} ({i},{j}): {got} vs {want}",
                                ty.name(),
                                kk.isa()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The K-quant kernels' prefill (many columns; 853 rows cross L2 row blocks and end in a
/// short group of eight) and decode (one) compute each output the reference's way, to the
/// bit (llama.cpp's x86 order: exact integer sums, the same float operations in the same
/// order), on x86_64 and on aarch64 (NEON) alike.
#[test]
fn k_quant_products_are_bit_identical_to_the_reference() {
    let shapes = [(256, 3, 2), (768, 5, 7), (512, 2, 17), (1024, 853, 36)];
    matmul_and_dot_equal_bitwise(
        31337,
        &[GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K],
        &shapes,
        |_, ty, n, w, a| Kernels::scalar().dot(ty, n, w, a),
    );
}

/// For every kernel set, type and `(n, rows, columns)` shape: each output of `matmul` and
/// each row·column `dot` equals `want(kernels, type, n, row, column)` to the bit.
fn matmul_and_dot_equal_bitwise(
    seed: u64,
    types: &[GgmlType],
    shapes: &[(usize, usize, usize)],
    want: impl Fn(&Kernels, GgmlType, usize, &[u8], &[u8]) -> f32,
) {
    let mut rng = Rng(seed);
    for k in Kernels::available() {
        for &ty in types {
            for &(n, nrows, ncols) in shapes {
                let (wrb, arb) = (
                    ty.row_bytes(n).unwrap(),
                    ActFormat::for_weights(ty).row_bytes(n),
                );
                let w = random_weights(&mut rng, ty, n, nrows);
                let act: Vec<u8> = (0..ncols)
                    .flat_map(|_| quant_act(&k, ty, &random_x(&mut rng, n)))
                    .collect();
                let mut out = vec![f32::NAN; nrows * ncols];
                k.matmul(ty, n, &w, nrows, &act, ncols, &mut out);
                for i in 0..nrows {
                    for j in 0..ncols {
                        let (wr, ar) = (&w[i * wrb..][..wrb], &act[j * arb..][..arb]);
                        let want = want(&k, ty, n, wr, ar);
                        let dot = k.dot(ty, n, wr, ar);
                        for (what, got) in [("matmul", out[i * ncols + j]), ("dot", dot)] {
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{what} {} {:?} n={n} {nrows}x{ncols} ({i},{j}): {got} vs {want}",
                                ty.name(),
                                k.isa()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn quantise_dequantise_error_is_bounded() {
    let mut rng = Rng(4242);
    for ty in ALL {
        for n in [256usize, 1024] {
            let x = random_x(&mut rng, n);
            let mut q = vec![0u8; ty.row_bytes(n).unwrap()];
            quantize_row(ty, &x, &mut q);
            let mut y = vec![0.0; n];
            Kernels::detect().dequantize_row(ty, &q, &mut y);
            let (mut se, mut sx) = (0.0f64, 0.0f64);
            for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let (lo, hi) = xb
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                // Half a step, plus the f16 rounding of d (2^-11 relative) times the largest quant.
                let bound = match ty {
                    GgmlType::F32 => 0.0,
                    GgmlType::F16 => amax / 1024.0,
                    GgmlType::BF16 => amax / 256.0,
                    GgmlType::Q8_0 => amax / 127.0 * (0.5 + 127.0 / 2048.0) * 1.001,
                    GgmlType::Q4_0 => amax / 8.0 * (1.0 + 8.0 / 2048.0) * 1.001,
                    GgmlType::Q5_0 => amax / 16.0 * (1.0 + 16.0 / 2048.0) * 1.001,
                    GgmlType::Q4_1 => {
                        (hi - lo) / 15.0 * (0.5 + 15.0 / 2048.0) * 1.001 + lo.abs() / 2048.0
                    }
                    GgmlType::Q5_1 => {
                        (hi - lo) / 31.0 * (0.5 + 31.0 / 2048.0) * 1.001 + lo.abs() / 2048.0
                    }
                    GgmlType::Q4K => (hi - lo.min(0.0)) / 15.0 * 1.5,
                    GgmlType::Q5K => (hi - lo.min(0.0)) / 31.0 * 1.5,
                    GgmlType::Q6K => amax / 31.0 * 1.5,
                    // Table steps are up to 24 of 127 apart, and the x²-weighted scale
                    // search may trade a clipped largest value for smaller errors elsewhere:
                    // only a loose per-value bound, the RMS check below is the real one.
                    GgmlType::IQ4NL | GgmlType::IQ4XS => amax * 0.25,
                };
                for (a, b) in xb.iter().zip(yb) {
                    assert!(
                        (a - b).abs() <= bound + 1e-7,
                        "{}: {a} -> {b} (bound {bound})",
                        ty.name()
                    );
                    se += f64::from(a - b).powi(2);
                    sx += f64::from(*a).powi(2);
                }
            }
            let rel = (se / sx.max(1e-30)).sqrt();
            let max_rel = match ty {
                GgmlType::F32 => 0.0,
                GgmlType::F16 => 1e-3,
                GgmlType::BF16 => 4e-3,
                GgmlType::Q8_0 => 0.01,
                GgmlType::Q6K => 0.03,
                GgmlType::Q5K | GgmlType::Q5_1 => 0.06,
                GgmlType::Q5_0 => 0.1,
                GgmlType::Q4K | GgmlType::Q4_1 => 0.12,
                GgmlType::IQ4NL | GgmlType::IQ4XS => 0.12,
                GgmlType::Q4_0 => 0.2,
            };
            assert!(rel <= max_rel, "{} relative RMS error {rel}", ty.name());
        }
    }
}

#[test]
fn weight_block_known_answers() {
    // Q4_0: d = 0.5, byte 0 = 0x1f → value 0 = (15-8)·0.5, value 16 = (1-8)·0.5.
    let mut b = [0x88u8; 18];
    b[..2].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
    b[2] = 0x1f;
    let mut y = [9.0f32; 32];
    Kernels::scalar().dequantize_row(GgmlType::Q4_0, &b, &mut y);
    assert_eq!((y[0], y[16], y[1]), (3.5, -3.5, 0.0));
    // Q4_0 quantiser: max = -8 → d = 1, q = trunc(x + 8.5) clamped to 15.
    let mut x = [0.0f32; 32];
    x[0] = -8.0;
    x[1] = 7.4;
    x[16] = 3.0;
    let mut q = [0u8; 18];
    quantize_row(GgmlType::Q4_0, &x, &mut q);
    assert_eq!(u16::from_le_bytes([q[0], q[1]]), f32_to_f16(1.0));
    assert_eq!((q[2], q[3], q[4]), (0x0b << 4, 0x8f, 0x88));
    // Q8_0 quantiser rounds half away from zero (roundf): 63.5 → 64 with d = 1.
    let mut x = [0.0f32; 32];
    x[0] = 127.0;
    x[1] = 63.5;
    x[2] = -63.5;
    let mut q = [0u8; 34];
    quantize_row(GgmlType::Q8_0, &x, &mut q);
    assert_eq!((q[3] as i8, q[4] as i8), (64, -64));
    // Q8_0 · Q8_0: 32 × (1·1.0) × (127·f16(1/127)).
    let mut w = [1u8; 34];
    w[..2].copy_from_slice(&f32_to_f16(1.0).to_le_bytes());
    for k in [Kernels::scalar(), Kernels::detect()] {
        let a = quant_act(&k, GgmlType::Q8_0, &[1.0; 32]);
        let want = 32.0 * 127.0 * f16_to_f32(f32_to_f16(1.0 / 127.0));
        assert_eq!(k.dot(GgmlType::Q8_0, 32, &w, &a), want);
    }
}

#[test]
fn detect_reports_simd_where_available() {
    let isa = Kernels::detect().isa();
    #[cfg(target_arch = "aarch64")]
    assert_eq!(isa, Isa::Neon);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl") {
        assert_eq!(isa, Isa::Avx512Vnni);
    } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        assert_eq!(isa, Isa::Avx2Fma);
    }
    eprintln!("detected {isa:?}");
}

#[test]
fn f16_round_trips_exhaustively_and_rounds_ties_to_even() {
    for h in 0..=u16::MAX {
        let f = f16_to_f32(h);
        let (e, m) = ((h >> 10) & 0x1f, f64::from(h & 0x3ff));
        let want = match e {
            0 => m * 2f64.powi(-24),
            31 if m == 0.0 => f64::INFINITY,
            31 => f64::NAN,
            _ => (1.0 + m / 1024.0) * 2f64.powi(i32::from(e) - 15),
        };
        let want = if h & 0x8000 != 0 { -want } else { want };
        if want.is_nan() {
            assert!(f.is_nan());
            assert_eq!(f32_to_f16(f) | 0x0200, h | 0x0200, "NaN payload {h:#x}");
            continue;
        }
        assert_eq!(f64::from(f), want, "{h:#06x}");
        assert_eq!(f32_to_f16(f), h, "round trip {h:#06x}");
        // Midpoint to the next magnitude: ties go to the even code.
        if h & 0x7fff < 0x7c00 {
            let next = f64::from(f16_to_f32(h + 1)).abs();
            let mid = if h & 0x7fff == 0x7bff {
                65520.0
            } else {
                (f64::from(f).abs() + next) / 2.0
            };
            let mid = if h & 0x8000 != 0 { -mid } else { mid } as f32;
            let even = if h & 1 == 0 { h } else { h + 1 };
            assert_eq!(f32_to_f16(mid), even, "tie above {h:#06x}");
            let below = f32::from_bits(mid.to_bits() - 1);
            assert_eq!(f32_to_f16(below), h, "just below tie {h:#06x}");
        }
    }
    assert_eq!(f32_to_f16(1e9), 0x7c00);
    assert_eq!(f32_to_f16(-1e-10), 0x8000);
}

/// Q8_0 and Q4_0 prefill (the register-tiled products of two or more columns) computes each
/// output with the decode kernel's operations in its order: equal to the bit, across row and
/// column tails, activation panels (16 columns) and L2 row blocks (160 rows of 1536 Q8_0;
/// 144 of Q4_0, whose AVX2 tiles take rows eight at a time, so 163 rows end in a group of 3).
#[test]
fn q8_0_q4_0_prefill_is_bit_identical_to_decode() {
    let shapes = [(32, 1, 2), (64, 3, 5), (576, 7, 19), (1536, 163, 18)];
    matmul_and_dot_equal_bitwise(
        4242,
        &[GgmlType::Q8_0, GgmlType::Q4_0],
        &shapes,
        |k, ty, n, w, a| k.dot(ty, n, w, a),
    );
}

/// Batched decode (several sessions' tokens as the columns of one product) keeps each
/// session's greedy output only if a column of an `ncols`-wide `matmul` is, to the bit, what
/// the same column alone (`ncols = 1`, a one-session decode step) gives: for every type the
/// engine reads, every kernel set this CPU runs (the scalar reference too), and 1 to 9
/// columns (the VNNI 4 × 4 tiles, the AVX2 prefill tiles and their tails). Row counts cross
/// the tiles' row tails as well.
#[test]
fn matmul_columns_are_bit_identical_to_single_column_products() {
    let mut rng = Rng(0xba7c);
    let kernel_sets: Vec<Kernels> = std::iter::once(Kernels::scalar())
        .chain(Kernels::available())
        .collect();
    for k in kernel_sets {
        for ty in ALL {
            let n = match ActFormat::for_weights(ty).block_len().max(ty.block_len()) {
                1 => 200,
                256 => 512,
                _ => 576,
            };
            let arb = ActFormat::for_weights(ty).row_bytes(n);
            for nrows in [1usize, 6, 13] {
                let w = random_weights(&mut rng, ty, n, nrows);
                for ncols in 1..=9usize {
                    let act: Vec<u8> = (0..ncols)
                        .flat_map(|_| quant_act(&k, ty, &random_x(&mut rng, n)))
                        .collect();
                    let mut wide = vec![f32::NAN; nrows * ncols];
                    k.matmul(ty, n, &w, nrows, &act, ncols, &mut wide);
                    for j in 0..ncols {
                        let mut one = vec![f32::NAN; nrows];
                        k.matmul(ty, n, &w, nrows, &act[j * arb..][..arb], 1, &mut one);
                        for i in 0..nrows {
                            let got = wide[i * ncols + j];
                            assert_eq!(
                                got.to_bits(),
                                one[i].to_bits(),
                                "{} {:?} n={n} {nrows}x{ncols} ({i},{j}): {got} vs {} alone",
                                ty.name(),
                                k.isa(),
                                one[i]
                            );
                        }
                    }
                }
            }
        }
    }
}

/// `matmul_to_cols` (outputs by activation column, how the model lays out tokens) writes
/// exactly `matmul`'s outputs where a kernel takes it, and nothing where none does.
#[test]
fn matmul_to_cols_is_matmul_transposed() {
    let mut rng = Rng(777);
    let mut taken = 0;
    for k in Kernels::available() {
        for ty in ALL {
            for (nrows, ncols) in [(1, 2), (17, 3), (40, 19), (163, 8)] {
                let n = lens(ty)[0];
                let w = random_weights(&mut rng, ty, n, nrows);
                let act: Vec<u8> = (0..ncols)
                    .flat_map(|_| quant_act(&k, ty, &random_x(&mut rng, n)))
                    .collect();
                let mut want = vec![f32::NAN; nrows * ncols];
                k.matmul(ty, n, &w, nrows, &act, ncols, &mut want);
                let mut got = vec![vec![f32::NAN; nrows]; ncols];
                let mut cols: Vec<&mut [f32]> = got.iter_mut().map(|c| c.as_mut_slice()).collect();
                if !k.matmul_to_cols(ty, n, &w, nrows, &act, &mut cols) {
                    assert!(got.iter().flatten().all(|v| v.is_nan()), "{ty:?} wrote");
                    continue;
                }
                taken += 1;
                for i in 0..nrows {
                    for j in 0..ncols {
                        let (g, w) = (got[j][i], want[i * ncols + j]);
                        let at = format!("{ty:?} {:?} {nrows}x{ncols} ({i},{j})", k.isa());
                        assert_eq!(g.to_bits(), w.to_bits(), "{at}");
                    }
                }
            }
        }
    }
    let vnni = Kernels::available()
        .iter()
        .any(|k| k.isa() == Isa::Avx512Vnni);
    assert!(
        taken > 0 || !vnni,
        "no kernel wrote by column on AVX-512 VNNI"
    );
}
