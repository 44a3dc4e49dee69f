//! A byte trie over some of a vocabulary's tokens, built once per model.

use alloc::vec;
use alloc::vec::Vec;

/// One trie node: its children (edges `edge_start..edge_end`) and the tokens whose bytes end
/// exactly here (`ids[tok_start..tok_end]`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrieNode {
    pub(crate) edge_start: u32,
    pub(crate) edge_end: u32,
    pub(crate) tok_start: u32,
    pub(crate) tok_end: u32,
}

const EMPTY: TrieNode = TrieNode {
    edge_start: 0,
    edge_end: 0,
    tok_start: 0,
    tok_end: 0,
};

#[derive(Clone, Debug, Default)]
pub(crate) struct Trie {
    pub(crate) nodes: Vec<TrieNode>,
    /// (byte, child node), sorted by byte within each node.
    pub(crate) edges: Vec<(u8, u32)>,
    pub(crate) ids: Vec<u32>,
}

impl Trie {
    /// The trie of `order` (non-empty token ids sorted by their bytes, `bytes(id)`), built
    /// iteratively: each work item is a node, its depth, and its range of `order`, all
    /// sharing the node's prefix.
    pub(crate) fn build<'a>(order: &[u32], bytes: impl Fn(u32) -> &'a [u8]) -> Self {
        let mut t = Self::default();
        let mut work = vec![(0u32, 0usize, 0usize, order.len())];
        t.nodes.push(EMPTY);
        while let Some((node, depth, mut lo, hi)) = work.pop() {
            let tok_start = t.ids.len() as u32;
            while lo < hi && bytes(order[lo]).len() == depth {
                t.ids.push(order[lo]);
                lo += 1;
            }
            let edge_start = t.edges.len() as u32;
            while lo < hi {
                let b = bytes(order[lo])[depth];
                let mut end = lo;
                while end < hi && bytes(order[end])[depth] == b {
                    end += 1;
                }
                let child = t.nodes.len() as u32;
                t.nodes.push(EMPTY);
                t.edges.push((b, child));
                work.push((child, depth + 1, lo, end));
                lo = end;
            }
            t.nodes[node as usize] = TrieNode {
                edge_start,
                edge_end: t.edges.len() as u32,
                tok_start,
                tok_end: t.ids.len() as u32,
            };
        }
        t
    }
}
