//! Raw files to the prepared columnar layout, cached by a key of the inputs and options.
//!
//! Passes over the raw data: (for a tail split of one file) count the good rows; build
//! the vocabulary from the rows of the training split; encode every row into its split's
//! column files. Rows stream through; only the vocabulary is held in memory. The result
//! is written to a temporary folder and renamed into place, so an interrupted run never
//! leaves a cache entry that looks complete.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use shardrec_tables::{hash_id, unit_f32};

use super::bad_rows::{BadRow, BadRowCounts};
use super::fast_hash::FastHashBuilder;
use super::prepared::{
    column_path, PreparedDataset, PreparedMeta, SplitMeta, SplitName, PREPARED_VERSION,
};
use super::raw_format::{ParsedRow, RowParser, Schema};
use super::vocab::{Vocab, VocabBuilder};
use super::DataError;
use crate::config::{BadRowPolicy, DataConfig, DataFormat, SplitKind};

/// Which split each good row of a file goes to.
#[derive(Debug, Clone, Copy, Serialize)]
enum Assign {
    All(SplitName),
    /// Good rows [0, train_end) train, [train_end, valid_end) valid, rest test.
    Tail {
        train_end: u64,
        valid_end: u64,
    },
    Random {
        seed: u64,
        valid: f64,
        test: f64,
    },
}

impl Assign {
    fn split(&self, idx: u64) -> SplitName {
        match *self {
            Assign::All(s) => s,
            Assign::Tail {
                train_end,
                valid_end,
            } => {
                if idx < train_end {
                    SplitName::Train
                } else if idx < valid_end {
                    SplitName::Valid
                } else {
                    SplitName::Test
                }
            }
            Assign::Random { seed, valid, test } => {
                let u = f64::from(unit_f32(hash_id(seed, idx)));
                if u < test {
                    SplitName::Test
                } else if u < test + valid {
                    SplitName::Valid
                } else {
                    SplitName::Train
                }
            }
        }
    }
}

/// Python's `round` (half to even), so tail splits match the peers' `int(round(n * f))`.
pub(crate) fn round_half_even(x: f64) -> u64 {
    let r = x.round();
    let v = if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    };
    v.max(0.0) as u64
}

/// Prepares (or reuses) the dataset `cfg` describes.
pub fn prepare(cfg: &DataConfig, log: &dyn Fn(&str)) -> Result<PreparedDataset, DataError> {
    prepare_inner(cfg, None, log)
}

/// Prepares `cfg`'s files with a fixed vocabulary (a trained model's), for evaluation.
pub fn prepare_with_vocab(
    cfg: &DataConfig,
    vocab_file: &Path,
    log: &dyn Fn(&str),
) -> Result<PreparedDataset, DataError> {
    let vocab = Vocab::load(vocab_file)?;
    let crc =
        crc32fast::hash(&std::fs::read(vocab_file).map_err(|e| DataError::io(vocab_file, e))?);
    prepare_inner(cfg, Some((vocab, crc)), log)
}

#[derive(Serialize)]
struct KeyMaterial<'a> {
    version: u32,
    cfg: &'a DataConfig,
    sources: Vec<(String, u64, u128)>,
    vocab_crc: Option<u32>,
}

