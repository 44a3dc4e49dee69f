//! The column-tiled matrix product every NEON prefill kernel shares: column panels, then
//! weight rows, then register tiles of up to [`TILE`] activation columns.
//!
//! A format implements [`Tile`]: one weight row against `C` columns, each weight block
//! unpacked once per tile. The loop here knows nothing of block sizes (it splits the operands
//! by their row lengths), so 32-value blocks and 256-value super-blocks share it. The
//! one-column tile is the format's decode dot ([`dot`]), so a matrix product and a dot product
//! agree to the bit by construction.

/// Columns per register tile.
const TILE: usize = 4;
/// Columns whose activations stay cached while every row of the range passes them.
const PANEL: usize = 16;

/// A weight format with a column-tiled kernel.
pub(super) trait Tile {
    /// `out[c] = row · column c` for the `C` columns of `a` (stride `arb`, whole rows).
    ///
    /// # Safety
    /// The CPU must support NEON (the aarch64 baseline: always true). Slice bounds are
    /// checked.
    unsafe fn tile<const C: usize>(row: &[u8], a: &[u8], arb: usize, out: &mut [f32]);
}

/// One weight row · one activation row: the one-column tile.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn dot<K: Tile>(w: &[u8], a: &[u8]) -> f32 {
    let mut out = [0.0f32];
    // SAFETY: NEON is the aarch64 baseline.
    unsafe { K::tile::<1>(w, a, a.len(), &mut out) };
    out[0]
}

/// `out[i * ncols + j] = w row i · act row j` (`Kernels::matmul` checked the lengths).
#[target_feature(enable = "neon")]
pub(super) fn panels<K: Tile>(w: &[u8], nrows: usize, act: &[u8], ncols: usize, out: &mut [f32]) {
    let (wrb, arb) = (w.len() / nrows, act.len() / ncols);
    let mut j0 = 0;
    while j0 < ncols {
        let nc = PANEL.min(ncols - j0);
        for (i, row) in w.chunks_exact(wrb).enumerate() {
            let dst = &mut out[i * ncols + j0..i * ncols + j0 + nc];
            let mut j = 0;
            // SAFETY: NEON is the aarch64 baseline; the slices are in bounds by construction.
            unsafe {
                while j + TILE <= nc {
                    let a = &act[(j0 + j) * arb..(j0 + j + TILE) * arb];
                    K::tile::<TILE>(row, a, arb, &mut dst[j..j + TILE]);
                    j += TILE;
                }
                let a = &act[(j0 + j) * arb..(j0 + nc) * arb];
                match nc - j {
                    3 => K::tile::<3>(row, a, arb, &mut dst[j..]),
                    2 => K::tile::<2>(row, a, arb, &mut dst[j..]),
                    1 => K::tile::<1>(row, a, arb, &mut dst[j..]),
                    _ => {}
                }
            }
        }
        j0 += nc;
    }
}
