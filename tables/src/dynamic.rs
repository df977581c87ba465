//! Ids without a vocabulary: a map from a feature's raw 64-bit keys to the rows of a
//! table of bounded capacity, filled while training. This is the core of Monolith's
//! collisionless hash table (occurrence threshold, expiry), DeepRec's EmbeddingVariable
//! (counter or counting-Bloom-filter admission, `steps_to_live`) and TorchRec's
//! managed-collision modules (LRU and LFU eviction):
//!
//! - **Admission.** A key gets a row only once it is admitted: always, after it was
//!   seen `min_count` times (counted in a count-min sketch of fixed bytes, Cormode and
//!   Muthukrishnan 2005, with conservative update), or with a probability per sighting.
//!   Until then its lookups read the table's default row and its updates are dropped.
//! - **Eviction.** When every row is taken, a new key takes the row of the least
//!   recently used key (`lru`), the least used one (`lfu`, ties to the least recent), or
//!   the one idle longest (`ttl_steps`, which also frees rows idle for that many steps
//!   whether or not the table is full). An evicted key starts again at admission.
//! - **Determinism.** Everything is a function of the keys in the order they are looked
//!   up, the step, and the seed: ties break by row number, the sketch and the
//!   probability draws hash with fixed seeds. So a rank's map is the same on every run,
//!   and a checkpoint of it restores the same future.

use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::hashing::{hash_id, unit_f32};
use crate::key_index::KeyIndex;
use crate::prefetch::{prefetch, DISTANCE};
use crate::TableError;

/// When a key gets a row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Admission {
    /// At first sight.
    #[default]
    Always,
    /// After `min_count` sightings, counted in a count-min sketch of `sketch_bytes`.
    MinCount { min_count: u32, sketch_bytes: u64 },
    /// With probability `p` at each sighting (DeepRec's probability filter).
    Probability { p: f32 },
}

/// Which key gives up its row when the table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Eviction {
    /// The least recently used.
    #[default]
    Lru,
    /// The least used since it came in (ties: the least recent).
    Lfu,
    /// The one idle longest; rows idle `steps` steps are freed at each step's start.
    TtlSteps { steps: u64 },
}

/// Sketch rows (independent hash functions) of the count-min sketch.
const SKETCH_DEPTH: usize = 4;

/// Counts of keys in fixed memory, never under the true count (Cormode and
/// Muthukrishnan's count-min sketch; conservative update raises only the smallest
/// counters, which keeps overestimates small).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountMinSketch {
    width: usize,
    counts: Vec<u32>,
    seed: u64,
}

impl CountMinSketch {
    /// A sketch of about `bytes` bytes (at least one counter a row).
    pub fn new(bytes: u64, seed: u64) -> Self {
        let width = ((bytes / 4) as usize / SKETCH_DEPTH).max(1);
        Self {
            width,
            counts: vec![0; width * SKETCH_DEPTH],
            seed,
        }
    }

    fn cells(&self, key: u64) -> [usize; SKETCH_DEPTH] {
        std::array::from_fn(|d| {
            d * self.width + (hash_id(self.seed ^ d as u64, key) % self.width as u64) as usize
        })
    }

    /// Counts one more sighting of `key`; returns its estimated count.
    pub fn add(&mut self, key: u64) -> u32 {
        self.add_n(key, 1)
    }

    /// Counts `n` more sightings of `key`; returns its estimated count.
    pub fn add_n(&mut self, key: u64, n: u32) -> u32 {
        let cells = self.cells(key);
        let estimate = cells
            .iter()
            .map(|&c| self.counts[c])
            .min()
            .unwrap_or(0)
            .saturating_add(n);
        for c in cells {
            self.counts[c] = self.counts[c].max(estimate);
        }
        estimate
    }

    /// The estimated count of `key` (at least the true one).
    pub fn estimate(&self, key: u64) -> u32 {
        self.cells(key)
            .iter()
            .map(|&c| self.counts[c])
            .min()
            .unwrap_or(0)
    }

    pub fn bytes(&self) -> usize {
        self.counts.len() * 4
    }
}

/// What a key-to-row map did, for the run summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRowStats {
    /// Keys given a row.
    pub admitted: u64,
    /// Sightings of keys not (yet) admitted: they read the default row.
    pub refused: u64,
    /// Keys that lost their row to a new one or to their time to live.
    pub evicted: u64,
}

/// The rows a batch's keys reached, and the rows that changed hands.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeyLookup {
    /// The row of each key, in order; None: not admitted (read the default row).
    pub rows: Vec<Option<u32>>,
    /// Rows given to a new key in this lookup: their values and optimizer state must be
    /// set to a fresh row's before use.
    pub fresh: Vec<u32>,
}

/// A lookup's sightings of keys that hold no row, grouped by key. A step brings a few
/// dozen to a few hundred such keys a table: sorting them costs less than a hash map,
/// whose memory would be cold at every step.
#[derive(Debug, Clone, Default)]
struct MissedKeys {
    /// (key, position in the lookup) of every sighting; sorted by [`Self::group`].
    sightings: Vec<(u64, usize)>,
    /// Per distinct key, in order of first sighting: its sightings' range in `sightings`.
    groups: Vec<std::ops::Range<usize>>,
}

impl MissedKeys {
    /// Empty, keeping its memory for the next lookup.
    fn clear(&mut self) {
        self.sightings.clear();
        self.groups.clear();
    }

    fn add(&mut self, key: u64, at: usize) {
        self.sightings.push((key, at));
    }

