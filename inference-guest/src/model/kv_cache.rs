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

    /// Layers held.
    pub fn n_layer(&self) -> usize {
        self.k.len() / (self.n_ctx * self.n_head_kv * self.head_dim).max(1)
    }

    /// Bytes [`export_layer`](Self::export_layer) writes for `n` positions.
    pub fn layer_bytes(&self, n: usize) -> usize {
        2 * 2 * self.n_head_kv * n * self.head_dim
    }

    /// Appends `layer`'s keys then values for positions `[0, n)` (`n` ≤ `n_ctx`) to `out`,
    /// head by head, as little-endian f16: every value went through f16 on the way in, so
    /// the bytes hold it exactly at half the size.
    pub fn export_layer(&self, layer: usize, n: usize, out: &mut Vec<u8>) {
        let n = n.min(self.n_ctx);
        out.reserve(self.layer_bytes(n));
        for half in [&self.k, &self.v] {
            for h in 0..self.n_head_kv {
                let at = self.offset(layer, h, 0);
                for &x in &half[at..at + n * self.head_dim] {
                    out.extend_from_slice(&f32_to_f16(x).to_le_bytes());
                }
            }
        }
    }

    /// Takes back what [`export_layer`](Self::export_layer) wrote for `layer` and `n`
    /// positions; `false` (and nothing changed) if `bytes` is not that long or `n` or
    /// `layer` does not fit.
    pub fn import_layer(&mut self, layer: usize, n: usize, bytes: &[u8]) -> bool {
        if layer >= self.n_layer() || n > self.n_ctx || bytes.len() != self.layer_bytes(n) {
            return false;
        }
        let row = n * self.head_dim;
        let mut values = bytes
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])));
        for half in 0..2 {
            for h in 0..self.n_head_kv {
                let at = self.offset(layer, h, 0);
                let dst = if half == 0 { &mut self.k } else { &mut self.v };
                for (d, x) in dst[at..at + row].iter_mut().zip(&mut values) {
                    *d = x;
                }
            }
        }
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_exported_and_imported_is_bit_identical() {
        let mut a = KvCache::new(2, 8, 2, 4);
        for pos in 0..5 {
            let k: Vec<f32> = (0..8).map(|i| (pos * 8 + i) as f32 * 0.37 - 3.0).collect();
            let v: Vec<f32> = k.iter().map(|x| -x * 1.5).collect();
            a.store(1, pos, &k, &v);
        }
        let mut bytes = Vec::new();
        a.export_layer(1, 5, &mut bytes);
        assert_eq!(bytes.len(), a.layer_bytes(5));
        let mut b = KvCache::new(2, 8, 2, 4);
        assert!(
            !b.import_layer(1, 5, &bytes[1..]),
            "a short layer is refused"
        );
        assert!(
            !b.import_layer(2, 5, &bytes),
            "a layer past the last is refused"
        );
        assert!(b.import_layer(1, 5, &bytes));
        for h in 0..2 {
            assert_eq!(a.keys(1, h, 5), b.keys(1, h, 5));
            assert_eq!(a.values(1, h, 5), b.values(1, h, 5));
        }
    }
}
