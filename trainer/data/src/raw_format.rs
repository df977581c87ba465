//! Parsing one line of a raw input file into a label, dense values and categorical
//! values, for each supported format: Criteo TSV, Avazu CSV, libFM, and delimited files
//! whose columns the config describes. Nothing here panics on any input: every problem
//! is a [`BadField`] naming the column.

use crate::config::{ColumnRole, DataConfig, DataFormat, DenseTransform};

use super::bad_rows::{BadField, BadRowKind};

/// The columns a prepared dataset has, in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Schema {
    pub dense: Vec<String>,
    pub categorical: Vec<CategoricalColumn>,
}

impl Schema {
    /// Whether this is behaviour-sequence data (`data.format = "sequence"`).
    pub fn is_sequence(&self) -> bool {
        use super::sequence_format::SEQUENCE_FEATURES;
        self.dense.is_empty()
            && self.categorical.len() == SEQUENCE_FEATURES.len()
            && self
                .categorical
                .iter()
                .zip(SEQUENCE_FEATURES)
                .all(|(c, n)| c.name == n)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CategoricalColumn {
    pub name: String,
    /// Several values per row (pooled by the table).
    pub multi_valued: bool,
}

/// A parsed row, reused between lines to avoid allocation.
#[derive(Debug, Default, Clone)]
pub struct ParsedRow {
    pub label: f32,
    pub dense: Vec<f32>,
    cat_bytes: Vec<u8>,
    cat_values: Vec<(u32, u32)>,
    cat_starts: Vec<u32>,
}

impl ParsedRow {
    pub(crate) fn clear(&mut self) {
        self.dense.clear();
        self.cat_bytes.clear();
        self.cat_values.clear();
        self.cat_starts.clear();
        self.cat_starts.push(0);
    }

    pub(crate) fn push_value(&mut self, v: &[u8]) {
        let s = self.cat_bytes.len() as u32;
        self.cat_bytes.extend_from_slice(v);
        self.cat_values.push((s, self.cat_bytes.len() as u32));
    }

    pub(crate) fn end_feature(&mut self) {
        self.cat_starts.push(self.cat_values.len() as u32);
    }

    /// Values of categorical feature `f`.
    pub fn cat(&self, f: usize) -> impl Iterator<Item = &[u8]> {
        let (a, b) = (self.cat_starts[f] as usize, self.cat_starts[f + 1] as usize);
        self.cat_values[a..b]
            .iter()
            .map(move |&(s, e)| &self.cat_bytes[s as usize..e as usize])
    }

    pub fn num_categorical(&self) -> usize {
        self.cat_starts.len().saturating_sub(1)
    }
}

#[derive(Debug, Clone)]
enum Action {
    Label {
        threshold: Option<f64>,
    },
    Dense,
    Categorical {
        separator: Option<u8>,
        hex: bool,
        hour_of_day: bool,
    },
    Skip,
}

#[derive(Debug, Clone)]
enum Layout {
    Delimited {
        delimiter: u8,
        actions: Vec<Action>,
        joins: Vec<JoinTable>,
    },
    Libfm {
        fields: usize,
    },
}

/// A side file loaded for `[[data.joins]]`: per key, the values of its categorical
/// columns.
#[derive(Debug, Clone)]
struct JoinTable {
    file: String,
    /// Index of the key among the data's columns.
    key_column: usize,
    /// Separator of each categorical column (multi-valued when set).
    separators: Vec<Option<u8>>,
    names: Vec<String>,
    rows: std::sync::Arc<std::collections::HashMap<Vec<u8>, Vec<Vec<u8>>>>,
}

impl JoinTable {
    fn load(
        j: &crate::config::JoinConfig,
        data_columns: &[crate::config::ColumnConfig],
    ) -> Result<Self, FormatError> {
        let file = j.file.display().to_string();
        let key_column = data_columns
            .iter()
            .position(|c| c.name == j.on)
            .ok_or_else(|| {
                FormatError(format!(
                    "data.joins ({file}): the data has no column `{}` to join on",
                    j.on
                ))
            })?;
        let side_key = j
            .columns
            .iter()
            .position(|c| c.name == j.on)
            .ok_or_else(|| {
                FormatError(format!(
                    "data.joins ({file}): no column `{}` among its columns",
                    j.on
                ))
            })?;
        let mut separators = Vec::new();
        let mut names = Vec::new();
        let mut picked = Vec::new();
        for (i, c) in j.columns.iter().enumerate() {
            if i == side_key {
                continue;
            }
            match c.role {
                ColumnRole::Categorical => {
                    picked.push(i);
                    names.push(c.name.clone());
                    separators.push(c.separator.as_ref().map(|s| s.as_bytes()[0]));
                }
                ColumnRole::Skip => {}
                _ => {
                    return Err(FormatError(format!(
                        "data.joins ({file}): column `{}` must be categorical or skip (joined columns add features)",
                        c.name
                    )))
                }
            }
        }
        let text = std::fs::read(&j.file).map_err(|e| FormatError(format!("{file}: {e}")))?;
        let delimiter = j.delimiter.as_deref().map_or(b'\t', |d| d.as_bytes()[0]);
        let mut rows = std::collections::HashMap::new();
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if (n == 0 && j.header) || line.is_empty() {
                continue;
            }
            let fields: Vec<&[u8]> = line.split(|&b| b == delimiter).collect();
            if fields.len() != j.columns.len() {
                return Err(FormatError(format!(
                    "{file}:{}: expected {} columns, found {}",
                    n + 1,
                    j.columns.len(),
                    fields.len()
                )));
            }
            let values = picked.iter().map(|&i| fields[i].to_vec()).collect();
            if rows.insert(fields[side_key].to_vec(), values).is_some() {
                return Err(FormatError(format!(
                    "{file}:{}: key `{}` appears twice",
                    n + 1,
                    String::from_utf8_lossy(fields[side_key])
                )));
            }
        }
        Ok(Self {
            file,
            key_column,
            separators,
            names,
            rows: std::sync::Arc::new(rows),
        })
    }
}

/// Parses lines of one format.
#[derive(Debug, Clone)]
pub struct RowParser {
    layout: Layout,
    /// Sequence data: the two history features, which must be equally long.
    paired_sequences: Option<(usize, usize)>,
    transform: DenseTransform,
    dense_as_categorical: bool,
    schema: Schema,
    /// Whether the first line of a file may be a header to skip.
    header: HeaderRule,
}

/// How to recognise a header line.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderRule {
    None,
    /// The first line of every file is a header.
    Always,
    /// A first line starting with this text is a header (Avazu: only train.csv has one).
    StartsWith(String),
}

