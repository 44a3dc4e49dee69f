//! Q8_0 and Q4_1 prefill on AVX-512 VNNI with 512-bit vectors: each ZMM register holds the
//! eight f32 lanes of two outputs side by side (one weight row × two activation columns), so
//! one `vpdpbusd`, one conversion and one FMA serve two outputs' blocks. These are the formats
//! whose decode kernel sums each block into eight float lanes (llama.cpp's `vec_dot`).
//!
//! Q4_1's nibbles are unsigned and go straight into `vpdpbusd`; its min term
//! (`Σ_b m·s`, one f32 per output) is kept in every lane of the output's half.
//!
//! Q8_0: why not the 256-bit tile's sign trick: AVX-512 has no `vpsignb`. `vpdpbusd` multiplies
//! unsigned by signed bytes, so the weights go in as `w + 128` (a XOR, once per row and
//! block) and each lane starts from `-128 · Σa` over its four activation bytes (once per
//! column and block): `Σ (w + 128)·a − 128·Σa = Σ w·a`, the exact integers the decode kernel
//! sums in that lane, for every byte value. The floats then follow the decode kernel's order
//! (`acc = fma(dw·da, float(lane sum), acc)`, the eight lanes summed by [`super::hsum`]), so
//! prefill and decode agree to the bit.
//!
//! The weight scales are converted to f32 once per call ([`row_scales`]); each tile then
//! broadcasts them from memory instead of converting an f16 per row, block and panel.

use alloc::vec;
use alloc::vec::Vec;
use core::arch::x86_64::*;

use super::gemm::{PANEL, ROW_BLOCK_BYTES};
use super::sink::Sink;
use super::{hsum, prefetch_ahead};
use crate::ggml_type::GgmlType;

/// A 32-value weight format this module tiles, with its activation block layout.
trait PairFmt {
    /// Bytes of a weight block and of an activation block.
    const WB: usize;
    const AB: usize;
    /// Offset of the 32 activation quants inside an activation block.
    const AQS: usize;
    /// Weight blocks carry a min `m` (at byte 2) and activation blocks `s = d·Σq` (at 2).
    const HAS_MIN: bool;

    /// The block's 32 values as unsigned bytes for `vpdpbusd`, in both 256-bit halves.
    ///
    /// # Safety
    /// AVX-512 F/BW; `blk` points at a readable weight block.
    unsafe fn quants(blk: *const u8) -> __m512i;

    /// What each i32 lane starts from so that it ends at the exact signed lane sum, given
    /// the two columns' activation quants `a`.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI.
    unsafe fn start(a: __m512i) -> __m512i;
}

struct Q8_0;
struct Q4_1;

impl PairFmt for Q8_0 {
    const WB: usize = 34;
    const AB: usize = 34;
    const AQS: usize = 2;
    const HAS_MIN: bool = false;

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw")]
    unsafe fn quants(blk: *const u8) -> __m512i {
        // SAFETY: 32 readable bytes after the scale (contract).
        let q = unsafe { _mm256_loadu_si256(blk.add(2).cast()) };
        // w + 128: the i8 weights biased into u8.
        _mm512_xor_si512(_mm512_broadcast_i64x4(q), _mm512_set1_epi8(-128))
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
    unsafe fn start(a: __m512i) -> __m512i {
        // −128 · Σa per lane, what the biased weights add.
        let biased = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(-128), a);
        _mm512_sub_epi32(_mm512_setzero_si512(), biased)
    }
}

