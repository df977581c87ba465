//! The file tier: a shard's rows and optimizer state in a file on disk, with the hot
//! rows in a set-associative cache in RAM in front of it (LRU by default, LFU as an
//! option). This is the layout of FBGEMM's SSD tables (a 32-way set-associative LRU
//! cache before RocksDB) and TorchRec's UVM caching, without the GPU level.
//!
//! - A row's record is its stored weights (f32, or two 16-bit values a word: see
//!   [`RowDtype`]) and then its f32 optimizer state, at `row * record` words in the
//!   file. The file is sparse: a row never written reads as its initial values, which
//!   are a pure function of its global coordinates ([`RowInit`]), so creating a table of
//!   any size costs nothing and the disk holds only rows that were evicted dirty.
//! - The cache holds whole records in anonymous memory; a cached row never touches the
//!   file. A miss takes the way of the row's set that the policy gives up, writing the
//!   evicted record back if it changed. Rows used since the current step began are not
//!   evicted; when a set has none to give, the row is read and updated in the file
//!   directly (FBGEMM's fallback to UVM for rows the cache cannot take).
//! - Resident memory is the cache plus 17 bytes a slot (21 with LFU) and one bit a row,
//!   whatever the table's size; reads and writes are explicit (`pread`/`pwrite`, chosen
//!   over `mmap` by measurement: `benches/file_tier_choices.rs`), so the page cache is
//!   the kernel's, not ours.
//!
//! The updates are the RAM path's own ([`SparseOptimizer::update_stored_row`]), so a
//! table trains to the same bits whatever the cache size or policy.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::hashing::mix64;
use crate::init::RowInit;
use crate::optimizer::{check_rows, SparseOptimizer};
use crate::row_dtype::RowDtype;
use crate::storage::{InMemoryRows, RowStorage};
use crate::TableError;

/// Ways of a cache set (FBGEMM uses 32 on GPUs; 16 keeps a set's tags in two cache lines).
pub const WAYS: usize = 16;
const EMPTY: u64 = u64::MAX;
/// Rows read or written per system call when a whole table is streamed.
const CHUNK_ROWS: usize = 4096;

/// What a file-tier shard did, for the run summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierStats {
    /// Row lookups (a forward's reads of its distinct rows) served by the cache.
    pub hits: u64,
    /// Row lookups that read the file (or the row's initial values).
    pub misses: u64,
    /// Lookup misses the cache could not take (every way of the set in use by the step).
    pub uncached: u64,
    pub evictions: u64,
    /// Rows read into the cache ahead of the step that looks them up.
    pub prefetched: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// A file-tier shard's sizes and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierReport {
    pub cache_rows: usize,
    /// RAM held: the cache's records and bookkeeping, and the written-rows bitmap.
    pub ram_bytes: usize,
    /// The file's size (sparse: the disk holds only rows written back).
    pub file_bytes: u64,
    /// What the disk holds of it (its allocated blocks).
    pub disk_bytes: u64,
    #[serde(flatten)]
    pub stats: TierStats,
}

/// Which row of a full set the cache gives up for a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CachePolicy {
    /// The least recently used (FBGEMM's SSD tables, TorchRec's default).
    #[default]
    Lru,
    /// The least frequently used since it came in, ties to the least recent; counts
    /// halve every `AGE_EVERY` lookups a slot, so old popularity fades (TinyLFU's reset,
    /// Einziger et al. 2017). TorchRec's UVM caching offers LFU too.
    Lfu,
}

/// Accesses per cache slot between two halvings of the LFU counts.
const AGE_EVERY: u64 = 8;

/// Where a file-tier shard's rows go: the folder of its file, the RAM its cache takes and
/// how the cache chooses what to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct FileTier {
    pub dir: PathBuf,
    pub cache_bytes: u64,
    pub policy: CachePolicy,
}