fn prepare_inner(
    cfg: &DataConfig,
    fixed: Option<(Vocab, u32)>,
    log: &dyn Fn(&str),
) -> Result<PreparedDataset, DataError> {
    if cfg.format == DataFormat::Prepared {
        return PreparedDataset::open(&cfg.train);
    }
    let sources = plan_sources(cfg)?;
    let mut stamped = Vec::new();
    for (path, _) in &sources {
        let m = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        if !m.is_file() {
            return Err(DataError::Config(format!("{}: not a file", path.display())));
        }
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        stamped.push((canon.display().to_string(), m.len(), mtime));
    }
    // Cache key: everything that changes the prepared bytes except the cache folder.
    let mut keyed = cfg.clone();
    keyed.cache_dir = PathBuf::new();
    let material = serde_json::to_string(&KeyMaterial {
        version: PREPARED_VERSION,
        cfg: &keyed,
        sources: stamped.clone(),
        vocab_crc: fixed.as_ref().map(|f| f.1),
    })
    .map_err(|e| DataError::Config(e.to_string()))?;
    let mut h = FastHashBuilder.build_hasher();
    h.write(material.as_bytes());
    let key = format!("{:016x}", h.finish());
    let stem = cfg
        .train
        .file_stem()
        .map_or("data".into(), |s| s.to_string_lossy().into_owned());
    let dir = cfg.cache_dir.join(format!("{stem}-{key}"));
    if dir.join("meta.json").is_file() {
        match PreparedDataset::open(&dir) {
            Ok(ds) => {
                log(&format!("using prepared data {}", dir.display()));
                return Ok(ds);
            }
            Err(e) => log(&format!(
                "prepared cache {} unusable ({e}); preparing again",
                dir.display()
            )),
        }
    }
    std::fs::create_dir_all(&cfg.cache_dir).map_err(|e| DataError::io(&cfg.cache_dir, e))?;
    let tmp = cfg
        .cache_dir
        .join(format!(".{stem}-{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = build(cfg, &sources, fixed.map(|f| f.0), &tmp, &key, log);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        // another process finished first, or a stale entry: keep one complete copy
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("meta.json").is_file() {
            return Err(DataError::io(&dir, e));
        }
    }
    log(&format!("prepared data written to {}", dir.display()));
    PreparedDataset::open(&dir)
}

fn plan_sources(cfg: &DataConfig) -> Result<Vec<(PathBuf, Assign)>, DataError> {
    let s = &cfg.split;
    let mut out = Vec::new();
    let train_assign = match (&cfg.valid, &cfg.test) {
        (Some(_), Some(_)) => Assign::All(SplitName::Train),
        (v, t) => {
            let valid = if v.is_some() { 0.0 } else { s.valid };
            let test = if t.is_some() { 0.0 } else { s.test };
            match s.kind {
                SplitKind::Random => Assign::Random {
                    seed: s.seed,
                    valid,
                    test,
                },
                // the good-row count fills these in once it is known
                SplitKind::Tail => Assign::Tail {
                    train_end: u64::MAX,
                    valid_end: u64::MAX,
                },
            }
        }
    };
    out.push((cfg.train.clone(), train_assign));
    if let Some(v) = &cfg.valid {
        out.push((v.clone(), Assign::All(SplitName::Valid)));
    }
    if let Some(t) = &cfg.test {
        out.push((t.clone(), Assign::All(SplitName::Test)));
    }
    Ok(out)
}

/// Reads a file's lines, parses each, applies the bad-row policy; calls `on_row` with the
/// index among good rows.
fn scan(
    path: &Path,
    parser: &RowParser,
    cfg: &DataConfig,
    mut on_row: impl FnMut(u64, &ParsedRow) -> Result<(), DataError>,
) -> Result<(u64, BadRowCounts), DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(4096);
    let mut row = ParsedRow::default();
    let mut bad = BadRowCounts::default();
    let (mut line_no, mut good, mut data_lines) = (0u64, 0u64, 0u64);
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if line_no == 1 && parser.is_header(text) {
            continue;
        }
        if cfg.max_rows > 0 && data_lines >= cfg.max_rows {
            break;
        }
        data_lines += 1;
        match parser.parse(text, &mut row) {
            Ok(()) => {
                on_row(good, &row)?;
                good += 1;
            }
            Err(field) => match cfg.on_bad_row {
                BadRowPolicy::Error => {
                    return Err(DataError::BadRow(Box::new(BadRow {
                        file: path.display().to_string(),
                        line: line_no,
                        field,
                    })))
                }
                BadRowPolicy::Skip => bad.add(field.kind),
            },
        }
    }
    Ok((good, bad))
}

struct SplitWriter {
    label: BufWriter<File>,
    dense: Vec<BufWriter<File>>,
    cats: Vec<BufWriter<File>>,
    offsets: Vec<Option<(BufWriter<File>, u64)>>,
    rows: u64,
    positives: u64,
    paths: Vec<PathBuf>,
}