pub const CRITEO_DENSE: usize = 13;
pub const CRITEO_CATEGORICAL: usize = 26;

/// Avazu's columns when a file has no header (the Kaggle order).
pub const AVAZU_COLUMNS: [&str; 24] = [
    "id",
    "click",
    "hour",
    "C1",
    "banner_pos",
    "site_id",
    "site_domain",
    "site_category",
    "app_id",
    "app_domain",
    "app_category",
    "device_id",
    "device_ip",
    "device_model",
    "device_type",
    "device_conn_type",
    "C14",
    "C15",
    "C16",
    "C17",
    "C18",
    "C19",
    "C20",
    "C21",
];

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

/// A format's column layout and header rule; `names` gets its features' names in file
/// order.
type LayoutAndHeader = (Layout, HeaderRule);

fn criteo_layout(names: &mut Vec<String>) -> LayoutAndHeader {
    criteo_like_layout(CRITEO_DENSE, CRITEO_CATEGORICAL, true, names)
}

/// A label, then `dense` columns named I1.. and `categorical` ones named C1.. (hex
/// text when `hex`): Criteo's layout, and TorchRec's arrays of it.
fn criteo_like_layout(
    dense: usize,
    categorical: usize,
    hex: bool,
    names: &mut Vec<String>,
) -> LayoutAndHeader {
    let mut actions = vec![Action::Label { threshold: None }];
    for i in 1..=dense {
        actions.push(Action::Dense);
        names.push(format!("I{i}"));
    }
    for i in 1..=categorical {
        actions.push(Action::Categorical {
            separator: None,
            hex,
            hour_of_day: false,
        });
        names.push(format!("C{i}"));
    }
    let layout = Layout::Delimited {
        delimiter: b'\t',
        actions,
        joins: vec![],
    };
    (layout, HeaderRule::None)
}

