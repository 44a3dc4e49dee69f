//! The tiled products (`Neon::matmul`) against the dot products (`Neon::dot`, the one-column
//! tiles) and the scalar oracle (`reference::dot`), compared bit for bit: every column count
//! 1..=9 (one full tile of four, two, and each tail), one past a panel of 16, several rows of
//! several blocks. Run under qemu-user by `make test-neon`.

use super::Neon;
use crate::ggml_type::GgmlType;
use crate::quant::act_format::ActFormat;
use crate::quant::f16::f32_to_f16;
use crate::quant::reference;

/// xorshift64*: deterministic, no crates.
struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [lo, hi).
    fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    fn f16(&mut self, lo: f32, hi: f32) -> [u8; 2] {
        f32_to_f16(self.f32(lo, hi)).to_le_bytes()
    }
}

/// `rows` weight rows of `n` values: arbitrary quant bits, sane f16 scales.
fn weights(rng: &mut Rng, ty: GgmlType, n: usize, rows: usize) -> Vec<u8> {
    let mut w: Vec<u8> = (0..ty.row_bytes(n).unwrap() * rows)
        .map(|_| rng.u64() as u8)
        .collect();
    for b in w.chunks_exact_mut(ty.block_bytes()) {
        match ty {
            GgmlType::Q8_0 | GgmlType::Q4_0 => b[..2].copy_from_slice(&rng.f16(-0.05, 0.05)),
            GgmlType::Q4_1 => {
                b[..2].copy_from_slice(&rng.f16(0.001, 0.05));
                b[2..4].copy_from_slice(&rng.f16(-0.5, 0.5));
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                b[..2].copy_from_slice(&rng.f16(0.0001, 0.01));
                b[2..4].copy_from_slice(&rng.f16(0.0001, 0.01));
            }
            GgmlType::Q6K => b[208..210].copy_from_slice(&rng.f16(0.0001, 0.01)),
            _ => unreachable!("{} has no tile", ty.name()),
        }
    }
    w
}

/// `cols` activation rows of `n` values in `ty`'s activation format, quantised by the
/// reference; now and then one all-zero block (scale 0) or a column of subnormal f16 scales.
fn activations(rng: &mut Rng, ty: GgmlType, n: usize, cols: usize) -> Vec<u8> {
    let fmt = ActFormat::for_weights(ty);
    let mut act = vec![0u8; fmt.row_bytes(n) * cols];
    for a in act.chunks_exact_mut(fmt.row_bytes(n)) {
        // A quarter of the columns small enough for f16 scales below the normal range.
        let s = if rng.u64().is_multiple_of(4) {
            rng.f32(1e-4, 1e-3)
        } else {
            rng.f32(0.1, 4.0)
        };
        let mut x: Vec<f32> = (0..n).map(|_| rng.f32(-s, s)).collect();
        if rng.u64().is_multiple_of(4) {
            x[..32].fill(0.0);
        }
        reference::quantize_act(fmt, &x, a);
    }
    act
}

/// For `ty` and rows of each length in `lens`: every `matmul` output equals the `dot` of its
/// row and column, and that equals the reference.
fn tiles_match_dot_and_reference(ty: GgmlType, lens: &[usize], seed: u64) {
    let k = Neon::new();
    let mut rng = Rng(seed);
    for &n in lens {
        let (wrb, arb) = (
            ty.row_bytes(n).unwrap(),
            ActFormat::for_weights(ty).row_bytes(n),
        );
        for nrows in [1usize, 3] {
            let w = weights(&mut rng, ty, n, nrows);
            for ncols in (1..=9).chain([17]) {
                let act = activations(&mut rng, ty, n, ncols);
                let mut out = vec![f32::NAN; nrows * ncols];
                let tiled = k.matmul(ty, n, &w, nrows, &act, ncols, &mut out);
                assert_eq!(tiled, ncols > 1, "{} {ncols} columns", ty.name());
                for (i, wr) in w.chunks_exact(wrb).enumerate() {
                    for (j, ar) in act.chunks_exact(arb).enumerate() {
                        let at = format!("{} n={n} {nrows}x{ncols} ({i},{j})", ty.name());
                        let dot = k.dot(ty, wr, ar).unwrap();
                        let want = reference::dot(ty, wr, ar);
                        if tiled {
                            let got = out[i * ncols + j];
                            assert_eq!(got.to_bits(), dot.to_bits(), "{at}: tile {got} dot {dot}");
                        }
                        assert_eq!(dot.to_bits(), want.to_bits(), "{at}: dot {dot} ref {want}");
                    }
                }
            }
        }
    }
}

#[test]
fn q8_0_tiles_are_bit_identical_to_dot_and_reference() {
    tiles_match_dot_and_reference(GgmlType::Q8_0, &[32, 160], 0x8_0);
}

#[test]
fn q4_0_tiles_are_bit_identical_to_dot_and_reference() {
    tiles_match_dot_and_reference(GgmlType::Q4_0, &[32, 160], 0x4_0);
}

#[test]
fn q4_1_tiles_are_bit_identical_to_dot_and_reference() {
    tiles_match_dot_and_reference(GgmlType::Q4_1, &[32, 160], 0x4_1);
}

#[test]
fn q4_k_tiles_are_bit_identical_to_dot_and_reference() {
    tiles_match_dot_and_reference(GgmlType::Q4K, &[256, 768], 0x4b);
}

#[test]
fn q5_k_tiles_are_bit_identical_to_dot_and_reference() {
    tiles_match_dot_and_reference(GgmlType::Q5K, &[256, 768], 0x5b);
}

#[test]
fn q6_k_tiles_are_bit_identical_to_dot_and_reference() {
    tiles_match_dot_and_reference(GgmlType::Q6K, &[256, 768], 0x6b);
}
