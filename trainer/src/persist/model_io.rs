//! A trained model on disk: the dense parameters (safetensors), every table's rows
//! (little-endian f32, `rows x dim`), the vocabulary, and a manifest with the specs and a
//! CRC32 per file. Written under a temporary name and renamed, so a crash never leaves a
//! model folder that looks complete; on load every file's size and checksum are verified
//! and a mismatch is refused naming the file.

use std::path::Path;

use serde::{Deserialize, Serialize};
use shardrec_models::{ModelConfig, ModelKind};
use shardrec_tables::{CollectionSpec, LocalEmbeddings};
use tch::nn::VarStore;

pub use super::checked_file::ModelIoError;
pub use super::checked_file::SavedFile;
use super::checked_file::{file_crc, io, verify, CrcWriter};
use crate::config::Preprocessing;
use crate::data::Schema;

pub const MODEL_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedCollection {
    pub name: String,
    pub spec: CollectionSpec,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelManifest {
    pub version: u32,
    pub schema: Schema,
    pub vocab_sizes: Vec<u64>,
    pub num_dense: usize,
    pub model: ModelConfig,
    pub collections: Vec<SavedCollection>,
    pub files: Vec<SavedFile>,
    /// Present for an OptEmbed compact model: its main tables hold only kept rows, each
    /// field at its own width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optembed: Option<CompactModelInfo>,
    /// The `[data]` options that change what the model sees (absent in models saved
    /// before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<Preprocessing>,
}

/// How a compact OptEmbed model's tables map to the model's inputs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompactModelInfo {
    /// `D`: the width each field is padded back to before the dense model.
    pub dim: usize,
    /// Searched width of each field.
    pub widths: Vec<usize>,
    /// Kept rows of each field.
    pub kept_rows: Vec<u64>,
    /// The row mask (kept id -> 1 + rank among kept ids; pruned -> row 0).
    pub row_mask: String,
    pub pruned: crate::config::PrunedRows,
    /// The `[optembed]` section the model was trained with (its dense file holds the
    /// thresholds and OOV vectors).
    pub config: crate::config::OptEmbedConfig,
}

/// The row mask of a compact model, written beside its tables.
pub const COMPACT_ROW_MASK: &str = "row_mask.bin";

/// Writes table `t` of `tables` (all shards held here) as `rows x dim` f32.
fn write_table(w: &mut CrcWriter, tables: &LocalEmbeddings, t: usize) -> std::io::Result<()> {
    let shards = &tables.shards()[t];
    let dim = tables.dims()[t];
    let full_width = shards.iter().all(|s| s.cols.len() == dim);
    if full_width {
        let mut ordered: Vec<_> = shards.iter().collect();
        ordered.sort_by_key(|s| s.rows.start);
        let mut next = 0;
        for s in ordered {
            if s.rows.start < next {
                continue; // a replica of rows already written
            }
            s.stream_weights(|block| w.write_f32s(block))?;
            next = s.rows.end;
        }
    } else {
        let rows = tables.layout().table_rows(t);
        let held = shards
            .iter()
            .map(|s| s.weights().map_err(std::io::Error::other))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut row = vec![0f32; dim];
        for r in 0..rows {
            for (s, w) in shards
                .iter()
                .zip(&held)
                .filter(|(s, _)| s.rows.contains(&r))
            {
                let lr = (r - s.rows.start) as usize;
                row[s.cols.clone()].copy_from_slice(&w[lr * s.width()..][..s.width()]);
            }
            w.write_f32s(&row)?;
        }
    }
    Ok(())
}

/// What a saved model is besides its weights: the network, the data's columns and
/// vocabulary, and the preprocessing that made the model's inputs.
pub struct ModelDescription<'a> {
    pub model: &'a ModelConfig,
    pub schema: &'a Schema,
    pub vocab_sizes: &'a [u64],
    pub vocab_file: &'a Path,
    pub preprocessing: &'a Preprocessing,
}

/// The model manifest's own CRC32, beside it (a checkpoint's is `manifest.crc32`, which
/// is how the two kinds of folder are told apart).
pub(crate) const MANIFEST_CRC: &str = "model.crc32";

