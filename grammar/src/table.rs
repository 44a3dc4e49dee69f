//! A small open-addressing hash map from `u64` to `u32`: `alloc` has no `HashMap`, and the
//! trie walk looks one up per node, where a `BTreeMap` costs several times more.

use alloc::vec;
use alloc::vec::Vec;

#[derive(Clone, Debug, Default)]
pub(crate) struct Table {
    /// (key + 1, value); a key of 0 is an empty slot.
    slots: Vec<(u64, u32)>,
    len: usize,
}

impl Table {
    /// Empties the map; a large table is freed rather than zeroed each walk.
    pub(crate) fn clear(&mut self) {
        if self.slots.len() > 1 << 16 {
            self.slots = Vec::new();
        } else {
            self.slots.iter_mut().for_each(|s| *s = (0, 0));
        }
        self.len = 0;
    }

    fn slot(&self, key: u64) -> usize {
        let mask = self.slots.len() - 1;
        (key.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & mask
    }

    pub(crate) fn get(&self, key: u64) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.slot(key);
        loop {
            match self.slots[i] {
                (0, _) => return None,
                (k, v) if k == key + 1 => return Some(v),
                _ => i = (i + 1) & mask,
            }
        }
    }

    pub(crate) fn insert(&mut self, key: u64, value: u32) {
        if (self.len + 1) * 2 > self.slots.len() {
            let old = core::mem::take(&mut self.slots);
            self.slots = vec![(0, 0); (old.len() * 2).max(1024)];
            self.len = 0;
            for (k, v) in old.into_iter().filter(|s| s.0 != 0) {
                self.insert(k - 1, v);
            }
        }
        let mask = self.slots.len() - 1;
        let mut i = self.slot(key);
        while self.slots[i].0 != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = (key + 1, value);
        self.len += 1;
    }
}
