//! `data.format = "parquet"`: rows of a Parquet file as [`ParsedRow`]s, so that the
//! vocabulary and the prepared layout are built exactly as for a delimited file with the
//! same columns (the same values give the same ids, keys and floats).
//!
//! Columns are found by name (`data.columns`; a file's other columns are not read).
//! Integer categorical values are their decimal text, as they read in a text file;
//! string and binary ones their bytes; list columns are multi-valued features. One
//! thread decodes the file's record batches (row group after row group, a bounded
//! queue of batches ahead) while the others turn the previous batch into rows, so memory
//! stays bounded whatever the file's size.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::bad_rows::{keep_good_rows, BadField, BadRow, BadRowCounts, BadRowKind};
use super::prepared::{ColumnBlock, SplitName};
use super::raw_format::{format_number, label_value, ParsedRow, RowParser};
use super::vocab::Vocab;
use super::DataError;
use crate::config::{BadRowPolicy, ColumnRole, DataConfig, NullPolicy};

/// Rows per decoded record batch.
const BATCH_ROWS: usize = 16 * 1024;

fn parquet_error(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Corrupt {
        path: path.into(),
        message: format!("not a readable Parquet file: {e}"),
    }
}

fn open_reader(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))
}

/// The rows a file holds, from its footer.
pub(crate) fn count_rows(path: &Path) -> Result<u64, DataError> {
    let rows = open_reader(path)?.metadata().file_metadata().num_rows();
    Ok(rows.max(0) as u64)
}

/// The categorical columns of `cfg.columns` that are lists in `path` (multi-valued).
pub(crate) fn list_columns(path: &Path, cfg: &DataConfig) -> Result<Vec<String>, DataError> {
    let b = open_reader(path)?;
    let plan = plan_columns(path, b.schema(), cfg)?;
    Ok(plan
        .into_iter()
        .filter(|c| matches!(c.kind, Kind::Categorical { list: true, .. }))
        .map(|c| c.name)
        .collect())
}

#[derive(Debug, Clone)]
enum Kind {
    Label { threshold: Option<f64> },
    Dense,
    Categorical { separator: Option<u8>, list: bool },
}

/// A configured column found in the file.
#[derive(Debug, Clone)]
struct Planned {
    name: String,
    /// 1-based position in `data.columns`, for bad-row messages.
    column: usize,
    kind: Kind,
}

/// Checks every configured column against the file's schema.
fn plan_columns(
    path: &Path,
    schema: &arrow_schema::Schema,
    cfg: &DataConfig,
) -> Result<Vec<Planned>, DataError> {
    let mut plan = Vec::new();
    for (i, c) in cfg.columns.iter().enumerate() {
        if c.role == ColumnRole::Skip {
            continue;
        }
        let Ok(field) = schema.field_with_name(&c.name) else {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(DataError::Config(format!(
                "{}: data.columns names `{}`, which the file does not have (it has: {})",
                path.display(),
                c.name,
                have.join(", ")
            )));
        };
        let list = is_list(field.data_type());
        let kind = match c.role {
            ColumnRole::Label => Kind::Label {
                threshold: c.threshold,
            },
            ColumnRole::Dense => Kind::Dense,
            _ => Kind::Categorical {
                separator: c.separator.as_ref().map(|s| s.as_bytes()[0]),
                list,
            },
        };
        let scalar_type = match field.data_type() {
            DataType::List(f) | DataType::LargeList(f) => f.data_type(),
            t => t,
        };
        let fits = match kind {
            Kind::Categorical { .. } => categorical_type(scalar_type),
            _ => !list && numeric_type(scalar_type),
        };
        if !fits {
            return Err(DataError::Config(format!(
                "{}: column `{}` is of type {}, which a {:?} column cannot be (numbers for label and dense; integers, strings or lists of them for categorical)",
                path.display(),
                c.name,
                field.data_type(),
                c.role
            )));
        }
        plan.push(Planned {
            name: c.name.clone(),
            column: i + 1,
            kind,
        });
    }
    Ok(plan)
}

fn is_list(t: &DataType) -> bool {
    matches!(t, DataType::List(_) | DataType::LargeList(_))
}

fn numeric_type(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Boolean | DataType::Utf8 | DataType::LargeUtf8)
}

fn categorical_type(t: &DataType) -> bool {
    t.is_integer()
        || t.is_floating()
        || matches!(
            t,
            DataType::Boolean
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::Dictionary(_, _)
        )
}

