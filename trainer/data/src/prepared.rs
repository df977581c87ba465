//! Reading a prepared dataset: `meta.json`, `vocab.bin`, and per split one file per
//! column, memory-mapped. File sizes are checked against the row counts on open, so a
//! truncated cache is refused with the file's name instead of read past its end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::bad_rows::BadRowCounts;
use super::raw_format::Schema;
use super::vocab::Vocab;
use super::DataError;

/// Layout version; bump when the files change meaning.
pub const PREPARED_VERSION: u32 = 1;

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
    pub vocab_sizes: Vec<u64>,
    pub splits: BTreeMap<SplitName, SplitMeta>,
    pub bad_rows: BadRowCounts,
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

/// One categorical column: an id per value, and per-row offsets when multi-valued.
#[derive(Debug)]
pub(crate) struct CatColumn {
    pub(crate) ids: MappedColumn,
    pub(crate) offsets: Option<MappedColumn>,
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
    /// the order rows are read in.
    #[cfg(test)]
    pub(crate) fn for_tests(rows: usize) -> Self {
        let mut m = memmap2::MmapMut::map_anon((rows * 4).max(4)).expect("anonymous map");
        for (r, b) in m.chunks_exact_mut(4).take(rows).enumerate() {
            b.copy_from_slice(&(r as f32).to_le_bytes());
        }
        let map = m.make_read_only().expect("read-only map");
        Self {
            name: SplitName::Train,
            rows,
            label: MappedColumn { map: Some(map) },
            dense: vec![],
            cats: vec![],
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

    /// Ids of categorical feature `f` in row `r`.
    #[inline]
    pub fn cat_ids(&self, f: usize, r: usize) -> &[u32] {
        let c = &self.cats[f];
        let ids = c.ids.slice::<u32>();
        match &c.offsets {
            None => &ids[r..r + 1],
            Some(o) => {
                let o = o.slice::<u64>();
                &ids[o[r] as usize..o[r + 1] as usize]
            }
        }
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

impl PreparedDataset {
    /// Opens a prepared folder, checking the version and every column's size.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let meta_path = dir.join("meta.json");
        let text = std::fs::read_to_string(&meta_path).map_err(|e| DataError::io(&meta_path, e))?;
        let meta: PreparedMeta = serde_json::from_str(&text).map_err(|e| DataError::Corrupt {
            path: meta_path.clone(),
            message: e.to_string(),
        })?;
        if meta.version != PREPARED_VERSION {
            return Err(DataError::Corrupt {
                path: meta_path,
                message: format!(
                    "layout version {} (this build reads {PREPARED_VERSION}); prepare again",
                    meta.version
                ),
            });
        }
        if meta.vocab_sizes.len() != meta.schema.categorical.len() {
            return Err(DataError::Corrupt {
                path: meta_path,
                message: format!(
                    "{} vocabulary sizes for {} categorical features",
                    meta.vocab_sizes.len(),
                    meta.schema.categorical.len()
                ),
            });
        }
        if let Some((name, sm)) = meta.splits.iter().find(|(_, s)| s.rows > MAX_ROWS) {
            return Err(DataError::Corrupt {
                path: meta_path,
                message: format!("{} rows in split {}", sm.rows, name.as_str()),
            });
        }
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
            let n = sm.rows;
            let label = MappedColumn::open(&column_path(dir, name, "label.f32"), n * 4)?;
            let dense = (0..meta.schema.dense.len())
                .map(|j| {
                    MappedColumn::open(&column_path(dir, name, &format!("dense_{j}.f32")), n * 4)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut cats = Vec::new();
            for (f, c) in meta.schema.categorical.iter().enumerate() {
                if c.multi_valued {
                    let opath = column_path(dir, name, &format!("cat_{f}.off"));
                    let offsets = MappedColumn::open(&opath, (n + 1) * 8)?;
                    let total = offsets.slice::<u64>().last().copied().unwrap_or(0);
                    let o = offsets.slice::<u64>();
                    if o.first().copied().unwrap_or(0) != 0 || o.windows(2).any(|w| w[0] > w[1]) {
                        return Err(DataError::Corrupt {
                            path: opath,
                            message: "offsets are not increasing".into(),
                        });
                    }
                    let bytes = total.checked_mul(4).ok_or_else(|| DataError::Corrupt {
                        path: opath.clone(),
                        message: format!("last offset {total} is past any file"),
                    })?;
                    let ids = MappedColumn::open(
                        &column_path(dir, name, &format!("cat_{f}.u32")),
                        bytes,
                    )?;
                    cats.push(CatColumn {
                        ids,
                        offsets: Some(offsets),
                    });
                } else {
                    let ids = MappedColumn::open(
                        &column_path(dir, name, &format!("cat_{f}.u32")),
                        n * 4,
                    )?;
                    cats.push(CatColumn { ids, offsets: None });
                }
            }
            // ids must be inside the vocabulary (a cheap scan that keeps lookups safe)
            for (f, c) in cats.iter().enumerate() {
                let size = meta.vocab_sizes[f];
                if let Some(bad) = c
                    .ids
                    .slice::<u32>()
                    .iter()
                    .find(|&&id| u64::from(id) >= size)
                {
                    return Err(DataError::Corrupt {
                        path: column_path(dir, name, &format!("cat_{f}.u32")),
                        message: format!("id {bad} outside the vocabulary of {size}"),
                    });
                }
            }
            splits.insert(
                name,
                std::sync::Arc::new(PreparedSplit {
                    name,
                    rows: n as usize,
                    label,
                    dense,
                    cats,
                }),
            );
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
