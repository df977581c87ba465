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

use super::bad_rows::{BadField, BadRow, BadRowCounts};
use super::fast_hash::FastHashBuilder;
use super::parquet_format;
use super::prepared::{
    cat_file, column_path, ColumnBlock, PreparedDataset, PreparedMeta, SplitMeta, SplitName,
    PREPARED_VERSION,
};
use super::raw_format::{ParsedRow, RowParser, Schema};
use super::torchrec_npy::{self, NpyDay};
use super::vocab::{Vocab, VocabBuilder};
use super::DataError;
use crate::config::{BadRowPolicy, ConfigKeyError, DataConfig, DataFormat, SplitKind};
use crate::keyed_flags::keyed_flags;

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
pub fn round_half_even(x: f64) -> u64 {
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
struct KeyMaterial {
    version: u32,
    /// The options as TOML, which spells every float exactly (NaN included) and omits
    /// what is unset; JSON would write both a NaN and a missing value as `null`.
    cfg: String,
    sources: Vec<(String, u64, u128)>,
    vocab_crc: Option<u32>,
}

/// The prepared cache's key: everything that changes the prepared bytes (the options,
/// the input files' identities, a fixed vocabulary's checksum) except the cache folder.
fn cache_key(
    cfg: &DataConfig,
    sources: Vec<(String, u64, u128)>,
    vocab_crc: Option<u32>,
) -> Result<String, DataError> {
    let mut keyed = cfg.clone();
    keyed.cache_dir = PathBuf::new();
    let material = serde_json::to_string(&KeyMaterial {
        version: PREPARED_VERSION,
        cfg: toml::to_string(&keyed).map_err(|e| DataError::Config(e.to_string()))?,
        sources,
        vocab_crc,
    })
    .map_err(|e| DataError::Config(e.to_string()))?;
    let mut h = FastHashBuilder.build_hasher();
    h.write(material.as_bytes());
    Ok(format!("{:016x}", h.finish()))
}

/// A file's identity in the cache key: canonical path, size, modification time.
fn stamp(path: &Path) -> Result<(String, u64, u128), DataError> {
    let m = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if !m.is_file() {
        return Err(DataError::Config(format!("{}: not a file", path.display())));
    }
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok((canon.display().to_string(), m.len(), mtime))
}

fn prepare_inner(
    cfg: &DataConfig,
    fixed: Option<(Vocab, u32)>,
    log: &dyn Fn(&str),
) -> Result<PreparedDataset, DataError> {
    if cfg.format == DataFormat::Prepared {
        let ds = PreparedDataset::open(&cfg.train)?;
        check_prepared_keyed(cfg, &ds)?;
        return Ok(ds);
    }
    let sources = plan_sources(cfg)?;
    let mut stamped = Vec::new();
    for (path, _) in &sources {
        if cfg.format == DataFormat::TorchrecNpy {
            for part in NpyDay::files(path, cfg) {
                stamped.push(stamp(&part)?);
            }
        } else {
            stamped.push(stamp(path)?);
        }
    }
    for j in &cfg.joins {
        stamped.push(stamp(&j.file)?);
    }
    let key = cache_key(cfg, stamped, fixed.as_ref().map(|f| f.1))?;
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

/// Prepared data keys the features it was prepared with (`meta.keyed`). An empty
/// `data.keyed_features` takes those; a list must name the same ones, or keys would be
/// read as ids (or ids as keys).
fn check_prepared_keyed(cfg: &DataConfig, ds: &PreparedDataset) -> Result<(), DataError> {
    let mut listed = cfg.keyed_features.clone();
    listed.sort_unstable();
    let mut prepared = ds.meta.keyed_features();
    prepared.sort_unstable();
    if listed.is_empty() || listed == prepared {
        return Ok(());
    }
    Err(ConfigKeyError {
        key: "data.keyed_features".into(),
        message: format!(
            "lists {listed:?}, but {} was prepared with keyed features {prepared:?}: list those, or prepare the raw files again",
            ds.dir.display()
        ),
    }
    .into())
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
                // nothing to split off: every file is training data
                _ if valid == 0.0 && test == 0.0 => Assign::All(SplitName::Train),
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
    for (k, more) in cfg.more_train.iter().enumerate() {
        let assign = match train_assign {
            // a seed of its own per file, so row i of two files is not split alike
            Assign::Random { seed, valid, test } => Assign::Random {
                seed: hash_id(seed, k as u64 + 1),
                valid,
                test,
            },
            Assign::All(s) => Assign::All(s),
            Assign::Tail { .. } => {
                return Err(DataError::Config(format!(
                    "data.more_train ({}): a tail split takes the last rows of one file; use data.split.kind = \"random\" or give data.valid and data.test",
                    more.display()
                )))
            }
        };
        out.push((more.clone(), assign));
    }
    for v in cfg.valid.iter().chain(&cfg.more_valid) {
        out.push((v.clone(), Assign::All(SplitName::Valid)));
    }
    for t in cfg.test.iter().chain(&cfg.more_test) {
        out.push((t.clone(), Assign::All(SplitName::Test)));
    }
    Ok(out)
}

/// Bytes read per block; lines of a block are parsed in parallel.
const BLOCK: usize = 8 << 20;

/// Reads a file in blocks of whole lines, parses each block's lines in parallel, applies
/// the bad-row policy in file order, and calls `on_rows` with each block's good rows and
/// the index (among good rows) of the first.
fn scan(
    path: &Path,
    parser: &RowParser,
    cfg: &DataConfig,
    on_rows: impl FnMut(u64, &[ParsedRow]) -> Result<(), DataError>,
) -> Result<(u64, BadRowCounts), DataError> {
    match cfg.format {
        DataFormat::Parquet => parquet_format::scan(path, parser, cfg, on_rows),
        DataFormat::TorchrecNpy => {
            let keyed =
                keyed_flags(&cfg.keyed_features, parser.schema()).map_err(ConfigKeyError::from)?;
            torchrec_npy::scan(path, parser, cfg, &keyed, on_rows)
        }
        _ => scan_blocks(path, parser, cfg, BLOCK, on_rows),
    }
}

/// The parser for `cfg`'s format, whose schema comes from the training file: the first
/// lines of a text file (libFM's field count), a Parquet file's list columns, a
/// TorchRec day's array shapes. With the sample of a text file (for the tail count's
/// header check).
fn parser_for(cfg: &DataConfig, train_path: &Path) -> Result<(RowParser, Vec<Vec<u8>>), DataError> {
    let at_file = |e: super::raw_format::FormatError| {
        DataError::Config(format!("{}: {e}", train_path.display()))
    };
    match cfg.format {
        DataFormat::Parquet => {
            let mut parser = RowParser::new(cfg, &[]).map_err(at_file)?;
            parser.mark_multi_valued(&parquet_format::list_columns(train_path, cfg)?);
            Ok((parser, Vec::new()))
        }
        DataFormat::TorchrecNpy => Ok((NpyDay::open(train_path, cfg)?.parser(cfg), Vec::new())),
        _ => {
            let sample = read_first_lines(train_path, LAYOUT_SAMPLE_LINES)?;
            let parser = RowParser::new(cfg, &sample).map_err(at_file)?;
            Ok((parser, sample))
        }
    }
}

fn scan_blocks(
    path: &Path,
    parser: &RowParser,
    cfg: &DataConfig,
    block_size: usize,
    mut on_rows: impl FnMut(u64, &[ParsedRow]) -> Result<(), DataError>,
) -> Result<(u64, BadRowCounts), DataError> {
    use rayon::prelude::*;
    use std::io::Read;
    let io = |e| DataError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    let mut buf = vec![0u8; block_size];
    let mut carry: Vec<u8> = Vec::new();
    let mut bad = BadRowCounts::default();
    let (mut line_no, mut good, mut data_lines) = (0u64, 0u64, 0u64);
    let mut first_line = true;
    loop {
        let mut filled = 0;
        while filled < block_size {
            let n = file.read(&mut buf[filled..]).map_err(io)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let eof = filled < block_size;
        let mut block = std::mem::take(&mut carry);
        block.extend_from_slice(&buf[..filled]);
        let end = if eof {
            block.len()
        } else {
            match block.iter().rposition(|&b| b == b'\n') {
                Some(p) => p + 1,
                None => {
                    carry = block; // a line longer than a block: keep reading
                    continue;
                }
            }
        };
        carry = block[end..].to_vec();
        let body = &block[..end];
        let body = body.strip_suffix(b"\n").unwrap_or(body);
        let mut lines: Vec<&[u8]> = if body.is_empty() && end == 0 {
            Vec::new()
        } else {
            body.split(|&b| b == b'\n').collect()
        };
        let mut first_no = line_no + 1;
        line_no += lines.len() as u64;
        if first_line && !lines.is_empty() {
            first_line = false;
            if parser.is_header(lines[0].strip_suffix(b"\r").unwrap_or(lines[0])) {
                lines.remove(0);
                first_no += 1;
            }
        }
        let mut stop = false;
        if cfg.max_rows > 0 && data_lines + lines.len() as u64 >= cfg.max_rows {
            lines.truncate((cfg.max_rows - data_lines) as usize);
            stop = true;
        }
        data_lines += lines.len() as u64;
        let parsed: Vec<Result<ParsedRow, BadField>> = lines
            .par_iter()
            .with_min_len(256)
            .map(|l| {
                let mut row = ParsedRow::default();
                parser.parse(l, &mut row).map(|()| row)
            })
            .collect();
        let mut rows = Vec::with_capacity(parsed.len());
        for (k, r) in parsed.into_iter().enumerate() {
            match r {
                Ok(row) => rows.push(row),
                Err(field) => match cfg.on_bad_row {
                    BadRowPolicy::Error => {
                        return Err(DataError::BadRow(Box::new(BadRow {
                            file: path.display().to_string(),
                            line: first_no + k as u64,
                            field,
                        })))
                    }
                    BadRowPolicy::Skip => bad.add(field.kind),
                },
            }
        }
        on_rows(good, &rows)?;
        good += rows.len() as u64;
        if stop || (eof && carry.is_empty()) {
            break;
        }
    }
    Ok((good, bad))
}

struct SplitWriter {
    label: BufWriter<File>,
    dense: Vec<BufWriter<File>>,
    cats: Vec<BufWriter<File>>,
    /// Per categorical feature: written as u64 keys (else u32 ids).
    keyed: Vec<bool>,
    offsets: Vec<Option<(BufWriter<File>, u64)>>,
    rows: u64,
    positives: u64,
    paths: Vec<PathBuf>,
}

impl SplitWriter {
    fn create(
        dir: &Path,
        split: SplitName,
        schema: &Schema,
        keyed: &[bool],
    ) -> Result<Self, DataError> {
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
            .map(|f| open(cat_file(f, keyed[f]).0))
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
            keyed: keyed.to_vec(),
            offsets,
            rows: 0,
            positives: 0,
            paths,
        })
    }

    /// Writes a row whose categorical values were encoded ([`Vocab::encode`]: ids or
    /// keys of all features, in order).
    fn write(&mut self, row: &ParsedRow, values: &[u64]) -> std::io::Result<()> {
        self.label.write_all(&row.label.to_le_bytes())?;
        for (w, v) in self.dense.iter_mut().zip(&row.dense) {
            w.write_all(&v.to_le_bytes())?;
        }
        let mut next = values.iter();
        for (f, w) in self.cats.iter_mut().enumerate() {
            let n = row.cat(f).count() as u64;
            for &v in next.by_ref().take(n as usize) {
                if self.keyed[f] {
                    w.write_all(&v.to_le_bytes())?;
                } else {
                    // an id: Vocab::encode widened a u32
                    w.write_all(&(v as u32).to_le_bytes())?;
                }
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

    /// Writes a block of rows, a column at a time.
    fn write_block(&mut self, b: &ColumnBlock) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        let mut put =
            |w: &mut BufWriter<File>, values: &mut dyn Iterator<Item = [u8; 8]>, width| {
                bytes.clear();
                values.for_each(|v| bytes.extend_from_slice(&v[..width]));
                w.write_all(&bytes)
            };
        let f32s = |v: &[f32]| -> Vec<[u8; 8]> {
            v.iter()
                .map(|x| u64::from(x.to_bits()).to_le_bytes())
                .collect()
        };
        put(&mut self.label, &mut f32s(&b.labels).into_iter(), 4)?;
        for (w, column) in self.dense.iter_mut().zip(&b.dense) {
            put(w, &mut f32s(column).into_iter(), 4)?;
        }
        for (f, (values, counts)) in b.cats.iter().enumerate() {
            let width = if self.keyed[f] { 8 } else { 4 };
            put(
                &mut self.cats[f],
                &mut values.iter().map(|v| v.to_le_bytes()),
                width,
            )?;
            if let Some((w, total)) = &mut self.offsets[f] {
                let mut ends = counts.iter().map(|&n| {
                    *total += n;
                    total.to_le_bytes()
                });
                put(w, &mut ends, 8)?;
            }
        }
        self.rows += b.labels.len() as u64;
        self.positives += b.labels.iter().filter(|&&y| y > 0.5).count() as u64;
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
    let (parser, sample) = parser_for(cfg, train_path)?;
    let schema = parser.schema().clone();
    // checked here as well as with the config: only now is every format's schema known
    let keyed = keyed_flags(&cfg.keyed_features, &schema).map_err(ConfigKeyError::from)?;
    let mut sources = sources.to_vec();
    if let Assign::Tail { .. } = sources[0].1 {
        let first_line = sample.first().map(Vec::as_slice);
        sources[0].1 = tail_assign(cfg, train_path, &parser, first_line)?;
    }
    let vocab = match (fixed_vocab, cfg.format) {
        (Some(v), DataFormat::TorchrecNpy) => check_fixed_identity(
            check_fixed_vocab(v, &schema, &keyed)?,
            torchrec_npy::vocab(cfg, &keyed)?,
        )?,
        (Some(v), _) => check_fixed_vocab(v, &schema, &keyed)?,
        (None, DataFormat::TorchrecNpy) => torchrec_npy::vocab(cfg, &keyed)?,
        (None, _) => count_vocab(cfg, &sources, &parser, keyed.clone(), log)?,
    };
    let (splits, bad_rows) = encode_splits(cfg, &sources, &parser, &vocab, &keyed, tmp, log)?;
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
        keyed,
    };
    let meta_path = tmp.join("meta.json");
    let text = serde_json::to_string_pretty(&meta).map_err(|e| DataError::Config(e.to_string()))?;
    std::fs::write(&meta_path, text).map_err(|e| DataError::io(&meta_path, e))?;
    PreparedDataset::open(tmp)
}

/// Pass 0: a tail split of the training file needs its number of good rows. Under
/// on_bad_row = "error" every row is good (or preparation stops later), so counting
/// lines is enough.
fn tail_assign(
    cfg: &DataConfig,
    train_path: &Path,
    parser: &RowParser,
    first_line: Option<&[u8]>,
) -> Result<Assign, DataError> {
    let n = match (cfg.on_bad_row, cfg.format) {
        (BadRowPolicy::Skip, _) => scan(train_path, parser, cfg, |_, _| Ok(()))?.0,
        (BadRowPolicy::Error, DataFormat::Parquet) => {
            capped(parquet_format::count_rows(train_path)?, cfg.max_rows)
        }
        (BadRowPolicy::Error, DataFormat::TorchrecNpy) => {
            capped(NpyDay::open(train_path, cfg)?.rows(), cfg.max_rows)
        }
        (BadRowPolicy::Error, _) => count_data_lines(train_path, parser, first_line, cfg.max_rows)?,
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
    Ok(Assign::Tail {
        train_end,
        valid_end,
    })
}

/// A trained model's vocabulary must have the data's features, keyed where
/// `data.keyed_features` keys them: ids read as keys (or keys as ids) would be silently
/// wrong.
fn check_fixed_vocab(v: Vocab, schema: &Schema, keyed: &[bool]) -> Result<Vocab, DataError> {
    if v.features.len() != schema.categorical.len() {
        return Err(DataError::Config(format!(
            "the model's vocabulary has {} features, the data has {}",
            v.features.len(),
            schema.categorical.len()
        )));
    }
    let kinds = v.features.iter().zip(keyed);
    if let Some(f) = kinds.clone().position(|(fv, &k)| fv.is_keyed() != k) {
        let (model, now) = if keyed[f] {
            ("holds a vocabulary for", "lists")
        } else {
            ("keys", "does not list")
        };
        return Err(ConfigKeyError {
            key: "data.keyed_features".into(),
            message: format!(
                "the model {model} feature `{}`, and data.keyed_features {now} it",
                schema.categorical[f].name
            ),
        }
        .into());
    }
    Ok(v)
}

/// A trained model's identity vocabularies must be the sizes `data.num_embeddings_per_feature`
/// gives now: ids taken modulo other sizes would be other rows.
fn check_fixed_identity(model: Vocab, now: Vocab) -> Result<Vocab, DataError> {
    if model.sizes() == now.sizes() {
        return Ok(model);
    }
    Err(ConfigKeyError {
        key: "data.num_embeddings_per_feature".into(),
        message: format!(
            "the model's tables have {:?} rows, the config gives {:?}",
            model.sizes(),
            now.sizes()
        ),
    }
    .into())
}

/// Pass 1: the vocabulary, from the rows of the training split (keyed features are not
/// counted).
fn count_vocab(
    cfg: &DataConfig,
    sources: &[(PathBuf, Assign)],
    parser: &RowParser,
    keyed: Vec<bool>,
    log: &dyn Fn(&str),
) -> Result<Vocab, DataError> {
    let mut builder = VocabBuilder::with_keyed(keyed);
    for (path, assign) in sources {
        if matches!(assign, Assign::All(s) if *s != SplitName::Train) {
            continue;
        }
        log(&format!(
            "counting categorical values in {}",
            path.display()
        ));
        if cfg.format == DataFormat::Parquet && parquet_format::can_count_columns(cfg) {
            let train = |r: u64| assign.split(r) == SplitName::Train;
            parquet_format::count_values(path, cfg, train, &mut builder)?;
            continue;
        }
        scan(path, parser, cfg, |first, rows| {
            let train: Vec<&ParsedRow> = rows
                .iter()
                .enumerate()
                .filter(|(k, _)| assign.split(first + *k as u64) == SplitName::Train)
                .map(|(_, r)| r)
                .collect();
            builder.add_rows(&train);
            Ok(())
        })?;
    }
    Ok(if cfg.format == DataFormat::Sequence {
        builder.finish_shared(cfg.min_count, &super::sequence_format::SHARED_VOCABULARIES)
    } else {
        builder.finish(cfg.min_count)
    })
}

/// The rows and bad-row counts of each split written.
type Written = (
    std::collections::BTreeMap<SplitName, SplitMeta>,
    BadRowCounts,
);

/// Pass 2: encode every row into its split's files.
fn encode_splits(
    cfg: &DataConfig,
    sources: &[(PathBuf, Assign)],
    parser: &RowParser,
    vocab: &Vocab,
    keyed: &[bool],
    tmp: &Path,
    log: &dyn Fn(&str),
) -> Result<Written, DataError> {
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
        writers.push((s, SplitWriter::create(tmp, s, parser.schema(), keyed)?));
    }
    let mut bad_rows = BadRowCounts::default();
    for (path, assign) in sources {
        log(&format!("encoding {}", path.display()));
        if cfg.format == DataFormat::Parquet && parquet_format::can_count_columns(cfg) {
            let split_of = |r: u64| assign.split(r);
            parquet_format::encode_columns(path, cfg, parser, vocab, split_of, &mut |s, block| {
                if let Some((_, w)) = writers.iter_mut().find(|(n, _)| *n == s) {
                    w.write_block(&block).map_err(|e| DataError::io(tmp, e))?;
                }
                Ok(())
            })?;
            continue;
        }
        let (good, bad) = scan(path, parser, cfg, |first, rows| {
            // vocabulary lookups and keys in parallel, writes in order
            use rayon::prelude::*;
            let values: Vec<Vec<u64>> = rows
                .par_iter()
                .with_min_len(256)
                .map(|r| vocab.encode(r))
                .collect();
            for (k, (row, values)) in rows.iter().zip(&values).enumerate() {
                let s = assign.split(first + k as u64);
                if let Some((_, w)) = writers.iter_mut().find(|(n, _)| *n == s) {
                    w.write(row, values).map_err(|e| DataError::io(tmp, e))?;
                }
            }
            Ok(())
        })?;
        check_bad_fraction(path, good, bad.total(), cfg.max_bad_row_fraction)?;
        bad_rows.merge(&bad);
    }
    let mut splits = std::collections::BTreeMap::new();
    for (s, w) in writers {
        splits.insert(s, w.finish().map_err(|e| DataError::io(tmp, e))?);
    }
    Ok((splits, bad_rows))
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
    Ok(capped(lines, max_rows))
}

/// At most `max_rows` rows, when it is set.
fn capped(rows: u64, max_rows: u64) -> u64 {
    if max_rows > 0 {
        rows.min(max_rows)
    } else {
        rows
    }
}

/// `on_bad_row = "skip"` that drops more than `max` of a file's rows is an error: the
/// file is not what the config says it is, and training on what is left would be
/// silently wrong.
fn check_bad_fraction(path: &Path, good: u64, bad: u64, max: f64) -> Result<(), DataError> {
    let rows = good + bad;
    if rows > 0 && bad as f64 > max * rows as f64 {
        return Err(DataError::MostRowsBad {
            path: path.to_path_buf(),
            bad,
            rows,
            max,
        });
    }
    Ok(())
}

/// Lines of the training file the parser's layout is read from (libFM's field count).
const LAYOUT_SAMPLE_LINES: usize = 1000;

/// The first `n` lines of `path`, without their line ends.
fn read_first_lines(path: &Path, n: usize) -> Result<Vec<Vec<u8>>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    while lines.len() < n {
        let mut line = Vec::new();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| DataError::io(path, e))?;
        if read == 0 {
            break;
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        lines.push(line);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Block boundaries anywhere (inside lines, on newlines, lines longer than a block)
    /// give the same rows, counts and bad-row line numbers as reading line by line.
    #[test]
    fn scanning_in_blocks_matches_line_by_line() {
        let text = "[data]\nformat = \"delimited\"\ntrain = \"x\"\non_bad_row = \"skip\"\nheader = true\n\
                    columns = [{name = \"y\", role = \"label\"}, {name = \"c\", role = \"categorical\"}]\n\
                    [model]\nkind = \"lr\"\n";
        let mut cfg = DataConfig::from_toml_section(text).unwrap();
        let parser = RowParser::new(&cfg, &[]).unwrap();
        let mut body = String::from("label\tvalue\n");
        for i in 0..200 {
            if i % 37 == 5 {
                body.push_str("bad line without a tab\n");
            } else {
                body.push_str(&format!("{}\t{}\n", i % 2, "v".repeat(i % 23)));
            }
        }
        body.push_str("1\tlast-without-newline");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.tsv");
        std::fs::write(&path, &body).unwrap();
        let collect = |block: usize, cfg: &DataConfig| {
            let mut seen = Vec::new();
            let (n, bad) = scan_blocks(&path, &parser, cfg, block, |first, rows| {
                for (k, r) in rows.iter().enumerate() {
                    seen.push((first + k as u64, r.label, r.cat(0).next().map(|v| v.len())));
                }
                Ok(())
            })
            .unwrap();
            (n, bad.total(), seen)
        };
        let want = collect(1 << 20, &cfg);
        assert_eq!(want.0, 195);
        assert_eq!(want.1, 6);
        for block in [1, 2, 3, 7, 16, 31, 64, 257] {
            assert_eq!(collect(block, &cfg), want, "block size {block}");
        }
        cfg.on_bad_row = BadRowPolicy::Error;
        for block in [3, 64, 1 << 20] {
            match scan_blocks(&path, &parser, &cfg, block, |_, _| Ok(())) {
                Err(DataError::BadRow(b)) => assert_eq!(b.line, 7, "block size {block}"),
                other => panic!("expected a bad row, got {other:?}"),
            }
        }
    }

    /// A NaN threshold and no threshold are different options, so different caches.
    #[test]
    fn cache_keys_tell_every_option_apart() {
        let text = "[data]\nformat = \"delimited\"\ntrain = \"x\"\ncolumns = [{name = \"y\", role = \"label\"}, {name = \"c\", role = \"categorical\"}]\n";
        let plain = DataConfig::from_toml_section(text).unwrap();
        let key = |c: &DataConfig| cache_key(c, vec![], None).unwrap();
        let mut nan = plain.clone();
        nan.columns[0].threshold = Some(f64::NAN);
        let mut half = plain.clone();
        half.columns[0].threshold = Some(0.5);
        assert_ne!(key(&plain), key(&nan));
        assert_ne!(key(&plain), key(&half));
        assert_ne!(key(&nan), key(&half));
        let mut keyed = plain.clone();
        keyed.keyed_features = vec!["c".into()];
        assert_ne!(
            key(&plain),
            key(&keyed),
            "keyed features are part of the key"
        );
        let mut moved = plain.clone();
        moved.cache_dir = PathBuf::from("elsewhere");
        assert_eq!(
            key(&plain),
            key(&moved),
            "the cache folder is not part of the key"
        );
    }

    #[test]
    fn rounding_matches_python() {
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(6547.2), 6547);
        assert_eq!(round_half_even(0.5), 0);
    }
}