impl PairFmt for Q4_1 {
    const WB: usize = 20;
    const AB: usize = 36;
    const AQS: usize = 4;
    const HAS_MIN: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw")]
    unsafe fn quants(blk: *const u8) -> __m512i {
        // SAFETY: 16 readable bytes of nibbles after the scale and min (contract).
        let q = unsafe { _mm512_broadcast_i32x4(_mm_loadu_si128(blk.add(4).cast())) };
        // Each 256-bit half: low nibbles (values 0..16), then high nibbles (16..32).
        let shift = _mm512_setr_epi64(
            0,
            0,
            0x0004_0004_0004_0004,
            0x0004_0004_0004_0004,
            0,
            0,
            0x0004_0004_0004_0004,
            0x0004_0004_0004_0004,
        );
        _mm512_and_si512(_mm512_srlv_epi16(q, shift), _mm512_set1_epi8(0xf))
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
    unsafe fn start(_a: __m512i) -> __m512i {
        _mm512_setzero_si512()
    }
}

/// Weight rows per register tile: 4 rows × 2 column pairs is 8 accumulators, which leaves
/// room among the 32 ZMM registers for the operands of a block.
const ROWS: usize = 4;
/// Above this many columns the weight scales are converted to f32 tables once per call.
const TABLE_COLS: usize = 8;

/// One tile's operands (as `gemm`'s tile, plus `ws`, the f32 weight scales at its first row,
/// `nb` per row).
#[derive(Clone, Copy)]
struct Tile {
    w: *const u8,
    /// Whether `ws`/`wm` point at f32 tables; without, the tile converts each block's f16
    /// scale (and min) itself: with no more than [`TABLE_COLS`] columns the tables would not
    /// be reused enough to pay for themselves (a batched decode step has a few columns).
    tables: bool,
    ws: *const f32,
    wm: *const f32,
    wrb: usize,
    a: *const u8,
    arb: usize,
    nb: usize,
    /// The product's row and column of the tile's first output.
    i: usize,
    j: usize,
    sc: *const f32,
    sm: *const f32,
}

impl Tile {
    /// The tile `rows` rows and `cols` columns further on.
    ///
    /// # Safety
    /// The moved tile must lie inside the matrices `self` points into.
    unsafe fn at(self, rows: usize, cols: usize) -> Self {
        // SAFETY: the caller keeps the offsets inside the same allocations.
        unsafe {
            Self {
                w: self.w.add(rows * self.wrb),
                ws: self.ws.wrapping_add(rows * self.nb),
                wm: self.wm.wrapping_add(rows * self.nb),
                a: self.a.add(cols * self.arb),
                i: self.i + rows,
                j: self.j + cols,
                sc: self.sc.add(cols),
                sm: self.sm.wrapping_add(cols),
                ..self
            }
        }
    }
}

/// Output (i, j) = w row i · act row j into `out`, for Q8_0 weights (Q8_0 activations) or
/// Q4_1 weights (Q8_1 activations).
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/VL/BW/VNNI.
///
/// # Panics
/// If `ty` is neither, or the lengths do not describe `nrows` × `ncols` products of whole
/// blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn matmul(
    ty: GgmlType,
    w: &[u8],
    nrows: usize,
    act: &[u8],
    ncols: usize,
    out: &mut impl Sink,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match ty {
            GgmlType::Q8_0 => products::<Q8_0>(w, nrows, act, ncols, out),
            GgmlType::Q4_1 => products::<Q4_1>(w, nrows, act, ncols, out),
            _ => panic!("gemm512: {} is not Q8_0 or Q4_1", ty.name()),
        }
    }
}

/// [`matmul`] for format `F`.
///
/// # Safety
/// As [`matmul`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn products<F: PairFmt>(
    w: &[u8],
    nrows: usize,
    act: &[u8],
    ncols: usize,
    out: &mut impl Sink,
) {
    assert!(nrows > 0 && ncols > 0, "gemm512: empty product");
    let (wrb, arb) = (w.len() / nrows, act.len() / ncols);
    let nb = arb / F::AB;
    // These checks keep every pointer offset below inside the three slices.
    assert!(
        w.len() == nrows * wrb && wrb == nb * F::WB,
        "gemm512: bad weight length"
    );
    assert!(
        act.len() == ncols * arb && arb == nb * F::AB,
        "gemm512: bad activation length"
    );
    let block_rows = (ROW_BLOCK_BYTES / wrb.max(1)).max(ROWS) / ROWS * ROWS;
    let tables = ncols > TABLE_COLS;
    let ws = if tables {
        halves(w, F::WB, 0)
    } else {
        Vec::new()
    };
    let wm = if F::HAS_MIN && tables {
        halves(w, F::WB, 2)
    } else {
        Vec::new()
    };
    let sc = column_table(act, arb, F::AB, 0);
    let sm = if F::HAS_MIN {
        column_table(act, arb, F::AB, 2)
    } else {
        Vec::new()
    };
    let base = Tile {
        w: w.as_ptr(),
        tables,
        ws: ws.as_ptr(),
        wm: wm.as_ptr(),
        wrb,
        a: act.as_ptr(),
        arb,
        nb,
        i: 0,
        j: 0,
        sc: sc.as_ptr(),
        sm: sm.as_ptr(),
    };
    for i0 in (0..nrows).step_by(block_rows) {
        let nr = block_rows.min(nrows - i0);
        for j0 in (0..ncols).step_by(PANEL) {
            let nc = PANEL.min(ncols - j0);
            let panel_at = (j0 / PANEL) * nb * PANEL;
            // SAFETY: rows i0..i0 + nr and columns j0..j0 + nc are inside the slices checked
            // above; the panel's tables start at its first column's entries.
            unsafe {
                let t = Tile {
                    sc: sc.as_ptr().add(panel_at),
                    sm: sm.as_ptr().wrapping_add(panel_at),
                    ..base.at(i0, j0)
                };
                panel::<F>(t, nr, nc, out);
            }
        }
    }
}