fn avazu_layout(names: &mut Vec<String>) -> LayoutAndHeader {
    let mut actions = Vec::new();
    for c in AVAZU_COLUMNS {
        actions.push(match c {
            "id" => Action::Skip,
            "click" => Action::Label { threshold: None },
            _ => {
                names.push(c.to_string());
                Action::Categorical {
                    separator: None,
                    hex: false,
                    hour_of_day: c == "hour",
                }
            }
        });
    }
    let layout = Layout::Delimited {
        delimiter: b',',
        actions,
        joins: vec![],
    };
    (layout, HeaderRule::StartsWith("id,".into()))
}

/// libFM: `data.libfm_fields`, or the most common number of features over the first
/// lines of the training file (one malformed line must not set the layout: with
/// `on_bad_row = "skip"` it would turn every good row into a bad one).
fn libfm_layout(
    cfg: &DataConfig,
    sample: &[Vec<u8>],
    names: &mut Vec<String>,
) -> Result<LayoutAndHeader, FormatError> {
    let fields = match cfg.libfm_fields {
        Some(n) => n,
        None => {
            if sample.is_empty() {
                return Err(FormatError("libFM file is empty".into()));
            }
            most_common_field_count(sample).ok_or_else(|| {
                FormatError("libFM lines have no features; set data.libfm_fields".into())
            })?
        }
    };
    for i in 1..=fields {
        names.push(format!("f{i}"));
    }
    Ok((Layout::Libfm { fields }, HeaderRule::None))
}

/// The most common number of `index:value` tokens after the label, over lines that
/// have any (the first such count wins a tie).
fn most_common_field_count(sample: &[Vec<u8>]) -> Option<usize> {
    let mut counts: Vec<(usize, usize)> = Vec::new();
    for line in sample {
        let n = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|t| !t.is_empty())
            .count();
        let Some(fields) = n.checked_sub(1).filter(|&f| f > 0) else {
            continue;
        };
        match counts.iter_mut().find(|(f, _)| *f == fields) {
            Some((_, c)) => *c += 1,
            None => counts.push((fields, 1)),
        }
    }
    let most = counts.iter().map(|&(_, c)| c).max()?;
    counts.iter().find(|&&(_, c)| c == most).map(|&(f, _)| f)
}

fn delimited_layout(
    cfg: &DataConfig,
    names: &mut Vec<String>,
) -> Result<LayoutAndHeader, FormatError> {
    let delimiter = cfg.delimiter.as_deref().map_or(b'\t', |d| d.as_bytes()[0]);
    let mut actions = Vec::new();
    for c in &cfg.columns {
        actions.push(match c.role {
            ColumnRole::Label => Action::Label {
                threshold: c.threshold,
            },
            ColumnRole::Dense => Action::Dense,
            ColumnRole::Categorical => Action::Categorical {
                separator: c.separator.as_ref().map(|s| s.as_bytes()[0]),
                hex: false,
                hour_of_day: false,
            },
            ColumnRole::Skip => Action::Skip,
        });
        if matches!(c.role, ColumnRole::Dense | ColumnRole::Categorical) {
            names.push(c.name.clone());
        }
    }
    let header = if cfg.header {
        HeaderRule::Always
    } else {
        HeaderRule::None
    };
    let joins = cfg
        .joins
        .iter()
        .map(|j| JoinTable::load(j, &cfg.columns))
        .collect::<Result<Vec<_>, _>>()?;
    let layout = Layout::Delimited {
        delimiter,
        actions,
        joins,
    };
    Ok((layout, header))
}

fn sequence_layout(names: &mut Vec<String>) -> LayoutAndHeader {
    let mut actions = vec![Action::Label { threshold: None }];
    for (f, name) in super::sequence_format::SEQUENCE_FEATURES.iter().enumerate() {
        let multi =
            f == super::sequence_format::HIST_ITEMS || f == super::sequence_format::HIST_CATEGORIES;
        actions.push(Action::Categorical {
            separator: multi.then_some(b','),
            hex: false,
            hour_of_day: false,
        });
        names.push(name.to_string());
    }
    let layout = Layout::Delimited {
        delimiter: b'\t',
        actions,
        joins: vec![],
    };
    (layout, HeaderRule::None)
}

