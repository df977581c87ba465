//! The part of one table a rank owns: its rows (a block of global rows, a slice of the
//! columns), the optimizer state of those rows, and the update count. Only the owner
//! holds a shard's rows and state; others reach them through the exchange.
//!
//! The rows sit in host memory behind [`RowStorage`], or in an accelerator's memory
//! behind [`DeviceRows`] (implemented by the trainer with libtorch, which this crate
//! does not link), where gathers and the sparse optimizer's update run on the device.

use std::borrow::Cow;
use std::ops::Range;

use crate::file_rows::{FileRows, FileTier, Records, TierReport};
use crate::init::RowInit;
use crate::optimizer::{SparseOptimizer, StateLayout};
use crate::row_dtype::{Rounding, RowDtype};
use crate::sharding::ShardExtent;
use crate::spec::TableSpec;
use crate::storage::{InMemoryRows, RowStorage};
use crate::TableError;

/// A shard's rows and optimizer state in an accelerator's memory: `n x width` weights
/// and `n x state_width` state, row-major, laid out as in host memory.
pub trait DeviceRows: Send + Sync + std::fmt::Debug {
    /// Copies of the given local rows, `rows.len() x width`.
    fn gather(&self, local_rows: &[u64]) -> Result<Vec<f32>, TableError>;
    /// One optimizer step on the given local rows (strictly ascending); `step` is the
    /// 1-based count of updates (Adam's bias correction).
    fn apply(
        &mut self,
        opt: &SparseOptimizer,
        step: u64,
        local_rows: &[u64],
        grads: &[f32],
    ) -> Result<(), TableError>;
    fn weights(&self) -> Result<Vec<f32>, TableError>;
    fn state(&self) -> Result<Vec<f32>, TableError>;
    fn set_weights(&mut self, v: &[f32]) -> Result<(), TableError>;
    fn set_state(&mut self, v: &[f32]) -> Result<(), TableError>;
    /// Bytes of device memory held for weights and for state.
    fn bytes(&self) -> (usize, usize);
}

/// Moves a shard's host rows (weights, state, width, state width) to a device.
pub type Upload<'a> =
    dyn Fn(&[f32], &[f32], usize, usize) -> Result<Box<dyn DeviceRows>, TableError> + 'a;

#[derive(Debug)]
enum Rows {
    Host {
        weights: Box<dyn RowStorage>,
        state: Box<dyn RowStorage>,
    },
    Device(Box<dyn DeviceRows>),
    /// The file tier: rows and state in a file behind a cache of hot rows.
    /// Shared with the thread that reads the next step's rows ahead.
    File(std::sync::Arc<FileRows>),
}

#[derive(Debug)]
pub struct TableShard {
    pub table: String,
    /// Global rows held.
    pub rows: Range<u64>,
    /// Columns held, of a table `dim` wide.
    pub cols: Range<usize>,
    pub dim: usize,
    held: Rows,
    state_width: usize,
    steps: u64,
    /// Precision of the stored weights.
    dtype: RowDtype,
    /// The table's stochastic-rounding stream ([`RowDtype::salt`]).
    salt: u64,
}

/// Where and how one table's rows are held: RAM or the file tier, f32 or 16-bit.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TableStorage {
    pub file: Option<FileTier>,
    pub dtype: RowDtype,
    /// Rows are set when a key takes them (a dynamic table's, [`crate::KeyMaps`]): a
    /// RAM shard starts as untouched zeros, so its memory is taken as rows come into use.
    pub keyed: bool,
}

impl TableShard {
    /// A freshly initialised shard of f32 rows in RAM.
    pub fn new(
        table: &str,
        dim: usize,
        extent: &ShardExtent,
        init: &RowInit,
        opt: &SparseOptimizer,
    ) -> Self {
        Self::in_ram(table, dim, extent, init, opt, RowDtype::F32)
    }

    /// A freshly initialised shard in RAM, its rows stored as `dtype`.
    pub fn in_ram(
        table: &str,
        dim: usize,
        extent: &ShardExtent,
        init: &RowInit,
        opt: &SparseOptimizer,
        dtype: RowDtype,
    ) -> Self {
        let mut shard = Self::untouched(table, dim, extent, opt, dtype);
        if let Rows::Host { weights, state } = &mut shard.held {
            fill_stored(init, dtype, weights.as_mut_slice(), extent, dim);
            // every page touched now, so the first steps do not pay for page faults
            state.as_mut_slice().fill(opt.initial_state());
        }
        shard
    }

