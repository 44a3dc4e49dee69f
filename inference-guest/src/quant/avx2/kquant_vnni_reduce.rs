//! The exact lane sums of a Q4_K tile's per-column i32 vectors ([`super::kquant_vnni`]),
//! transposed into the lanes of one vector: a tree of unpacks and 128-bit shuffles, cut
//! short for tiles of few columns.

use core::arch::x86_64::*;

use super::kquant_vnni::TILE;

/// Per 128-bit block `[a0+a2, b0+b2, a1+a3, b1+b3]` of the blocks of `a` and `b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
fn pair(a: __m512i, b: __m512i) -> __m512i {
    _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
}

/// Per 128-bit block, one partial sum of each of `r[4k..4k + 4]`, in that order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
fn quad(r: &[__m512i; TILE], k: usize) -> __m512i {
    let (a, b) = (
        pair(r[4 * k], r[4 * k + 1]),
        pair(r[4 * k + 2], r[4 * k + 3]),
    );
    _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
}

/// Blocks `[u0 + u2, u1 + u3, v0 + v2, v1 + v3]` of two quads.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
fn halves(u: __m512i, v: __m512i) -> __m512i {
    _mm512_add_epi32(
        _mm512_shuffle_i64x2::<0b01_00_01_00>(u, v),
        _mm512_shuffle_i64x2::<0b11_10_11_10>(u, v),
    )
}

/// The lane sums of `r[..C]` as lanes `0..C` of one vector (exact; the lanes after them
/// hold partial sums, of no use). A tile of few columns (batched decode) takes only the
/// steps of the tree its columns need: the whole tree costs as much as four columns'
/// products.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
pub(super) fn reduce<const C: usize>(r: &[__m512i; TILE]) -> __m512i {
    if C > 8 {
        let (s, t) = (
            halves(quad(r, 0), quad(r, 1)),
            halves(quad(r, 2), quad(r, 3)),
        );
        _mm512_add_epi32(
            _mm512_shuffle_i64x2::<0b10_00_10_00>(s, t),
            _mm512_shuffle_i64x2::<0b11_01_11_01>(s, t),
        )
    } else if C > 4 {
        // Blocks [first quad, second quad, the same again].
        let s = halves(quad(r, 0), quad(r, 1));
        _mm512_add_epi32(
            _mm512_shuffle_i64x2::<0b10_00_10_00>(s, s),
            _mm512_shuffle_i64x2::<0b11_01_11_01>(s, s),
        )
    } else {
        // The quad's four blocks folded into block 0 (the missing columns' vectors are 0).
        let q = quad(r, 0);
        let t = _mm512_add_epi32(q, _mm512_shuffle_i64x2::<0b00_00_11_10>(q, q));
        _mm512_add_epi32(t, _mm512_shuffle_i64x2::<0b00_00_00_01>(t, t))
    }
}
