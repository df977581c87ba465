//! Which rows of a fused group sit in which slot of a device cache
//! (`embedding.gpu_cache_bytes`; TorchRec's UVM caching, FBGEMM's LRU cache over managed
//! memory): the directory half, on the host, with no libtorch.
//!
//! A step places its distinct rows. Rows already cached are hits. Each miss takes a
//! free slot, or else the least recently used slot not used by this step, whose row must
//! first be written back to the host tables. The caller then copies the evicted slots
//! out, and the missed rows in, one batched copy each way. Rows of the step are never
//! evicted by the step itself: a cache smaller than a step's distinct rows is an error
//! that names the sizes.

use crate::TableError;

const NIL: u32 = u32::MAX;

/// Hits, misses and write-backs so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub write_backs: u64,
}

/// Where a step's rows go, and what moves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// The slot of each row placed, in the order given.
    pub slots: Vec<i64>,
    /// (slot, row) of every evicted row: copy the slot back to the row first.
    pub write_back: Vec<(u32, u64)>,
    /// (slot, row) of every missed row: load the row into the slot.
    pub load: Vec<(u32, u64)>,
}

/// An LRU directory of `capacity` slots over a group's rows.
#[derive(Debug, Clone)]
pub struct RowCache {
    /// Each row's slot (`NIL`: not cached): a dense directory, 4 bytes a row, so a
    /// lookup is one read where a hash map probes.
    slot_of: Vec<u32>,
    row_of: Vec<u64>,
    /// The step that last used each slot.
    used: Vec<u64>,
    /// Recency list: `head` most recent, `tail` least.
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    /// Slots never filled, taken last first.
    free: Vec<u32>,
    stats: CacheStats,
}

