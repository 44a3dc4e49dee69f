//! Causal grouped-query attention with llama.cpp's CPU numerics.
//!
//! llama.cpp (flash attention off, f16 KV cache, AVX-512 build) computes attention as two f16
//! matrix products around a softmax, over a KV length padded to 256 with masked (zero
//! weight) entries. Its summation order differs between a one-token batch (`ggml_vec_dot_f16`:
//! four 16-lane accumulators over 64-element steps) and a multi-token batch (tinyBLAS: one
//! 16-lane accumulator), and the softmax probabilities are rounded to f16 before the value
//! product. Because later steps round again (f16, Q8 activations), reproducing the order
//! exactly is what makes greedy generations agree token for token; the arithmetic is cheap
//! next to the weight products.
//!
//! Every product here is of two f16-representable values, so it is exact in f32 and a fused
//! multiply-add equals a multiply followed by an add.

use super::kv_cache::{KvCache, round_f16};
use crate::quant::Kernels;
use alloc::vec;

/// Lanes of an AVX-512 register of f32.
const LANES: usize = 16;

/// Summation order of llama.cpp's f16 dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DotOrder {
    /// `ggml_vec_dot_f16` (one-token batches): 4 × 16 lanes per 64-element step.
    Vec,
    /// tinyBLAS (batches of two or more tokens): 16 lanes.
    Tiny,
}

impl DotOrder {
    pub(super) fn for_batch(n_tokens: usize) -> Self {
        if n_tokens >= 2 { Self::Tiny } else { Self::Vec }
    }

    /// Accumulator lanes: element `i` of a dot product goes to lane `i % lanes`.
    fn lanes(self) -> usize {
        match self {
            Self::Vec => 4 * LANES,
            Self::Tiny => LANES,
        }
    }
}

/// `_mm512_reduce_add_ps` as GCC expands it: halves, quarters, then pairs.
#[inline]
fn reduce16(a: &[f32]) -> f32 {
    let mut t3 = [0.0f32; 8];
    for l in 0..8 {
        t3[l] = a[l + 8] + a[l];
    }
    let mut t6 = [0.0f32; 4];
    for l in 0..4 {
        t6[l] = t3[l + 4] + t3[l];
    }
    (t6[0] + t6[2]) + (t6[1] + t6[3])
}

/// Folds the accumulator lanes of `order` into one sum (`GGML_F32x16_REDUCE` for `Vec`).
#[inline]
fn reduce(order: DotOrder, acc: &[f32]) -> f32 {
    match order {
        DotOrder::Tiny => reduce16(acc),
        DotOrder::Vec => {
            let mut s = [0.0f32; LANES];
            for l in 0..LANES {
                s[l] = (acc[l] + acc[2 * LANES + l]) + (acc[LANES + l] + acc[3 * LANES + l]);
            }
            reduce16(&s)
        }
    }
}

/// [`reduce`] applied to every column of `acc` (`lanes` rows of `n`), written as whole-row
/// additions so they vectorise; `tree` is scratch of `28 * n`.
fn reduce_rows(order: DotOrder, acc: &[f32], n: usize, tree: &mut [f32], out: &mut [f32]) {
    let row = |k: usize| &acc[k * n..(k + 1) * n];
    let (folded, rest) = tree.split_at_mut(LANES * n);
    let (t3, t6) = rest.split_at_mut(8 * n);
    // The 16 lanes the halving tree starts from: the accumulators themselves for `Tiny`
    // (a copy of them was ~7 % of a 512-token prefill's time), folded from 64 for `Vec`.
    let s: &[f32] = match order {
        DotOrder::Tiny => &acc[..LANES * n],
        DotOrder::Vec => {
            for l in 0..LANES {
                let (a0, a1, a2, a3) = (
                    row(l),
                    row(LANES + l),
                    row(2 * LANES + l),
                    row(3 * LANES + l),
                );
                for (d, o) in folded[l * n..(l + 1) * n].iter_mut().enumerate() {
                    *o = (a0[d] + a2[d]) + (a1[d] + a3[d]);
                }
            }
            folded
        }
    };
    // The halving tree of `reduce16`, one row of `n` sums at a time.
    for l in 0..8 {
        for d in 0..n {
            t3[l * n + d] = s[(l + 8) * n + d] + s[l * n + d];
        }
    }
    for l in 0..4 {
        for d in 0..n {
            t6[l * n + d] = t3[(l + 4) * n + d] + t3[l * n + d];
        }
    }
    for (d, o) in out.iter_mut().enumerate() {
        *o = (t6[d] + t6[2 * n + d]) + (t6[n + d] + t6[3 * n + d]);
    }
}

