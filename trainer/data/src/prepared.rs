//! Reading a prepared dataset: `meta.json`, `vocab.bin`, and per split one file per
//! column, memory-mapped. File sizes are checked against the row counts on open, so a
//! truncated cache is refused with the file's name instead of read past its end.
//!
//! Categorical feature `f` of a split: `cat_{f}.u32`, a vocabulary id (u32) per value,
//! or for a keyed feature `cat_{f}.u64`, a raw key (u64, [`crate::key_of`]) per value;
//! multi-valued features add `cat_{f}.off`, the n + 1 row offsets (u64) into it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut, UncheckedAdvice};
use serde::{Deserialize, Serialize};

use super::bad_rows::BadRowCounts;
use super::raw_format::{CategoricalColumn, Schema};
use super::vocab::Vocab;
use super::DataError;

/// Layout version; bump when the files change meaning (2: keyed features).
pub const PREPARED_VERSION: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitName {
    Train,
    Valid,
    Test,
}

impl SplitName {
    pub fn as_str(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Valid => "valid",
            SplitName::Test => "test",
        }
    }

    pub const ALL: [SplitName; 3] = [SplitName::Train, SplitName::Valid, SplitName::Test];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMeta {
    pub rows: u64,
    pub positives: u64,
}

/// Contents of `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedMeta {
    pub version: u32,
    pub key: String,
    pub format: String,
    pub sources: Vec<String>,
    pub schema: Schema,
    /// Per categorical feature, its number of ids including OOV; 0 means the feature
    /// is keyed (see `keyed`): it has no vocabulary.
    pub vocab_sizes: Vec<u64>,
    pub splits: BTreeMap<SplitName, SplitMeta>,
    pub bad_rows: BadRowCounts,
    /// Per categorical feature, whether its values are raw 64-bit keys
    /// (`data.keyed_features`, file `cat_{f}.u64`) rather than vocabulary ids. An
    /// absent list means no feature is keyed; [`PreparedDataset::open`] fills it in.
    #[serde(default)]
    pub keyed: Vec<bool>,
}

impl PreparedMeta {
    /// Whether categorical feature `f` is keyed.
    pub fn is_keyed(&self, f: usize) -> bool {
        self.keyed.get(f).copied().unwrap_or(false)
    }

    /// The names of the keyed features, in order.
    pub fn keyed_features(&self) -> Vec<String> {
        let keyed = self.schema.categorical.iter().enumerate();
        keyed
            .filter(|(f, _)| self.is_keyed(*f))
            .map(|(_, c)| c.name.clone())
            .collect()
    }
}

/// A column file's bytes, mapped (or empty).
#[derive(Debug)]
pub(crate) struct MappedColumn {
    map: Option<Mmap>,
}

/// Element types a column file holds; any bit pattern is a valid value.
pub(crate) trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for u32 {}
impl Plain for u64 {}