/// The schema of a layout whose features are `names` in file order: dense columns first
/// in file order, then categorical ones (dense-as-categorical ones first, as they come
/// first in the file, then the joined side files' columns).
fn schema_of(layout: &Layout, names: Vec<String>, dense_as_categorical: bool) -> Schema {
    let mut dense = Vec::new();
    let mut categorical = Vec::new();
    let mut name_iter = names.into_iter();
    let column = |name: String, multi_valued: bool| CategoricalColumn { name, multi_valued };
    match layout {
        Layout::Delimited { actions, joins, .. } => {
            let mut dense_cats = Vec::new();
            let mut own = Vec::new();
            for a in actions {
                match a {
                    Action::Dense => {
                        let n = name_iter.next().unwrap_or_default();
                        if dense_as_categorical {
                            dense_cats.push(column(n, false));
                        } else {
                            dense.push(n);
                        }
                    }
                    Action::Categorical { separator, .. } => {
                        let n = name_iter.next().unwrap_or_default();
                        own.push(column(n, separator.is_some()));
                    }
                    _ => {}
                }
            }
            categorical.extend(dense_cats);
            categorical.extend(own);
            for j in joins {
                for (name, sep) in j.names.iter().zip(&j.separators) {
                    categorical.push(column(name.clone(), sep.is_some()));
                }
            }
        }
        Layout::Libfm { .. } => {
            categorical.extend(name_iter.map(|n| column(n, false)));
        }
    }
    Schema { dense, categorical }
}

impl RowParser {
    /// The parser for `cfg.format`. `sample` is the first lines of the training file
    /// (libFM reads its field count from them when `libfm_fields` is unset).
    pub fn new(cfg: &DataConfig, sample: &[Vec<u8>]) -> Result<Self, FormatError> {
        let mut names = Vec::new();
        let (layout, header) = match cfg.format {
            DataFormat::Criteo => criteo_layout(&mut names),
            DataFormat::Avazu => avazu_layout(&mut names),
            DataFormat::Libfm => libfm_layout(cfg, sample, &mut names)?,
            DataFormat::Delimited | DataFormat::Parquet => delimited_layout(cfg, &mut names)?,
            DataFormat::TorchrecNpy => {
                return Err(FormatError(
                    "torchrec_npy arrays take RowParser::for_npy".into(),
                ))
            }
            DataFormat::Sequence => sequence_layout(&mut names),
            DataFormat::Prepared => {
                return Err(FormatError("prepared data needs no parser".into()))
            }
        };
        Ok(Self::from_layout(cfg, layout, header, names))
    }

    /// The parser whose schema TorchRec's arrays of `dense` and `sparse` columns have
    /// (their rows are not text: `torchrec_npy` fills rows through [`Self::push_dense`]).
    pub fn for_npy(cfg: &DataConfig, dense: usize, sparse: usize) -> Self {
        let mut names = Vec::new();
        let (layout, header) = criteo_like_layout(dense, sparse, false, &mut names);
        Self::from_layout(cfg, layout, header, names)
    }

