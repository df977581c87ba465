//! `shardrec export`: a trained model in a layout a serving system reads without
//! shardrec (the layout is documented in the README, "Export for serving").
//!
//! Per categorical feature, the keys it knows and their rows, in the same order:
//! `tables/<feature>.keys.u64` (little-endian u64, [`crate::data::key_of`] of the raw
//! value) and `tables/<feature>.rows.f32` (little-endian f32, `keys x dim`, row-major);
//! with a first-order term also `tables/<feature>.linear.f32` (one float a key). A key
//! that is not listed reads `default_row`: zeros, or a row written as
//! `tables/<feature>.default.f32` (a plain table's out-of-vocabulary row, a dynamic
//! table's learned default), with its first-order weight in `default_linear`. The dense
//! network's parameters are `dense.safetensors`; `manifest.json` says all of it.
//!
//! Dynamic tables export their live keys (every rank's map); plain tables every value of
//! their vocabulary (a `torchrec_npy` feature every id, with `ids_modulo`: a raw id is
//! taken modulo it first, as in training). Hashed, QR and unified tables reach rows by hashing ids, not keys:
//! they are refused, naming the table.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;
use shardrec_tables::{CollectionSpec, RowMap};

use crate::data::{key_of, Vocab};
use crate::persist::checked_file::{listed_f32s, SavedFile};
use crate::persist::checkpoint::SavedPiece;
use crate::persist::key_map_files::{read_key_map, SavedKeyMap};
use crate::persist::model_io::table_file;
use crate::persist::SavedFolder;
use crate::TrainError;

/// Why a model cannot be exported; each names the table or file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("table `{table}` of feature `{feature}` maps ids by {how}, not keys to rows: export writes key -> row tables (plain and dynamic ones)")]
    NotKeyed {
        table: String,
        feature: String,
        how: &'static str,
    },
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One feature in `manifest.json`.
#[derive(Debug, Serialize)]
struct ExportedFeature {
    name: String,
    kind: &'static str,
    dim: usize,
    keys: u64,
    keys_file: String,
    rows_file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    linear_file: Option<String>,
    /// `zeros`, or the file holding the row of keys not listed.
    default_row: String,
    /// With a first-order term and a default row file: the file holding the first-order
    /// weight of keys not listed (otherwise it is zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    default_linear: Option<String>,
    /// torchrec_npy's features: a raw id is first taken modulo this (TorchRec's
    /// `num_embeddings_per_feature`); the keys are the ids 0..it.
    #[serde(skip_serializing_if = "Option::is_none")]
    ids_modulo: Option<u64>,
}

/// A saved rectangle of a table: (first row, first column, rows, columns, values).
type Block = (u64, usize, u64, usize, Vec<f32>);

/// The rows of one collection's tables, from a saved folder's files (all in memory).
struct TableRows<'a> {
    dir: &'a Path,
    /// Per table, its saved blocks.
    pieces: HashMap<usize, Vec<Block>>,
}

impl<'a> TableRows<'a> {
    fn load(
        dir: &'a Path,
        saved: &SavedFolder,
        collection: &str,
        spec: &CollectionSpec,
    ) -> Result<Self, TrainError> {
        let files: &[SavedFile] = match saved {
            SavedFolder::Model(m) => &m.files,
            SavedFolder::Pieces(m) => &m.files,
        };
        let read = |rel: &str| listed_f32s(dir, files, rel);
        let mut pieces: HashMap<usize, Vec<_>> = HashMap::new();
        match saved {
            SavedFolder::Model(_) => {
                for (t, table) in spec.tables.iter().enumerate() {
                    let values = read(&table_file(collection, t))?;
                    pieces
                        .entry(t)
                        .or_default()
                        .push((0, 0, table.rows, table.dim, values));
                }
            }
            SavedFolder::Pieces(m) => {
                for p in m.pieces.iter().filter(|p| p.collection == collection) {
                    let SavedPiece { rows, cols, .. } = p;
                    let values = read(&p.weights)?;
                    let entry = (
                        rows[0],
                        cols[0],
                        rows[1] - rows[0],
                        cols[1] - cols[0],
                        values,
                    );
                    pieces.entry(p.table).or_default().push(entry);
                }
            }
        }
        Ok(Self { dir, pieces })
    }