impl MappedColumn {
    fn open(path: &Path, expected_bytes: u64) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        if len != expected_bytes {
            return Err(DataError::Corrupt {
                path: path.into(),
                message: format!(
                    "{len} bytes where {expected_bytes} were expected (truncated or stale cache)"
                ),
            });
        }
        if len == 0 {
            return Ok(Self { map: None });
        }
        // SAFETY: the file is private to the prepared cache and never written after it is
        // renamed into place; mapping it read-only is sound as long as nobody edits it.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
        Ok(Self { map: Some(map) })
    }

    /// Hands back this process's pages of bytes `range` of the file and of the
    /// [`MAPPED_REACH`] on either side (pages its reads mapped): they leave the RSS and
    /// stay in the page cache, and a later read maps them again (rows still to be read
    /// there cost their read a minor fault). Best effort: a failed advice only leaves the
    /// pages mapped.
    fn release(&self, range: std::ops::Range<usize>) {
        let start = range.start.saturating_sub(MAPPED_REACH);
        self.release_exact(start..range.end.saturating_add(MAPPED_REACH));
    }

    /// Hands back this process's pages of bytes `range` (clamped to the file), and of no
    /// more than the pages the range touches.
    pub(crate) fn release_exact(&self, range: std::ops::Range<usize>) {
        let Some(map) = &self.map else { return };
        // memmap2 rounds the start down to a page
        let (start, end) = (range.start, range.end.min(map.len()));
        if end > start {
            // SAFETY: the mapping is a read-only shared map of a file never written after
            // it is renamed into place; MADV_DONTNEED only drops this process's page table
            // entries (the kernel rounds the length up to whole pages), so every later read
            // of the range faults in the file's same bytes: no slice handed out sees other
            // values.
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }

    /// A column of `n` values of `T` in anonymous memory of its own, written by `fill`
    /// (the memory goes back to the system when the column is dropped, whatever the
    /// allocator's settings).
    pub(crate) fn anonymous<T: Plain>(
        n: usize,
        fill: impl FnOnce(&mut [T]),
    ) -> std::io::Result<Self> {
        if n == 0 {
            return Ok(Self { map: None });
        }
        let mut map = MmapMut::map_anon(n * std::mem::size_of::<T>())?;
        // SAFETY: `T` is a plain number type (every bit pattern valid, zeros included)
        // and an anonymous mapping is page-aligned; `align_to_mut` only yields the
        // aligned middle part, which is the whole mapping.
        let (head, body, _) = unsafe { map.align_to_mut::<T>() };
        debug_assert!(head.is_empty());
        fill(&mut body[..n]);
        Ok(Self {
            map: Some(map.make_read_only()?),
        })
    }

    pub(crate) fn slice<T: Plain>(&self) -> &[T] {
        match &self.map {
            None => &[],
            Some(m) => {
                // SAFETY: `T` is a plain number type (every bit pattern valid) and the
                // mapping is page-aligned; `align_to` only yields the aligned middle part.
                let (head, body, _) = unsafe { m.align_to::<T>() };
                debug_assert!(head.is_empty());
                body
            }
        }
    }
}

/// How far from the bytes it reads a read fault may map a file's pages: Linux maps the
/// whole page-cache folio around the fault (large folios reach a PMD, 2 MiB on x86-64,
/// on ext4 and XFS since 6.x), or 64 KiB of fault-around for small folios. A release
/// reaches this far on either side, so pages mapped by its range's reads go with it.
pub(crate) const MAPPED_REACH: usize = 2 << 20;

/// One categorical column: an id (u32) or, keyed, a key (u64) per value, and per-row
/// offsets when multi-valued.
#[derive(Debug)]
pub(crate) struct CatColumn {
    pub(crate) name: String,
    pub(crate) values: MappedColumn,
    pub(crate) offsets: Option<MappedColumn>,
    pub(crate) keyed: bool,
}

impl CatColumn {
    /// The range of row `r`'s values.
    #[inline]
    fn range(&self, r: usize) -> std::ops::Range<usize> {
        match &self.offsets {
            None => r..r + 1,
            Some(o) => {
                let o = o.slice::<u64>();
                o[r] as usize..o[r + 1] as usize
            }
        }
    }

    /// Releases the pages of rows `rows`' values and offsets ([`MappedColumn::release`]).
    fn release(&self, rows: std::ops::Range<usize>) {
        let width = if self.keyed { 8 } else { 4 };
        let values = match &self.offsets {
            None => rows.clone(),
            Some(o) => {
                let o = o.slice::<u64>();
                o[rows.start] as usize..o[rows.end] as usize
            }
        };
        self.values
            .release(values.start * width..values.end * width);
        if let Some(o) = &self.offsets {
            o.release(rows.start * 8..(rows.end + 1) * 8);
        }
    }
}

