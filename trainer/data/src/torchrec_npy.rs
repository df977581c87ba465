//! `data.format = "torchrec_npy"`: TorchRec's preprocessed Criteo days
//! (`BinaryCriteoUtils.tsv_to_npys`: `<stem>_dense.npy` float32 n x 13, already
//! `log(x - min + 2)`; `<stem>_sparse.npy` int64 n x 26, hashed or, after
//! `sparse_to_contiguous`, contiguous ids; `<stem>_labels.npy` int32 n x 1), read through
//! memmap2: nothing is loaded whole, so a day larger than RAM streams through.
//!
//! There is no vocabulary: as TorchRec's `InMemoryBinaryCriteoIterDataPipe` does with
//! `hashes`, id `v` of feature `f` is row `v mod num_embeddings_per_feature[f]` (a
//! negative id wraps as Python's `%` does). Rows reach the vocabulary code as
//! [`ParsedRow`]s whose values are those ids in decimal, read back by identity
//! vocabularies ([`crate::FeatureVocab::identity`]); keyed features get the raw id.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::bad_rows::{keep_good_rows, BadField, BadRowCounts};
use super::file_sets::npy_day_stem;
use super::raw_format::{label_value, ParsedRow, RowParser};
use super::vocab::{FeatureVocab, Vocab};
use super::DataError;
use crate::config::DataConfig;

/// Rows turned into [`ParsedRow`]s at a time.
const BLOCK_ROWS: usize = 64 * 1024;

/// An element type an array may have.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Element {
    F32,
    F64,
    I32,
    I64,
    U32,
    U64,
    I8,
    U8,
    Bool,
}

