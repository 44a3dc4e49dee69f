//! The driver of the K-quant products that unpack rows once per call (`kquant_q5_rows`,
//! `kquant_q6_rows`): L2-sized blocks of rows are unpacked into [`RowsKernel::Block`]s,
//! then every row of a block passes column panels that stay in L1/L2, a register tile of
//! up to [`TILE`] columns at a time.

use alloc::vec::Vec;

use super::gemm::ROW_BLOCK_BYTES;
use super::kquant::Q8K_BYTES;

/// Columns per register tile: four i32 sums and four f32 accumulators beside a pair of
/// unpacked weight vectors and their scales, inside the 16 YMM registers.
pub(super) const TILE: usize = 4;
/// Columns whose activations stay in L1/L2 while every row of a row block passes them.
pub(super) const PANEL: usize = 16;

/// A K-quant format's unpacked super-blocks and the tile that multiplies them.
pub(super) trait RowsKernel {
    /// The format's name, for the panics on bad lengths.
    const NAME: &'static str;
    /// Bytes per 256-value weight super-block.
    const WB: usize;
    /// One unpacked weight super-block.
    type Block: Copy;
    /// What every row reuses of the columns, computed once per product.
    type Cols;

    /// The column table of `act` (rows of `nsb` Q8_K blocks, `arb` bytes each).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn cols(act: &[u8], arb: usize, nsb: usize) -> Self::Cols;

    /// Super-block `x` (`WB` bytes), unpacked.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn unpack(x: &[u8]) -> Self::Block;

    /// `out[c] = row · column c` for the `C` columns of `t`, `row` one row's blocks.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn tile<const C: usize>(
        row: &[Self::Block],
        cols: &Self::Cols,
        t: Tile,
        out: &mut [f32],
    );
}

/// A tile's columns: their activations (`arb` bytes each) and where their entries start
/// in a column table laid out `[panel][block][PANEL]` (block b's at `table + b · PANEL`).
#[derive(Clone, Copy)]
pub(super) struct Tile<'a> {
    pub act: &'a [u8],
    pub arb: usize,
    pub table: usize,
}

/// `out[i * ncols + j] = w row i · act row j` for `K`'s weights, `ncols` ≥ 1.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If the lengths do not describe `nrows` × `ncols` products of whole super-blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul<K: RowsKernel>(
    w: &[u8],
    nrows: usize,
    act: &[u8],
    ncols: usize,
    out: &mut [f32],
) {
    assert!(nrows > 0 && ncols > 0, "{} rows: empty product", K::NAME);
    let (wrb, arb) = (w.len() / nrows, act.len() / ncols);
    let nsb = wrb / K::WB;
    assert!(
        w.len() == nrows * wrb && wrb == nsb * K::WB && arb == nsb * Q8K_BYTES,
        "{} rows: bad weight or activation length",
        K::NAME
    );
    assert_eq!(
        out.len(),
        nrows * ncols,
        "{} rows: bad output length",
        K::NAME
    );
    // SAFETY: the CPU features are this function's contract.
    let cols = unsafe { K::cols(act, arb, nsb) };
    let block_rows = (ROW_BLOCK_BYTES / (nsb * size_of::<K::Block>())).max(1);
    let mut blocks = Vec::with_capacity(block_rows.min(nrows) * nsb);
    for i0 in (0..nrows).step_by(block_rows) {
        let nr = block_rows.min(nrows - i0);
        blocks.clear();
        for x in w[i0 * wrb..(i0 + nr) * wrb].chunks_exact(K::WB) {
            // SAFETY: as above.
            blocks.push(unsafe { K::unpack(x) });
        }
        for j0 in (0..ncols).step_by(PANEL) {
            let nc = PANEL.min(ncols - j0);
            for (r, row) in blocks.chunks_exact(nsb).enumerate() {
                let dst = &mut out[(i0 + r) * ncols + j0..][..nc];
                let mut j = 0;
                while j < nc {
                    let c = TILE.min(nc - j);
                    let t = Tile {
                        act: &act[(j0 + j) * arb..(j0 + j + c) * arb],
                        arb,
                        table: (j0 / PANEL) * nsb * PANEL + j,
                    };
                    let o = &mut dst[j..j + c];
                    // SAFETY: as above.
                    unsafe {
                        match c {
                            4 => K::tile::<4>(row, &cols, t, o),
                            3 => K::tile::<3>(row, &cols, t, o),
                            2 => K::tile::<2>(row, &cols, t, o),
                            _ => K::tile::<1>(row, &cols, t, o),
                        }
                    }
                    j += c;
                }
            }
        }
    }
}