/// One row's values of one categorical feature, as the split holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatValues<'a> {
    /// Vocabulary ids (OOV = 0).
    Ids(&'a [u32]),
    /// Raw keys of a keyed feature ([`crate::key_of`]).
    Keys(&'a [u64]),
}

impl CatValues<'_> {
    pub fn len(&self) -> usize {
        match self {
            CatValues::Ids(v) => v.len(),
            CatValues::Keys(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first value widened to u64 (an id or a key), None when the row has none.
    pub fn first(&self) -> Option<u64> {
        match self {
            CatValues::Ids(v) => v.first().map(|&id| u64::from(id)),
            CatValues::Keys(v) => v.first().copied(),
        }
    }

    /// Appends the values, widened to u64, to `out` (the batch's value type).
    pub fn extend_into(&self, out: &mut Vec<u64>) {
        match self {
            CatValues::Ids(v) => out.extend(v.iter().map(|&id| u64::from(id))),
            CatValues::Keys(v) => out.extend_from_slice(v),
        }
    }
}

/// One split of a prepared dataset.
#[derive(Debug)]
pub struct PreparedSplit {
    pub name: SplitName,
    pub rows: usize,
    pub(crate) label: MappedColumn,
    pub(crate) dense: Vec<MappedColumn>,
    pub(crate) cats: Vec<CatColumn>,
}

impl PreparedSplit {
    /// A split of `rows` rows whose label is the row's index (no features), for tests of
    /// the order rows are read in. The labels are a mapped file, as a prepared split's.
    #[cfg(test)]
    pub(crate) fn for_tests(rows: usize) -> Self {
        use std::io::Write;
        let mut file = tempfile::tempfile().expect("a temporary file");
        let bytes: Vec<u8> = (0..rows).flat_map(|r| (r as f32).to_le_bytes()).collect();
        file.write_all(&bytes).expect("writing the labels");
        let map = (rows > 0).then(|| {
            // SAFETY: the file is this test's own, unnamed, and not written again.
            unsafe { Mmap::map(&file) }.expect("mapping the labels")
        });
        Self {
            name: SplitName::Train,
            rows,
            label: MappedColumn { map },
            dense: vec![],
            cats: vec![],
        }
    }

    /// Hands back this process's mapped pages of rows `rows` (clamped to the split):
    /// they leave the RSS, stay in the page cache, and are mapped again if read again.
    /// The loader calls it behind its reading position, so a pass over a split larger
    /// than RAM keeps about one shuffle window of it mapped, not all it has read.
    pub fn release_rows(&self, rows: std::ops::Range<usize>) {
        let rows = rows.start.min(self.rows)..rows.end.min(self.rows);
        if rows.is_empty() {
            return;
        }
        let fixed = rows.start * 4..rows.end * 4;
        self.label.release(fixed.clone());
        for d in &self.dense {
            d.release(fixed.clone());
        }
        for c in &self.cats {
            c.release(rows.clone());
        }
    }

    pub fn labels(&self) -> &[f32] {
        self.label.slice()
    }

    pub fn num_dense(&self) -> usize {
        self.dense.len()
    }

    pub fn num_categorical(&self) -> usize {
        self.cats.len()
    }

    /// Dense column `j`.
    pub fn dense_column(&self, j: usize) -> &[f32] {
        self.dense[j].slice()
    }

    /// Whether categorical feature `f` holds raw keys rather than vocabulary ids.
    pub fn is_keyed(&self, f: usize) -> bool {
        self.cats[f].keyed
    }

    /// Values (ids, or keys for a keyed feature) of categorical feature `f` in row `r`.
    #[inline]
    pub fn cat_values(&self, f: usize, r: usize) -> CatValues<'_> {
        let c = &self.cats[f];
        let range = c.range(r);
        if c.keyed {
            CatValues::Keys(&c.values.slice::<u64>()[range])
        } else {
            CatValues::Ids(&c.values.slice::<u32>()[range])
        }
    }

    /// Ids of categorical feature `f` in row `r`; an error naming the feature when it
    /// is keyed (its values are keys: [`Self::cat_values`] reads both kinds).
    #[inline]
    pub fn cat_ids(&self, f: usize, r: usize) -> Result<&[u32], DataError> {
        match self.cat_values(f, r) {
            CatValues::Ids(ids) => Ok(ids),
            CatValues::Keys(_) => Err(DataError::KeyedFeature {
                feature: self.cats[f].name.clone(),
                message: "its values are 64-bit keys, not vocabulary ids".into(),
            }),
        }
    }

    /// The first value (id or key) of feature `f` in row `r`, 0 when the row has none:
    /// the key rows are grouped by (GAUC, per-category AUC).
    #[inline]
    pub fn first_value(&self, f: usize, r: usize) -> u64 {
        self.cat_values(f, r).first().unwrap_or(0)
    }
}

/// More rows than any split can hold: its offsets file would pass 2^64 bytes. A larger
/// count in `meta.json` is damage, and is refused before any size is computed from it.
const MAX_ROWS: u64 = 1 << 56;

/// A prepared dataset on disk.
#[derive(Debug)]
pub struct PreparedDataset {
    pub dir: PathBuf,
    pub meta: PreparedMeta,
    pub splits: BTreeMap<SplitName, std::sync::Arc<PreparedSplit>>,
}

pub(crate) fn column_path(dir: &Path, split: SplitName, file: &str) -> PathBuf {
    dir.join(split.as_str()).join(file)
}

/// The values file of categorical feature `f` and the bytes of one value in it.
pub(crate) fn cat_file(f: usize, keyed: bool) -> (String, u64) {
    if keyed {
        (format!("cat_{f}.u64"), 8)
    } else {
        (format!("cat_{f}.u32"), 4)
    }
}

/// `meta.json`, checked: the layout version, one vocabulary size and keyed flag per
/// categorical feature (size 0 exactly for the keyed ones), row counts in range. An
/// absent keyed list becomes "none keyed".
fn read_meta(dir: &Path) -> Result<PreparedMeta, DataError> {
    let meta_path = dir.join("meta.json");
    let text = std::fs::read_to_string(&meta_path).map_err(|e| DataError::io(&meta_path, e))?;
    let mut meta: PreparedMeta = serde_json::from_str(&text).map_err(|e| DataError::Corrupt {
        path: meta_path.clone(),
        message: e.to_string(),
    })?;
    let corrupt = |message: String| DataError::Corrupt {
        path: meta_path.clone(),
        message,
    };
    if meta.version != PREPARED_VERSION {
        return Err(corrupt(format!(
            "layout version {} (this build reads {PREPARED_VERSION}); prepare again",
            meta.version
        )));
    }
    let features = meta.schema.categorical.len();
    if meta.keyed.is_empty() {
        meta.keyed = vec![false; features];
    }
    if meta.vocab_sizes.len() != features || meta.keyed.len() != features {
        return Err(corrupt(format!(
            "{} vocabulary sizes and {} keyed flags for {features} categorical features",
            meta.vocab_sizes.len(),
            meta.keyed.len(),
        )));
    }
    let sizes = meta.vocab_sizes.iter().zip(&meta.keyed);
    if let Some(f) = sizes
        .clone()
        .position(|(&size, &keyed)| keyed != (size == 0))
    {
        return Err(corrupt(format!(
            "feature `{}` has vocabulary size {} and keyed = {} (size 0 means keyed)",
            meta.schema.categorical[f].name, meta.vocab_sizes[f], meta.keyed[f]
        )));
    }
    if let Some((name, sm)) = meta.splits.iter().find(|(_, s)| s.rows > MAX_ROWS) {
        return Err(corrupt(format!(
            "{} rows in split {}",
            sm.rows,
            name.as_str()
        )));
    }
    Ok(meta)
}

/// Maps split `name` of `n` rows, checking each column's size and that every id is
/// inside its feature's vocabulary (a cheap scan that keeps lookups safe; keys have no
/// range to check).
fn open_split(
    dir: &Path,
    meta: &PreparedMeta,
    name: SplitName,
    n: u64,
) -> Result<PreparedSplit, DataError> {
    let label = MappedColumn::open(&column_path(dir, name, "label.f32"), n * 4)?;
    let dense = (0..meta.schema.dense.len())
        .map(|j| MappedColumn::open(&column_path(dir, name, &format!("dense_{j}.f32")), n * 4))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cats = Vec::new();
    for (f, c) in meta.schema.categorical.iter().enumerate() {
        cats.push(open_cat_column(dir, name, f, c, meta.keyed[f], n)?);
    }
    for (f, c) in cats.iter().enumerate().filter(|(_, c)| !c.keyed) {
        let size = meta.vocab_sizes[f];
        let ids = c.values.slice::<u32>();
        if let Some(bad) = ids.iter().find(|&&id| u64::from(id) >= size) {
            return Err(DataError::Corrupt {
                path: column_path(dir, name, &cat_file(f, false).0),
                message: format!("id {bad} outside the vocabulary of {size}"),
            });
        }
    }
    let split = PreparedSplit {
        name,
        rows: n as usize,
        label,
        dense,
        cats,
    };
    // the scan mapped every id; training maps back only what it reads
    split.release_rows(0..split.rows);
    Ok(split)
}

/// Maps categorical feature `f` of split `name` (`n` rows): its offsets when
/// multi-valued (starting at 0, never decreasing), and its values file, whose size is
/// the value count times 4 (ids) or 8 (keys).
fn open_cat_column(
    dir: &Path,
    name: SplitName,
    f: usize,
    column: &CategoricalColumn,
    keyed: bool,
    n: u64,
) -> Result<CatColumn, DataError> {
    let (file, width) = cat_file(f, keyed);
    let vpath = column_path(dir, name, &file);
    let (offsets, count) = if column.multi_valued {
        let opath = column_path(dir, name, &format!("cat_{f}.off"));
        let offsets = MappedColumn::open(&opath, (n + 1) * 8)?;
        let o = offsets.slice::<u64>();
        if o.first().copied().unwrap_or(0) != 0 || o.windows(2).any(|w| w[0] > w[1]) {
            return Err(DataError::Corrupt {
                path: opath,
                message: "offsets are not increasing".into(),
            });
        }
        let total = o.last().copied().unwrap_or(0);
        (Some(offsets), total)
    } else {
        (None, n)
    };
    let bytes = count.checked_mul(width).ok_or_else(|| DataError::Corrupt {
        path: column_path(dir, name, &format!("cat_{f}.off")),
        message: format!("last offset {count} is past any file"),
    })?;
    Ok(CatColumn {
        name: column.name.clone(),
        values: MappedColumn::open(&vpath, bytes)?,
        offsets,
        keyed,
    })
}

impl PreparedDataset {
    /// Opens a prepared folder, checking the version and every column's size.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let meta = read_meta(dir)?;
        // The value -> id maps are only needed to encode new raw files (evaluation of a
        // saved model); training needs the sizes in meta.json, so the maps stay on disk.
        let vocab_path = dir.join("vocab.bin");
        if !vocab_path.is_file() {
            return Err(DataError::Corrupt {
                path: vocab_path,
                message: "missing".into(),
            });
        }
        let mut splits = BTreeMap::new();
        for (&name, sm) in &meta.splits {
            let split = open_split(dir, &meta, name, sm.rows)?;
            splits.insert(name, std::sync::Arc::new(split));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            splits,
        })
    }

    /// The vocabulary (value -> id maps), read from `vocab.bin`.
    pub fn load_vocab(&self) -> Result<Vocab, DataError> {
        let vocab = Vocab::load(&self.dir.join("vocab.bin"))?;
        if vocab.sizes() != self.meta.vocab_sizes {
            return Err(DataError::Corrupt {
                path: self.dir.join("vocab.bin"),
                message: "does not match meta.json".into(),
            });
        }
        Ok(vocab)
    }

    pub fn split(&self, name: SplitName) -> Option<&std::sync::Arc<PreparedSplit>> {
        self.splits.get(&name).filter(|s| s.rows > 0)
    }

    pub fn rows(&self, name: SplitName) -> usize {
        self.splits.get(&name).map_or(0, |s| s.rows)
    }
}

/// Rows of one split, column by column: what a columnar reader hands the writer.
#[derive(Debug, Default)]
pub(crate) struct ColumnBlock {
    pub(crate) labels: Vec<f32>,
    /// Per dense column, a value per row.
    pub(crate) dense: Vec<Vec<f32>>,
    /// Per categorical feature: every row's encoded values in order, and each row's
    /// value count.
    pub(crate) cats: Vec<(Vec<u64>, Vec<u64>)>,
}