impl RowCache {
    /// A cache of `capacity` slots over rows `0..rows`.
    pub fn new(capacity: u32, rows: u64) -> Self {
        let n = capacity as usize;
        Self {
            slot_of: vec![NIL; rows as usize],
            row_of: vec![u64::MAX; n],
            used: vec![0; n],
            prev: vec![NIL; n],
            next: vec![NIL; n],
            head: NIL,
            tail: NIL,
            free: (0..capacity).rev().collect(),
            stats: CacheStats::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.row_of.len()
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// The slot holding `row`, if cached (no change to recency).
    pub fn slot(&self, row: u64) -> Option<u32> {
        self.slot_of
            .get(row as usize)
            .copied()
            .filter(|&s| s != NIL)
    }

    /// Every (slot, row) cached, by slot.
    pub fn resident(&self) -> Vec<(u32, u64)> {
        (0..self.row_of.len() as u32)
            .filter(|&s| self.row_of[s as usize] != u64::MAX)
            .map(|s| (s, self.row_of[s as usize]))
            .collect()
    }

    /// Forgets every row (their values were replaced on the host).
    pub fn clear(&mut self) {
        let stats = self.stats;
        *self = Self::new(self.capacity() as u32, self.slot_of.len() as u64);
        self.stats = stats;
    }

    /// Places the distinct `rows` of step `step` (a number larger than any before).
    pub fn place(&mut self, rows: &[u64], step: u64) -> Result<Placement, TableError> {
        let mut out = Placement {
            slots: vec![0; rows.len()],
            ..Placement::default()
        };
        let mut missed = Vec::new();
        if let Some(&row) = rows.iter().find(|&&r| r >= self.slot_of.len() as u64) {
            return Err(TableError::BadBatch(format!(
                "row {row} outside the {} rows the device cache serves",
                self.slot_of.len()
            )));
        }
        for (i, &row) in rows.iter().enumerate() {
            match self.slot(row) {
                Some(s) => {
                    self.touch(s, step);
                    out.slots[i] = s as i64;
                }
                None => missed.push(i),
            }
        }
        self.stats.hits += (rows.len() - missed.len()) as u64;
        self.stats.misses += missed.len() as u64;
        for i in missed {
            let s = match self.free.pop() {
                Some(s) => s,
                None => self.evict(step, rows.len(), &mut out.write_back)?,
            };
            self.row_of[s as usize] = rows[i];
            self.slot_of[rows[i] as usize] = s;
            self.touch(s, step);
            out.slots[i] = s as i64;
            out.load.push((s, rows[i]));
        }
        self.stats.write_backs += out.write_back.len() as u64;
        Ok(out)
    }

    /// Frees the least recently used slot, recording its row for write-back.
    fn evict(
        &mut self,
        step: u64,
        wanted: usize,
        write_back: &mut Vec<(u32, u64)>,
    ) -> Result<u32, TableError> {
        let s = self.tail;
        if s == NIL || self.used[s as usize] == step {
            return Err(TableError::BadBatch(format!(
                "the device cache holds {} rows of this width, and a step needs {wanted} distinct rows: raise embedding.gpu_cache_bytes",
                self.capacity()
            )));
        }
        let row = self.row_of[s as usize];
        self.slot_of[row as usize] = NIL;
        self.unlink(s);
        write_back.push((s, row));
        Ok(s)
    }

    fn touch(&mut self, s: u32, step: u64) {
        self.used[s as usize] = step;
        if self.head == s {
            return;
        }
        if self.prev[s as usize] != NIL || self.tail == s {
            self.unlink(s);
        }
        self.next[s as usize] = self.head;
        self.prev[s as usize] = NIL;
        if self.head != NIL {
            self.prev[self.head as usize] = s;
        }
        self.head = s;
        if self.tail == NIL {
            self.tail = s;
        }
    }

    fn unlink(&mut self, s: u32) {
        let (p, n) = (self.prev[s as usize], self.next[s as usize]);
        if p != NIL {
            self.next[p as usize] = n;
        } else {
            self.head = n;
        }
        if n != NIL {
            self.prev[n as usize] = p;
        } else {
            self.tail = p;
        }
        self.prev[s as usize] = NIL;
        self.next[s as usize] = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn misses_fill_then_evict_the_least_recent_row_not_in_the_step() {
        let mut c = RowCache::new(3, 100);
        let p = c.place(&[10, 20], 1).unwrap();
        assert_eq!(p.slots, vec![0, 1]);
        assert_eq!(p.load, vec![(0, 10), (1, 20)]);
        assert!(p.write_back.is_empty());
        let p = c.place(&[20, 30], 2).unwrap();
        assert_eq!(p.load, vec![(2, 30)]);
        // 10 is the least recent: it goes, written back, and 40 takes its slot
        let p = c.place(&[40, 30], 3).unwrap();
        assert_eq!(p.write_back, vec![(0, 10)]);
        assert_eq!(p.load, vec![(0, 40)]);
        assert_eq!(p.slots, vec![0, 2]);
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 2,
                misses: 4,
                write_backs: 1
            }
        );
        assert_eq!(c.resident(), vec![(0, 40), (1, 20), (2, 30)]);
        // a step wider than the cache is refused, naming the setting
        let e = c.place(&[1, 2, 3, 4], 4).unwrap_err().to_string();
        assert!(
            e.contains("gpu_cache_bytes") && e.contains("4 distinct"),
            "{e}"
        );
    }

    proptest! {
        /// Against a plain LRU list: the same hits, the same evictions (written back in
        /// eviction order), every row of a step in its own slot, and the slot map true.
        #[test]
        fn placement_is_an_exact_lru(
            steps in proptest::collection::vec(proptest::collection::btree_set(0u64..40, 1..6), 1..40),
            capacity in 5u32..12,
        ) {
            let mut c = RowCache::new(capacity, 40);
            let mut lru: Vec<u64> = Vec::new(); // most recent last
            let mut slot_of = std::collections::HashMap::new();
            for (k, rows) in steps.iter().enumerate() {
                let rows: Vec<u64> = rows.iter().copied().collect();
                let p = c.place(&rows, k as u64 + 1).unwrap();
                let mut evicted = vec![];
                for &r in &rows {
                    if let Some(i) = lru.iter().position(|&x| x == r) {
                        lru.remove(i);
                    }
                }
                let missing = rows.iter().filter(|r| !slot_of.contains_key(*r)).count();
                let resident = slot_of.len();
                for _ in 0..(resident + missing).saturating_sub(capacity as usize) {
                    evicted.push(lru.remove(0));
                }
                // within a step, hits count as used before misses (the order they are placed)
                lru.extend(rows.iter().filter(|r| slot_of.contains_key(*r)));
                lru.extend(rows.iter().filter(|r| !slot_of.contains_key(*r)));
                let written: Vec<u64> = p.write_back.iter().map(|w| w.1).collect();
                prop_assert_eq!(&written, &evicted);
                for e in &evicted {
                    slot_of.remove(e);
                }
                let loaded: Vec<u64> = p.load.iter().map(|l| l.1).collect();
                let want: Vec<u64> = rows.iter().copied().filter(|r| !slot_of.contains_key(r)).collect();
                prop_assert_eq!(loaded, want);
                let mut seen = std::collections::HashSet::new();
                for (&r, &s) in rows.iter().zip(&p.slots) {
                    prop_assert!(seen.insert(s));
                    slot_of.insert(r, s);
                }
                for (&r, &s) in &slot_of {
                    prop_assert_eq!(c.slot(r), Some(s as u32));
                }
            }
        }
    }
}