/// Dot product of two rows of f16-exact values in `order`'s summation order. Elements past
/// the last whole step (a head size not a multiple of 64, say) are added in f64 as ggml's
/// leftover loop does.
fn dot(order: DotOrder, x: &[f32], y: &[f32]) -> f32 {
    let lanes = order.lanes();
    let whole = x.len() / lanes * lanes;
    let mut acc = [0.0f32; 4 * LANES];
    let acc = &mut acc[..lanes];
    for (xs, ys) in x[..whole]
        .chunks_exact(lanes)
        .zip(y[..whole].chunks_exact(lanes))
    {
        for ((a, &xv), &yv) in acc.iter_mut().zip(xs).zip(ys) {
            *a += xv * yv;
        }
    }
    let mut sum = f64::from(reduce(order, acc));
    for (&xv, &yv) in x[whole..].iter().zip(&y[whole..]) {
        sum += f64::from(xv * yv);
    }
    sum as f32
}

/// ggml's `soft_max` on `scores` (already scaled): exp with its AVX-512 polynomial, the sum
/// kept per 16-lane chunk in f64 (masked tail lanes are zeros), then one multiply by 1/sum.
/// Scores before `first` are masked out (a sliding window): their weight is exactly 0, and
/// they keep their lanes in the sums, as llama.cpp's -inf mask leaves them.
fn softmax(kernels: &Kernels, scores: &mut [f32], first: usize) {
    let max = scores[first..]
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    scores.iter_mut().for_each(|v| *v -= max);
    kernels.exp_in_place(scores);
    scores[..first].fill(0.0);
    let mut sum = 0.0f64;
    for chunk in scores.chunks(LANES) {
        let mut lanes = [0.0f32; LANES];
        lanes[..chunk.len()].copy_from_slice(chunk);
        sum += f64::from(reduce16(&lanes));
    }
    let inv = (1.0 / sum) as f32;
    scores.iter_mut().for_each(|v| *v *= inv);
}

/// How a query-key dot product becomes the score the softmax reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Scores {
    /// The softmax's scale (1/sqrt(head_dim), or 1 where the queries were scaled before).
    pub(super) scale: f32,
    /// Gemma 2: `c` in `c * tanh(dot / c)` before the scale, as llama.cpp's ggml_scale,
    /// ggml_tanh, ggml_scale; 0 for none.
    pub(super) softcap: f32,
}

impl Scores {
    #[inline]
    fn of(self, dot: f32) -> f32 {
        let c = self.softcap;
        let capped = if c > 0.0 {
            libm::tanhf(dot * (1.0 / c)) * c
        } else {
            dot
        };
        capped * self.scale
    }
}