    /// Groups the sightings by key, the groups in order of their first sighting.
    fn group(&mut self) {
        self.sightings.sort_unstable();
        let s = &self.sightings;
        let mut start = 0;
        for i in 1..=s.len() {
            if i == s.len() || s[i].0 != s[start].0 {
                self.groups.push(start..i);
                start = i;
            }
        }
        // a group's first sighting is its first entry (sorted by key, then position)
        self.groups.sort_unstable_by_key(|g| s[g.start].1);
    }
}

/// One row's key (None: free) and use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RowMeta {
    key: Option<u64>,
    /// The step it was last used at.
    last_step: u64,
    /// When it was last used, counting every touch (recency within a step too).
    last_tick: u64,
    uses: u32,
}

/// A table's map from keys to its `capacity` rows, with admission and eviction.
#[derive(Debug, Clone)]
pub struct KeyRows {
    capacity: u32,
    admission: Admission,
    eviction: Eviction,
    seed: u64,
    rows: KeyIndex,
    /// Each row handed out so far: its key and use. Rows are handed out lowest first,
    /// so this grows with the rows in use, not with the capacity (a table of a large
    /// capacity costs what it holds). One record a row, so a lookup touches one cache
    /// line for it rather than one per field.
    meta: Vec<RowMeta>,
    tick: u64,
    /// `lfu`: rows in eviction order, (uses, last tick, row).
    order: BTreeSet<(u32, u64, u32)>,
    /// `lru` and `ttl_steps`: (tick, row) of every touch, oldest first. A touch appends
    /// and leaves the row's older entries behind, skipped when met (an entry is current
    /// when its tick is the row's last): O(1) a touch, where a sorted set costs two
    /// O(log n) updates. Compacted when stale entries outnumber the rows.
    recency: VecDeque<(u64, u32)>,
    /// Rows freed again (below `keys.len()`), the lowest first out.
    free: BTreeSet<u32>,
    sketch: Option<CountMinSketch>,
    stats: KeyRowStats,
    /// The last lookup's missed keys, kept for their memory (not part of the map's state).
    scratch: MissedKeys,
    /// The last lookup's mark in the key index (not part of the map's state).
    mark: u32,
}