    /// Row `row` of table `t` (`dim` wide) appended to `out`, from the pieces holding it.
    fn row(&self, t: usize, row: u64, dim: usize, out: &mut Vec<f32>) -> Result<(), TrainError> {
        let start = out.len();
        out.resize(start + dim, 0.0);
        let mut found = 0;
        for (r0, c0, nr, nc, values) in self.pieces.get(&t).into_iter().flatten() {
            if row >= *r0 && row < r0 + nr {
                let at = (row - r0) as usize * nc;
                out[start + c0..start + c0 + nc].copy_from_slice(&values[at..at + nc]);
                found += nc;
            }
        }
        if found < dim {
            return Err(ExportError::Bad {
                path: self.dir.join("manifest.json"),
                message: format!("row {row} of table {t} is not in the saved pieces"),
            }
            .into());
        }
        Ok(())
    }
}

/// Exports the saved model in `model_dir` to `out` (see the module header).
pub fn export_model(model_dir: &Path, out: &Path) -> Result<serde_json::Value, TrainError> {
    let saved = SavedFolder::read(model_dir)?;
    let preprocessing = match &saved {
        SavedFolder::Model(m) => &m.preprocessing,
        SavedFolder::Pieces(m) => &m.preprocessing,
    };
    let (schema, collections, files, model, dynamic, key_maps) = match &saved {
        SavedFolder::Model(m) => (
            &m.schema,
            &m.collections,
            &m.files,
            &m.model,
            &[][..],
            &[][..],
        ),
        SavedFolder::Pieces(m) => (
            &m.schema,
            &m.collections,
            &m.files,
            &m.model,
            &m.dynamic[..],
            &m.key_maps[..],
        ),
    };
    let spec_of = |name: &str| collections.iter().find(|c| c.name == name).map(|c| &c.spec);
    let main = spec_of("main").ok_or_else(|| ExportError::Bad {
        path: model_dir.join("manifest.json"),
        message: "no main collection".into(),
    })?;
    let main_rows = TableRows::load(model_dir, &saved, "main", main)?;
    let linear = match spec_of("first_order") {
        Some(s) => Some((s, TableRows::load(model_dir, &saved, "first_order", s)?)),
        None => None,
    };
    let vocab = Vocab::load(&model_dir.join("vocab.bin"))?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    std::fs::create_dir_all(out.join("tables")).map_err(io(out))?;
    let mut features = Vec::new();
    for (f, column) in schema.categorical.iter().enumerate() {
        let keyed = dynamic.iter().find(|d| d.feature == f);
        let (keys, rows, kind) = match keyed {
            Some(d) => (
                live_keys(model_dir, files, key_maps, f)?,
                d.learned_default_row(),
                "dynamic",
            ),
            None => {
                let (keys, rows) = vocab_keys(main, f, &column.name, &vocab)?;
                (keys, Some(rows), "plain")
            }
        };
        let mut feature = write_feature(
            out,
            f,
            &column.name,
            kind,
            (main, &main_rows),
            linear.as_ref().map(|(s, r)| (*s, r)),
            &keys,
            rows,
        )?;
        feature.ids_modulo = vocab.features[f].identity_size();
        features.push(feature);
    }
    copy_dense(model_dir, files, out)?;
    let manifest = json!({
        "format": "shardrec-export", "version": 1,
        "key": "a canonical unsigned decimal integer is its own key; any other value, the 64-bit FNV-1a hash of its bytes",
        "schema": schema, "preprocessing": preprocessing, "model": model,
        "features": features, "dense": "dense.safetensors",
    });
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    std::fs::write(out.join("manifest.json"), text).map_err(io(&out.join("manifest.json")))?;
    Ok(manifest)
}

/// Copies the saved dense network (`dense.safetensors`) to `out`.
fn copy_dense(model_dir: &Path, files: &[SavedFile], out: &Path) -> Result<(), TrainError> {
    let dense = files
        .iter()
        .find(|f| f.path == "dense.safetensors")
        .ok_or_else(|| ExportError::Bad {
            path: model_dir.join("manifest.json"),
            message: "no dense.safetensors".into(),
        })?;
    let to = out.join("dense.safetensors");
    std::fs::copy(model_dir.join(&dense.path), &to)
        .map_err(|source| ExportError::Io { path: to, source })?;
    Ok(())
}

/// Every live key of dynamic feature `f` and its global row, over every rank's map.
fn live_keys(
    dir: &Path,
    files: &[SavedFile],
    maps: &[SavedKeyMap],
    f: usize,
) -> Result<Vec<(u64, u64)>, TrainError> {
    let mut keys = Vec::new();
    for s in maps.iter().filter(|s| s.feature == f) {
        let map = read_key_map(dir, files, s)?;
        keys.extend(
            map.live()
                .into_iter()
                .map(|(k, r)| (k, s.base + u64::from(r))),
        );
    }
    keys.sort_unstable();
    Ok(keys)
}