/// The f16 at byte `at` of every `wb`-byte block of `w`, as f32 (`[row][block]`).
#[target_feature(enable = "avx2,f16c")]
fn halves(w: &[u8], wb: usize, at: usize) -> Vec<f32> {
    w.chunks_exact(wb).map(|blk| super::h2f(blk, at)).collect()
}

/// The f16 at byte `at` of each activation block as f32, laid out `[panel][block][PANEL]`
/// so a tile reads four columns' values with one load (4 entries of padding at the end).
#[target_feature(enable = "avx2,f16c")]
fn column_table(act: &[u8], arb: usize, ab: usize, at: usize) -> Vec<f32> {
    let (ncols, nb) = (act.len() / arb, arb / ab);
    let mut t = vec![0.0; ncols.div_ceil(PANEL) * nb * PANEL + 4];
    for (j, row) in act.chunks_exact(arb).enumerate() {
        for (b, blk) in row.chunks_exact(ab).enumerate() {
            t[((j / PANEL) * nb + b) * PANEL + j % PANEL] = super::h2f(blk, at);
        }
    }
    t
}

/// All `nr` rows × `nc` (≤ [`PANEL`]) columns from `t`: tiles of [`ROWS`] rows (then single
/// rows) × four columns (then the last one to three).
///
/// # Safety
/// As [`matmul`]; `t` points at `nr` rows, `nc` columns and their outputs.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn panel<F: PairFmt>(t: Tile, nr: usize, nc: usize, out: &mut impl Sink) {
    let mut i = 0;
    // SAFETY: every tile below stays inside rows 0..nr and columns 0..nc of `t`.
    unsafe {
        while i < nr {
            let r = if i + ROWS <= nr { ROWS } else { 1 };
            let mut j = 0;
            while j < nc {
                let cols = (nc - j).min(4);
                let u = t.at(i, j);
                match (r == ROWS, cols > 2) {
                    (true, true) => tile::<F, ROWS, 2>(u, cols, out),
                    (true, false) => tile::<F, ROWS, 1>(u, cols, out),
                    (false, true) => tile::<F, 1, 2>(u, cols, out),
                    (false, false) => tile::<F, 1, 1>(u, cols, out),
                }
                j += cols;
            }
            i += r;
        }
    }
}