    /// The freshly initialised part `extent` of the table `spec`, held as `storage` says.
    pub fn build(
        spec: &TableSpec,
        extent: &ShardExtent,
        opt: &SparseOptimizer,
        storage: &TableStorage,
    ) -> Result<Self, TableError> {
        match &storage.file {
            Some(t) => Self::in_file(spec, extent, opt, t, storage.dtype),
            None if storage.keyed => Ok(Self::untouched(
                &spec.name,
                spec.dim,
                extent,
                opt,
                storage.dtype,
            )),
            None => Ok(Self::in_ram(
                &spec.name,
                spec.dim,
                extent,
                &spec.init,
                opt,
                storage.dtype,
            )),
        }
    }

    /// A RAM shard of zeros whose pages are not touched: rows that are set (reset) before
    /// any use, so they cost memory only once used.
    fn untouched(
        table: &str,
        dim: usize,
        extent: &ShardExtent,
        opt: &SparseOptimizer,
        dtype: RowDtype,
    ) -> Self {
        let width = extent.cols.len();
        let n = (extent.rows.end - extent.rows.start) as usize;
        let sw = opt.state_width(width);
        Self {
            table: table.to_string(),
            rows: extent.rows.clone(),
            cols: extent.cols.clone(),
            dim,
            held: Rows::Host {
                weights: Box::new(InMemoryRows::zeros(n * dtype.words(width))),
                state: Box::new(InMemoryRows::zeros(n * sw)),
            },
            state_width: sw,
            steps: 0,
            dtype,
            salt: RowDtype::salt(table),
        }
    }

    /// The freshly initialised part `extent` of the table `spec`.
    pub fn of_table(spec: &TableSpec, extent: &ShardExtent, opt: &SparseOptimizer) -> Self {
        Self::new(&spec.name, spec.dim, extent, &spec.init, opt)
    }

    /// The part `extent` of the table `spec` in the file tier: a new sparse file under
    /// `tier.dir` (rows read as their initial values until written) behind a cache of
    /// `tier.cache_bytes`. Nothing the size of the shard is allocated.
    pub fn in_file(
        spec: &TableSpec,
        extent: &ShardExtent,
        opt: &SparseOptimizer,
        tier: &FileTier,
        dtype: RowDtype,
    ) -> Result<Self, TableError> {
        let width = extent.cols.len();
        let n = (extent.rows.end - extent.rows.start) as usize;
        let sw = opt.state_width(width);
        let name: String = spec
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = tier.dir.join(format!(
            "{name}.rows{}-{}.cols{}-{}.p{}.rows",
            extent.rows.start,
            extent.rows.end,
            extent.cols.start,
            extent.cols.end,
            std::process::id()
        ));
        let salt = RowDtype::salt(&spec.name);
        let rows = FileRows::create(
            &path,
            Records {
                rows: n,
                width,
                state_width: sw,
                dtype,
            },
            (tier.cache_rows(dtype.words(width) + sw), tier.policy),
            &spec.init,
            (extent.rows.start, extent.cols.clone(), spec.dim),
            (opt.initial_state(), salt),
        )?;
        Ok(Self {
            table: spec.name.clone(),
            rows: extent.rows.clone(),
            cols: extent.cols.clone(),
            dim: spec.dim,
            held: Rows::File(std::sync::Arc::new(rows)),
            state_width: sw,
            steps: 0,
            dtype,
            salt,
        })
    }

    /// What the file tier holds and did, for a shard in it.
    pub fn tier_report(&self) -> Option<TierReport> {
        match &self.held {
            Rows::File(f) => {
                let (ram_bytes, file_bytes) = f.bytes();
                Some(TierReport {
                    cache_rows: f.cache_rows(),
                    ram_bytes,
                    file_bytes,
                    disk_bytes: f.disk_bytes(),
                    stats: f.stats(),
                })
            }
            _ => None,
        }
    }