/// Checks `manifest.json` against `model.crc32`; models saved before the file existed
/// have none and are read as they are.
fn check_manifest_crc(dir: &Path, mpath: &Path, text: &str) -> Result<(), ModelIoError> {
    let cpath = dir.join(MANIFEST_CRC);
    let Ok(want) = std::fs::read_to_string(&cpath) else {
        return Ok(());
    };
    let corrupt = |path: &Path, message: String| ModelIoError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let want = u32::from_str_radix(want.trim(), 16)
        .map_err(|_| corrupt(&cpath, format!("not a CRC32: {:?}", want.trim())))?;
    if crc32fast::hash(text.as_bytes()) != want {
        return Err(corrupt(
            mpath,
            format!("checksum mismatch (edited or corrupt file; {MANIFEST_CRC} says {want:08x})"),
        ));
    }
    Ok(())
}

/// Checks the model a manifest describes before anything is built from it: the
/// `[model]` section's ranges, one dense input per dense column, one vocabulary per
/// categorical feature, and no layer with more weights than `dense.safetensors` holds
/// (a damaged or edited width cannot ask for more memory than the saved model takes).
pub(crate) fn check_described(
    mpath: &Path,
    model: &ModelConfig,
    num_dense: usize,
    schema: &Schema,
    vocab_sizes: &[u64],
    files: &[SavedFile],
) -> Result<(), ModelIoError> {
    let corrupt = |message: String| ModelIoError::Corrupt {
        path: mpath.to_path_buf(),
        message,
    };
    let mut v = Vec::new();
    crate::config::model_section_violations(model, &mut v);
    if let Some(bad) = v.first() {
        return Err(corrupt(format!(
            "{} = {} {}",
            bad.key, bad.value, bad.range
        )));
    }
    if num_dense != schema.dense.len() || vocab_sizes.len() != schema.categorical.len() {
        return Err(corrupt(format!(
            "num_dense {num_dense} and {} vocabulary sizes for a schema of {} dense and {} categorical columns",
            vocab_sizes.len(),
            schema.dense.len(),
            schema.categorical.len()
        )));
    }
    let dense_floats = files
        .iter()
        .find(|f| f.path == "dense.safetensors")
        .map_or(0, |f| f.bytes / 4);
    // the layer lists the kind builds (the others keep their defaults, unused)
    let used: Vec<&Vec<i64>> = match model.kind {
        ModelKind::Lr | ModelKind::Fm => vec![],
        ModelKind::Dlrm => vec![&model.bottom, &model.top],
        ModelKind::Deepfm | ModelKind::Dcnv2 => vec![&model.hidden],
        _ => vec![&model.hidden, &model.attention_hidden],
    };
    for layers in used {
        let too_wide = layers
            .iter()
            .map(|&w| (w, 1))
            .chain(layers.windows(2).map(|w| (w[0], w[1])));
        if let Some((a, b)) = too_wide
            .into_iter()
            .find(|(a, b)| (a * b) as u64 > dense_floats)
        {
            return Err(corrupt(format!(
                "model layers {a} x {b} hold more weights than dense.safetensors ({dense_floats} floats)"
            )));
        }
    }
    Ok(())
}

/// Checks that every table the manifest describes has its file, of `rows x dim` floats:
/// the sizes a manifest states are what is allocated, so they must be what is saved.
fn check_table_files(mpath: &Path, m: &ModelManifest) -> Result<(), ModelIoError> {
    for c in &m.collections {
        for (t, spec) in c.spec.tables.iter().enumerate() {
            let rel = table_file(&c.name, t);
            let want = spec.rows as u128 * spec.dim as u128 * 4;
            let listed = m.files.iter().find(|f| f.path == rel).map(|f| f.bytes);
            if listed.map(u128::from) != Some(want) {
                return Err(ModelIoError::Corrupt {
                    path: mpath.to_path_buf(),
                    message: format!(
                        "table {} of {} is {} x {}, but {rel} is listed as {listed:?} bytes",
                        spec.name, c.name, spec.rows, spec.dim
                    ),
                });
            }
        }
    }
    Ok(())
}