impl KeyRows {
    /// An empty map of `capacity` rows (at least one).
    pub fn new(capacity: u32, admission: Admission, eviction: Eviction, seed: u64) -> Self {
        let capacity = capacity.max(1);
        let sketch = match admission {
            Admission::MinCount { sketch_bytes, .. } => {
                Some(CountMinSketch::new(sketch_bytes, seed ^ 0x5EED_C0DE))
            }
            _ => None,
        };
        Self {
            capacity,
            admission,
            eviction,
            seed,
            rows: KeyIndex::default(),
            meta: Vec::new(),
            tick: 0,
            order: BTreeSet::new(),
            recency: VecDeque::new(),
            free: BTreeSet::new(),
            sketch,
            stats: KeyRowStats::default(),
            scratch: MissedKeys::default(),
            mark: 0,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Keys holding a row.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn stats(&self) -> KeyRowStats {
        self.stats
    }

    /// Bytes of the admission sketch.
    pub fn sketch_bytes(&self) -> usize {
        self.sketch.as_ref().map_or(0, CountMinSketch::bytes)
    }

    /// The row of `key`, if it holds one (no side effects: for evaluation).
    pub fn row_of(&self, key: u64) -> Option<u32> {
        self.rows.get(key)
    }

    /// The key holding `row`, if any.
    pub fn key_at(&self, row: u32) -> Option<u64> {
        self.meta.get(row as usize).and_then(|m| m.key)
    }

    /// The live keys and their rows, by row.
    pub fn live(&self) -> Vec<(u64, u32)> {
        (0..self.meta.len() as u32)
            .filter_map(|r| self.meta[r as usize].key.map(|k| (k, r)))
            .collect()
    }

    fn order_key(&self, row: u32) -> (u32, u64, u32) {
        let r = row as usize;
        let uses = match self.eviction {
            Eviction::Lfu => self.meta[r].uses,
            _ => 0,
        };
        (uses, self.meta[r].last_tick, row)
    }

    /// Frees the rows idle `steps` steps or more (`ttl_steps` only), at the start of
    /// `step`.
    pub fn expire(&mut self, step: u64) {
        let Eviction::TtlSteps { steps } = self.eviction else {
            return;
        };
        // in recency order, so the idle rows come first
        while let Some(row) = self.least_recent() {
            if step.saturating_sub(self.meta[row as usize].last_step) < steps {
                break;
            }
            self.recency.pop_front();
            self.release(row);
        }
    }

    /// `lru`/`ttl_steps`: the least recently used held row (stale entries before it are
    /// dropped), left at the front.
    fn least_recent(&mut self) -> Option<u32> {
        while let Some(&(tick, row)) = self.recency.front() {
            if self.is_current(tick, row) {
                return Some(row);
            }
            self.recency.pop_front();
        }
        None
    }

    fn is_current(&self, tick: u64, row: u32) -> bool {
        let r = row as usize;
        self.meta[r].key.is_some() && self.meta[r].last_tick == tick
    }

    /// Rows in eviction order (the first goes first), for comparing maps.
    fn eviction_order(&self) -> Vec<u32> {
        match self.eviction {
            Eviction::Lfu => self.order.iter().map(|e| e.2).collect(),
            _ => self
                .recency
                .iter()
                .filter(|&&(t, r)| self.is_current(t, r))
                .map(|e| e.1)
                .collect(),
        }
    }

    fn release(&mut self, row: u32) {
        if let Some(key) = self.meta[row as usize].key.take() {
            self.rows.remove(key);
            self.stats.evicted += 1;
        }
        self.free.insert(row);
    }

    /// Whether `key`, not holding a row, is admitted at these `n` sightings (for
    /// `probability`, when any of the `n` draws would admit it).
    fn admits(&mut self, key: u64, n: u32, step: u64) -> bool {
        match self.admission {
            Admission::Always => true,
            Admission::MinCount { min_count, .. } => self
                .sketch
                .as_mut()
                .is_some_and(|s| s.add_n(key, n) >= min_count),
            Admission::Probability { p } => {
                let any = 1.0 - (1.0 - f64::from(p)).powi(n.min(1 << 20) as i32);
                f64::from(unit_f32(hash_id(
                    self.seed ^ step.wrapping_mul(0x9E37_79B9),
                    key,
                ))) < any
            }
        }
    }

    /// The rows of `keys` (every value of a step's batch, duplicates included) looked up
    /// at `step` while training. Keys holding a row are touched first, all of them; then
    /// the others, in order of first occurrence with their sightings counted, are
    /// admitted or refused, an admitted one taking a free row or evicting one not touched
    /// at this step. So a batch never evicts a row it reaches, and a key's place in the
    /// batch does not decide whether its row survives. Steps must not go backwards.
    pub fn lookup(&mut self, keys: &[u64], step: u64) -> KeyLookup {
        // two stages DISTANCE keys apart: key i is probed (its slot was asked for
        // DISTANCE keys before) and, at its first sighting here, its row's record asked
        // for; key i - DISTANCE, whose record has arrived by then, is touched. So the CPU
        // overlaps the cache misses of independent keys and reads each record once while
        // it is in the cache; the slot's mark tells a key's first sighting in this lookup
        // from its repeats without reading the record. The touches run in key order, as
        // they would after probing every key first.
        let mark = self.next_mark();
        let mut rows: Vec<Option<u32>> = Vec::with_capacity(keys.len());
        let mut first = [false; DISTANCE];
        let mut touched = Vec::new();
        let mut misses = std::mem::take(&mut self.scratch);
        misses.clear();
        for i in 0..keys.len() + DISTANCE {
            // key i - DISTANCE first: key i takes its place in `first`
            if let Some(j) = i.checked_sub(DISTANCE) {
                match rows[j] {
                    Some(row) => self.touch(row, step, first[j % DISTANCE], &mut touched),
                    None => misses.add(keys[j], j),
                }
            }
            let Some(&key) = keys.get(i) else {
                continue;
            };
            if let Some(&ahead) = keys.get(i + DISTANCE) {
                self.rows.prefetch(ahead);
            }
            let found = self.rows.get_marked(key, mark);
            if let Some((row, true)) = found {
                prefetch(&self.meta[row as usize]);
            }
            rows.push(found.map(|f| f.0));
            first[i % DISTANCE] = found.is_some_and(|f| f.1);
        }
        for row in touched {
            self.enqueue(row);
        }
        misses.group();
        let mut fresh = Vec::new();
        for range in &misses.groups {
            let key = misses.sightings[range.start].0;
            let n = u32::try_from(range.len()).unwrap_or(u32::MAX);
            let row = self.place(key, n, step);
            if let Some(row) = row {
                fresh.push(row);
            }
            for &(_, at) in &misses.sightings[range.clone()] {
                rows[at] = row;
            }
        }
        self.scratch = misses;
        KeyLookup { rows, fresh }
    }

    /// A row for `key`, held by none, seen `n` times in this lookup: a free or evicted
    /// row if it is admitted and one is left, else None (counted as refused sightings).
    fn place(&mut self, key: u64, n: u32, step: u64) -> Option<u32> {
        // every row may serve this step already: the default row this time
        let row = self
            .admits(key, n, step)
            .then(|| self.take_row(step))
            .flatten();
        match row {
            Some(row) => {
                self.stats.admitted += 1;
                Some(self.assign(row, key, step, n))
            }
            None => {
                self.stats.refused += u64::from(n);
                None
            }
        }
    }

    /// A free row, or the row of the key eviction chooses among those not used at
    /// `step` (a batch never loses a row it already reached); None if there is none.
    fn take_row(&mut self, step: u64) -> Option<u32> {
        if let Some(row) = self.next_free() {
            return Some(row);
        }
        let row = match self.eviction {
            Eviction::Lfu => {
                let meta = &self.meta;
                let victim = *self
                    .order
                    .iter()
                    .find(|&&(_, _, row)| meta[row as usize].last_step < step)?;
                self.order.remove(&victim);
                victim.2
            }
            // rows used at `step` are the most recent, so the least recent either may go
            // or every row serves this step
            _ => {
                let row = self.least_recent()?;
                if self.meta[row as usize].last_step >= step {
                    return None;
                }
                self.recency.pop_front();
                row
            }
        };
        self.release(row);
        self.free.remove(&row);
        Some(row)
    }

    /// A mark for the next lookup's slots: never 0, and never one a slot still holds
    /// (after the counter wraps every mark is cleared).
    fn next_mark(&mut self) -> u32 {
        self.mark = self.mark.wrapping_add(1);
        if self.mark == 0 {
            self.rows.clear_marks();
            self.mark = 1;
        }
        self.mark
    }

    /// One more use of held `row` in a lookup, the `first` of it there or not. Its first
    /// use in the lookup stamps its recency: `lru` and `ttl_steps` queue it at once (its
    /// tick is final), `lfu` takes it out of its order and puts it back (`touched`) once
    /// the lookup's held keys are all counted.
    fn touch(&mut self, row: u32, step: u64, first: bool, touched: &mut Vec<u32>) {
        let r = row as usize;
        if !first {
            self.meta[r].uses = self.meta[r].uses.saturating_add(1);
            return;
        }
        let uses = self.meta[r].uses.saturating_add(1);
        if self.eviction == Eviction::Lfu {
            self.order.remove(&self.order_key(row));
            self.stamp(row, step, uses);
            touched.push(row);
        } else {
            self.stamp(row, step, uses);
            self.enqueue(row);
        }
    }

    /// Row `row` (out of the eviction order) as used now, at `step`, `uses` times; the
    /// caller puts it back into the order.
    fn stamp(&mut self, row: u32, step: u64, uses: u32) {
        self.tick += 1;
        let m = &mut self.meta[row as usize];
        (m.last_step, m.last_tick, m.uses) = (step, self.tick, uses);
    }

    /// Puts held `row` into the eviction order at its current uses and tick.
    fn enqueue(&mut self, row: u32) {
        if self.eviction == Eviction::Lfu {
            self.order.insert(self.order_key(row));
            return;
        }
        self.recency
            .push_back((self.meta[row as usize].last_tick, row));
        if self.recency.len() > 2 * self.rows.len() + 1024 {
            self.compact_recency();
        }
    }

    /// Drops the stale entries of the recency queue. A row's newest entry is its current
    /// one unless the row is free (every change of a row's tick enqueues it), so a scan
    /// from the back with a bitmap of rows seen decides without reading any row's record:
    /// the records are where the cache misses are.
    fn compact_recency(&mut self) {
        let mut seen = vec![false; self.meta.len()];
        let mut keep: Vec<(u64, u32)> = Vec::with_capacity(self.rows.len());
        for &(tick, row) in self.recency.iter().rev() {
            let r = row as usize;
            if !seen[r] {
                seen[r] = true;
                if !self.free.contains(&row) {
                    keep.push((tick, row));
                }
            }
        }
        keep.reverse();
        debug_assert!(keep.iter().all(|&(t, r)| self.is_current(t, r)));
        self.recency = keep.into();
    }
}

/// A map's admission and eviction, as [`KeyRows::to_bytes`] writes them.
fn read_policy(f: &mut Fields) -> Result<(Admission, Eviction), TableError> {
    let admission = match (
        f.u8("the admission")?,
        f.u32("min_count")?,
        f.u64("sketch bytes")?,
    ) {
        (0, ..) => Admission::Always,
        (1, min_count, sketch_bytes) => Admission::MinCount {
            min_count,
            sketch_bytes,
        },
        (2, ..) => Admission::Probability {
            p: f32::from_le_bytes(f.take("p")?),
        },
        (t, ..) => return Err(f.bad(format!("unknown admission {t}"))),
    };
    if !matches!(admission, Admission::Probability { .. }) {
        f.take::<4>("p")?;
    }
    let eviction = match (f.u8("the eviction")?, f.u64("ttl steps")?) {
        (0, _) => Eviction::Lru,
        (1, _) => Eviction::Lfu,
        (2, steps) => Eviction::TtlSteps { steps },
        (t, _) => return Err(f.bad(format!("unknown eviction {t}"))),
    };
    Ok((admission, eviction))
}

/// The rank that holds `key`'s row among `world` ranks (row-wise by key hash).
pub fn key_owner(key: u64, world: usize) -> usize {
    (hash_id(0x0D1E_5EED, key) % world.max(1) as u64) as usize
}

/// A live key's row moving in a reshard: from (old rank, row) to (new rank, row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMove {
    pub key: u64,
    pub from: (usize, u32),
    pub to: (usize, u32),
}

impl KeyRows {
    /// The maps of `world` ranks, of `capacity` rows each, from the maps of another
    /// number of ranks (`old[r]`: rank r's), and where each kept key's row moves. Every
    /// live key goes to its owner ([`key_owner`]), the most recently used first (by step,
    /// then key) until the owner is full; the rest are evicted. Recency and use counts
    /// carry over; count-min sketches of one shape add up, counter by counter (a sum of
    /// sketches is the sketch of the summed stream).
    pub fn reshard(old: &[KeyRows], world: usize, capacity: u32) -> (Vec<KeyRows>, Vec<RowMove>) {
        let Some(first) = old.first() else {
            return (Vec::new(), Vec::new());
        };
        let (admission, eviction, seed) = (first.admission, first.eviction, first.seed);
        let mut maps: Vec<KeyRows> = (0..world)
            .map(|_| KeyRows::new(capacity, admission, eviction, seed))
            .collect();
        let mut live: Vec<(u64, u64, usize, u32)> = old
            .iter()
            .enumerate()
            .flat_map(|(rank, m)| {
                m.live()
                    .into_iter()
                    .map(move |(key, row)| (m.meta[row as usize].last_step, key, rank, row))
            })
            .collect();
        // least recent first, so the newest end up the most recent in their new maps
        live.sort_unstable();
        let keep_from = |owner: usize| {
            live.iter()
                .filter(|l| key_owner(l.1, world) == owner)
                .count()
        };
        let surplus: Vec<usize> = (0..world)
            .map(|o| keep_from(o).saturating_sub(capacity as usize))
            .collect();
        let mut skipped = vec![0usize; world];
        let mut moves = Vec::new();
        for (step, key, rank, row) in live {
            let owner = key_owner(key, world);
            if skipped[owner] < surplus[owner] {
                skipped[owner] += 1;
                maps[owner].stats.evicted += 1;
                continue;
            }
            let new = &mut maps[owner];
            let free = new.next_free().unwrap_or(0);
            let to = new.assign(free, key, step, old[rank].meta[row as usize].uses);
            moves.push(RowMove {
                key,
                from: (rank, row),
                to: (owner, to),
            });
        }
        for m in &mut maps {
            m.sum_sketches(old);
        }
        (maps, moves)
    }