    fn from_layout(
        cfg: &DataConfig,
        layout: Layout,
        header: HeaderRule,
        names: Vec<String>,
    ) -> Self {
        let schema = schema_of(&layout, names, cfg.dense_as_categorical);
        Self {
            layout,
            paired_sequences: (cfg.format == DataFormat::Sequence).then_some((
                super::sequence_format::HIST_ITEMS,
                super::sequence_format::HIST_CATEGORIES,
            )),
            transform: cfg.dense_transform,
            dense_as_categorical: cfg.dense_as_categorical,
            schema,
            header,
        }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Whether `line`, the first of a file, is a header to skip.
    pub fn is_header(&self, line: &[u8]) -> bool {
        match &self.header {
            HeaderRule::None => false,
            HeaderRule::Always => true,
            HeaderRule::StartsWith(p) => line.starts_with(p.as_bytes()),
        }
    }

    /// Parses one line (without its newline) into `row`.
    pub fn parse(&self, line: &[u8], row: &mut ParsedRow) -> Result<(), BadField> {
        row.clear();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match &self.layout {
            Layout::Delimited {
                delimiter,
                actions,
                joins,
            } => self.parse_delimited(line, *delimiter, actions, joins, row)?,
            Layout::Libfm { fields } => parse_libfm(line, *fields, row)?,
        }
        if let Some((a, b)) = self.paired_sequences {
            let (na, nb) = (row.cat(a).count(), row.cat(b).count());
            if na != nb {
                let col = 2 + b;
                let field = line.split(|&c| c == b'\t').nth(col - 1).unwrap_or_default();
                let field = &field[..field.len().min(80)];
                return Err(BadField::new(
                    BadRowKind::SequenceLengthMismatch,
                    col,
                    field,
                    format!("{nb} history categories for {na} history items"),
                ));
            }
        }
        Ok(())
    }

    /// Adds one dense value (NaN: missing) to `row`: transformed, or as a categorical
    /// feature with `dense_as_categorical`. Every format's dense cells go through here.
    pub(crate) fn push_dense(&self, row: &mut ParsedRow, x: f64) {
        if self.dense_as_categorical {
            if x.is_nan() {
                row.push_value(b"");
            } else {
                let v = transform(self.transform, x);
                row.push_value(format_number(v).as_bytes());
            }
            row.end_feature();
        } else {
            row.dense.push(self.dense_value(x));
        }
    }

    /// A dense value (NaN: missing, read as 0) as the model sees it, without
    /// `dense_as_categorical`.
    pub(crate) fn dense_value(&self, x: f64) -> f32 {
        transform(self.transform, if x.is_nan() { 0.0 } else { x }) as f32
    }

    /// Marks the categorical features `names` multi-valued (a Parquet file's list
    /// columns, known once the file is open).
    pub(crate) fn mark_multi_valued(&mut self, names: &[String]) {
        for c in &mut self.schema.categorical {
            if names.contains(&c.name) {
                c.multi_valued = true;
            }
        }
    }

    fn parse_delimited(
        &self,
        line: &[u8],
        delimiter: u8,
        actions: &[Action],
        joins: &[JoinTable],
        row: &mut ParsedRow,
    ) -> Result<(), BadField> {
        let count = line.iter().filter(|&&b| b == delimiter).count() + 1;
        if count != actions.len() {
            return Err(BadField::new(
                BadRowKind::WrongColumnCount,
                count.min(actions.len()) + 1,
                line,
                format!("expected {} columns, found {count}", actions.len()),
            ));
        }
        // label and dense columns first (dense-as-categorical values come first among the
        // categorical features), then a second pass over the categorical columns
        for (i, (field, action)) in line.split(|&b| b == delimiter).zip(actions).enumerate() {
            let col = i + 1;
            match action {
                Action::Skip => {}
                Action::Label { threshold } => row.label = parse_label(field, *threshold, col)?,
                Action::Dense => self.push_dense(row, parse_dense(field, col)?),
                Action::Categorical { hex, .. } => {
                    if *hex && !field.iter().all(u8::is_ascii_hexdigit) {
                        return Err(BadField::new(
                            BadRowKind::NonHexCategory,
                            col,
                            field,
                            "Criteo categories are hexadecimal",
                        ));
                    }
                }
            }
        }
        for (field, action) in line.split(|&b| b == delimiter).zip(actions) {
            let Action::Categorical {
                separator,
                hour_of_day,
                ..
            } = action
            else {
                continue;
            };
            match separator {
                Some(s) => {
                    if !field.is_empty() {
                        for v in field.split(|b| b == s) {
                            row.push_value(v);
                        }
                    }
                }
                None if *hour_of_day && field.len() >= 2 => {
                    row.push_value(&field[field.len() - 2..])
                }
                None => row.push_value(field),
            }
            row.end_feature();
        }
        for j in joins {
            let key = line
                .split(|&b| b == delimiter)
                .nth(j.key_column)
                .unwrap_or_default();
            let values = j.rows.get(key).ok_or_else(|| {
                BadField::new(
                    BadRowKind::UnknownJoinKey,
                    j.key_column + 1,
                    key,
                    format!("no row with this key in {}", j.file),
                )
            })?;
            for (v, sep) in values.iter().zip(&j.separators) {
                match sep {
                    Some(s) if !v.is_empty() => {
                        for x in v.split(|b| b == s) {
                            row.push_value(x);
                        }
                    }
                    Some(_) => {}
                    None => row.push_value(v),
                }
                row.end_feature();
            }
        }
        Ok(())
    }
}

/// NaN marks a missing (empty) dense value.
fn parse_dense(field: &[u8], col: usize) -> Result<f64, BadField> {
    if field.is_empty() {
        return Ok(f64::NAN);
    }
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|x| x.is_finite())
        .ok_or_else(|| BadField::new(BadRowKind::UnparsableNumber, col, field, "not a number"))
}