impl FileTier {
    /// Rows a cache of `cache_bytes` holds for records of `record` words (each slot also
    /// keeps 17 bytes of bookkeeping, 21 with LFU counts).
    pub fn cache_rows(&self, record: usize) -> usize {
        (self.cache_bytes / (record as u64 * 4 + slot_overhead(self.policy))) as usize
    }
}

/// Bytes of bookkeeping a cache slot takes besides its record.
fn slot_overhead(policy: CachePolicy) -> u64 {
    match policy {
        CachePolicy::Lru => 17,
        CachePolicy::Lfu => 21,
    }
}

/// The shape of a shard's records.
#[derive(Debug, Clone, Copy)]
pub struct Records {
    pub rows: usize,
    /// Weights a row (stored as `dtype`, in `dtype.words(width)` words).
    pub width: usize,
    /// Optimizer state floats a row.
    pub state_width: usize,
    pub dtype: RowDtype,
}

/// How a row that was never written reads.
#[derive(Debug, Clone)]
struct Initial {
    init: RowInit,
    first_row: u64,
    cols: Range<usize>,
    dim: usize,
    state: f32,
}

/// The file: records of the weights' words, then `state_width` floats.
#[derive(Debug)]
struct RecordFile {
    path: PathBuf,
    file: File,
    /// Weights a row.
    width: usize,
    dtype: RowDtype,
    /// Words of a row's stored weights.
    words: usize,
    /// Words of a record.
    record: usize,
    initial: Initial,
    /// The table's stochastic-rounding stream.
    salt: u64,
}

/// The cache: `sets x WAYS` slots of one record each, and what each holds.
#[derive(Debug)]
struct Cache {
    sets: usize,
    records: InMemoryRows,
    tags: Vec<u64>,
    last_used: Vec<u64>,
    /// LFU only: uses of each slot's row since it came in (halved now and then).
    uses: Vec<u32>,
    policy: CachePolicy,
    dirty: Vec<bool>,
    /// One bit a row: its record is in the file (else it reads as initial values).
    written: Vec<u64>,
    clock: u64,
    /// Slots used at or after this clock belong to the current step.
    step_began: u64,
    stats: TierStats,
}

enum Place {
    Slot(usize),
    /// Read (and written) in the file: no way of its set was free for it.
    Uncached,
}

/// A shard's rows and state in a file behind a cache.
#[derive(Debug)]
pub struct FileRows {
    rows: usize,
    file: RecordFile,
    cache: Mutex<Cache>,
}