/// One column of a batch, in the form rows read it from.
enum Values {
    /// Label and dense columns; categorical floating-point columns (their text is
    /// [`format_number`]'s, as a dense-as-categorical value).
    Numbers(arrow_array::Float64Array),
    Integers(arrow_array::Int64Array),
    Bytes(arrow_array::LargeBinaryArray),
    /// A list column: row r's elements are `inner[offsets[r]..offsets[r + 1]]`.
    List {
        offsets: Vec<usize>,
        /// Per row: the list is null.
        nulls: Option<Vec<bool>>,
        inner: Box<Values>,
    },
}

fn cast(path: &Path, name: &str, a: &ArrayRef, to: &DataType) -> Result<ArrayRef, DataError> {
    arrow_cast::cast(a, to).map_err(|e| DataError::Corrupt {
        path: path.into(),
        message: format!("column `{name}`: {e}"),
    })
}

/// A column of a batch as [`Values`].
fn values_of(path: &Path, name: &str, a: &ArrayRef, numeric: bool) -> Result<Values, DataError> {
    let t = a.data_type();
    if let Some(list) = a.as_list_opt::<i32>() {
        let offsets = list.offsets().iter().map(|&o| o as usize).collect();
        return list_values(path, name, list.values(), offsets, null_rows(list));
    }
    if let Some(list) = a.as_list_opt::<i64>() {
        let offsets = list.offsets().iter().map(|&o| o as usize).collect();
        return list_values(path, name, list.values(), offsets, null_rows(list));
    }
    Ok(if numeric || t.is_floating() {
        let f = cast(path, name, a, &DataType::Float64)?;
        Values::Numbers(f.as_primitive::<Float64Type>().clone())
    } else if t.is_integer() || *t == DataType::Boolean {
        let i = cast(path, name, a, &DataType::Int64)?;
        Values::Integers(i.as_primitive::<Int64Type>().clone())
    } else {
        let b = cast(path, name, a, &DataType::LargeBinary)?;
        Values::Bytes(b.as_binary::<i64>().clone())
    })
}

fn list_values(
    path: &Path,
    name: &str,
    inner: &ArrayRef,
    offsets: Vec<usize>,
    nulls: Option<Vec<bool>>,
) -> Result<Values, DataError> {
    Ok(Values::List {
        offsets,
        nulls,
        inner: Box::new(values_of(path, name, inner, false)?),
    })
}

fn null_rows(a: &dyn Array) -> Option<Vec<bool>> {
    (a.null_count() > 0).then(|| (0..a.len()).map(|r| a.is_null(r)).collect())
}

impl Values {
    /// Row r's value of an integer column (not null).
    fn integer(&self, r: usize) -> Option<i64> {
        match self {
            Values::Integers(a) if a.is_valid(r) => Some(a.value(r)),
            _ => None,
        }
    }

    fn is_null(&self, r: usize) -> bool {
        match self {
            Values::Numbers(a) => a.is_null(r),
            Values::Integers(a) => a.is_null(r),
            Values::Bytes(a) => a.is_null(r),
            Values::List { nulls, .. } => nulls.as_ref().is_some_and(|n| n[r]),
        }
    }

    /// Row r's number (NaN when null).
    fn number(&self, r: usize) -> f64 {
        match self {
            Values::Numbers(a) if a.is_valid(r) => a.value(r),
            _ => f64::NAN,
        }
    }

    /// Calls `each` with row r's categorical value(s), as a delimited file's cell would
    /// give them: a null scalar is the empty value, a null list no value; a
    /// `separator` splits each value.
    fn for_each(&self, r: usize, separator: Option<u8>, each: &mut dyn FnMut(&[u8])) {
        let mut text = itoa::Buffer::new();
        let mut give = |v: &[u8]| match separator {
            Some(s) if !v.is_empty() => v.split(|&b| b == s).for_each(&mut *each),
            Some(_) => {}
            None => each(v),
        };
        match self {
            _ if self.is_null(r) && matches!(self, Values::List { .. }) => {}
            _ if self.is_null(r) => give(b""),
            Values::Numbers(a) => give(format_number(a.value(r)).as_bytes()),
            Values::Integers(a) => give(text.format(a.value(r)).as_bytes()),
            Values::Bytes(a) => give(a.value(r)),
            Values::List { offsets, inner, .. } => {
                for e in offsets[r]..offsets[r + 1] {
                    inner.for_each(e, separator, &mut give);
                }
            }
        }
    }
}