/// A one-process model's file of table `t` of collection `name`.
pub fn table_file(name: &str, t: usize) -> String {
    format!("tables/{name}_{t}.f32")
}

/// Saves a model into `dir` (replacing it).
pub fn save_model(
    dir: &Path,
    vs: &VarStore,
    what: &ModelDescription,
    collections: &[(&str, &LocalEmbeddings)],
    compact: Option<(&CompactModelInfo, &[u8])>,
) -> Result<(), ModelIoError> {
    let (schema, vocab_file) = (what.schema, what.vocab_file);
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("tables")).map_err(io(&tmp))?;
    let mut files = Vec::new();
    let dense = tmp.join("dense.safetensors");
    vs.save(&dense).map_err(|source| ModelIoError::Torch {
        path: dense.clone(),
        source,
    })?;
    let (bytes, crc32) = file_crc(&dense)?;
    files.push(SavedFile {
        path: "dense.safetensors".into(),
        bytes,
        crc32,
    });
    let vocab = tmp.join("vocab.bin");
    std::fs::copy(vocab_file, &vocab).map_err(io(vocab_file))?;
    let (bytes, crc32) = file_crc(&vocab)?;
    files.push(SavedFile {
        path: "vocab.bin".into(),
        bytes,
        crc32,
    });
    let mut saved = Vec::new();
    for (name, tables) in collections {
        for t in 0..tables.layout().num_tables() {
            let rel = table_file(name, t);
            let path = tmp.join(&rel);
            let mut w = CrcWriter::create(&path)?;
            write_table(&mut w, tables, t).map_err(io(&path))?;
            let (bytes, crc32) = w.finish().map_err(io(&path))?;
            files.push(SavedFile {
                path: rel,
                bytes,
                crc32,
            });
        }
        saved.push(SavedCollection {
            name: name.to_string(),
            spec: tables.layout().spec().clone(),
        });
    }
    if let Some((_, mask)) = compact {
        let path = tmp.join(COMPACT_ROW_MASK);
        std::fs::write(&path, mask).map_err(io(&path))?;
        let (bytes, crc32) = file_crc(&path)?;
        files.push(SavedFile {
            path: COMPACT_ROW_MASK.into(),
            bytes,
            crc32,
        });
    }
    let manifest = ModelManifest {
        optembed: compact.map(|(info, _)| info.clone()),
        version: MODEL_VERSION,
        schema: schema.clone(),
        vocab_sizes: what.vocab_sizes.to_vec(),
        num_dense: schema.dense.len(),
        model: what.model.clone(),
        collections: saved,
        files,
        preprocessing: Some(what.preprocessing.clone()),
    };
    let mpath = tmp.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| ModelIoError::Corrupt {
        path: mpath.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&mpath, &text).map_err(io(&mpath))?;
    let cpath = tmp.join(MANIFEST_CRC);
    let crc = format!("{:08x}\n", crc32fast::hash(text.as_bytes()));
    std::fs::write(&cpath, crc).map_err(io(&cpath))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    Ok(())
}

/// Reads and checks a model folder's manifest and files (sizes and checksums).
pub fn read_manifest(dir: &Path) -> Result<ModelManifest, ModelIoError> {
    let mpath = dir.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).map_err(io(&mpath))?;
    check_manifest_crc(dir, &mpath, &text)?;
    let m: ModelManifest = serde_json::from_str(&text).map_err(|e| ModelIoError::Corrupt {
        path: mpath.clone(),
        message: e.to_string(),
    })?;
    if m.version != MODEL_VERSION {
        return Err(ModelIoError::Corrupt {
            path: mpath,
            message: format!("model version {} (expected {MODEL_VERSION})", m.version),
        });
    }
    for f in &m.files {
        verify(dir, f)?;
    }
    check_described(
        &mpath,
        &m.model,
        m.num_dense,
        &m.schema,
        &m.vocab_sizes,
        &m.files,
    )?;
    check_table_files(&mpath, &m)?;
    Ok(m)
}