    /// The lowest row no key holds (a freed one, else the next never used), if any.
    fn next_free(&mut self) -> Option<u32> {
        if let Some(row) = self.free.pop_first() {
            return Some(row);
        }
        (self.rows_in_use() < self.capacity).then(|| self.grow())
    }

    /// Hands out the next never-used row.
    fn grow(&mut self) -> u32 {
        if self.meta.len() == self.meta.capacity() {
            // doubled by hand into memory advised for huge pages (a lookup touches
            // records at random)
            let room = (2 * self.meta.len()).max(1024).min(self.capacity as usize);
            let mut bigger = crate::storage::huge_page_vec(room);
            bigger.extend_from_slice(&self.meta);
            self.meta = bigger;
        }
        self.meta.push(RowMeta::default());
        self.rows_in_use() - 1
    }

    /// Rows handed out so far (held or freed again): the prefix of the table in use.
    pub fn rows_in_use(&self) -> u32 {
        self.meta.len() as u32
    }

    /// Gives `row` (taken out of the free rows) to `key`, as last used at `step`, with
    /// `uses` uses.
    fn assign(&mut self, row: u32, key: u64, step: u64, uses: u32) -> u32 {
        self.meta[row as usize].key = Some(key);
        self.rows.insert(key, row);
        self.stamp(row, step, uses);
        self.enqueue(row);
        row
    }