impl SplitWriter {
    fn create(dir: &Path, split: SplitName, schema: &Schema) -> Result<Self, DataError> {
        let sdir = dir.join(split.as_str());
        std::fs::create_dir_all(&sdir).map_err(|e| DataError::io(&sdir, e))?;
        let mut paths = Vec::new();
        let mut open = |name: String| -> Result<BufWriter<File>, DataError> {
            let p = column_path(dir, split, &name);
            let f = File::create(&p).map_err(|e| DataError::io(&p, e))?;
            paths.push(p);
            Ok(BufWriter::with_capacity(1 << 16, f))
        };
        let label = open("label.f32".into())?;
        let dense = (0..schema.dense.len())
            .map(|j| open(format!("dense_{j}.f32")))
            .collect::<Result<_, _>>()?;
        let cats = (0..schema.categorical.len())
            .map(|f| open(format!("cat_{f}.u32")))
            .collect::<Result<_, _>>()?;
        let mut offsets = Vec::new();
        for (f, c) in schema.categorical.iter().enumerate() {
            offsets.push(if c.multi_valued {
                let mut w = open(format!("cat_{f}.off"))?;
                w.write_all(&0u64.to_le_bytes())
                    .map_err(|e| DataError::io(dir, e))?;
                Some((w, 0))
            } else {
                None
            });
        }
        Ok(Self {
            label,
            dense,
            cats,
            offsets,
            rows: 0,
            positives: 0,
            paths,
        })
    }

