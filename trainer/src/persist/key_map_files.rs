//! The key-to-row maps of dynamic tables in a checkpoint or a saved model: one file per
//! rank and dynamic feature (`keys/f<feature>.r<rank>.keys`, [`KeyRows::to_bytes`]),
//! listed in the manifest with the first global row of the rank's block, and checked by
//! CRC like every other file. Resuming with the ranks that wrote them restores each
//! rank's maps as they were, so training goes on bitwise.

use std::path::Path;

use serde::{Deserialize, Serialize};
use shardrec_tables::{KeyMaps, KeyRows};

use super::checked_file::{file_crc, io, map_listed, ModelIoError, SavedFile};
use crate::TrainError;

/// One rank's map of one dynamic feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedKeyMap {
    pub feature: usize,
    pub rank: usize,
    /// The global row of the map's row 0.
    pub base: u64,
    pub file: String,
    /// The feature's tables (main and first-order): saved up to their rows in use.
    pub tables: Vec<String>,
}

/// Writes this rank's maps under `tmp`; says what it wrote.
pub fn write_key_maps(
    tmp: &Path,
    bundle: &crate::bundle::ModelBundle,
    rank: usize,
) -> Result<(Vec<SavedKeyMap>, Vec<SavedFile>), TrainError> {
    let (mut maps, mut files) = (Vec::new(), Vec::new());
    let Some(keys) = &bundle.keys else {
        return Ok((maps, files));
    };
    std::fs::create_dir_all(tmp.join("keys")).map_err(io(tmp))?;
    for (k, d) in keys.features().iter().zip(&bundle.dynamic) {
        let rel = format!("keys/f{:04}.r{rank:04}.keys", k.feature);
        let path = tmp.join(&rel);
        std::fs::write(&path, k.map.to_bytes()).map_err(io(&path))?;
        let (bytes, crc32) = file_crc(&path)?;
        files.push(SavedFile {
            path: rel.clone(),
            bytes,
            crc32,
        });
        maps.push(SavedKeyMap {
            feature: k.feature,
            rank,
            base: k.base,
            file: rel,
            tables: d.tables().cloned().collect(),
        });
    }
    Ok((maps, files))
}

/// The map `s` names, its file checked against the manifest's `files`.
pub fn read_key_map(
    dir: &Path,
    files: &[SavedFile],
    s: &SavedKeyMap,
) -> Result<KeyRows, TrainError> {
    let bytes = map_listed(dir, files, &s.file)?;
    Ok(KeyRows::from_bytes(
        &bytes,
        &dir.join(&s.file).display().to_string(),
    )?)
}

/// Restores `rank`'s maps from `dir` (written by the same number of ranks, with the same
/// blocks); refuses, naming the file or feature, anything that does not fit.
pub fn restore_key_maps(
    dir: &Path,
    saved: &[SavedKeyMap],
    files: &[SavedFile],
    keys: Option<&mut KeyMaps>,
    rank: usize,
) -> Result<(), TrainError> {
    let corrupt = |path: &Path, message: String| ModelIoError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let Some(keys) = keys else {
        if let Some(s) = saved.first() {
            return Err(corrupt(
                &dir.join(&s.file),
                "holds key maps of dynamic tables, but this run's tables are not dynamic".into(),
            )
            .into());
        }
        return Ok(());
    };
    for k in keys.features_mut() {
        let path = |s: &SavedKeyMap| dir.join(&s.file);
        let Some(s) = saved
            .iter()
            .find(|s| s.feature == k.feature && s.rank == rank)
        else {
            return Err(corrupt(
                &dir.join("manifest.json"),
                format!(
                    "no key map of dynamic feature {} for rank {rank} (written by other tables or ranks)",
                    k.feature
                ),
            )
            .into());
        };
        let map = read_key_map(dir, files, s)?;
        if s.base != k.base || map.capacity() != k.map.capacity() {
            return Err(corrupt(
                &path(s),
                format!(
                    "a map of {} rows from global row {}, where this run's rank {rank} holds {} from {} (another capacity or number of ranks)",
                    map.capacity(),
                    s.base,
                    k.map.capacity(),
                    k.base
                ),
            )
            .into());
        }
        k.map = map;
    }
    Ok(())
}