impl Element {
    fn parse(descr: &str) -> Option<Self> {
        // '<' little-endian, '|' not applicable, '=' native (little on our targets)
        let (order, code) = descr.split_at(1);
        if !matches!(order, "<" | "|" | "=") {
            return None;
        }
        Some(match code {
            "f4" => Self::F32,
            "f8" => Self::F64,
            "i4" => Self::I32,
            "i8" => Self::I64,
            "u4" => Self::U32,
            "u8" => Self::U64,
            "i1" => Self::I8,
            "u1" => Self::U8,
            "b1" => Self::Bool,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 | Self::U64 => 8,
            Self::F32 | Self::I32 | Self::U32 => 4,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// One `.npy` file mapped: a C-order 1-d or 2-d array.
struct NpyArray {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
    element: Element,
    rows: usize,
    columns: usize,
}

fn corrupt(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Corrupt {
        path: path.into(),
        message: message.into(),
    }
}

impl NpyArray {
    fn open(path: &Path) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        // SAFETY: the file is mapped read-only and only read; like every reader of
        // prepared data we rely on no other process truncating it while we run.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))?;
        let (header, data_start) = header_of(&map)
            .ok_or_else(|| corrupt(path, "not a NumPy .npy file (no \\x93NUMPY header)"))?;
        let descr = dict_value(header, "descr")
            .map(|d| d.trim_matches(['\'', '"']))
            .ok_or_else(|| corrupt(path, "the .npy header has no 'descr'"))?;
        let element = Element::parse(descr).ok_or_else(|| {
            corrupt(path, format!("element type {descr} is not one torchrec_npy reads (little-endian ints, floats, bool)"))
        })?;
        if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
            return Err(corrupt(path, "a Fortran-order array; save it in C order"));
        }
        let shape = shape_of(header)
            .ok_or_else(|| corrupt(path, "the .npy header's shape is unreadable"))?;
        let (rows, columns) = match shape[..] {
            [n] => (n, 1),
            [n, k] => (n, k),
            _ => {
                return Err(corrupt(
                    path,
                    format!("shape {shape:?}: expected one or two dimensions"),
                ))
            }
        };
        let need = data_start + rows * columns * element.size();
        if map.len() < need {
            return Err(corrupt(
                path,
                format!(
                    "{} bytes, the header's shape needs {need} (truncated?)",
                    map.len()
                ),
            ));
        }
        Ok(Self {
            path: path.into(),
            map,
            data_start,
            element,
            rows,
            columns,
        })
    }

    /// Element (r, c) as f64 (exact for every integer below 2^53).
    fn number(&self, r: usize, c: usize) -> f64 {
        match self.element {
            Element::I64 => self.int(r, c) as f64,
            Element::U64 => self.unsigned(r, c) as f64,
            Element::F32 => f64::from(f32::from_le_bytes(self.bytes(r, c))),
            Element::F64 => f64::from_le_bytes(self.bytes(r, c)),
            _ => self.int(r, c) as f64,
        }
    }

    /// Element (r, c) of an integer array as i64 (a u64 above i64::MAX wraps).
    fn int(&self, r: usize, c: usize) -> i64 {
        match self.element {
            Element::I64 => i64::from_le_bytes(self.bytes(r, c)),
            Element::U64 => self.unsigned(r, c) as i64,
            Element::I32 => i64::from(i32::from_le_bytes(self.bytes(r, c))),
            Element::U32 => i64::from(u32::from_le_bytes(self.bytes(r, c))),
            Element::I8 => i64::from(self.bytes::<1>(r, c)[0] as i8),
            Element::U8 | Element::Bool => i64::from(self.bytes::<1>(r, c)[0]),
            Element::F32 | Element::F64 => self.number(r, c) as i64,
        }
    }

    fn unsigned(&self, r: usize, c: usize) -> u64 {
        u64::from_le_bytes(self.bytes(r, c))
    }

    fn bytes<const N: usize>(&self, r: usize, c: usize) -> [u8; N] {
        let at = self.data_start + (r * self.columns + c) * N;
        self.map[at..at + N].try_into().expect("N bytes")
    }

    fn is_integer(&self) -> bool {
        !matches!(self.element, Element::F32 | Element::F64)
    }
}

/// The header text and where the data starts.
fn header_of(map: &[u8]) -> Option<(&str, usize)> {
    if map.len() < 10 || &map[..6] != b"\x93NUMPY" {
        return None;
    }
    let (len, start) = match map[6] {
        1 => (usize::from(u16::from_le_bytes([map[8], map[9]])), 10),
        _ => (
            u32::from_le_bytes(map.get(8..12)?.try_into().ok()?) as usize,
            12,
        ),
    };
    let text = std::str::from_utf8(map.get(start..start + len)?).ok()?;
    Some((text, start + len))
}

/// The text after `'key':` in the header's dict, up to the next comma outside brackets.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    let end = rest
        .char_indices()
        .find(|&(_, c)| {
            depth += i32::from(c == '(') - i32::from(c == ')');
            depth == 0 && (c == ',' || c == '}')
        })
        .map_or(rest.len(), |(i, _)| i);
    Some(rest[..end].trim())
}

fn shape_of(header: &str) -> Option<Vec<usize>> {
    let v = dict_value(header, "shape")?.strip_prefix('(')?;
    let inner = &v[..v.find(')')?];
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect()
}

/// A day's three arrays, checked against each other.
pub(crate) struct NpyDay {
    labels: NpyArray,
    dense: NpyArray,
    sparse: NpyArray,
}

impl NpyDay {
    /// The day `path` names (its stem, or any of its three files).
    pub(crate) fn open(path: &Path, cfg: &DataConfig) -> Result<Self, DataError> {
        let [labels, dense, sparse] = Self::files(path, cfg);
        let day = Self {
            labels: NpyArray::open(&labels)?,
            dense: NpyArray::open(&dense)?,
            sparse: NpyArray::open(&sparse)?,
        };
        for a in [&day.dense, &day.sparse] {
            if a.rows != day.labels.rows {
                return Err(corrupt(
                    &a.path,
                    format!(
                        "{} rows, but {} has {}",
                        a.rows,
                        day.labels.path.display(),
                        day.labels.rows
                    ),
                ));
            }
        }
        if day.labels.columns != 1 {
            return Err(corrupt(
                &day.labels.path,
                format!("{} columns; labels are n x 1", day.labels.columns),
            ));
        }
        if !day.sparse.is_integer() {
            return Err(corrupt(&day.sparse.path, "sparse ids must be integers"));
        }
        Ok(day)
    }

