//! Q6_K·Q8_K with AVX-512 VNNI (see [`super::kquant_vnni`] for the scheme).
//!
//! The reference sums each super-block into eight i32 lanes (lane m takes bytes 4m..4m+4 of
//! every 32-value chunk) and turns each into f32 with its own FMA, so the lanes' byte
//! partition is part of the numerics: a ZMM vector here covers two consecutive chunks, and its
//! 256-bit halves added together give exactly those eight lanes.
//!
//! Prefill puts two columns' eight lanes in one ZMM vector for the offset, the conversion and
//! the FMA (lane for lane the operations decode does on a YMM vector), which halves the
//! port-0 work after the integer products.

use core::arch::x86_64::*;

use super::kquant_vnni::{Q8Block, Q8K_BYTES, Q8KCols, TILE, VTile, ld64, prefetch_first};
use super::{arr, h2f, hsum, ld, ld16, prefetch_ahead};

pub(super) struct Q6K;

/// Bytes of a Q6_K super-block.
const Q6K_BYTES: usize = 210;

/// For quants vector `k` (values 64k..64k + 64): the 16-value group, and so the scale, of
/// each i16 lane of `maddubs` (bytes 2j and 2j + 1).
const SCALE_IDX: [[i16; 32]; 4] = [scale_idx(0), scale_idx(1), scale_idx(2), scale_idx(3)];

const fn scale_idx(k: i16) -> [i16; 32] {
    let mut t = [0i16; 32];
    let mut j = 0;
    while j < 32 {
        t[j] = 4 * k + (j / 8) as i16;
        j += 1;
    }
    t
}

/// One Q6_K super-block, unpacked for `vpmaddubsw` and `vpdpwssd`.
struct Q6Block {
    /// The 256 stored quants (0..63), 64 a vector, in the order of the Q8_K quants.
    q: [__m512i; 4],
    /// Each quants vector's scales, one per i16 lane of its `maddubs` (see [`SCALE_IDX`]).
    s: [__m512i; 4],
    /// −32 × the 16 scales, as i16: the stored quants' offset against the block sums.
    off: __m256i,
    d: f32,
}

impl Q6Block {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    fn new(x: &[u8; Q6K_BYTES]) -> Self {
        let m4 = _mm512_set1_epi8(0xf);
        let m30 = _mm512_set1_epi8(0x30);
        // The high-bit bytes serve chunks k and k+1 of a half shifted by 0 and 2.
        let shifts = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
        let mut q = [_mm512_setzero_si512(); 4];
        for h in 0..2 {
            // SAFETY: AVX-512 F is this function's contract; the arrays are bounds-checked.
            let (ql, qh) = unsafe { (ld64(arr(x, 64 * h)), ld(arr(x, 128 + 32 * h))) };
            let qh = _mm512_srlv_epi16(_mm512_broadcast_i64x4(qh), shifts);
            // Chunks 0, 1: low nibbles with bits 0-1 (2-3) of the high bytes on top; chunks
            // 2, 3: high nibbles with bits 4-5 (6-7).
            q[2 * h] = _mm512_or_si512(
                _mm512_and_si512(ql, m4),
                _mm512_and_si512(_mm512_slli_epi16::<4>(qh), m30),
            );
            q[2 * h + 1] = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                _mm512_and_si512(qh, m30),
            );
        }
        // SAFETY: as above; 16 scales are in bounds.
        let sc8 = unsafe { ld16(arr(x, 192)) };
        let sc = _mm256_cvtepi8_epi16(sc8);
        // SAFETY: as above; each table is 64 bytes.
        let s = SCALE_IDX.map(|t| unsafe {
            _mm512_permutexvar_epi16(
                _mm512_loadu_si512(t.as_ptr().cast()),
                _mm512_castsi256_si512(sc),
            )
        });
        let off = _mm256_mullo_epi16(sc, _mm256_set1_epi16(-32));
        Self {
            q,
            s,
            off,
            d: h2f(x, 208),
        }
    }

    /// The reference's eight lane sums against the Q8_K quants `q`, scaled but without the
    /// offset, twice: lanes l and l + 8 add up to the reference's lane l.
    ///
    /// `maddubs` adds two products into an i16 (|sum| ≤ 2 · 63 · 128: no saturation) and
    /// `vpdpwssd` scales two of those into i32 lane l, so lane l takes bytes 4l..4l + 4 of
    /// every vector: the reference's partition, and exact integers, as a `vpdpbusd` per
    /// vector would give, without repacking its i32 sums to apply the scales.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    fn halves(&self, q: &[__m512i; 4]) -> __m512i {
        let p: [__m512i; 4] = core::array::from_fn(|k| _mm512_maddubs_epi16(self.q[k], q[k]));
        // Two chains of two, for latency.
        let a = _mm512_dpwssd_epi32(_mm512_madd_epi16(p[0], self.s[0]), p[1], self.s[1]);
        let b = _mm512_dpwssd_epi32(_mm512_madd_epi16(p[2], self.s[2]), p[3], self.s[3]);
        _mm512_add_epi32(a, b)
    }

    /// `acc + (yd · d) · lanes`, one FMA per lane as the reference accumulates, for the
    /// Q8_K block of quants `q`, block sums `bsums` and scale `yd`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    fn fma(&self, q: &[__m512i; 4], bsums: __m256i, yd: f32, acc: __m256) -> __m256 {
        let r = self.halves(q);
        let r = _mm256_add_epi32(_mm512_castsi512_si256(r), _mm512_extracti64x4_epi64::<1>(r));
        let v = _mm256_cvtepi32_ps(_mm256_dpwssd_epi32(r, bsums, self.off));
        _mm256_fmadd_ps(_mm256_set1_ps(yd * self.d), v, acc)
    }

    /// [`Q6Block::fma`] for two columns at once, `a` in the low eight lanes and `b` in the
    /// high: the same integers and the same FMA per lane, on half as many vectors.
    /// `yd` holds the two columns' scales, eight lanes each.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    fn fma2(
        &self,
        a: (&[__m512i; 4], __m256i),
        b: (&[__m512i; 4], __m256i),
        yd: __m512,
        acc: __m512,
    ) -> __m512 {
        let (ra, rb) = (self.halves(a.0), self.halves(b.0));
        let r = _mm512_add_epi32(
            _mm512_shuffle_i64x2::<0b01_00_01_00>(ra, rb),
            _mm512_shuffle_i64x2::<0b11_10_11_10>(ra, rb),
        );
        let bsums = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a.1), b.1);
        let off = _mm512_broadcast_i64x4(self.off);
        let v = _mm512_cvtepi32_ps(_mm512_dpwssd_epi32(r, bsums, off));
        _mm512_fmadd_ps(_mm512_mul_ps(yd, _mm512_set1_ps(self.d)), v, acc)
    }
}