    /// Adds the counters of `old`'s sketches of this map's shape into this map's.
    fn sum_sketches(&mut self, old: &[KeyRows]) {
        let Some(mine) = self.sketch.as_mut() else {
            return;
        };
        for s in old.iter().filter_map(|m| m.sketch.as_ref()) {
            if s.width == mine.width && s.seed == mine.seed {
                for (a, b) in mine.counts.iter_mut().zip(&s.counts) {
                    *a = a.saturating_add(*b);
                }
            }
        }
    }
}

impl PartialEq for KeyRows {
    /// Equal maps admit and evict alike from here on (stale recency entries aside).
    fn eq(&self, other: &Self) -> bool {
        self.capacity == other.capacity
            && self.admission == other.admission
            && self.eviction == other.eviction
            && self.seed == other.seed
            && self.rows == other.rows
            && self.meta == other.meta
            && self.tick == other.tick
            && self.free == other.free
            && self.sketch == other.sketch
            && self.stats == other.stats
            && self.eviction_order() == other.eviction_order()
    }
}

/// The start of a [`KeyRows`] in bytes, and its layout's version.
const MAGIC: &[u8; 4] = b"SRKR";
const VERSION: u32 = 2;

/// Reads little-endian fields off a byte slice, naming what it read in its errors.
struct Fields<'a> {
    bytes: &'a [u8],
    what: &'a str,
}

impl Fields<'_> {
    fn bad(&self, reason: String) -> TableError {
        TableError::Storage {
            path: self.what.to_string(),
            reason,
        }
    }

    fn take<const N: usize>(&mut self, field: &str) -> Result<[u8; N], TableError> {
        let Some((head, rest)) = self.bytes.split_first_chunk::<N>() else {
            return Err(self.bad(format!("ends inside {field}")));
        };
        self.bytes = rest;
        Ok(*head)
    }

    fn u8(&mut self, field: &str) -> Result<u8, TableError> {
        Ok(self.take::<1>(field)?[0])
    }

    fn u32(&mut self, field: &str) -> Result<u32, TableError> {
        self.take(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &str) -> Result<u64, TableError> {
        self.take(field).map(u64::from_le_bytes)
    }
}