fn storage_error(path: &Path, e: impl std::fmt::Display) -> TableError {
    TableError::Storage {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// `v` as bytes. f32 has no padding and no invalid bit patterns, so both views are sound.
fn as_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: the byte view covers exactly the floats' memory, lives as long as the
    // borrow, and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

fn as_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: as for `as_bytes`, and any bytes written are a valid f32.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}

impl RecordFile {
    fn offset(&self, row: usize) -> u64 {
        (row * self.record * 4) as u64
    }

    /// The initial record of local row `row`.
    fn initial(&self, row: usize, out: &mut [f32]) {
        let i = &self.initial;
        let (w, s) = out.split_at_mut(self.words);
        let global = i.first_row + row as u64;
        let stored = (w, &mut Vec::new());
        i.init
            .fill_stored_row(global, i.cols.clone(), i.dim, self.dtype, stored);
        s.fill(i.state);
    }

    /// Reads the records of rows `row..` into `out`; returns the bytes read.
    fn read(&self, row: usize, out: &mut [f32]) -> Result<u64, TableError> {
        self.file
            .read_exact_at(as_bytes_mut(out), self.offset(row))
            .map_err(|e| storage_error(&self.path, e))?;
        Ok((out.len() * 4) as u64)
    }

    /// Writes `v` as the records of rows `row..`; returns the bytes written.
    fn write(&self, row: usize, v: &[f32]) -> Result<u64, TableError> {
        self.file
            .write_all_at(as_bytes(v), self.offset(row))
            .map_err(|e| storage_error(&self.path, e))?;
        Ok((v.len() * 4) as u64)
    }

    /// The record of `row` into `out`: from the file when `written`, else its initial
    /// values; returns the bytes read.
    fn load(&self, row: usize, written: bool, out: &mut [f32]) -> Result<u64, TableError> {
        if written {
            return self.read(row, out);
        }
        self.initial(row, out);
        Ok(0)
    }
}

impl Cache {
    fn is_written(&self, row: usize) -> bool {
        self.written[row / 64] & (1 << (row % 64)) != 0
    }

    fn mark_written(&mut self, row: usize) {
        self.written[row / 64] |= 1 << (row % 64);
    }

    fn slot(&mut self, s: usize, record: usize) -> &mut [f32] {
        &mut self.records.as_mut_slice()[s * record..][..record]
    }

    /// The slots of `row`'s set.
    fn set_of(&self, row: usize) -> Range<usize> {
        let base = (mix64(row as u64) % self.sets as u64) as usize * WAYS;
        base..base + WAYS
    }

    /// The slot holding `row`, if cached.
    fn find(&self, row: usize) -> Option<usize> {
        self.set_of(row).find(|&s| self.tags[s] == row as u64)
    }

    /// The record of `row` into `out` (a buffer outside the cache).
    fn load(&mut self, f: &RecordFile, row: usize, out: &mut [f32]) -> Result<(), TableError> {
        self.stats.bytes_read += f.load(row, self.is_written(row), out)?;
        Ok(())
    }

    /// Finds or brings `row` into the cache (evicting its set's least recently used row
    /// not used by this step).
    /// `lookup`: a forward's read of the row (counted as a hit or a miss), not the update
    /// that follows it.
    fn locate(&mut self, f: &RecordFile, row: usize, lookup: bool) -> Result<Place, TableError> {
        self.clock += 1;
        let lfu = self.policy == CachePolicy::Lfu;
        if lfu
            && self
                .clock
                .is_multiple_of(AGE_EVERY * self.tags.len() as u64)
        {
            self.uses.iter_mut().for_each(|u| *u >>= 1);
        }
        if let Some(s) = self.find(row) {
            self.last_used[s] = self.clock;
            if lfu {
                self.uses[s] = self.uses[s].saturating_add(1);
            }
            self.stats.hits += u64::from(lookup);
            return Ok(Place::Slot(s));
        }
        self.stats.misses += u64::from(lookup);
        let uses = |s: usize| if lfu { self.uses[s] } else { 0 };
        let victim = self
            .set_of(row)
            .filter(|&s| self.tags[s] == EMPTY || self.last_used[s] < self.step_began)
            .min_by_key(|&s| (self.tags[s] != EMPTY, uses(s), self.last_used[s]));
        let Some(s) = victim else {
            self.stats.uncached += u64::from(lookup);
            return Ok(Place::Uncached);
        };
        let record = f.record;
        if self.tags[s] != EMPTY && self.dirty[s] {
            let old = self.tags[s] as usize;
            let written = f.write(old, self.slot(s, record))?;
            self.stats.bytes_written += written;
            self.mark_written(old);
            self.stats.evictions += 1;
        }
        // straight into the slot (a failed read leaves it empty, not holding another row)
        self.tags[s] = EMPTY;
        let written = self.is_written(row);
        let read = f.load(row, written, self.slot(s, record))?;
        self.stats.bytes_read += read;
        self.tags[s] = row as u64;
        self.last_used[s] = self.clock;
        if lfu {
            self.uses[s] = 1;
        }
        self.dirty[s] = false;
        Ok(Place::Slot(s))
    }

    /// The current records of rows `start..` into `out` (whole records): cached rows from
    /// the cache, written ones from the file, the others as initial values.
    fn current(&mut self, f: &RecordFile, start: usize, out: &mut [f32]) -> Result<(), TableError> {
        self.stats.bytes_read += f.read(start, out)?;
        for (i, rec) in out.chunks_mut(f.record).enumerate() {
            let row = start + i;
            if let Some(s) = self.find(row) {
                rec.copy_from_slice(self.slot(s, f.record));
            } else if !self.is_written(row) {
                f.initial(row, rec);
            }
        }
        Ok(())
    }
}

impl FileRows {
    /// A shard of `rows` rows, `width` weights and `state_width` state floats each, in a
    /// new file `path` (replacing any file there: a file tier is rebuilt from the
    /// checkpoint on resume, never trusted), with a cache of about `cache_rows` rows.
    /// `extent`: the global first row, the columns and the table's width, for initial
    /// values; `salt`: the table's stochastic-rounding stream ([`RowDtype::salt`]).
    pub fn create(
        path: &Path,
        shape: Records,
        (cache_rows, policy): (usize, CachePolicy),
        init: &RowInit,
        extent: (u64, Range<usize>, usize),
        (initial_state, salt): (f32, u64),
    ) -> Result<Self, TableError> {
        let Records {
            rows,
            width,
            state_width,
            dtype,
        } = shape;
        let words = dtype.words(width);
        let record = words + state_width;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| storage_error(path, e))?;
        file.set_len((rows * record * 4) as u64)
            .map_err(|e| storage_error(path, e))?;
        // whole sets within the share (one at least), so caches stay within their bytes
        let sets = (cache_rows.min(rows.next_multiple_of(WAYS)) / WAYS).max(1);
        let slots = sets * WAYS;
        let (first_row, cols, dim) = extent;
        Ok(Self {
            rows,
            file: RecordFile {
                path: path.to_path_buf(),
                file,
                width,
                dtype,
                words,
                record,
                initial: Initial {
                    init: init.clone(),
                    first_row,
                    cols,
                    dim,
                    state: initial_state,
                },
                salt,
            },
            cache: Mutex::new(Cache {
                sets,
                records: InMemoryRows::zeros(slots * record),
                tags: vec![EMPTY; slots],
                last_used: vec![0; slots],
                uses: match policy {
                    CachePolicy::Lru => Vec::new(),
                    CachePolicy::Lfu => vec![0; slots],
                },
                policy,
                dirty: vec![false; slots],
                written: vec![0; rows.div_ceil(64)],
                clock: 0,
                step_began: 0,
                stats: TierStats::default(),
            }),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // a panic while holding the lock leaves the cache as consistent as any error
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn outside(&self, r: u64) -> TableError {
        TableError::BadBatch(format!(
            "local row {r} outside the shard's {} rows ({})",
            self.rows,
            self.file.path.display()
        ))
    }

    /// Copies of the given local rows' weights, `rows.len() x width`. Begins a step: the
    /// rows it touches stay cached until the next gather.
    pub fn gather(&self, local_rows: &[u64]) -> Result<Vec<f32>, TableError> {
        let (f, w) = (&self.file, self.file.width);
        let mut c = self.cache();
        c.step_began = c.clock + 1;
        let mut out = Vec::with_capacity(local_rows.len() * w);
        let mut buf = vec![0f32; f.record];
        for &r in local_rows {
            if r >= self.rows as u64 {
                return Err(self.outside(r));
            }
            let stored = match c.locate(f, r as usize, true)? {
                Place::Slot(s) => &c.slot(s, f.record)[..f.words],
                Place::Uncached => {
                    c.load(f, r as usize, &mut buf)?;
                    &buf[..f.words]
                }
            };
            f.dtype.widen_into(stored, w, &mut out);
        }
        Ok(out)
    }

    /// Copies of the given local rows' whole records (stored weights, then state),
    /// `rows.len() x record`; cached copies are current, so they are read first.
    pub fn records(&self, local_rows: &[u64]) -> Result<Vec<f32>, TableError> {
        let f = &self.file;
        let mut c = self.cache();
        let mut out = Vec::with_capacity(local_rows.len() * f.record);
        let mut buf = vec![0f32; f.record];
        for &r in local_rows {
            if r >= self.rows as u64 {
                return Err(self.outside(r));
            }
            match c.find(r as usize) {
                Some(s) => out.extend_from_slice(c.slot(s, f.record)),
                None => {
                    c.load(f, r as usize, &mut buf)?;
                    out.extend_from_slice(&buf);
                }
            }
        }
        Ok(out)
    }

    /// One optimizer step (`step`: the 1-based update count) on the given local rows
    /// (strictly ascending), with the RAM path's arithmetic.
    pub fn apply(
        &self,
        opt: &SparseOptimizer,
        step: u64,
        local_rows: &[u64],
        grads: &[f32],
    ) -> Result<(), TableError> {
        check_rows(local_rows, self.rows)?;
        let (f, w) = (&self.file, self.file.width);
        if grads.len() != local_rows.len() * w {
            return Err(TableError::SizeMismatch {
                what: "row gradients".into(),
                expected: local_rows.len() * w,
                got: grads.len(),
            });
        }
        let bc = opt.bias_corrections(step);
        let mut c = self.cache();
        let (mut buf, mut scratch) = (vec![0f32; f.record], Vec::new());
        let first_col = f.initial.cols.start;
        for (i, &r) in local_rows.iter().enumerate() {
            let g = &grads[i * w..][..w];
            let key = RowDtype::rounding_key(f.salt, step, f.initial.first_row + r);
            let mut update = |record: &mut [f32]| {
                let (weights, state) = record.split_at_mut(f.words);
                opt.update_stored_row(
                    f.dtype,
                    weights,
                    state,
                    g,
                    bc,
                    (key, first_col),
                    &mut scratch,
                );
            };
            match c.locate(f, r as usize, false)? {
                Place::Slot(s) => {
                    update(c.slot(s, f.record));
                    c.dirty[s] = true;
                }
                Place::Uncached => {
                    c.load(f, r as usize, &mut buf)?;
                    update(&mut buf);
                    c.stats.bytes_written += f.write(r as usize, &buf)?;
                    c.mark_written(r as usize);
                }
            }
        }
        Ok(())
    }

    /// Every record in row order, `CHUNK_ROWS` at a time: `visit(first row, records)`.
    /// Cached rows come from the cache, the others from the file or their initial values.
    pub fn for_each_chunk<E: From<TableError>>(
        &self,
        mut visit: impl FnMut(usize, &[f32]) -> Result<(), E>,
    ) -> Result<(), E> {
        let f = &self.file;
        let mut c = self.cache();
        let mut chunk = vec![0f32; CHUNK_ROWS * f.record];
        for start in (0..self.rows).step_by(CHUNK_ROWS) {
            let n = CHUNK_ROWS.min(self.rows - start);
            let part = &mut chunk[..n * f.record];
            c.current(f, start, part)?;
            visit(start, part)?;
        }
        Ok(())
    }

    /// Overwrites columns `part` of the records of rows `first..` (`v`: `part.len()`
    /// floats a row), keeping the rest of each record; cached copies follow.
    pub fn overwrite_rows(
        &self,
        part: Range<usize>,
        first: usize,
        v: &[f32],
    ) -> Result<(), TableError> {
        let f = &self.file;
        let n = part.len();
        let rows = v.len().checked_div(n).unwrap_or(0);
        if part.end > f.record || rows * n != v.len() || first + rows > self.rows {
            return Err(TableError::SizeMismatch {
                what: format!("rows {first}.. columns {part:?} of {}", f.path.display()),
                expected: n * self.rows.saturating_sub(first),
                got: v.len(),
            });
        }
        let mut c = self.cache();
        let mut chunk = vec![0f32; CHUNK_ROWS * f.record];
        for start in (first..first + rows).step_by(CHUNK_ROWS) {
            let m = CHUNK_ROWS.min(first + rows - start);
            let recs = &mut chunk[..m * f.record];
            c.current(f, start, recs)?;
            for (i, rec) in recs.chunks_mut(f.record).enumerate() {
                let row = start + i;
                rec[part.clone()].copy_from_slice(&v[(row - first) * n..][..n]);
                if let Some(s) = c.find(row) {
                    c.slot(s, f.record).copy_from_slice(rec);
                }
                c.mark_written(row);
            }
            c.stats.bytes_written += f.write(start, recs)?;
        }
        Ok(())
    }

    /// Replaces the whole record of local row `row` (a cached copy follows and is marked
    /// changed; otherwise the file takes it).
    pub fn set_record(&self, row: usize, record: &[f32]) -> Result<(), TableError> {
        let f = &self.file;
        if row >= self.rows || record.len() != f.record {
            return Err(TableError::SizeMismatch {
                what: format!("record of row {row} of {}", f.path.display()),
                expected: f.record,
                got: record.len(),
            });
        }
        let mut c = self.cache();
        match c.find(row) {
            Some(s) => {
                c.slot(s, f.record).copy_from_slice(record);
                c.dirty[s] = true;
            }
            None => {
                c.stats.bytes_written += f.write(row, record)?;
                c.mark_written(row);
            }
        }
        Ok(())
    }

    /// Reads the given local rows into the cache ahead of the step that will look them up
    /// (FBGEMM's prefetch): run on another thread while the current step computes. The
    /// lock is taken a few rows at a time, so the step's own lookups and updates go on;
    /// rows the current step uses are not evicted. Returns the rows it read.
    pub fn prefetch(&self, local_rows: &[u64]) -> Result<u64, TableError> {
        let f = &self.file;
        let mut total = 0;
        for rows in local_rows.chunks(64) {
            let mut c = self.cache();
            let mut read = 0;
            for &r in rows {
                if r < self.rows as u64 && c.find(r as usize).is_none() {
                    if let Place::Slot(_) = c.locate(f, r as usize, false)? {
                        read += 1;
                    }
                }
            }
            c.stats.prefetched += read;
            total += read;
        }
        Ok(total)
    }

    /// Words of a record: the stored weights, then optimizer state.
    pub fn record(&self) -> usize {
        self.file.record
    }

    /// Bytes of RAM held (cache records, tags, the written-rows bitmap) and the file's
    /// logical size.
    /// Bytes the disk holds of the file (allocated blocks; 0 if it cannot be told).
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.file.file.metadata().map_or(0, |m| m.blocks() * 512)
    }

    pub fn bytes(&self) -> (usize, u64) {
        let c = self.cache();
        let ram = c.records.bytes() + c.tags.len() * 17 + c.uses.len() * 4 + c.written.len() * 8;
        (ram, (self.rows * self.file.record * 4) as u64)
    }

    pub fn stats(&self) -> TierStats {
        self.cache().stats
    }

    /// Rows the cache can hold.
    pub fn cache_rows(&self) -> usize {
        self.cache().tags.len()
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

impl Drop for FileRows {
    fn drop(&mut self) {
        // the file is this process's scratch space: a resumed run rebuilds it
        let _ = std::fs::remove_file(&self.file.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::OptimizerKind;

    fn init() -> RowInit {
        RowInit::Uniform {
            bound: 0.5,
            seed: 9,
        }
    }

    /// The same updates on RAM rows and on a file with a tiny cache give the same bits,
    /// for rows of every precision.
    fn same_bits(kind: OptimizerKind, cache_rows: usize, dtype: RowDtype, policy: CachePolicy) {
        use crate::shard::{TableShard, TableStorage};
        use crate::sharding::ShardExtent;
        use crate::spec::TableSpec;
        let (n, dim) = (500usize, 4usize);
        let opt = SparseOptimizer::new(kind, 0.1);
        let spec = TableSpec {
            name: "t".into(),
            rows: 700,
            dim,
            init: init(),
        };
        let extent = ShardExtent {
            rank: 0,
            rows: 100..100 + n as u64,
            cols: 0..dim,
        };
        let record = dtype.words(dim) + opt.state_width(dim);
        let tier = FileTier {
            dir: tempfile_dir(),
            cache_bytes: cache_rows as u64 * (record as u64 * 4 + slot_overhead(policy)),
            policy,
        };
        let in_ram = TableStorage {
            file: None,
            dtype,
            keyed: false,
        };
        let in_file = TableStorage {
            file: Some(tier),
            dtype,
            keyed: false,
        };
        let mut ram = TableShard::build(&spec, &extent, &opt, &in_ram).unwrap();
        let mut file = TableShard::build(&spec, &extent, &opt, &in_file).unwrap();
        let mut x = 7u64;
        for step in 1..=40u64 {
            let mut rows: Vec<u64> = (0..60)
                .map(|_| {
                    x = mix64(x);
                    // a skewed draw: low rows are hot
                    (x % n as u64) * (x % 3 + 1) / 3
                })
                .collect();
            rows.sort_unstable();
            rows.dedup();
            let grads: Vec<f32> = (0..rows.len() * dim)
                .map(|i| ((i as u64 * 31 + step) % 17) as f32 / 17.0 - 0.5)
                .collect();
            assert_eq!(file.gather(&rows).unwrap(), ram.gather(&rows).unwrap());
            ram.apply(&opt, &rows, &grads).unwrap();
            file.apply(&opt, &rows, &grads).unwrap();
        }
        assert_eq!(file.weights().unwrap(), ram.weights().unwrap(), "{dtype:?}");
        assert_eq!(file.state().unwrap(), ram.state().unwrap(), "{dtype:?}");
        let s = file.tier_report().unwrap().stats;
        assert!(s.misses > 0 && s.hits > 0, "{s:?}");
        if cache_rows < 100 {
            assert!(s.evictions > 0 && s.bytes_written > 0, "{s:?}");
        }
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "shardrec-file-rows-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_file_table_trains_to_the_same_bits_as_ram_for_every_optimizer() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adagrad,
            OptimizerKind::RowwiseAdagrad,
            OptimizerKind::Adam,
        ] {
            // 1% of the rows (one set), a tenth, and all of them
            for cache in [5, 50, 500] {
                same_bits(kind, cache, RowDtype::F32, CachePolicy::Lru);
                same_bits(kind, cache, RowDtype::F32, CachePolicy::Lfu);
            }
            for dtype in [RowDtype::F16, RowDtype::Bf16] {
                same_bits(kind, 5, dtype, CachePolicy::Lru);
            }
        }
    }

    #[test]
    fn overwrite_replaces_one_part_and_keeps_the_other() {
        let opt = SparseOptimizer::new(OptimizerKind::Adagrad, 0.1);
        let dir = tempfile_dir();
        let shape = Records {
            rows: 10,
            width: 2,
            state_width: 2,
            dtype: RowDtype::F32,
        };
        let f = FileRows::create(
            &dir.join("o.f32"),
            shape,
            (3, CachePolicy::Lru),
            &init(),
            (0, 0..2, 2),
            (0.5, 1),
        )
        .unwrap();
        f.apply(&opt, 1, &[3], &[1.0, 1.0]).unwrap();
        let w: Vec<f32> = (0..20).map(|i| i as f32).collect();
        f.overwrite_rows(0..2, 0, &w).unwrap();
        assert_eq!(f.gather(&[0, 9]).unwrap(), vec![0., 1., 18., 19.]);
        let mut recs = Vec::new();
        f.for_each_chunk::<TableError>(|_, r| {
            recs.extend_from_slice(r);
            Ok(())
        })
        .unwrap();
        // row 3's state was updated (0.5 + 1), the others kept the initial 0.5
        assert_eq!(&recs[3 * 4 + 2..3 * 4 + 4], &[1.5, 1.5]);
        assert_eq!(&recs[4 * 4 + 2..4 * 4 + 4], &[0.5, 0.5]);
        assert!(f.overwrite_rows(2..4, 0, &[0.0; 3]).is_err());
        let path = f.path().to_path_buf();
        drop(f);
        assert!(!path.exists(), "the scratch file is removed");
    }
}