fn parse_label(field: &[u8], threshold: Option<f64>, col: usize) -> Result<f32, BadField> {
    if field.iter().all(u8::is_ascii_whitespace) {
        return Err(BadField::new(
            BadRowKind::MissingLabel,
            col,
            field,
            "the label is empty",
        ));
    }
    let x = std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|x| x.is_finite())
        .ok_or_else(|| {
            BadField::new(
                BadRowKind::BadLabel,
                col,
                field,
                "the label is not a number",
            )
        })?;
    label_value(x, threshold, col, Some(field))
}

/// A numeric label as 0 or 1: by `threshold`, else it must be 0 or 1 (or -1 for 0).
/// `field` is what the row held there, for the error (the number itself when the row
/// was not text); it is only formatted for a bad label.
pub(crate) fn label_value(
    x: f64,
    threshold: Option<f64>,
    col: usize,
    field: Option<&[u8]>,
) -> Result<f32, BadField> {
    match threshold {
        Some(t) => Ok(if x >= t { 1.0 } else { 0.0 }),
        None if x == 1.0 => Ok(1.0),
        None if x == 0.0 || x == -1.0 => Ok(0.0),
        None => Err(BadField::new(
            BadRowKind::BadLabel,
            col,
            field.unwrap_or(x.to_string().as_bytes()),
            "the label must be 0 or 1 (or -1)",
        )),
    }
}

fn parse_libfm(line: &[u8], fields: usize, row: &mut ParsedRow) -> Result<(), BadField> {
    let mut tokens = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty());
    let label = tokens.next().unwrap_or(b"");
    row.label = parse_label(label, None, 1)?;
    let mut n = 0;
    for (i, tok) in tokens.enumerate() {
        let col = i + 2;
        n += 1;
        if n > fields {
            continue;
        }
        let (idx, val) = match tok.iter().position(|&b| b == b':') {
            Some(p) => (&tok[..p], &tok[p + 1..]),
            None => {
                return Err(BadField::new(
                    BadRowKind::BadLibfmPair,
                    col,
                    tok,
                    "expected index:value",
                ))
            }
        };
        let v = std::str::from_utf8(val)
            .ok()
            .and_then(|s| s.parse::<f64>().ok());
        match v {
            Some(1.0) => {}
            Some(_) => {
                return Err(BadField::new(
                    BadRowKind::BadLibfmPair,
                    col,
                    tok,
                    "only binary feature values (1) are supported",
                ))
            }
            None => {
                return Err(BadField::new(
                    BadRowKind::BadLibfmPair,
                    col,
                    tok,
                    "value is not a number",
                ))
            }
        }
        if idx.is_empty() {
            return Err(BadField::new(
                BadRowKind::BadLibfmPair,
                col,
                tok,
                "empty index",
            ));
        }
        row.push_value(idx);
        row.end_feature();
    }
    if n != fields {
        return Err(BadField::new(
            BadRowKind::WrongColumnCount,
            n.min(fields) + 2,
            line,
            format!("expected {fields} features, found {n}"),
        ));
    }
    Ok(())
}

fn transform(t: DenseTransform, x: f64) -> f64 {
    match t {
        DenseTransform::Log1p => x.max(0.0).ln_1p(),
        DenseTransform::LnSquared => {
            if x > 2.0 {
                (x.ln() * x.ln()).floor()
            } else {
                x
            }
        }
        DenseTransform::Identity => x,
    }
}