/// Whether [`count_values`] gives the counts that counting [`scan`]'s rows would: no
/// row can be skipped (a bad row stops preparation before the counts are used), so row
/// indices are file positions, and no categorical value comes from a dense column.
pub(crate) fn can_count_columns(cfg: &DataConfig) -> bool {
    cfg.on_bad_row == BadRowPolicy::Error
        && cfg.null_values == NullPolicy::Missing
        && !cfg.dense_as_categorical
}

/// Counts the categorical values of the rows `counted(row index)` selects, reading only
/// the categorical columns, a column per thread: a columnar file's shortcut for the
/// vocabulary pass (see [`can_count_columns`]). Returns the rows read.
pub(crate) fn count_values(
    path: &Path,
    cfg: &DataConfig,
    counted: impl Fn(u64) -> bool + Sync,
    builder: &mut super::vocab::VocabBuilder,
) -> Result<u64, DataError> {
    // integer columns are counted by integer (a smaller, faster map) and turned into
    // their text once, at the end
    // (each feature's map is used by one thread at a time: the locks never wait)
    let mut by_integer: Vec<std::sync::Mutex<IntegerMap<u64>>> = Vec::new();
    let read = for_each_batch(path, cfg, true, |plan, first, n, columns| {
        by_integer.resize_with(plan.len(), Default::default);
        builder.add_columns(|f, count| {
            let (Kind::Categorical { separator, .. }, v) = (&plan[f].kind, &columns[f]) else {
                return;
            };
            let mut integers = by_integer[f].lock().unwrap_or_else(|e| e.into_inner());
            for r in (0..n).filter(|&r| counted(first + r as u64)) {
                match v.integer(r).filter(|_| separator.is_none()) {
                    Some(i) => *integers.entry(i).or_insert(0) += 1,
                    None => v.for_each(r, *separator, &mut |x| count(x, 1)),
                }
            }
        });
        Ok(())
    })?;
    builder.add_columns(|f, count| {
        let Some(m) = by_integer.get(f) else { return };
        let mut text = itoa::Buffer::new();
        for (&i, &c) in m.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            count(text.format(i).as_bytes(), c);
        }
    });
    Ok(read)
}

/// Decodes the configured columns of `path` (only the categorical ones if
/// `categorical_only`) on a thread of its own, a bounded queue of batches ahead, and
/// calls `body(plan, first, n, columns)` for each record batch in order: `first` is the
/// file's row index of its first row, `n` its rows (at most `data.max_rows` in all).
/// Returns the rows read.
fn for_each_batch(
    path: &Path,
    cfg: &DataConfig,
    categorical_only: bool,
    mut body: impl FnMut(&[Planned], u64, usize, &[Values]) -> Result<(), DataError>,
) -> Result<u64, DataError> {
    let b = open_reader(path)?;
    let plan: Vec<Planned> = plan_columns(path, b.schema(), cfg)?
        .into_iter()
        .filter(|c| !categorical_only || matches!(c.kind, Kind::Categorical { .. }))
        .collect();
    let reader = projected_reader(path, b, &plan)?;
    let limit = if cfg.max_rows > 0 {
        cfg.max_rows
    } else {
        u64::MAX
    };
    std::thread::scope(|s| {
        let (tx, rx) = crossbeam_channel::bounded::<Result<(usize, Vec<Values>), DataError>>(2);
        let plan = &plan;
        s.spawn(move || {
            for batch in reader {
                let values = batch
                    .map_err(|e| parquet_error(path, e))
                    .and_then(|b| Ok((b.num_rows(), batch_values(path, plan, &b)?)));
                let stop = values.is_err();
                if tx.send(values).is_err() || stop {
                    return;
                }
            }
        });
        let mut read = 0u64;
        for batch in rx {
            let (rows, columns) = batch?;
            let n = (rows as u64).min(limit - read) as usize;
            body(plan, read, n, &columns)?;
            read += n as u64;
            if read >= limit {
                break;
            }
        }
        Ok(read)
    })
}

/// A map keyed by a column's integer values.
type IntegerMap<V> = std::collections::HashMap<i64, V, super::fast_hash::FastHashBuilder>;