/// The attention of one token against positions `span` (`[first, n_kv)`: all before it
/// unless a sliding window starts later) of one KV head, for the `out.len() / head_dim`
/// query heads sharing it, dot products made scores by `scores`. `q` holds those heads'
/// queries.
#[allow(clippy::too_many_arguments)]
pub(super) fn attend(
    kernels: &Kernels,
    kv: &KvCache,
    layer: usize,
    kv_head: usize,
    span: core::ops::Range<usize>,
    head_dim: usize,
    order: DotOrder,
    scores: Scores,
    q: &[f32],
    out: &mut [f32],
) {
    let hd = head_dim;
    let (first, n_kv) = (span.start, span.end);
    let keys = kv.keys(layer, kv_head, n_kv);
    let values = kv.values(layer, kv_head, n_kv);
    let lanes = order.lanes();
    let mut q16 = vec![0.0f32; hd];
    let mut probs = vec![0.0f32; n_kv];
    let mut acc = vec![0.0f32; lanes * hd];
    let mut tree = vec![0.0f32; (LANES + 8 + 4) * hd];
    for (qh, oh) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)) {
        q16.iter_mut().zip(qh).for_each(|(d, &s)| *d = round_f16(s));
        let live = &mut probs[first..];
        if kernels.f16_dots(lanes, &keys[first * hd..], &q16, live) {
            live.iter_mut().for_each(|s| *s = scores.of(*s));
        } else {
            for (p, s) in probs.iter_mut().enumerate().skip(first) {
                *s = scores.of(dot(order, &keys[p * hd..(p + 1) * hd], &q16));
            }
        }
        softmax(kernels, &mut probs, first);
        // out[d] = Σ_p f16(prob_p) · v[p][d], position p summed into lane p % lanes.
        kernels.round_f16_in_place(&mut probs[first..]);
        acc.fill(0.0);
        if !kernels.accumulate_strided(&probs, values, first, lanes, &mut acc) {
            for (p, &w) in probs.iter().enumerate().skip(first) {
                let lane = &mut acc[(p % lanes) * hd..(p % lanes + 1) * hd];
                for (a, &v) in lane.iter_mut().zip(&values[p * hd..(p + 1) * hd]) {
                    *a += w * v;
                }
            }
        }
        reduce_rows(order, &acc, hd, &mut tree, oh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce16_follows_the_halving_tree() {
        // 1e8 + 1 - 1e8 style cancellations expose the order.
        let mut a = [0.0f32; 16];
        a[0] = 1e8;
        a[8] = -1e8;
        a[1] = 1.0;
        assert_eq!(reduce16(&a), 1.0);
        a[4] = 0.5;
        assert_eq!(reduce16(&a), 1.5);
    }

    #[test]
    fn dots_agree_with_f64_on_exact_inputs() {
        let x: alloc::vec::Vec<f32> = (0..200)
            .map(|i| round_f16((i as f32 * 0.37).sin()))
            .collect();
        let y: alloc::vec::Vec<f32> = (0..200)
            .map(|i| round_f16((i as f32 * 0.11).cos()))
            .collect();
        let exact: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        for order in [DotOrder::Vec, DotOrder::Tiny] {
            assert!((f64::from(dot(order, &x, &y)) - exact).abs() < 1e-4);
        }
    }

    /// f16-exact rows with cancellations, so a changed summation order shows in the bits.
    fn f16_rows(n: usize, seed: f32) -> alloc::vec::Vec<f32> {
        (0..n)
            .map(|i| round_f16((i as f32 * seed).sin() * if i % 7 == 0 { 3e3 } else { 1.0 }))
            .collect()
    }

    #[test]
    fn simd_attention_products_are_bit_identical_to_the_scalar_order() {
        // Every kernel set this CPU runs (AVX-512 and AVX2 both on an AVX-512 machine).
        for (k, hd) in Kernels::available()
            .into_iter()
            .flat_map(|k| [16usize, 64, 128].map(|hd| (k, hd)))
        {
            let n = 37;
            let (keys, q) = (f16_rows(n * hd, 0.37), f16_rows(hd, 0.11));
            for order in [DotOrder::Tiny, DotOrder::Vec] {
                let mut got = alloc::vec![0.0f32; n];
                if k.f16_dots(order.lanes(), &keys, &q, &mut got) {
                    for (p, g) in got.iter().enumerate() {
                        let want = dot(order, &keys[p * hd..(p + 1) * hd], &q);
                        assert_eq!(g.to_bits(), want.to_bits(), "{order:?} hd={hd} p={p}");
                    }
                }
            }
            let mut w: alloc::vec::Vec<f32> = (0..n).map(|i| (i as f32 * 0.9).cos()).collect();
            let mut want_w = w.clone();
            k.round_f16_in_place(&mut w);
            Kernels::scalar().round_f16_in_place(&mut want_w);
            assert_eq!(w, want_w);
            for (lanes, first) in [(16, 0), (16, 5), (64, 3)] {
                let mut got = alloc::vec![0.5f32; lanes * hd];
                let mut want = got.clone();
                if k.accumulate_strided(&w, &keys, first, lanes, &mut got) {
                    for p in first..n {
                        for d in 0..hd {
                            want[(p % lanes) * hd + d] += w[p] * keys[p * hd + d];
                        }
                    }
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "hd={hd} lanes={lanes} first={first}");
                }
            }
        }
    }

    #[test]
    fn softmax_is_a_distribution() {
        let mut s = [0.5f32, -1.0, 2.0, 0.0, 3.5];
        softmax(&Kernels::scalar(), &mut s, 0);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(s[4] > s[2] && s[2] > s[0]);
    }
}