pub(crate) fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BadRowPolicy;

    fn data_cfg(extra: &str) -> DataConfig {
        let text = format!("[data]\ntrain = \"x\"\n{extra}\n[model]\nkind = \"lr\"\n");
        let mut c = DataConfig::from_toml_section(&text).unwrap();
        c.on_bad_row = BadRowPolicy::Error;
        c
    }

    fn criteo_line(label: &str, dense0: &str, cat0: &str) -> String {
        let mut f = vec![label.to_string(), dense0.to_string()];
        f.extend((1..13).map(|i| i.to_string()));
        f.push(cat0.to_string());
        f.extend((1..26).map(|i| format!("{i:08x}")));
        f.join("\t")
    }

    #[test]
    fn criteo_rows_parse_and_transform() {
        let p = RowParser::new(&data_cfg("format = \"criteo\""), &[]).unwrap();
        let mut row = ParsedRow::default();
        p.parse(criteo_line("1", "", "68fd1e64").as_bytes(), &mut row)
            .unwrap();
        assert_eq!(row.label, 1.0);
        assert_eq!(row.dense[0], 0.0);
        assert!((row.dense[1] - (2f64).ln() as f32).abs() < 1e-6);
        assert_eq!(row.cat(0).collect::<Vec<_>>(), vec![b"68fd1e64".as_slice()]);
        p.parse(criteo_line("0", "-5", "").as_bytes(), &mut row)
            .unwrap();
        assert_eq!(row.dense[0], 0.0);
        assert_eq!(row.cat(0).next(), Some(b"".as_slice()));
        assert_eq!(row.num_categorical(), 26);
    }

    #[test]
    fn every_bad_kind_names_its_column() {
        let p = RowParser::new(&data_cfg("format = \"criteo\""), &[]).unwrap();
        let mut row = ParsedRow::default();
        let cases = [
            (
                criteo_line("1", "abc", "00"),
                BadRowKind::UnparsableNumber,
                2,
            ),
            (criteo_line("1", "1", "zz"), BadRowKind::NonHexCategory, 15),
            (criteo_line("", "1", "00"), BadRowKind::MissingLabel, 1),
            (criteo_line("7", "1", "00"), BadRowKind::BadLabel, 1),
            ("1\t2\t3".to_string(), BadRowKind::WrongColumnCount, 4),
        ];
        for (line, kind, col) in cases {
            let e = p.parse(line.as_bytes(), &mut row).unwrap_err();
            assert_eq!((e.kind, e.column), (kind, col), "{line}: {e:?}");
        }
        let lp = RowParser::new(&data_cfg("format = \"libfm\"\nlibfm_fields = 2"), &[]).unwrap();
        assert_eq!(
            lp.parse(b"1 3:1 9:0.5", &mut row).unwrap_err().kind,
            BadRowKind::BadLibfmPair
        );
        assert_eq!(
            lp.parse(b"1 3:1 9", &mut row).unwrap_err().kind,
            BadRowKind::BadLibfmPair
        );
        assert_eq!(
            lp.parse(b"1 3:1", &mut row).unwrap_err().kind,
            BadRowKind::WrongColumnCount
        );
        lp.parse(b"-1 3:1 9:1", &mut row).unwrap();
        assert_eq!(row.label, 0.0);
        assert_eq!(row.cat(1).next(), Some(b"9".as_slice()));
    }

    #[test]
    fn delimited_columns_with_threshold_and_multi_values() {
        let cfg = data_cfg(
            "format = \"delimited\"\ndelimiter = \",\"\ncolumns = [\
             {name = \"rating\", role = \"label\", threshold = 3.0},\
             {name = \"user\", role = \"categorical\"},\
             {name = \"genres\", role = \"categorical\", separator = \"|\"},\
             {name = \"age\", role = \"dense\"}, {name = \"ts\", role = \"skip\"}]",
        );
        let p = RowParser::new(&cfg, &[]).unwrap();
        assert_eq!(p.schema().dense, vec!["age".to_string()]);
        assert!(p.schema().categorical[1].multi_valued);
        let mut row = ParsedRow::default();
        p.parse(b"4,u1,Drama|Comedy,30,999", &mut row).unwrap();
        assert_eq!(row.label, 1.0);
        assert_eq!(row.cat(1).count(), 2);
        p.parse(b"2,u1,,30,999", &mut row).unwrap();
        assert_eq!(row.label, 0.0);
        assert_eq!(row.cat(1).count(), 0);
    }

    #[test]
    fn joined_side_file_adds_its_columns_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users.tsv");
        std::fs::write(
            &users,
            "id\tage\tgenres\tzip\nu1\t30\ta|b\t123\nu2\t40\t\t456\n",
        )
        .unwrap();
        let join = |file: &std::path::Path| {
            format!(
                "format = \"delimited\"\ndelimiter = \",\"\ncolumns = [\
                 {{name = \"rating\", role = \"label\", threshold = 3.0}},\
                 {{name = \"id\", role = \"categorical\"}}]\n\
                 [[data.joins]]\nfile = \"{}\"\non = \"id\"\nheader = true\ncolumns = [\
                 {{name = \"id\", role = \"skip\"}}, {{name = \"age\", role = \"categorical\"}},\
                 {{name = \"genres\", role = \"categorical\", separator = \"|\"}},\
                 {{name = \"zip\", role = \"skip\"}}]",
                file.display()
            )
        };
        let p = RowParser::new(&data_cfg(&join(&users)), &[]).unwrap();
        let names: Vec<&str> = p
            .schema()
            .categorical
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["id", "age", "genres"]);
        let mut row = ParsedRow::default();
        p.parse(b"4,u1", &mut row).unwrap();
        assert_eq!(row.cat(1).collect::<Vec<_>>(), vec![b"30".as_slice()]);
        assert_eq!(row.cat(2).count(), 2);
        p.parse(b"1,u2", &mut row).unwrap();
        assert_eq!(row.cat(2).count(), 0);
        let e = p.parse(b"1,u9", &mut row).unwrap_err();
        assert_eq!(e.kind, BadRowKind::UnknownJoinKey);
        assert!(e.detail.contains("users.tsv"), "{}", e.detail);
        // a side file with a repeated key or a short line is refused naming file:line
        std::fs::write(&users, "id\tage\tgenres\tzip\nu1\t30\ta\t1\nu1\t31\tb\t2\n").unwrap();
        let e = RowParser::new(&data_cfg(&join(&users)), &[]).unwrap_err().0;
        assert!(e.contains("users.tsv:3") && e.contains("twice"), "{e}");
        std::fs::write(&users, "id\tage\tgenres\tzip\nu1\t30\n").unwrap();
        let e = RowParser::new(&data_cfg(&join(&users)), &[]).unwrap_err().0;
        assert!(
            e.contains("users.tsv:2") && e.contains("expected 4 columns"),
            "{e}"
        );
    }

    #[test]
    fn avazu_header_and_hour_of_day() {
        let p = RowParser::new(&data_cfg("format = \"avazu\""), &[]).unwrap();
        assert!(p.is_header(b"id,click,hour,C1"));
        assert!(!p.is_header(b"1000,0,14102100"));
        let line = b"1000,1,14102117,1005,0,a,b,c,d,e,f,g,h,i,1,0,15704,320,50,1722,0,35,100084,79";
        let mut row = ParsedRow::default();
        p.parse(line, &mut row).unwrap();
        assert_eq!(row.label, 1.0);
        assert_eq!(row.cat(0).next(), Some(b"17".as_slice()));
        assert_eq!(p.schema().categorical.len(), 22);
    }

    #[test]
    fn dense_as_categorical_buckets_with_ln_squared() {
        let p = RowParser::new(
            &data_cfg("format = \"criteo\"\ndense_as_categorical = true\ndense_transform = \"ln_squared\""),
            &[],
        )
        .unwrap();
        assert!(p.schema().dense.is_empty());
        assert_eq!(p.schema().categorical.len(), 39);
        let mut row = ParsedRow::default();
        p.parse(criteo_line("1", "100", "aa").as_bytes(), &mut row)
            .unwrap();
        // floor(ln(100)^2) = floor(21.2) = 21
        assert_eq!(row.cat(0).next(), Some(b"21".as_slice()));
        assert_eq!(row.cat(13).next(), Some(b"aa".as_slice()));
    }
}