/// Encodes every row of `path` a column at a time, columns in parallel, and hands
/// each record batch's rows to `out` as one [`ColumnBlock`] per split (`split_of(row
/// index)`): the columnar shortcut for the encoding pass, under the conditions of
/// [`can_count_columns`] (the first bad label stops it, naming its row).
pub(crate) fn encode_columns(
    path: &Path,
    cfg: &DataConfig,
    parser: &RowParser,
    vocab: &Vocab,
    split_of: impl Fn(u64) -> SplitName,
    out: &mut dyn FnMut(SplitName, ColumnBlock) -> Result<(), DataError>,
) -> Result<u64, DataError> {
    let integer_ids: Vec<Option<IntegerMap<u32>>> =
        vocab.features.iter().map(|fv| fv.integer_ids()).collect();
    let ids = Ids {
        vocab,
        integer_ids: &integer_ids,
    };
    for_each_batch(path, cfg, false, |plan, first, n, columns| {
        let mut groups: Vec<(SplitName, Vec<usize>)> = Vec::new();
        for r in 0..n {
            let s = split_of(first + r as u64);
            match groups.iter_mut().find(|(g, _)| *g == s) {
                Some((_, rows)) => rows.push(r),
                None => groups.push((s, vec![r])),
            }
        }
        for (s, rows) in groups {
            let block =
                encode_block(parser, &ids, plan, columns, &rows).map_err(|(r, field)| {
                    DataError::BadRow(Box::new(BadRow {
                        file: path.display().to_string(),
                        line: first + r as u64 + 1,
                        field,
                    }))
                })?;
            out(s, block)?;
        }
        Ok(())
    })
}

/// A batch's planned columns as [`Values`].
fn batch_values(
    path: &Path,
    plan: &[Planned],
    batch: &RecordBatch,
) -> Result<Vec<Values>, DataError> {
    plan.iter()
        .map(|c| {
            let a = batch.column_by_name(&c.name).expect("projected column");
            values_of(
                path,
                &c.name,
                a,
                !matches!(c.kind, Kind::Categorical { .. }),
            )
        })
        .collect()
}

/// How values become ids: the vocabulary, and per feature its integer values' ids
/// ([`crate::FeatureVocab::integer_ids`]; none for keyed and identity features).
struct Ids<'a> {
    vocab: &'a Vocab,
    integer_ids: &'a [Option<IntegerMap<u32>>],
}

impl Ids<'_> {
    /// Pushes row r's encoded values of categorical feature `f` to `out`.
    fn push(&self, f: usize, v: &Values, r: usize, separator: Option<u8>, out: &mut Vec<u64>) {
        let fv = &self.vocab.features[f];
        match (v.integer(r), &self.integer_ids[f]) {
            // an integer absent from a counted vocabulary is out of it (id 0)
            (Some(i), Some(by_integer)) if separator.is_none() => {
                out.push(u64::from(by_integer.get(&i).copied().unwrap_or(0)))
            }
            _ => v.for_each(r, separator, &mut |x| out.push(fv.encode_value(x))),
        }
    }
}

/// One column of a [`ColumnBlock`] while it is built.
enum Encoded {
    Labels(Vec<f32>),
    Dense(Vec<f32>),
    Cat(Vec<u64>, Vec<u64>),
}

/// The rows `rows` of a batch as a [`ColumnBlock`], columns in parallel; a bad label
/// is the error, with its row in the batch.
fn encode_block(
    parser: &RowParser,
    ids: &Ids,
    plan: &[Planned],
    columns: &[Values],
    rows: &[usize],
) -> Result<ColumnBlock, (usize, BadField)> {
    use rayon::prelude::*;
    let cat_index: Vec<usize> = plan
        .iter()
        .scan(0, |next, c| {
            let i = *next;
            *next += usize::from(matches!(c.kind, Kind::Categorical { .. }));
            Some(i)
        })
        .collect();
    let encoded: Vec<Result<Encoded, (usize, BadField)>> = plan
        .par_iter()
        .zip(columns)
        .zip(&cat_index)
        .map(|((c, v), &f)| match c.kind {
            Kind::Label { threshold } => rows
                .iter()
                .map(|&r| label_of(c, threshold, v, r).map_err(|e| (r, e)))
                .collect::<Result<_, _>>()
                .map(Encoded::Labels),
            Kind::Dense => Ok(Encoded::Dense(
                rows.iter()
                    .map(|&r| parser.dense_value(v.number(r)))
                    .collect(),
            )),
            Kind::Categorical { separator, .. } => {
                let mut values = Vec::with_capacity(rows.len());
                let mut counts = Vec::with_capacity(rows.len());
                for &r in rows {
                    let before = values.len();
                    ids.push(f, v, r, separator, &mut values);
                    counts.push((values.len() - before) as u64);
                }
                Ok(Encoded::Cat(values, counts))
            }
        })
        .collect();
    let mut block = ColumnBlock::default();
    for e in encoded {
        match e? {
            Encoded::Labels(l) => block.labels = l,
            Encoded::Dense(d) => block.dense.push(d),
            Encoded::Cat(ids, counts) => block.cats.push((ids, counts)),
        }
    }
    Ok(block)
}