    /// Moves the rows and state to a device (freeing the host copy); a shard already
    /// there stays.
    pub fn move_to_device(&mut self, upload: &Upload) -> Result<(), TableError> {
        if self.dtype != RowDtype::F32 {
            return Err(TableError::InvalidTable {
                table: self.table.clone(),
                reason: format!(
                    "{:?} rows are held in RAM or the file tier only; a device table keeps f32 rows",
                    self.dtype
                ),
            });
        }
        if let Rows::Host { weights, state } = &self.held {
            let d = upload(
                weights.as_slice(),
                state.as_slice(),
                self.width(),
                self.state_width,
            )?;
            self.held = Rows::Device(d);
        }
        Ok(())
    }

    /// Whether the rows are in a device's memory.
    pub fn on_device(&self) -> bool {
        matches!(self.held, Rows::Device(_))
    }

    /// Floats per held row.
    pub fn width(&self) -> usize {
        self.cols.len()
    }

    pub fn num_rows(&self) -> usize {
        (self.rows.end - self.rows.start) as usize
    }

    /// The weights (`rows x width`; a copy when they sit on a device).
    pub fn weights(&self) -> Result<Cow<'_, [f32]>, TableError> {
        match &self.held {
            Rows::Host { weights, .. } if self.dtype == RowDtype::F32 => {
                Ok(Cow::Borrowed(weights.as_slice()))
            }
            Rows::Host { weights, .. } => Ok(Cow::Owned(self.decode(weights.as_slice()))),
            Rows::Device(d) => d.weights().map(Cow::Owned),
            Rows::File(f) => {
                let words = self.file_columns(f, 0..self.words())?;
                Ok(Cow::Owned(self.decode(&words)))
            }
        }
    }

    /// Words of a stored row of weights.
    fn words(&self) -> usize {
        self.dtype.words(self.width())
    }

    /// The values of stored rows (`rows x words`).
    fn decode(&self, words: &[f32]) -> Vec<f32> {
        let rows = words.chunks(self.words().max(1));
        let mut out = Vec::with_capacity(rows.len() * self.width());
        rows.for_each(|r| self.dtype.widen_into(r, self.width(), &mut out));
        out
    }

    /// Rows of values (`rows x width`) as stored rows, rounded to nearest.
    fn encode(&self, values: &[f32]) -> Vec<f32> {
        let (w, words) = (self.width().max(1), self.words());
        let mut out = vec![0f32; values.len() / w * words];
        for (o, r) in out.chunks_mut(words.max(1)).zip(values.chunks(w)) {
            self.dtype.encode(r, o, Rounding::Nearest);
        }
        out
    }

    /// The optimizer state (`rows x state_width`; a copy when on a device).
    pub fn state(&self) -> Result<Cow<'_, [f32]>, TableError> {
        match &self.held {
            Rows::Host { state, .. } => Ok(Cow::Borrowed(state.as_slice())),
            Rows::Device(d) => d.state().map(Cow::Owned),
            Rows::File(f) => self
                .file_columns(f, self.words()..self.words() + self.state_width)
                .map(Cow::Owned),
        }
    }

    /// Words `part` of every record of a file-tier shard (a copy).
    fn file_columns(&self, f: &FileRows, part: Range<usize>) -> Result<Vec<f32>, TableError> {
        let mut out = Vec::with_capacity(self.num_rows() * part.len());
        stream_file_columns(f, part, |block| {
            out.extend_from_slice(block);
            Ok::<_, TableError>(())
        })?;
        Ok(out)
    }

    /// The words of a record (weights, then state) that hold plane `p` of the state.
    fn plane_columns(&self, layout: StateLayout, p: usize) -> Range<usize> {
        let (w, words) = (self.width(), self.words());
        let per_row = match layout {
            StateLayout::PerRow => 1,
            StateLayout::PerColumn { .. } => w,
        };
        words + p * per_row..words + (p + 1) * per_row
    }

    fn check_len(&self, what: &str, expected: usize, got: usize) -> Result<(), TableError> {
        if expected == got {
            return Ok(());
        }
        Err(TableError::SizeMismatch {
            what: format!("table `{}`: {what}", self.table),
            expected,
            got,
        })
    }

    /// Overwrites the weights.
    pub fn set_weights(&mut self, v: &[f32]) -> Result<(), TableError> {
        self.check_len("weights", self.num_rows() * self.width(), v.len())?;
        let stored = match self.dtype {
            RowDtype::F32 => Cow::Borrowed(v),
            _ => Cow::Owned(self.encode(v)),
        };
        let words = self.words();
        match &mut self.held {
            Rows::Host { weights, .. } => {
                weights.as_mut_slice().copy_from_slice(&stored);
                Ok(())
            }
            Rows::Device(d) => d.set_weights(v),
            Rows::File(f) => f.overwrite_rows(0..words, 0, &stored),
        }
    }

    /// Overwrites the optimizer state.
    pub fn set_state(&mut self, v: &[f32]) -> Result<(), TableError> {
        self.check_len(
            "optimizer state",
            self.num_rows() * self.state_width,
            v.len(),
        )?;
        match &mut self.held {
            Rows::Host { state, .. } => {
                state.as_mut_slice().copy_from_slice(v);
                Ok(())
            }
            Rows::Device(d) => d.set_state(v),
            Rows::File(f) => {
                let w = self.dtype.words(self.cols.len());
                f.overwrite_rows(w..w + self.state_width, 0, v)
            }
        }
    }

    pub fn state_width(&self) -> usize {
        self.state_width
    }

    /// Plane `p` of the optimizer state (see [`StateLayout`]): `rows x width` floats per
    /// column, or `rows` floats per row.
    pub fn state_plane(&self, layout: StateLayout, p: usize) -> Result<Vec<f32>, TableError> {
        let (n, w, sw) = (self.num_rows(), self.width(), self.state_width);
        let s = self.state()?;
        Ok(match layout {
            StateLayout::PerRow => (0..n).map(|r| s[r * sw]).collect(),
            StateLayout::PerColumn { .. } => (0..n)
                .flat_map(|r| s[r * sw + p * w..][..w].iter().copied())
                .collect(),
        })
    }

    /// Overwrites plane `p` of the optimizer state (the inverse of [`Self::state_plane`]).
    pub fn set_state_plane(
        &mut self,
        layout: StateLayout,
        p: usize,
        values: &[f32],
    ) -> Result<(), TableError> {
        let (n, w, sw) = (self.num_rows(), self.width(), self.state_width);
        let columns = self.plane_columns(layout, p);
        let per_row = columns.len();
        if values.len() != n * per_row || columns.end > w + sw {
            return Err(TableError::SizeMismatch {
                what: format!("table `{}`: optimizer state plane {p}", self.table),
                expected: n * per_row,
                got: values.len(),
            });
        }
        let put = |s: &mut [f32]| {
            for r in 0..n {
                s[r * sw + p * per_row..][..per_row]
                    .copy_from_slice(&values[r * per_row..][..per_row]);
            }
        };
        match &mut self.held {
            Rows::Host { state, .. } => {
                put(state.as_mut_slice());
                Ok(())
            }
            Rows::Device(d) => {
                let mut s = d.state()?;
                put(&mut s);
                d.set_state(&s)
            }
            Rows::File(f) => f.overwrite_rows(columns, 0, values),
        }
    }

    /// The file tier's rows, for reading ahead on another thread.
    pub fn file_rows(&self) -> Option<std::sync::Arc<FileRows>> {
        match &self.held {
            Rows::File(f) => Some(f.clone()),
            _ => None,
        }
    }

    /// Whether the rows are in the file tier.
    pub fn in_file_tier(&self) -> bool {
        matches!(self.held, Rows::File(_))
    }

    /// The weights in row order, a block at a time (`rows x width` floats each): the file
    /// tier's `CHUNK_ROWS` rows at a time, so a checkpoint of a table larger than RAM
    /// needs no copy of it; the others as one block.
    pub fn stream_weights<E: From<TableError>>(
        &self,
        mut out: impl FnMut(&[f32]) -> Result<(), E>,
    ) -> Result<(), E> {
        match &self.held {
            Rows::File(f) if self.dtype == RowDtype::F32 => {
                stream_file_columns(f, 0..self.width(), out)
            }
            Rows::File(f) => {
                stream_file_columns(f, 0..self.words(), |words| out(&self.decode(words)))
            }
            _ => out(&self.weights()?),
        }
    }

    /// Plane `p` of the optimizer state in row order, a block at a time, as
    /// [`Self::stream_weights`] (the layout of [`Self::state_plane`]).
    pub fn stream_state_plane<E: From<TableError>>(
        &self,
        layout: StateLayout,
        p: usize,
        mut out: impl FnMut(&[f32]) -> Result<(), E>,
    ) -> Result<(), E> {
        match &self.held {
            Rows::File(f) => stream_file_columns(f, self.plane_columns(layout, p), out),
            _ => out(&self.state_plane(layout, p)?),
        }
    }

    /// Overwrites the weights of rows `first..` (`v`: whole rows), for loading a shard a
    /// block at a time (larger than RAM, or only its rows in use).
    pub fn set_weights_rows(&mut self, first: usize, v: &[f32]) -> Result<(), TableError> {
        let columns = 0..self.words();
        match self.dtype {
            RowDtype::F32 => self.set_file_rows(columns, first, v),
            _ => self.set_file_rows(columns, first, &self.encode(v)),
        }
    }

    /// Overwrites plane `p` of the state of file-tier rows `first..` (see
    /// [`Self::set_state_plane`]).
    pub fn set_state_plane_rows(
        &mut self,
        layout: StateLayout,
        p: usize,
        first: usize,
        values: &[f32],
    ) -> Result<(), TableError> {
        let columns = self.plane_columns(layout, p);
        self.set_file_rows(columns, first, values)
    }

    fn set_file_rows(
        &mut self,
        columns: Range<usize>,
        first: usize,
        v: &[f32],
    ) -> Result<(), TableError> {
        let words = self.words();
        let width = columns.len().max(1);
        let rows = v.len() / width;
        if first + rows > self.num_rows() || !v.len().is_multiple_of(width) {
            return Err(TableError::BadBatch(format!(
                "table `{}`: {} values for rows {first}.. of {} columns, past the shard's {} rows",
                self.table,
                v.len(),
                width,
                self.num_rows()
            )));
        }
        match &mut self.held {
            Rows::File(f) => f.overwrite_rows(columns, first, v),
            // a record's columns are its weights' words, then its state
            Rows::Host { weights, state } => {
                let (held, stride, start) = match columns.start < words {
                    true => (weights.as_mut_slice(), words, columns.start),
                    false => (
                        state.as_mut_slice(),
                        self.state_width,
                        columns.start - words,
                    ),
                };
                for (i, row) in v.chunks_exact(width).enumerate() {
                    held[(first + i) * stride + start..][..width].copy_from_slice(row);
                }
                Ok(())
            }
            Rows::Device(_) => Err(TableError::BadBatch(format!(
                "table `{}`: rows of a device table cannot be set a block at a time",
                self.table
            ))),
        }
    }

    /// Starts the given local rows afresh for new owners (a table without a vocabulary
    /// reuses the rows of evicted keys): row `local_rows[i]` takes the initial values
    /// `init` gives global row `seeds[i]` (a function of the key, so a key starts alike
    /// whichever row or rank it lands on), and the optimizer's initial state.
    pub fn reset_rows(
        &mut self,
        local_rows: &[u64],
        seeds: &[u64],
        init: &RowInit,
        opt: &SparseOptimizer,
    ) -> Result<(), TableError> {
        let (words, sw) = (self.words(), self.state_width);
        self.check_len("seeds of reset rows", local_rows.len(), seeds.len())?;
        if let Some(&r) = local_rows.iter().find(|&&r| r >= self.num_rows() as u64) {
            return Err(TableError::BadBatch(format!(
                "table `{}`: local row {r} outside the shard's {} rows",
                self.table,
                self.num_rows()
            )));
        }
        let mut scratch = Vec::new();
        let mut record = vec![opt.initial_state(); words + sw];
        for (&row, &seed) in local_rows.iter().zip(seeds) {
            let stored = (&mut record[..words], &mut scratch);
            init.fill_stored_row(seed, self.cols.clone(), self.dim, self.dtype, stored);
            let r = row as usize;
            match &mut self.held {
                Rows::Host { weights, state } => {
                    weights.as_mut_slice()[r * words..][..words].copy_from_slice(&record[..words]);
                    state.as_mut_slice()[r * sw..][..sw].fill(opt.initial_state());
                }
                Rows::File(f) => f.set_record(r, &record)?,
                Rows::Device(_) => {
                    return Err(TableError::InvalidTable {
                        table: self.table.clone(),
                        reason: "rows of a device table cannot be reset one by one yet".into(),
                    })
                }
            }
        }
        Ok(())
    }

    /// The given local rows' weights and optimizer state as f32 records
    /// (`width + state_width` each), for a device cache to load; rows of f32 only.
    pub fn read_records(&self, local_rows: &[u64]) -> Result<Vec<f32>, TableError> {
        let (w, sw) = (self.width(), self.state_width);
        self.check_f32_records()?;
        let n = self.num_rows() as u64;
        if let Some(&r) = local_rows.iter().find(|&&r| r >= n) {
            return Err(TableError::BadBatch(format!(
                "table `{}`: local row {r} outside the shard's {n} rows",
                self.table
            )));
        }
        match &self.held {
            Rows::Host { weights, state } => {
                let (weights, state) = (weights.as_slice(), state.as_slice());
                let mut out = Vec::with_capacity(local_rows.len() * (w + sw));
                for &r in local_rows {
                    let r = r as usize;
                    out.extend_from_slice(&weights[r * w..][..w]);
                    out.extend_from_slice(&state[r * sw..][..sw]);
                }
                Ok(out)
            }
            Rows::File(f) => f.records(local_rows),
            Rows::Device(_) => unreachable!("checked above"),
        }
    }

    /// Writes f32 records (`width + state_width` each, as [`Self::read_records`] gives
    /// them) to the given local rows: a device cache's write-back.
    pub fn write_records(&mut self, local_rows: &[u64], records: &[f32]) -> Result<(), TableError> {
        let (w, sw) = (self.width(), self.state_width);
        self.check_f32_records()?;
        self.check_len(
            "written records",
            local_rows.len() * (w + sw),
            records.len(),
        )?;
        let n = self.num_rows() as u64;
        for (&r, rec) in local_rows.iter().zip(records.chunks(w + sw)) {
            if r >= n {
                return Err(TableError::BadBatch(format!(
                    "table `{}`: local row {r} outside the shard's {n} rows",
                    self.table
                )));
            }
            let r = r as usize;
            match &mut self.held {
                Rows::Host { weights, state } => {
                    weights.as_mut_slice()[r * w..][..w].copy_from_slice(&rec[..w]);
                    state.as_mut_slice()[r * sw..][..sw].copy_from_slice(&rec[w..]);
                }
                Rows::File(f) => f.set_record(r, rec)?,
                Rows::Device(_) => unreachable!("checked above"),
            }
        }
        Ok(())
    }

    fn check_f32_records(&self) -> Result<(), TableError> {
        if self.dtype != RowDtype::F32 || matches!(self.held, Rows::Device(_)) {
            return Err(TableError::InvalidTable {
                table: self.table.clone(),
                reason: "a device cache serves host or file rows of f32".into(),
            });
        }
        Ok(())
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// Bytes of parameters and of optimizer state.
    pub fn bytes(&self) -> (usize, usize) {
        match &self.held {
            Rows::Host { weights, state } => (weights.bytes(), state.bytes()),
            Rows::Device(d) => d.bytes(),
            // the RAM it holds, split as the record is
            Rows::File(f) => {
                let ram = f.bytes().0;
                let w = ram * self.width() / (self.width() + self.state_width).max(1);
                (w, ram - w)
            }
        }
    }

    /// Copies of the given local rows (ascending or not), `rows.len() x width`.
    pub fn gather(&self, local_rows: &[u64]) -> Result<Vec<f32>, TableError> {
        let w = self.width();
        let n = self.num_rows() as u64;
        let outside = |r: u64| {
            TableError::BadBatch(format!(
                "table `{}`: local row {r} outside the shard's {n} rows",
                self.table
            ))
        };
        let data = match &self.held {
            Rows::Host { weights, .. } => weights.as_slice(),
            Rows::Device(d) => {
                if let Some(&r) = local_rows.iter().find(|&&r| r >= n) {
                    return Err(outside(r));
                }
                return d.gather(local_rows);
            }
            Rows::File(f) => return f.gather(local_rows),
        };
        // one pass: bounds check, prefetch ahead, copy (widening 16-bit rows)
        let words = self.words();
        let mut out = Vec::with_capacity(local_rows.len() * w);
        for (i, &r) in local_rows.iter().enumerate() {
            if r >= n {
                return Err(outside(r));
            }
            if let Some(&ahead) = local_rows.get(i + crate::prefetch::DISTANCE) {
                crate::prefetch::prefetch(data.as_ptr().wrapping_add(ahead as usize * words));
            }
            self.dtype
                .widen_into(&data[r as usize * words..][..words], w, &mut out);
        }
        Ok(out)
    }

    /// Applies one optimizer step to the given local rows (strictly ascending).
    pub fn apply(
        &mut self,
        opt: &SparseOptimizer,
        local_rows: &[u64],
        grads: &[f32],
    ) -> Result<(), TableError> {
        self.steps += 1;
        let w = self.width();
        let (dtype, words, step) = (self.dtype, self.words(), self.steps);
        let (salt, first_row, first_col) = (self.salt, self.rows.start, self.cols.start);
        match &mut self.held {
            Rows::Host { weights, state } if dtype == RowDtype::F32 => opt.apply(
                step,
                weights.as_mut_slice(),
                state.as_mut_slice(),
                w,
                local_rows,
                grads,
            ),
            Rows::Host { weights, state } => {
                let bc = opt.bias_corrections(step);
                opt.apply_rows(
                    weights.as_mut_slice(),
                    words,
                    state.as_mut_slice(),
                    w,
                    local_rows,
                    grads,
                    |i, row, s, g, scratch| {
                        let key = RowDtype::rounding_key(salt, step, first_row + local_rows[i]);
                        opt.update_stored_row(dtype, row, s, g, bc, (key, first_col), scratch);
                    },
                )
            }
            Rows::Device(d) => {
                let n = (self.rows.end - self.rows.start) as usize;
                crate::optimizer::check_rows(local_rows, n)?;
                if grads.len() != local_rows.len() * w {
                    return Err(TableError::SizeMismatch {
                        what: "row gradients".into(),
                        expected: local_rows.len() * w,
                        got: grads.len(),
                    });
                }
                d.apply(opt, self.steps, local_rows, grads)
            }
            Rows::File(f) => f.apply(opt, step, local_rows, grads),
        }
    }
}