/// One Q6_K row · one Q8_K row.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/VL/BW/VNNI; `w`/`a` are Q6_K/Q8_K rows
/// of equal length.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) unsafe fn dot_q6_k(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.chunks_exact(Q6K_BYTES).zip(a.chunks_exact(Q8K_BYTES)) {
        // Decode streams the weights once: ask for them well ahead.
        prefetch_ahead(x.as_ptr(), 1);
        let y = Q8Block::load(arr(y, 0));
        acc = Q6Block::new(arr(x, 0)).fma(&y.q, y.bsums, y.d, acc);
    }
    hsum(acc)
}

impl VTile for Q6K {
    const WB: usize = Q6K_BYTES;
    type Prep = Q8KCols;

    unsafe fn prep(act: &[u8], arb: usize, nb: usize, _: usize) -> Q8KCols {
        // SAFETY: forwarded contract.
        unsafe { Q8KCols::new(act, arb, nb, false) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    unsafe fn tile<const C: usize>(row: &[u8], cols: &Q8KCols, j: usize, out: &mut [f32]) {
        // Columns in pairs, one ZMM accumulator each; an odd last column pairs with zeros.
        let mut acc = [_mm512_setzero_ps(); TILE / 2];
        let (zq, zb) = ([_mm512_setzero_si512(); 4], _mm256_setzero_si256());
        for (b, x) in row.chunks_exact(Q6K_BYTES).enumerate() {
            prefetch_first::<Q6K_BYTES>(x, j);
            let blk = Q6Block::new(arr(x, 0));
            let y = cols.row::<C>(b, j);
            // SAFETY: AVX-512 F is this function's contract; `y.d` is 16 readable f32.
            let yd = unsafe { _mm512_loadu_ps(y.d.as_ptr()) };
            for (k, acc) in acc.iter_mut().enumerate().take(C.div_ceil(2)) {
                let a = (&y.q[2 * k], y.bsums[2 * k]);
                let b =
                    y.q.get(2 * k + 1)
                        .map_or((&zq, zb), |q| (q, y.bsums[2 * k + 1]));
                // The two columns' scales, eight lanes each.
                let (lo, hi) = (2 * k as i32, 2 * k as i32 + 1);
                let pair =
                    _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32(lo), _mm512_set1_epi32(hi));
                *acc = blk.fma2(a, b, _mm512_permutexvar_ps(pair, yd), *acc);
            }
        }
        let mut all = [0.0f32; TILE];
        for (k, acc) in acc.iter().enumerate() {
            all[2 * k] = hsum(_mm512_castps512_ps256(*acc));
            all[2 * k + 1] = hsum(_mm256_castsi256_ps(_mm512_extracti64x4_epi64::<1>(
                _mm512_castps_si512(*acc),
            )));
        }
        out[..C].copy_from_slice(&all[..C]);
    }
}
