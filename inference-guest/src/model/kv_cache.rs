//! The attention KV cache.
//!
//! llama.cpp keeps K and V in f16 by default; to reproduce its numerics every value is
//! rounded through f16 on the way in. They are stored widened to f32 (exactly representable)
//! so attention needs no per-element conversion: the products and therefore the results are
//! the same as an f16 cache's, at twice the bytes.
//!
//! Layout: `[layer][kv_head][pos][head_dim]` for both K and V, so that one head's keys or
//! values over positions are contiguous rows.

use crate::quant::f16::{f16_to_f32, f32_to_f16};
use alloc::vec;
use alloc::vec::Vec;

/// Rounds `x` to the nearest f16 value, as llama.cpp's f16 cache and f16 matmuls do.
#[inline]
pub fn round_f16(x: f32) -> f32 {
    f16_to_f32(f32_to_f16(x))
}

/// Keys and values of every layer for up to `n_ctx` positions.
pub struct KvCache {
    n_ctx: usize,
    n_head_kv: usize,
    head_dim: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvCache {
    /// A cache for `n_layer` layers and `n_ctx` positions of `n_head_kv` heads of `head_dim`.
    pub fn new(n_layer: usize, n_ctx: usize, n_head_kv: usize, head_dim: usize) -> Self {
        let len = n_layer * n_ctx * n_head_kv * head_dim;
        Self {
            n_ctx,
            n_head_kv,
            head_dim,
            k: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    /// Positions the cache can hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Bytes held (for memory accounting).
    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 4
    }

    fn offset(&self, layer: usize, kv_head: usize, pos: usize) -> usize {
        ((layer * self.n_head_kv + kv_head) * self.n_ctx + pos) * self.head_dim
    }

    /// Stores the key and value vectors (all KV heads) of position `pos` in `layer`.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        for h in 0..self.n_head_kv {
            let at = self.offset(layer, h, pos);
            for (d, &x) in self.k[at..at + hd].iter_mut().zip(&k[h * hd..(h + 1) * hd]) {
                *d = round_f16(x);
            }
            for (d, &x) in self.v[at..at + hd].iter_mut().zip(&v[h * hd..(h + 1) * hd]) {
                *d = round_f16(x);
            }
        }
    }

    /// Keys of `kv_head` in `layer` for positions `[0, n)`: `n` rows of `head_dim`.
    pub fn keys(&self, layer: usize, kv_head: usize, n: usize) -> &[f32] {
        let at = self.offset(layer, kv_head, 0);
        &self.k[at..at + n * self.head_dim]
    }

    /// Values of `kv_head` in `layer` for positions `[0, n)`: `n` rows of `head_dim`.
    pub fn values(&self, layer: usize, kv_head: usize, n: usize) -> &[f32] {
        let at = self.offset(layer, kv_head, 0);
        &self.v[at..at + n * self.head_dim]
    }
}