impl KeyRows {
    /// The map as bytes for a checkpoint (little-endian, fields in the order written here):
    /// its settings, counters, every row's key and recency, and the sketch, so a map read
    /// back admits and evicts exactly as this one would.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.meta.len() * 29 + self.sketch_bytes());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.capacity.to_le_bytes());
        b.extend_from_slice(&self.seed.to_le_bytes());
        b.extend_from_slice(&self.tick.to_le_bytes());
        let (tag, min_count, sketch_bytes, p) = match self.admission {
            Admission::Always => (0u8, 0, 0, 0.0),
            Admission::MinCount {
                min_count,
                sketch_bytes,
            } => (1, min_count, sketch_bytes, 0.0),
            Admission::Probability { p } => (2, 0, 0, p),
        };
        b.push(tag);
        b.extend_from_slice(&min_count.to_le_bytes());
        b.extend_from_slice(&sketch_bytes.to_le_bytes());
        b.extend_from_slice(&p.to_le_bytes());
        let (tag, steps) = match self.eviction {
            Eviction::Lru => (0u8, 0u64),
            Eviction::Lfu => (1, 0),
            Eviction::TtlSteps { steps } => (2, steps),
        };
        b.push(tag);
        b.extend_from_slice(&steps.to_le_bytes());
        for n in [self.stats.admitted, self.stats.refused, self.stats.evicted] {
            b.extend_from_slice(&n.to_le_bytes());
        }
        b.extend_from_slice(&self.rows_in_use().to_le_bytes());
        for r in 0..self.meta.len() {
            b.push(u8::from(self.meta[r].key.is_some()));
            b.extend_from_slice(&self.meta[r].key.unwrap_or(0).to_le_bytes());
            b.extend_from_slice(&self.meta[r].last_step.to_le_bytes());
            b.extend_from_slice(&self.meta[r].last_tick.to_le_bytes());
            b.extend_from_slice(&self.meta[r].uses.to_le_bytes());
        }
        if let Some(sketch) = &self.sketch {
            b.extend(sketch.counts.iter().flat_map(|c| c.to_le_bytes()));
        }
        b
    }

    /// A map from [`Self::to_bytes`]; `what` (a file name) is named in its errors.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self, TableError> {
        let mut f = Fields { bytes, what };
        if &f.take::<4>("the magic number")? != MAGIC {
            return Err(f.bad("not a key-to-row map".into()));
        }
        let version = f.u32("the version")?;
        if version != VERSION {
            return Err(f.bad(format!(
                "layout version {version}, this build reads {VERSION}"
            )));
        }
        let capacity = f.u32("the capacity")?;
        let (seed, tick) = (f.u64("the seed")?, f.u64("the clock")?);
        let (admission, eviction) = read_policy(&mut f)?;
        if capacity == 0 {
            return Err(f.bad("capacity 0".into()));
        }
        if let Admission::MinCount { sketch_bytes, .. } = admission {
            // the sketch's counters follow the rows: no more than the bytes there are
            if sketch_bytes > bytes.len() as u64 {
                let n = bytes.len();
                return Err(f.bad(format!("a sketch of {sketch_bytes} bytes in {n} bytes")));
            }
        }
        let mut m = Self::new(capacity, admission, eviction, seed);
        m.tick = tick;
        m.stats = KeyRowStats {
            admitted: f.u64("counters")?,
            refused: f.u64("counters")?,
            evicted: f.u64("counters")?,
        };
        let in_use = f.u32("the rows in use")?;
        if in_use > capacity || in_use as usize > f.bytes.len() / 29 {
            return Err(f.bad(format!(
                "{in_use} rows in use in a capacity of {capacity}, or more than its {} bytes hold",
                bytes.len()
            )));
        }
        for row in 0..in_use {
            m.grow();
            m.read_row(&mut f, row)?;
        }
        // the eviction order of the rows read, by tick
        let mut held: Vec<(u64, u32)> = m
            .live()
            .iter()
            .map(|&(_, r)| (m.meta[r as usize].last_tick, r))
            .collect();
        held.sort_unstable();
        for (_, row) in held {
            m.enqueue(row);
        }
        if let Some(sketch) = m.sketch.as_mut() {
            for c in sketch.counts.iter_mut() {
                *c = f.u32("the sketch")?;
            }
        }
        if !f.bytes.is_empty() {
            return Err(f.bad(format!("{} bytes after the map", f.bytes.len())));
        }
        Ok(m)
    }

    /// Row `row`'s key and recency from `f`.
    fn read_row(&mut self, f: &mut Fields, row: u32) -> Result<(), TableError> {
        let held = f.u8("a row")?;
        let key = f.u64("a row's key")?;
        let r = row as usize;
        (self.meta[r].last_step, self.meta[r].last_tick) = (f.u64("a row")?, f.u64("a row")?);
        self.meta[r].uses = f.u32("a row")?;
        match held {
            0 => {
                self.free.insert(row);
            }
            1 => {
                if self.meta[r].last_tick > self.tick || self.rows.insert(key, row).is_some() {
                    return Err(f.bad(format!(
                        "row {row}: key {key} held twice, or used after the clock"
                    )));
                }
                self.meta[r].key = Some(key);
            }
            t => return Err(f.bad(format!("row {row}: flag {t}"))),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn rows(l: &KeyLookup) -> Vec<Option<u32>> {
        l.rows.clone()
    }

    #[test]
    fn lru_evicts_the_least_recently_used_and_reuses_its_row() {
        let mut m = KeyRows::new(3, Admission::Always, Eviction::Lru, 1);
        let a = m.lookup(&[10, 11, 12], 1);
        assert_eq!(rows(&a), vec![Some(0), Some(1), Some(2)]);
        assert_eq!(a.fresh, vec![0, 1, 2]);
        m.lookup(&[10, 12], 2); // 11 is now the least recent
        let b = m.lookup(&[13], 3);
        assert_eq!(rows(&b), vec![Some(1)]);
        assert_eq!(b.fresh, vec![1]);
        assert_eq!(m.row_of(11), None);
        assert_eq!(m.row_of(13), Some(1));
        assert_eq!(m.stats().evicted, 1);
        // duplicates reach one row; the evicted key starts again
        let c = m.lookup(&[11, 11], 4);
        assert_eq!(c.rows[0], c.rows[1]);
        assert_eq!(c.fresh.len(), 1);
    }

    #[test]
    fn a_batch_never_loses_a_row_it_reached() {
        let mut m = KeyRows::new(2, Admission::Always, Eviction::Lru, 1);
        let l = m.lookup(&[1, 2, 3, 1], 1);
        assert_eq!(l.rows, vec![Some(0), Some(1), None, Some(0)]);
        assert_eq!(m.stats().refused, 1);
        // held keys are touched before new ones are placed: at step 2 key 4 cannot evict
        // key 2, which comes after it in the batch
        let l = m.lookup(&[4, 2], 2);
        assert_eq!(l.rows, vec![Some(0), Some(1)]);
        assert_eq!(
            m.row_of(1),
            None,
            "key 1, not used at step 2, gave up its row"
        );
        // at the next step key 3 takes the least recent row (key 4's: key 2 came later)
        m.lookup(&[2], 3);
        assert_eq!(m.lookup(&[3], 4).rows, vec![Some(0)]);
        assert_eq!(m.row_of(4), None);
    }

    #[test]
    fn lfu_keeps_the_most_used_and_breaks_ties_by_recency() {
        let mut m = KeyRows::new(2, Admission::Always, Eviction::Lfu, 1);
        m.lookup(&[1, 2], 1);
        m.lookup(&[1], 2);
        m.lookup(&[1], 3);
        m.lookup(&[2], 4); // 1 used 3 times, 2 twice but more recently
        m.lookup(&[3], 5);
        assert_eq!(m.row_of(2), None, "the less used goes");
        assert!(m.row_of(1).is_some() && m.row_of(3).is_some());
    }

    #[test]
    fn ttl_frees_idle_rows_at_the_step_start() {
        let mut m = KeyRows::new(4, Admission::Always, Eviction::TtlSteps { steps: 3 }, 1);
        m.lookup(&[1, 2], 1);
        m.lookup(&[2], 3);
        m.expire(4); // 1 idle for 3 steps
        assert_eq!(m.row_of(1), None);
        assert!(m.row_of(2).is_some());
        assert_eq!(m.len(), 1);
        // its row is the first free one again
        assert_eq!(m.lookup(&[5], 4).rows, vec![Some(0)]);
    }

    #[test]
    fn min_count_admission_counts_sightings_in_the_sketch() {
        let adm = Admission::MinCount {
            min_count: 3,
            sketch_bytes: 4096,
        };
        let mut m = KeyRows::new(10, adm, Eviction::Lru, 1);
        assert_eq!(m.sketch_bytes(), 4096);
        assert_eq!(m.lookup(&[7, 7], 1).rows, vec![None, None]);
        assert_eq!(m.lookup(&[7], 2).rows, vec![Some(0)]);
        assert_eq!(m.stats().refused, 2);
        assert_eq!(m.stats().admitted, 1);
    }

    #[test]
    fn the_sketch_never_undercounts() {
        let mut s = CountMinSketch::new(256, 3);
        let mut truth: HashMap<u64, u32> = HashMap::new();
        let mut x = 1u64;
        for _ in 0..5000 {
            x = crate::hashing::mix64(x);
            let key = x % 300;
            s.add(key);
            *truth.entry(key).or_default() += 1;
        }
        for (k, &c) in &truth {
            assert!(s.estimate(*k) >= c, "{k}: {} < {c}", s.estimate(*k));
        }
    }

    #[test]
    fn probability_admission_admits_about_p_and_is_repeatable() {
        let run = || {
            let mut m = KeyRows::new(
                100_000,
                Admission::Probability { p: 0.25 },
                Eviction::Lru,
                9,
            );
            let keys: Vec<u64> = (0..20_000).collect();
            m.lookup(&keys, 1)
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        let admitted = a.rows.iter().flatten().count() as f64 / 20_000.0;
        assert!((admitted - 0.25).abs() < 0.02, "{admitted}");
    }

    /// A map read back from its bytes admits and evicts as the original would.
    #[test]
    fn a_map_read_back_from_bytes_goes_on_exactly_as_the_original() {
        for (admission, eviction) in [
            (Admission::Always, Eviction::Lru),
            (
                Admission::MinCount {
                    min_count: 2,
                    sketch_bytes: 512,
                },
                Eviction::Lfu,
            ),
            (
                Admission::Probability { p: 0.5 },
                Eviction::TtlSteps { steps: 3 },
            ),
        ] {
            let mut a = KeyRows::new(16, admission, eviction, 5);
            let mut x = 3u64;
            let mut batch = |step: u64| -> Vec<u64> {
                (0..12)
                    .map(|_| {
                        x = crate::hashing::mix64(x + step);
                        x % 40
                    })
                    .collect()
            };
            for step in 1..30 {
                a.expire(step);
                a.lookup(&batch(step), step);
            }
            let mut b = KeyRows::from_bytes(&a.to_bytes(), "map").unwrap();
            assert_eq!(b, a, "{admission:?} {eviction:?}");
            for step in 30..60 {
                let keys = batch(step);
                a.expire(step);
                b.expire(step);
                assert_eq!(a.lookup(&keys, step), b.lookup(&keys, step));
            }
        }
    }

    #[test]
    fn maps_reshard_to_the_key_owners_keeping_the_most_recent() {
        let adm = Admission::MinCount {
            min_count: 1,
            sketch_bytes: 256,
        };
        let mut two: Vec<KeyRows> = (0..2)
            .map(|_| KeyRows::new(50, adm, Eviction::Lru, 2))
            .collect();
        for step in 1..=40u64 {
            for key in [step, step + 100, step * 7] {
                let owner = key_owner(key, 2);
                two[owner].lookup(&[key], step);
            }
        }
        let live = |ms: &[KeyRows]| ms.iter().map(KeyRows::len).sum::<usize>();
        let before = live(&two);
        // 2 -> 1 with room for all: every key, its row moved
        let (one, moves) = KeyRows::reshard(&two, 1, 200);
        assert_eq!(one[0].len(), before);
        assert_eq!(moves.len(), before);
        for mv in &moves {
            assert_eq!(two[mv.from.0].row_of(mv.key), Some(mv.from.1));
            assert_eq!(one[mv.to.0].row_of(mv.key), Some(mv.to.1));
        }
        // the sketch of the sum holds every count of the parts
        for key in 1..=40u64 {
            let part = two[key_owner(key, 2)]
                .sketch
                .as_ref()
                .unwrap()
                .estimate(key);
            assert!(one[0].sketch.as_ref().unwrap().estimate(key) >= part);
        }
        // 1 -> 3 with less room: each key at its owner, the most recent kept
        let (three, _) = KeyRows::reshard(&one, 3, 10);
        for (rank, m) in three.iter().enumerate() {
            assert!(m.len() <= 10);
            for (key, _) in m.live() {
                assert_eq!(key_owner(key, 3), rank);
            }
        }
        let kept_steps: Vec<u64> = three
            .iter()
            .flat_map(|m| {
                m.live()
                    .into_iter()
                    .map(|(_, r)| m.meta[r as usize].last_step)
            })
            .collect();
        assert!(kept_steps.iter().all(|&s| s >= 25), "{kept_steps:?}");
    }

    proptest::proptest! {
        /// Cut or altered bytes are an error naming the file, never a panic.
        #[test]
        fn damaged_bytes_are_refused_without_a_panic(
            cut in 0usize..400,
            flip in 0usize..400,
            bit in 0u8..8,
        ) {
            let mut m = KeyRows::new(8, Admission::MinCount { min_count: 2, sketch_bytes: 64 }, Eviction::Lru, 1);
            m.lookup(&[1, 2, 2, 3, 3, 4], 1);
            let bytes = m.to_bytes();
            let cut = cut % bytes.len();
            if let Err(e) = KeyRows::from_bytes(&bytes[..cut], "keys.bin") {
                proptest::prop_assert!(e.to_string().contains("keys.bin"));
            } else {
                proptest::prop_assert!(false, "a map cut at {} read", cut);
            }
            let mut altered = bytes.clone();
            altered[flip % bytes.len()] ^= 1 << bit;
            // an altered byte may still read (a key, a count): it must not panic
            let _ = KeyRows::from_bytes(&altered, "keys.bin");
        }

        /// Against a plain model of LFU: (uses since admission, last use) per live key,
        /// the smallest pair evicted.
        #[test]
        fn lfu_matches_a_reference_model(
            cap in 1u32..6,
            keys in proptest::collection::vec(0u64..12, 1..200),
        ) {
            let mut m = KeyRows::new(cap, Admission::Always, Eviction::Lfu, 1);
            let mut model: HashMap<u64, (u32, usize)> = HashMap::new();
            for (t, &k) in keys.iter().enumerate() {
                m.lookup(&[k], t as u64 + 1);
                if let Some(e) = model.get_mut(&k) {
                    *e = (e.0 + 1, t);
                } else {
                    if model.len() == cap as usize {
                        let (&victim, _) = model.iter().min_by_key(|(_, &v)| v).unwrap();
                        model.remove(&victim);
                    }
                    model.insert(k, (1, t));
                }
                let mut live: Vec<u64> = m.live().into_iter().map(|(k, _)| k).collect();
                live.sort_unstable();
                let mut want: Vec<u64> = model.keys().copied().collect();
                want.sort_unstable();
                proptest::prop_assert_eq!(live, want);
            }
        }

        /// With a sketch far larger than the keys, a key is admitted exactly at its
        /// `min_count`-th sighting (a smaller sketch may only admit earlier).
        #[test]
        fn min_count_admits_at_the_nth_sighting(
            n in 1u32..5,
            keys in proptest::collection::vec(0u64..20, 1..150),
        ) {
            let adm = Admission::MinCount { min_count: n, sketch_bytes: 1 << 16 };
            let mut m = KeyRows::new(64, adm, Eviction::Lru, 3);
            let mut seen: HashMap<u64, u32> = HashMap::new();
            for (t, &k) in keys.iter().enumerate() {
                let c = seen.entry(k).or_default();
                *c += 1;
                let got = m.lookup(&[k], t as u64 + 1).rows[0];
                proptest::prop_assert_eq!(got.is_some(), *c >= n, "key {} sighting {}", k, c);
            }
        }

        /// Against a plain model of LRU: a vector of keys ordered by last use.
        #[test]
        fn lru_matches_a_reference_model(
            cap in 1u32..8,
            keys in proptest::collection::vec(0u64..20, 1..200),
        ) {
            let mut m = KeyRows::new(cap, Admission::Always, Eviction::Lru, 1);
            let mut model: Vec<u64> = Vec::new(); // least recent first
            for (step, &k) in keys.iter().enumerate() {
                m.lookup(&[k], step as u64 + 1);
                if let Some(i) = model.iter().position(|&x| x == k) {
                    model.remove(i);
                } else if model.len() == cap as usize {
                    model.remove(0);
                }
                model.push(k);
                let mut live: Vec<u64> = m.live().into_iter().map(|(k, _)| k).collect();
                live.sort_unstable();
                let mut want = model.clone();
                want.sort_unstable();
                proptest::prop_assert_eq!(live, want);
            }
        }
    }
}
