//! The key -> row index of a dynamic table: open addressing with linear probing over
//! 16-byte slots (key, row, mark), at most half full.
//!
//! Why not the standard map: a lookup there reads its control bytes and then its bucket,
//! two cache misses on a table far larger than the caches, and it cannot be asked to
//! bring a key's slot in ahead of time. Here a key's slot is usually the first one it
//! probes, four to a cache line, and [`KeyIndex::prefetch`] starts that miss while
//! earlier keys are still being answered, as HugeCTR's and HierarchicalKV's GPU hash
//! tables overlap their probes. Deletion shifts the following run back (Knuth's
//! algorithm R), so there are no tombstones and a probe stops at the first empty slot.

use crate::hashing::mix64;

/// A free slot's row.
const EMPTY: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    key: u64,
    row: u32,
    /// The last [`KeyIndex::get_marked`] call's mark (0: none): lets a caller tell a
    /// key's first sighting in a batch from its repeats without reading anything else.
    mark: u32,
}

const FREE: Slot = Slot {
    key: 0,
    row: EMPTY,
    mark: 0,
};

/// `n` free slots, in huge pages when large (a probe lands anywhere in them).
fn free_slots(n: usize) -> Vec<Slot> {
    let mut slots = crate::storage::huge_page_vec(n);
    slots.resize(n, FREE);
    slots
}

/// A map from 64-bit keys to rows below `u32::MAX`.
#[derive(Debug, Clone)]
pub struct KeyIndex {
    slots: Vec<Slot>,
    len: usize,
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl KeyIndex {
    /// An empty index with room for `n` keys before it grows.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            slots: free_slots((2 * n).next_power_of_two().max(16)),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, key: u64) -> usize {
        mix64(key) as usize & self.mask()
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn find(&self, key: u64) -> usize {
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if s.row == EMPTY || s.key == key {
                return i;
            }
            i = (i + 1) & self.mask();
        }
    }

    /// Starts bringing `key`'s first slot into the cache (a hint; it changes nothing).
    #[inline]
    pub fn prefetch(&self, key: u64) {
        crate::prefetch::prefetch(&self.slots[self.home(key)]);
    }

    pub fn get(&self, key: u64) -> Option<u32> {
        let s = self.slots[self.find(key)];
        (s.row != EMPTY).then_some(s.row)
    }

    /// The row of `key`, and whether this is the first call with `mark` (not 0) to
    /// reach it since another mark; the slot keeps `mark`.
    pub fn get_marked(&mut self, key: u64, mark: u32) -> Option<(u32, bool)> {
        let i = self.find(key);
        let s = &mut self.slots[i];
        if s.row == EMPTY {
            return None;
        }
        let first = s.mark != mark;
        s.mark = mark;
        Some((s.row, first))
    }

    /// Forgets every mark (before marks are reused).
    pub fn clear_marks(&mut self) {
        for s in &mut self.slots {
            s.mark = 0;
        }
    }

    /// Maps `key` to `row` (below `u32::MAX`), unmarked; returns the row it had.
    pub fn insert(&mut self, key: u64, row: u32) -> Option<u32> {
        debug_assert!(row != EMPTY);
        let i = self.find(key);
        let old = self.slots[i].row;
        self.slots[i] = Slot { key, row, mark: 0 };
        if old != EMPTY {
            return Some(old);
        }
        self.len += 1;
        if 2 * self.len > self.slots.len() {
            self.grow();
        }
        None
    }

    /// Removes `key`; returns its row.
    pub fn remove(&mut self, key: u64) -> Option<u32> {
        let mut hole = self.find(key);
        let row = self.slots[hole].row;
        if row == EMPTY {
            return None;
        }
        self.len -= 1;
        // shift back every later key of the run whose home is not between the hole and
        // its slot, so each key stays reachable from its home without a gap
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask();
            let s = self.slots[j];
            if s.row == EMPTY {
                break;
            }
            let home = self.home(s.key);
            let between = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !between {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = FREE;
        Some(row)
    }

    fn grow(&mut self) {
        let bigger = free_slots(2 * self.slots.len());
        let old = std::mem::replace(&mut self.slots, bigger);
        for s in old.into_iter().filter(|s| s.row != EMPTY) {
            let i = self.find(s.key);
            self.slots[i] = s;
        }
    }

    /// Every (key, row), in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.row != EMPTY)
            .map(|s| (s.key, s.row))
    }
}

impl PartialEq for KeyIndex {
    /// The same keys to the same rows, whatever the slot layout.
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, r)| other.get(k) == Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    proptest::proptest! {
        /// Against the standard map: inserts, replacements and removals (keys from a
        /// small range, so runs collide and removals shift them) answer alike.
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec((0u8..3, 0u64..64, 0u32..1000), 1..400)) {
            let mut ix = KeyIndex::default();
            let mut model: HashMap<u64, u32> = HashMap::new();
            for (op, key, row) in ops {
                match op {
                    0 => proptest::prop_assert_eq!(ix.insert(key, row), model.insert(key, row)),
                    1 => proptest::prop_assert_eq!(ix.remove(key), model.remove(&key)),
                    _ => proptest::prop_assert_eq!(ix.get(key), model.get(&key).copied()),
                }
                proptest::prop_assert_eq!(ix.len(), model.len());
            }
            for k in 0..64 {
                proptest::prop_assert_eq!(ix.get(k), model.get(&k).copied());
            }
        }
    }

    #[test]
    fn grows_and_keeps_every_key() {
        let mut ix = KeyIndex::with_capacity(4);
        for k in 0..10_000u64 {
            ix.insert(k * 7919, k as u32);
        }
        assert_eq!(ix.len(), 10_000);
        for k in (0..10_000u64).step_by(2) {
            assert_eq!(ix.remove(k * 7919), Some(k as u32));
        }
        for k in 0..10_000u64 {
            let want = (k % 2 == 1).then_some(k as u32);
            assert_eq!(ix.get(k * 7919), want, "{k}");
        }
    }

    #[test]
    fn a_mark_tells_first_sightings_from_repeats() {
        let mut ix = KeyIndex::default();
        ix.insert(5, 0);
        ix.insert(6, 1);
        assert_eq!(ix.get_marked(5, 1), Some((0, true)));
        assert_eq!(ix.get_marked(5, 1), Some((0, false)));
        assert_eq!(ix.get_marked(6, 1), Some((1, true)));
        assert_eq!(ix.get_marked(5, 2), Some((0, true)));
        assert_eq!(ix.get_marked(7, 2), None);
        ix.clear_marks();
        assert_eq!(ix.get_marked(5, 2), Some((0, true)));
    }
}