    /// The day's labels, dense and sparse files (also the cache key's inputs).
    pub(crate) fn files(path: &Path, cfg: &DataConfig) -> [PathBuf; 3] {
        let stem = npy_day_stem(&path.display().to_string(), &cfg.npy_sparse_suffix);
        ["_labels.npy", "_dense.npy", cfg.npy_sparse_suffix.as_str()]
            .map(|s| PathBuf::from(format!("{stem}{s}")))
    }

    pub(crate) fn rows(&self) -> u64 {
        self.labels.rows as u64
    }

    /// The parser whose schema these arrays have.
    pub(crate) fn parser(&self, cfg: &DataConfig) -> RowParser {
        RowParser::for_npy(cfg, self.dense.columns, self.sparse.columns)
    }
}

/// Each sparse feature's table size from `num_embeddings_per_feature` (one value for
/// all, or one per feature).
fn table_sizes(cfg: &DataConfig, features: usize) -> Result<Vec<u64>, DataError> {
    match cfg.num_embeddings_per_feature[..] {
        [n] => Ok(vec![n; features]),
        ref v if v.len() == features => Ok(v.to_vec()),
        ref v => Err(crate::ConfigKeyError {
            key: "data.num_embeddings_per_feature".into(),
            message: format!(
                "{} values for {features} sparse features: give one for all, or one per feature",
                v.len()
            ),
        }
        .into()),
    }
}

/// The identity vocabularies of the sparse features (`keyed` has one flag a feature;
/// keyed ones stay keyed).
pub(crate) fn vocab(cfg: &DataConfig, keyed: &[bool]) -> Result<Vocab, DataError> {
    let sizes = table_sizes(cfg, keyed.len())?;
    let features = sizes
        .iter()
        .zip(keyed)
        .map(|(&n, &k)| {
            if k {
                FeatureVocab::keyed()
            } else {
                FeatureVocab::identity(n)
            }
        })
        .collect();
    Ok(Vocab { features })
}

/// Reads the day's rows in blocks and calls `on_rows` with each block's good rows and
/// the index (among good rows) of the first; a label other than 0/1 (or -1) is a bad
/// row under `data.on_bad_row`.
pub(crate) fn scan(
    path: &Path,
    parser: &RowParser,
    cfg: &DataConfig,
    keyed: &[bool],
    mut on_rows: impl FnMut(u64, &[ParsedRow]) -> Result<(), DataError>,
) -> Result<(u64, BadRowCounts), DataError> {
    use rayon::prelude::*;
    let day = NpyDay::open(path, cfg)?;
    let sizes = table_sizes(cfg, day.sparse.columns)?;
    let mut n = day.labels.rows;
    if cfg.max_rows > 0 {
        n = n.min(cfg.max_rows as usize);
    }
    let (mut good, mut bad) = (0u64, BadRowCounts::default());
    let mut rows: Vec<ParsedRow> = Vec::new();
    for start in (0..n).step_by(BLOCK_ROWS) {
        let end = (start + BLOCK_ROWS).min(n);
        rows.resize_with(end - start, ParsedRow::default);
        let results: Vec<Result<(), BadField>> = rows
            .par_iter_mut()
            .enumerate()
            .with_min_len(1024)
            .map(|(k, row)| fill_row(&day, parser, &sizes, keyed, start + k, row))
            .collect();
        let kept = keep_good_rows(
            &day.labels.path,
            cfg.on_bad_row,
            start as u64,
            results,
            &mut rows,
            &mut bad,
        )?;
        on_rows(good, &rows[..kept])?;
        good += kept as u64;
    }
    Ok((good, bad))
}

fn fill_row(
    day: &NpyDay,
    parser: &RowParser,
    sizes: &[u64],
    keyed: &[bool],
    r: usize,
    row: &mut ParsedRow,
) -> Result<(), BadField> {
    row.clear();
    row.label = label_value(day.labels.number(r, 0), None, 1, None)?;
    for c in 0..day.dense.columns {
        parser.push_dense(row, day.dense.number(r, c));
    }
    let mut text = itoa::Buffer::new();
    for (f, &size) in sizes.iter().enumerate() {
        let v = day.sparse.int(r, f);
        let value = if keyed[f] {
            v
        } else {
            v.rem_euclid(size as i64)
        };
        row.push_value(text.format(value).as_bytes());
        row.end_feature();
    }
    Ok(())
}