/// Columns `part` of every record of a file-tier shard, in row order, a block of rows
/// at a time.
fn stream_file_columns<E: From<TableError>>(
    f: &FileRows,
    part: Range<usize>,
    mut out: impl FnMut(&[f32]) -> Result<(), E>,
) -> Result<(), E> {
    let record = f.record();
    let mut block = Vec::new();
    f.for_each_chunk(|_, recs| {
        block.clear();
        recs.chunks(record)
            .for_each(|r| block.extend_from_slice(&r[part.clone()]));
        out(&block)
    })
}

/// Fills `out` (stored rows of `dtype`) with the initial values of `extent`.
fn fill_stored(init: &RowInit, dtype: RowDtype, out: &mut [f32], extent: &ShardExtent, dim: usize) {
    if dtype == RowDtype::F32 {
        return init.fill(out, extent.rows.clone(), extent.cols.clone(), dim);
    }
    use rayon::prelude::*;
    let words = dtype.words(extent.cols.len());
    if words == 0 {
        return;
    }
    out.par_chunks_mut(words)
        .enumerate()
        .for_each_init(Vec::new, |scratch, (i, row)| {
            let r = extent.rows.start + i as u64;
            init.fill_stored_row(r, extent.cols.clone(), dim, dtype, (row, scratch));
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::OptimizerKind;

    fn shard(kind: OptimizerKind) -> (TableShard, SparseOptimizer) {
        let opt = SparseOptimizer::new(kind, 0.1);
        let extent = ShardExtent {
            rank: 0,
            rows: 2..5,
            cols: 1..3,
        };
        (TableShard::new("t", 4, &extent, &RowInit::Zeros, &opt), opt)
    }

    #[test]
    fn adam_state_planes_are_first_then_second_moments() {
        let (mut s, opt) = shard(OptimizerKind::Adam);
        let layout = opt.state_layout();
        assert_eq!(layout.planes(), 2);
        // row r holds [m(2 columns), v(2 columns)]
        let numbered: Vec<f32> = (0..12).map(|i| i as f32).collect();
        s.set_state(&numbered).unwrap();
        assert_eq!(
            s.state_plane(layout, 0).unwrap(),
            vec![0., 1., 4., 5., 8., 9.]
        );
        assert_eq!(
            s.state_plane(layout, 1).unwrap(),
            vec![2., 3., 6., 7., 10., 11.]
        );
        let m: Vec<f32> = (0..6).map(|i| 100.0 + i as f32).collect();
        s.set_state_plane(layout, 0, &m).unwrap();
        assert_eq!(s.state_plane(layout, 0).unwrap(), m);
        assert_eq!(
            s.state_plane(layout, 1).unwrap(),
            vec![2., 3., 6., 7., 10., 11.]
        );
        assert!(s.set_state_plane(layout, 2, &m).is_err());
        assert!(s.set_state_plane(layout, 0, &m[..5]).is_err());
    }

    /// Reset rows read as a key's initial values and state, the same in RAM, with
    /// 16-bit rows and in the file tier; the other rows keep theirs.
    #[test]
    fn reset_rows_start_afresh_from_their_keys_in_every_storage() {
        let opt = SparseOptimizer::new(OptimizerKind::Adagrad, 0.1);
        let init = RowInit::Uniform {
            bound: 0.5,
            seed: 4,
        };
        let spec = TableSpec {
            name: "keys".into(),
            rows: 50,
            dim: 4,
            init: init.clone(),
        };
        let extent = ShardExtent {
            rank: 0,
            rows: 0..50,
            cols: 0..4,
        };
        let dir = std::env::temp_dir().join(format!("shardrec-reset-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = crate::FileTier {
            dir: dir.clone(),
            cache_bytes: 16 * 100,
            policy: crate::CachePolicy::Lru,
        };
        let mut results = Vec::new();
        for (tier, dtype) in [
            (None, RowDtype::F32),
            (Some(file.clone()), RowDtype::F32),
            (None, RowDtype::Bf16),
        ] {
            let storage = TableStorage {
                file: tier,
                dtype,
                keyed: false,
            };
            let mut s = TableShard::build(&spec, &extent, &opt, &storage).unwrap();
            let rows: Vec<u64> = (0..50).collect();
            s.apply(&opt, &rows, &vec![1.0; 200]).unwrap();
            s.reset_rows(&[3, 40], &[1_000_007, 9], &init, &opt)
                .unwrap();
            let w = s.weights().unwrap().into_owned();
            let st = s.state().unwrap().into_owned();
            let key_row = |seed: u64| -> Vec<f32> {
                let v: Vec<f32> = (0..4).map(|c| init.value(seed, c, 4)).collect();
                let mut words = vec![0f32; dtype.words(4)];
                dtype.encode(&v, &mut words, Rounding::Nearest);
                let mut back = vec![0f32; 4];
                dtype.decode(&words, &mut back);
                back
            };
            assert_eq!(&w[12..16], &key_row(1_000_007)[..], "{dtype:?}");
            assert_eq!(&w[160..164], &key_row(9)[..]);
            assert_eq!(&st[12..16], &[0.0; 4], "fresh state");
            assert_eq!(&st[16..20], &[1.0; 4], "row 4 keeps its state");
            assert!(s.reset_rows(&[50], &[1], &init, &opt).is_err());
            if dtype == RowDtype::F32 {
                results.push((w, st));
            }
        }
        assert_eq!(results[0], results[1], "RAM and file agree");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn rowwise_adagrad_has_one_plane_of_one_value_per_row() {
        let (mut s, opt) = shard(OptimizerKind::RowwiseAdagrad);
        let layout = opt.state_layout();
        s.set_state_plane(layout, 0, &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(&*s.state().unwrap(), &[1.0, 2.0, 3.0]);
        assert_eq!(s.state_plane(layout, 0).unwrap(), vec![1.0, 2.0, 3.0]);
    }
}