    fn write(&mut self, row: &ParsedRow, vocab: &Vocab) -> std::io::Result<()> {
        self.label.write_all(&row.label.to_le_bytes())?;
        for (w, v) in self.dense.iter_mut().zip(&row.dense) {
            w.write_all(&v.to_le_bytes())?;
        }
        for (f, w) in self.cats.iter_mut().enumerate() {
            let fv = &vocab.features[f];
            let mut n = 0u64;
            for value in row.cat(f) {
                w.write_all(&fv.id(value).to_le_bytes())?;
                n += 1;
            }
            if let Some((ow, total)) = &mut self.offsets[f] {
                *total += n;
                ow.write_all(&total.to_le_bytes())?;
            }
        }
        self.rows += 1;
        self.positives += u64::from(row.label > 0.5);
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<SplitMeta> {
        self.label.flush()?;
        for w in self.dense.iter_mut().chain(self.cats.iter_mut()) {
            w.flush()?;
        }
        for (w, _) in self.offsets.iter_mut().flatten() {
            w.flush()?;
        }
        for p in &self.paths {
            File::open(p)?.sync_all()?;
        }
        Ok(SplitMeta {
            rows: self.rows,
            positives: self.positives,
        })
    }
}

fn build(
    cfg: &DataConfig,
    sources: &[(PathBuf, Assign)],
    fixed_vocab: Option<Vocab>,
    tmp: &Path,
    key: &str,
    log: &dyn Fn(&str),
) -> Result<PreparedDataset, DataError> {
    std::fs::create_dir_all(tmp).map_err(|e| DataError::io(tmp, e))?;
    let train_path = &sources[0].0;
    let first_line = read_first_data_line(train_path)?;
    let parser = RowParser::new(cfg, first_line.as_deref())
        .map_err(|e| DataError::Config(format!("{}: {e}", train_path.display())))?;
    let schema = parser.schema().clone();
    let mut sources = sources.to_vec();

    // Pass 0: the tail split needs the number of good rows. Under on_bad_row = "error"
    // every row is good (or preparation stops later), so counting lines is enough.
    if let Assign::Tail { .. } = sources[0].1 {
        let n = match cfg.on_bad_row {
            BadRowPolicy::Error => {
                count_data_lines(train_path, &parser, first_line.as_deref(), cfg.max_rows)?
            }
            BadRowPolicy::Skip => scan(train_path, &parser, cfg, |_, _| Ok(()))?.0,
        };
        let valid = if cfg.valid.is_some() {
            0.0
        } else {
            cfg.split.valid
        };
        let test = if cfg.test.is_some() {
            0.0
        } else {
            cfg.split.test
        };
        let valid_end = round_half_even(n as f64 * (1.0 - test));
        let train_end = round_half_even(n as f64 * (1.0 - valid - test)).min(valid_end);
        sources[0].1 = Assign::Tail {
            train_end,
            valid_end,
        };
    }

    // Pass 1: vocabulary from the training split.
    let vocab = match fixed_vocab {
        Some(v) => {
            if v.features.len() != schema.categorical.len() {
                return Err(DataError::Config(format!(
                    "the model's vocabulary has {} features, the data has {}",
                    v.features.len(),
                    schema.categorical.len()
                )));
            }
            v
        }
        None => {
            let mut builder = VocabBuilder::new(schema.categorical.len());
            for (path, assign) in &sources {
                if matches!(assign, Assign::All(s) if *s != SplitName::Train) {
                    continue;
                }
                log(&format!(
                    "counting categorical values in {}",
                    path.display()
                ));
                scan(path, &parser, cfg, |i, row| {
                    if assign.split(i) == SplitName::Train {
                        builder.add(row);
                    }
                    Ok(())
                })?;
            }
            builder.finish(cfg.min_count)
        }
    };

    // Pass 2: encode every row into its split.
    let mut wanted = vec![SplitName::Train];
    let has = |s: SplitName, frac: f64| {
        sources
            .iter()
            .any(|(_, a)| matches!(a, Assign::All(x) if *x == s))
            || frac > 0.0
    };
    if has(SplitName::Valid, cfg.split.valid) {
        wanted.push(SplitName::Valid);
    }
    if has(SplitName::Test, cfg.split.test) {
        wanted.push(SplitName::Test);
    }
    let mut writers = Vec::new();
    for &s in &wanted {
        writers.push((s, SplitWriter::create(tmp, s, &schema)?));
    }
    let mut bad_rows = BadRowCounts::default();
    for (path, assign) in &sources {
        log(&format!("encoding {}", path.display()));
        let (_, bad) = scan(path, &parser, cfg, |i, row| {
            let s = assign.split(i);
            match writers.iter_mut().find(|(n, _)| *n == s) {
                Some((_, w)) => w.write(row, &vocab).map_err(|e| DataError::io(tmp, e)),
                None => Ok(()),
            }
        })?;
        bad_rows.merge(&bad);
    }
    let mut splits = std::collections::BTreeMap::new();
    for (s, w) in writers {
        splits.insert(s, w.finish().map_err(|e| DataError::io(tmp, e))?);
    }
    vocab.save(&tmp.join("vocab.bin"))?;
    let meta = PreparedMeta {
        version: PREPARED_VERSION,
        key: key.into(),
        format: format!("{:?}", cfg.format).to_lowercase(),
        sources: sources
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect(),
        schema,
        vocab_sizes: vocab.sizes(),
        splits,
        bad_rows,
    };
    let meta_path = tmp.join("meta.json");
    let text = serde_json::to_string_pretty(&meta).map_err(|e| DataError::Config(e.to_string()))?;
    std::fs::write(&meta_path, text).map_err(|e| DataError::io(&meta_path, e))?;
    PreparedDataset::open(tmp)
}

/// Lines of a file that are data rows (a header excluded, at most `max_rows` if set).
fn count_data_lines(
    path: &Path,
    parser: &RowParser,
    first: Option<&[u8]>,
    max_rows: u64,
) -> Result<u64, DataError> {
    use std::io::Read;
    let mut f = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut newlines, mut last) = (0u64, b'\n');
    loop {
        let k = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if k == 0 {
            break;
        }
        newlines += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[k - 1];
    }
    let mut lines = newlines + u64::from(last != b'\n');
    if first.is_some_and(|l| parser.is_header(l)) {
        lines = lines.saturating_sub(1);
    }
    Ok(if max_rows > 0 {
        lines.min(max_rows)
    } else {
        lines
    })
}

fn read_first_data_line(path: &Path) -> Result<Option<Vec<u8>>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .map_err(|e| DataError::io(path, e))?;
    if line.is_empty() {
        return Ok(None);
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_python() {
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(6547.2), 6547);
        assert_eq!(round_half_even(0.5), 0);
    }
}