/// Rows `0..R` × columns `0..cols` (`cols` ≤ `2P`), two columns per register; a missing
/// second column of the last pair repeats the first and is not stored.
///
/// # Safety
/// As [`panel`]; `t` points at `R` rows and `cols` columns and their outputs.
// Register tiles index rows and pairs by number: each (r, p) pairs `wz`/`ws` of row r with
// pair p's activations and unrolls into fixed registers.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
unsafe fn tile<F: PairFmt, const R: usize, const P: usize>(
    t: Tile,
    cols: usize,
    out: &mut impl Sink,
) {
    // Lane k of pair p takes column 2p's scale in its low half and 2p + 1's in its high one.
    let pick = [
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
        _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
    ];
    let col = |c: usize| if c < cols { c } else { c - 1 };
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    // Q4_1's min terms: output (r, c) in lane 4·(r % 2) + c of `mins[r / 2]`, two registers
    // for the whole tile (one per output would spill the tile out of the 32 ZMM registers).
    let mut mins = [_mm512_setzero_ps(); 2];
    for b in 0..t.nb {
        if t.j == 0 {
            // The tile that first reads these rows streams them from memory: ask for each
            // block [`PREFETCH_AHEAD`] bytes on, as decode does (with a few columns a row
            // gets too little work for the hardware's prefetch to hide the latency). A block
            // at a time: a burst of whole rows' lines fills the line-fill buffers.
            for r in 0..R {
                prefetch_ahead(t.w.wrapping_add(r * t.wrb + b * F::WB), 1);
            }
        }
        // SAFETY: rows < R, columns < cols and blocks < nb are inside the tile (contract);
        // the column tables have an entry for every (block, panel column) plus 4 of padding.
        unsafe {
            let ad = _mm512_castps128_ps512(_mm_loadu_ps(t.sc.add(b * PANEL)));
            // The four columns' `s`, repeated for each row's four lanes.
            let am = if F::HAS_MIN {
                _mm512_broadcast_f32x4(_mm_loadu_ps(t.sm.add(b * PANEL)))
            } else {
                _mm512_setzero_ps()
            };
            let mut a = [_mm512_setzero_si512(); P];
            let mut from = [_mm512_setzero_si512(); P];
            let mut da = [_mm512_setzero_ps(); P];
            for p in 0..P {
                let at = |c: usize| t.a.add(col(c) * t.arb + b * F::AB + F::AQS).cast();
                let lo = _mm512_castsi256_si512(_mm256_loadu_si256(at(2 * p)));
                a[p] = _mm512_inserti64x4::<1>(lo, _mm256_loadu_si256(at(2 * p + 1)));
                from[p] = F::start(a[p]);
                da[p] = _mm512_permutexvar_ps(pick[p], ad);
            }
            for r in 0..R {
                let blk = t.w.add(r * t.wrb + b * F::WB);
                let wz = F::quants(blk);
                let (dw, m) = block_scales::<F>(t, blk, r, b);
                for p in 0..P {
                    let sum = _mm512_dpbusd_epi32(from[p], wz, a[p]);
                    let dd = _mm512_mul_ps(dw, da[p]);
                    acc[r][p] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(sum), acc[r][p]);
                }
                if F::HAS_MIN {
                    // The decode kernel's scalar `msum += m * s`: an f16 × f16 product is exact
                    // in f32, so the fused form rounds once, as that sum does.
                    let lanes: __mmask16 = 0xf << (4 * (r % 2));
                    mins[r / 2] = _mm512_mask3_fmadd_ps(m, am, mins[r / 2], lanes);
                }
            }
        }
    }
    let mut min_lanes = [[0.0f32; 16]; 2];
    if F::HAS_MIN {
        for (lanes, v) in min_lanes.iter_mut().zip(mins) {
            // SAFETY: 16 writable f32s.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
        }
    }
    for r in 0..R {
        for p in 0..P {
            let halves = split(acc[r][p]);
            for (h, half) in halves.into_iter().enumerate() {
                let c = 2 * p + h;
                if c < cols {
                    out.put(
                        t.i + r,
                        t.j + c,
                        hsum(half) + min_lanes[r / 2][4 * (r % 2) + c],
                    );
                }
            }
        }
    }
}

/// Row `r`'s weight block `b` (at `blk`): its scale and (Q4_1) min, each in every lane; from
/// the tables when `t` has them, else both f16s converted by one instruction.
///
/// # Safety
/// As [`tile`]; row `r` and block `b` are inside the tile.
#[inline]
#[target_feature(enable = "avx2,f16c,avx512f")]
unsafe fn block_scales<F: PairFmt>(
    t: Tile,
    blk: *const u8,
    r: usize,
    b: usize,
) -> (__m512, __m512) {
    // SAFETY: the block's first 4 bytes (scale, then min or the first quants) and, with
    // tables, their entries for row r and block b are readable (contract).
    unsafe {
        if t.tables {
            let m = if F::HAS_MIN {
                _mm512_set1_ps(*t.wm.add(r * t.nb + b))
            } else {
                _mm512_setzero_ps()
            };
            (_mm512_set1_ps(*t.ws.add(r * t.nb + b)), m)
        } else {
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(blk.cast::<i32>().read_unaligned()));
            (
                _mm512_broadcastss_ps(dm),
                _mm512_broadcastss_ps(_mm_movehdup_ps(dm)),
            )
        }
    }
}

/// The two 256-bit halves of `v`.
#[inline]
#[target_feature(enable = "avx2,avx512f")]
fn split(v: __m512) -> [__m256; 2] {
    let v = _mm512_castps_pd(v);
    [
        _mm256_castpd_ps(_mm512_castpd512_pd256(v)),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(v)),
    ]
}