/// A plain feature's keys (its vocabulary's values) and rows, and its out-of-vocabulary
/// row; refuses a table that hashes ids.
fn vocab_keys(
    spec: &CollectionSpec,
    f: usize,
    name: &str,
    vocab: &Vocab,
) -> Result<(Vec<(u64, u64)>, u64), TrainError> {
    let feature = &spec.features[f];
    let probe = &feature.probes[0];
    let how = match (&probe.map, feature.probes.len()) {
        (RowMap::Offset { .. }, 1) => None,
        (RowMap::Hash { .. }, _) => Some("hashing (hashed or unified table)"),
        _ => Some("quotient and remainder"),
    };
    if let Some(how) = how {
        return Err(ExportError::NotKeyed {
            table: probe.table.clone(),
            feature: name.to_string(),
            how,
        }
        .into());
    }
    let RowMap::Offset { offset, .. } = probe.map else {
        unreachable!("checked above")
    };
    let fv = &vocab.features[f];
    let mut keys: Vec<(u64, u64)> = match fv.identity_size() {
        // ids are their own values: the key of id v is key_of("v"), which is v
        Some(size) => (0..size)
            .map(|id| (key_of(id.to_string().as_bytes()), offset + id))
            .collect(),
        None => fv
            .entries()
            .map(|(value, id)| (key_of(value), offset + u64::from(id)))
            .collect(),
    };
    keys.sort_unstable();
    Ok((keys, offset))
}

/// Writes one feature's keys, rows (and first-order weights, and default row).
#[allow(clippy::too_many_arguments)]
fn write_feature(
    out: &Path,
    f: usize,
    name: &str,
    kind: &'static str,
    main: (&CollectionSpec, &TableRows),
    linear: Option<(&CollectionSpec, &TableRows)>,
    keys: &[(u64, u64)],
    oov_row: Option<u64>,
) -> Result<ExportedFeature, TrainError> {
    let table_of = |spec: &CollectionSpec| {
        let t = &spec.features[f].probes[0].table;
        let i = spec.tables.iter().position(|x| &x.name == t).unwrap_or(0);
        (i, spec.tables[i].dim)
    };
    let (t, dim) = table_of(main.0);
    let rel = |suffix: &str| format!("tables/{name}.{suffix}");
    let write = |suffix: &str, bytes: Vec<u8>| -> Result<String, TrainError> {
        let path = out.join(rel(suffix));
        let mut file = std::fs::File::create(&path).map_err(|source| ExportError::Io {
            path: path.clone(),
            source,
        })?;
        file.write_all(&bytes)
            .map_err(|source| ExportError::Io { path, source })?;
        Ok(rel(suffix))
    };
    let floats = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut rows = Vec::with_capacity(keys.len() * dim);
    for &(_, row) in keys {
        main.1.row(t, row, dim, &mut rows)?;
    }
    let keys_file = write(
        "keys.u64",
        keys.iter().flat_map(|k| k.0.to_le_bytes()).collect(),
    )?;
    let rows_file = write("rows.f32", floats(&rows))?;
    let linear_file = match linear {
        Some((spec, held)) => {
            let (lt, _) = table_of(spec);
            let mut w = Vec::with_capacity(keys.len());
            for &(_, row) in keys {
                held.row(lt, row, 1, &mut w)?;
            }
            Some(write("linear.f32", floats(&w))?)
        }
        None => None,
    };
    let (default_row, default_linear) = match oov_row {
        Some(r) => {
            let mut d = Vec::with_capacity(dim);
            main.1.row(t, r, dim, &mut d)?;
            let row = write("default.f32", floats(&d))?;
            let linear = match linear {
                Some((spec, held)) => {
                    let mut w = Vec::with_capacity(1);
                    held.row(table_of(spec).0, r, 1, &mut w)?;
                    Some(write("default.linear.f32", floats(&w))?)
                }
                None => None,
            };
            (row, linear)
        }
        None => ("zeros".into(), None),
    };
    Ok(ExportedFeature {
        name: name.to_string(),
        kind,
        dim,
        keys: keys.len() as u64,
        keys_file,
        rows_file,
        linear_file,
        default_row,
        default_linear,
        ids_modulo: None,
    })
}