/// Row r's label: a number, 0 or 1 (or by the column's threshold).
fn label_of(c: &Planned, threshold: Option<f64>, v: &Values, r: usize) -> Result<f32, BadField> {
    let x = v.number(r);
    if x.is_nan() {
        let what = format!("column `{}`: the label is null or not a number", c.name);
        return Err(BadField::new(BadRowKind::MissingLabel, c.column, b"", what));
    }
    label_value(x, threshold, c.column, None)
}

/// Reads `path`'s rows in blocks (one record batch each) and calls `on_rows` with each
/// block's good rows and the index (among good rows) of the first, applying
/// `data.on_bad_row` and `data.null_values` in file order.
pub(crate) fn scan(
    path: &Path,
    parser: &RowParser,
    cfg: &DataConfig,
    mut on_rows: impl FnMut(u64, &[ParsedRow]) -> Result<(), DataError>,
) -> Result<(u64, BadRowCounts), DataError> {
    let mut rows: Vec<ParsedRow> = Vec::new();
    let (mut good, mut bad) = (0u64, BadRowCounts::default());
    for_each_batch(path, cfg, false, |plan, first, n, columns| {
        let results = fill_rows(parser, cfg, plan, columns, n, &mut rows);
        let kept = keep_good_rows(path, cfg.on_bad_row, first, results, &mut rows, &mut bad)?;
        on_rows(good, &rows[..kept])?;
        good += kept as u64;
        Ok(())
    })?;
    Ok((good, bad))
}

fn projected_reader(
    path: &Path,
    b: ParquetRecordBatchReaderBuilder<File>,
    plan: &[Planned],
) -> Result<ParquetRecordBatchReader, DataError> {
    let roots: Vec<usize> = plan
        .iter()
        .filter_map(|c| b.schema().index_of(&c.name).ok())
        .collect();
    let mask = ProjectionMask::roots(b.parquet_schema(), roots);
    b.with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| parquet_error(path, e))
}

/// Fills `rows[..n]` (growing it as needed) from a batch, rows in parallel; each
/// row's outcome.
fn fill_rows(
    parser: &RowParser,
    cfg: &DataConfig,
    plan: &[Planned],
    columns: &[Values],
    n: usize,
    rows: &mut Vec<ParsedRow>,
) -> Vec<Result<(), BadField>> {
    use rayon::prelude::*;
    if rows.len() < n {
        rows.resize_with(n, ParsedRow::default);
    }
    rows[..n]
        .par_iter_mut()
        .enumerate()
        .with_min_len(512)
        .map(|(r, row)| fill_row(parser, cfg.null_values, plan, columns, r, row))
        .collect()
}

/// Row r of a batch, in the order a delimited row is parsed: label and dense columns
/// first (dense-as-categorical features come first), then the categorical ones.
fn fill_row(
    parser: &RowParser,
    nulls: NullPolicy,
    plan: &[Planned],
    columns: &[Values],
    r: usize,
    row: &mut ParsedRow,
) -> Result<(), BadField> {
    row.clear();
    let null = |c: &Planned| {
        BadField::new(
            BadRowKind::NullValue,
            c.column,
            b"",
            format!(
                "column `{}` is null (data.null_values = \"bad_row\")",
                c.name
            ),
        )
    };
    for (c, v) in plan.iter().zip(columns) {
        match c.kind {
            Kind::Label { threshold } => row.label = label_of(c, threshold, v, r)?,
            Kind::Dense if v.is_null(r) && nulls == NullPolicy::BadRow => return Err(null(c)),
            Kind::Dense => parser.push_dense(row, v.number(r)),
            Kind::Categorical { .. } => {}
        }
    }
    for (c, v) in plan.iter().zip(columns) {
        if let Kind::Categorical { separator, .. } = c.kind {
            if v.is_null(r) && nulls == NullPolicy::BadRow {
                return Err(null(c));
            }
            v.for_each(r, separator, &mut |x| row.push_value(x));
            row.end_feature();
        }
    }
    Ok(())
}
