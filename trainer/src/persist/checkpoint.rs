//! Checkpoints of a training job of any number of ranks, and loading them back under
//! another number of ranks and another sharding plan (resharding).
//!
//! A checkpoint is a folder `step-NNNNNNNN`: every rank writes the pieces of the tables it
//! owns (one file of weights and one of optimizer state per piece, row-major, the state
//! cut into planes so pieces can be recut along rows and columns), rank 0 writes the
//! dense parameters, the dense optimizer's state, the vocabulary and `manifest.json`: the
//! plans, the step, the data position (epoch and batches into it), the seed, the
//! validation history, every piece's rectangle and a CRC32 and size per file. Everything
//! is written under `step-NNNNNNNN.partial`, synced, and renamed only when every rank
//! has finished, so a crash never leaves a folder that looks complete; the manifest's
//! own CRC32 sits beside it in `manifest.crc32`.
//!
//! Loading fills each shard the reader holds under its own plan from the saved pieces
//! that overlap it ([`shardrec_tables::fill_from_pieces`], which also checks that the
//! pieces cover the shard exactly once), so N ranks' checkpoint loads into M ranks. Each
//! file is checked (size, CRC32) before use; a mismatch is refused naming the file.
//! This is TorchRec's `DistributedModelParallel` state dict with resharding on load, in
//! a format readable without Python.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use shardrec_models::{DenseOptimizer, DenseOptimizerKind, ModelConfig};
use shardrec_tables::{
    fill_from_pieces, Exchange, Piece, RowDtype, ShardExtent, SparseOptimizer, StateLayout,
    TableError, TableShard,
};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::checked_file::{as_f32s, io, map_verified, record, sync_dir, CrcWriter, SavedFile};
use super::key_map_files::{write_key_maps, SavedKeyMap};
use super::model_io::{ModelIoError, ModelManifest, SavedCollection};
use super::PersistError;
use crate::bundle::ModelBundle;
use crate::cluster::Cluster;
use crate::config::Preprocessing;
use crate::data::Schema;
use crate::embedding::EmbeddingEngine;
use crate::sharding_plan::CollectionPlans;
use crate::TrainError;

pub const CHECKPOINT_FORMAT: &str = "shardrec-checkpoint";
pub const CHECKPOINT_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
pub(crate) const MANIFEST_CRC: &str = "manifest.crc32";
pub const DENSE: &str = "dense.safetensors";
const DENSE_OPTIMIZER: &str = "dense_optimizer.safetensors";
pub const VOCAB: &str = "vocab.bin";

/// Where training stands: steps done, and where in the data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// Steps done in all.
    pub step: usize,
    /// Epoch (from 0) the next step belongs to, and steps of it already done.
    pub epoch: usize,
    pub steps_in_epoch: usize,
    pub samples_seen: u64,
}

/// Validation history, for early stopping to go on where it was.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationState {
    pub best_auc: Option<f64>,
    pub evals_without_gain: usize,
    /// Step of the last validation (a resumed run does not repeat it).
    pub last_step: Option<usize>,
    pub history: Vec<serde_json::Value>,
    /// `train.mode = "stream"`: each day's progressive validation (evaluated on the day
    /// before training on it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<serde_json::Value>,
}

/// One rectangle of one table as a rank saved it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPiece {
    pub collection: String,
    pub table: usize,
    pub table_name: String,
    pub rank: usize,
    pub rows: [u64; 2],
    pub cols: [usize; 2],
    /// Sparse optimizer steps applied to the piece (lazy Adam's bias correction).
    pub updates: u64,
    pub weights: String,
    /// The optimizer state, plane after plane; absent in a model (weights only).
    #[serde(default)]
    pub state: Option<String>,
}

impl SavedPiece {
    fn extent(&self) -> ShardExtent {
        ShardExtent {
            rank: self.rank,
            rows: self.rows[0]..self.rows[1],
            cols: self.cols[0]..self.cols[1],
        }
    }
}

/// `manifest.json` of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointManifest {
    pub format: String,
    pub version: u32,
    /// Ranks that wrote it.
    pub world_size: usize,
    pub seed: u64,
    pub position: Position,
    pub validation: ValidationState,
    /// How the random state is restored.
    pub rng: String,
    pub schema: Schema,
    pub vocab_sizes: Vec<u64>,
    pub num_dense: usize,
    pub model: ModelConfig,
    pub sparse_optimizer: SparseOptimizer,
    /// Dense optimizer steps; absent in a model (weights only).
    pub dense_optimizer_steps: Option<i64>,
    /// The kind of dense optimizer whose state it holds (absent in a model, and in
    /// checkpoints written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_optimizer: Option<DenseOptimizerKind>,
    /// Rows of the job's step: `position` counts steps of this many rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// The `[data]` options that change what the model sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<Preprocessing>,
    /// Precision the tables' rows were trained in (absent: f32). The files hold f32
    /// values either way; resuming in another precision would train differently.
    #[serde(default, skip_serializing_if = "is_f32")]
    pub row_dtype: RowDtype,
    pub plans: CollectionPlans,
    pub collections: Vec<SavedCollection>,
    pub pieces: Vec<SavedPiece>,
    /// Dynamic tables: their features and settings, and every rank's key-to-row maps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dynamic: Vec<crate::embedding::DynamicTable>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_maps: Vec<SavedKeyMap>,
    pub files: Vec<SavedFile>,
}

impl CheckpointManifest {
    /// Whether it holds optimizer state (a checkpoint) or weights only (a model).
    pub fn has_optimizer_state(&self) -> bool {
        self.dense_optimizer_steps.is_some()
    }
}

/// What a checkpoint is written from.
pub struct CheckpointSource<'a> {
    pub bundle: &'a ModelBundle,
    /// None: weights only (a model for `shardrec eval`).
    pub dense_optimizer: Option<&'a DenseOptimizer>,
    pub position: Position,
    pub validation: &'a ValidationState,
    pub seed: u64,
    pub schema: &'a Schema,
    pub vocab_sizes: &'a [u64],
    pub vocab_file: &'a Path,
    pub model: &'a ModelConfig,
    pub plans: &'a CollectionPlans,
    /// Rows of the job's step.
    pub batch_size: usize,
    pub preprocessing: &'a Preprocessing,
    pub row_dtype: RowDtype,
}

fn is_f32(d: &RowDtype) -> bool {
    *d == RowDtype::F32
}

/// How libtorch's generator is restored: it is seeded before every step.
pub const RNG_NOTE: &str = "libtorch is seeded with seed + step before every step; the data order is a function of (seed, epoch)";

/// Every rank's `mine`: an error on any rank is an error on all (so no rank waits in a
/// collective for one that stopped).
pub(crate) fn agree<T>(
    cluster: &Cluster,
    mine: Result<T, TrainError>,
    what: &str,
) -> Result<T, TrainError> {
    let mut failed = [u32::from(mine.is_err())];
    cluster.all_reduce_max(&mut failed);
    match mine {
        Err(e) => Err(e),
        Ok(_) if failed[0] != 0 => Err(PersistError::OtherRankFailed {
            what: what.to_string(),
        }
        .into()),
        Ok(v) => Ok(v),
    }
}

fn collections(bundle: &ModelBundle) -> Vec<(&'static str, &EmbeddingEngine)> {
    let mut v = vec![("main", &bundle.tables)];
    if let Some(f) = &bundle.first_order {
        v.push(("first_order", f));
    }
    v
}

/// This rank's pieces: writes them under `tmp` and says what it wrote.
fn write_pieces(
    tmp: &Path,
    bundle: &ModelBundle,
    rank: usize,
    with_state: bool,
) -> Result<(Vec<SavedPiece>, Vec<SavedFile>), TrainError> {
    let mut pieces = Vec::new();
    let mut files = Vec::new();
    let in_use = rows_in_use_end(bundle);
    for (name, engine) in collections(bundle) {
        std::fs::create_dir_all(tmp.join("tables").join(name)).map_err(io(tmp))?;
        let layout = engine.optimizer().state_layout();
        for (t, shard) in engine.shards_to_save() {
            // a dynamic table's block: only the rows keys took, and its default row (the
            // rest are set before use)
            let end = in_use.get(&shard.table).copied().unwrap_or(shard.rows.end);
            let stem = format!(
                "tables/{name}/t{t:04}.rows{}-{}.cols{}-{}",
                shard.rows.start, end, shard.cols.start, shard.cols.end
            );
            let rows = (end - shard.rows.start) as usize;
            let plane_width = match layout {
                StateLayout::PerRow => 1,
                _ => shard.width(),
            };
            let mut write = |rel: String,
                             planes: &mut dyn FnMut(&mut CrcWriter) -> std::io::Result<()>|
             -> Result<String, TrainError> {
                let path = tmp.join(&rel);
                let mut w = CrcWriter::create(&path)?;
                planes(&mut w).map_err(io(&path))?;
                let (bytes, crc32) = w.finish().map_err(io(&path))?;
                files.push(SavedFile {
                    path: rel.clone(),
                    bytes,
                    crc32,
                });
                Ok(rel)
            };
            // streamed: a file-tier shard is not copied into RAM whole
            let weights = write(format!("{stem}.weights.f32"), &mut |w| {
                shard.stream_weights(first_floats(rows * shard.width(), |b| w.write_f32s(b)))
            })?;
            let state = if with_state && layout.planes() > 0 {
                Some(write(format!("{stem}.state.f32"), &mut |w| {
                    (0..layout.planes()).try_for_each(|p| {
                        let keep = first_floats(rows * plane_width, |b| w.write_f32s(b));
                        shard.stream_state_plane(layout, p, keep)
                    })
                })?)
            } else {
                None
            };
            pieces.push(SavedPiece {
                collection: name.to_string(),
                table: t,
                table_name: shard.table.clone(),
                rank,
                rows: [shard.rows.start, end],
                cols: [shard.cols.start, shard.cols.end],
                updates: shard.steps(),
                weights,
                state,
            });
        }
    }
    Ok((pieces, files))
}

/// Passes on the first `limit` floats of a stream and drops the rest.
fn first_floats(
    limit: usize,
    mut out: impl FnMut(&[f32]) -> std::io::Result<()>,
) -> impl FnMut(&[f32]) -> std::io::Result<()> {
    let mut left = limit;
    move |block| {
        let n = block.len().min(left);
        left -= n;
        if n == 0 {
            return Ok(());
        }
        out(&block[..n])
    }
}

/// Where the rows in use of this rank's blocks of dynamic tables (main and first-order)
/// end (a global row: the map's rows follow the default row where a block holds it), by
/// table name.
fn rows_in_use_end(bundle: &ModelBundle) -> HashMap<String, u64> {
    let Some(keys) = &bundle.keys else {
        return HashMap::new();
    };
    keys.features()
        .iter()
        .zip(&bundle.dynamic)
        .flat_map(|(k, d)| {
            d.tables()
                .map(move |t| (t.clone(), k.base + u64::from(k.map.rows_in_use())))
        })
        .collect()
}

/// Names of the optimizer's variables (matched to the var store's by storage).
fn optimizer_var_names(vs: &VarStore, opt: &DenseOptimizer) -> Result<Vec<String>, TrainError> {
    let by_ptr: HashMap<usize, String> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (t.data_ptr() as usize, n))
        .collect();
    opt.variables()
        .iter()
        .map(|v| {
            by_ptr
                .get(&(v.data_ptr() as usize))
                .cloned()
                .ok_or_else(|| PersistError::OptimizerVariableMissing.into())
        })
        .collect()
}

fn torch_err(path: &Path) -> impl Fn(tch::TchError) -> ModelIoError + '_ {
    move |source| ModelIoError::Torch {
        path: path.to_path_buf(),
        source,
    }
}

/// Rank 0's files: dense parameters, dense optimizer state, vocabulary.
fn write_dense(tmp: &Path, src: &CheckpointSource) -> Result<Vec<SavedFile>, TrainError> {
    let mut files = Vec::new();
    let mut named: Vec<(String, Tensor)> = src
        .bundle
        .vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.to_device(Device::Cpu).contiguous()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let path = tmp.join(DENSE);
    Tensor::write_safetensors(&named, &path).map_err(torch_err(&path))?;
    files.push(record(tmp, DENSE)?);
    if let Some(opt) = src.dense_optimizer {
        let names = optimizer_var_names(&src.bundle.vs, opt)?;
        let mut state: Vec<(String, Tensor)> = Vec::new();
        for (name, (s1, s2)) in names.iter().zip(opt.state()) {
            state.push((format!("m.{name}"), s1.to_device(Device::Cpu).contiguous()));
            state.push((format!("v.{name}"), s2.to_device(Device::Cpu).contiguous()));
        }
        let path = tmp.join(DENSE_OPTIMIZER);
        Tensor::write_safetensors(&state, &path).map_err(torch_err(&path))?;
        files.push(record(tmp, DENSE_OPTIMIZER)?);
    }
    let vocab = tmp.join(VOCAB);
    std::fs::copy(src.vocab_file, &vocab).map_err(io(src.vocab_file))?;
    files.push(record(tmp, VOCAB)?);
    Ok(files)
}

/// Writes a checkpoint (or, without a dense optimizer, a model) to `dir`, replacing it.
/// Collective: every rank calls it; returns the bytes this rank wrote.
pub fn write_checkpoint(
    dir: &Path,
    src: &CheckpointSource,
    cluster: &Cluster,
) -> Result<u64, TrainError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = dir.with_file_name(format!("{name}.partial"));
    let what = format!("writing checkpoint {}", dir.display());
    let made = if cluster.is_root() {
        (|| {
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
            }
            std::fs::create_dir_all(tmp.join("tables")).map_err(io(&tmp))?;
            Ok(())
        })()
    } else {
        Ok(())
    };
    agree(cluster, made, &what)?;
    let with_state = src.dense_optimizer.is_some();
    let mine = write_pieces(&tmp, src.bundle, cluster.rank(), with_state).and_then(|(p, mut f)| {
        if cluster.is_root() {
            f.extend(write_dense(&tmp, src)?);
        }
        let (k, kf) = write_key_maps(&tmp, src.bundle, cluster.rank())?;
        f.extend(kf);
        Ok((p, f, k))
    });
    let (pieces, files, key_maps) = agree(cluster, mine, &what)?;
    let my_bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let listing =
        serde_json::to_vec(&(pieces, files, key_maps)).map_err(|source| PersistError::Json {
            what: what.clone(),
            source,
        })?;
    let all = cluster.all_gather_bytes(&listing)?;
    let committed = if cluster.is_root() {
        commit(dir, &tmp, src, cluster.world_size(), &all)
    } else {
        Ok(())
    };
    agree(cluster, committed, &what)?;
    Ok(my_bytes)
}

/// Rank 0: the manifest, then the rename that makes the checkpoint exist.
fn commit(
    dir: &Path,
    tmp: &Path,
    src: &CheckpointSource,
    world: usize,
    listings: &[Vec<u8>],
) -> Result<(), TrainError> {
    let (mut pieces, mut files, mut key_maps) = (Vec::new(), Vec::new(), Vec::new());
    for (rank, l) in listings.iter().enumerate() {
        let (p, f, k): (Vec<SavedPiece>, Vec<SavedFile>, Vec<SavedKeyMap>) =
            serde_json::from_slice(l).map_err(|source| PersistError::Json {
                what: format!("rank {rank}'s checkpoint listing"),
                source,
            })?;
        pieces.extend(p);
        files.extend(f);
        key_maps.extend(k);
    }
    let manifest = CheckpointManifest {
        format: CHECKPOINT_FORMAT.into(),
        version: CHECKPOINT_VERSION,
        world_size: world,
        seed: src.seed,
        position: src.position,
        validation: src.validation.clone(),
        rng: RNG_NOTE.into(),
        schema: src.schema.clone(),
        vocab_sizes: src.vocab_sizes.to_vec(),
        num_dense: src.bundle.num_dense,
        model: src.model.clone(),
        sparse_optimizer: *src.bundle.tables.optimizer(),
        dense_optimizer_steps: src.dense_optimizer.map(DenseOptimizer::steps),
        dense_optimizer: src.dense_optimizer.map(DenseOptimizer::kind),
        batch_size: Some(src.batch_size),
        preprocessing: Some(src.preprocessing.clone()),
        row_dtype: src.row_dtype,
        plans: src.plans.clone(),
        collections: collections(src.bundle)
            .into_iter()
            .map(|(name, e)| SavedCollection {
                name: name.into(),
                spec: e.layout().spec().clone(),
            })
            .collect(),
        pieces,
        dynamic: src.bundle.dynamic.clone(),
        key_maps,
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|source| PersistError::Json {
        what: "checkpoint manifest".into(),
        source,
    })?;
    let mpath = tmp.join(MANIFEST);
    let mut w = std::fs::File::create(&mpath).map_err(io(&mpath))?;
    std::io::Write::write_all(&mut w, &text).map_err(io(&mpath))?;
    w.sync_all().map_err(io(&mpath))?;
    let cpath = tmp.join(MANIFEST_CRC);
    std::fs::write(&cpath, format!("{:08x}\n", crc32fast::hash(&text))).map_err(io(&cpath))?;
    std::fs::File::open(&cpath)
        .and_then(|f| f.sync_all())
        .map_err(io(&cpath))?;
    for sub in ["tables/main", "tables/first_order", "tables", "keys"] {
        if tmp.join(sub).is_dir() {
            sync_dir(&tmp.join(sub))?;
        }
    }
    sync_dir(tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::rename(tmp, dir).map_err(io(dir))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Whether `dir` holds a checkpoint-format manifest (else it may be a one-process model).
pub fn is_checkpoint(dir: &Path) -> bool {
    dir.join(MANIFEST_CRC).is_file()
}

/// Reads and checks a checkpoint's manifest (its own checksum, format and version).
pub fn read_checkpoint(dir: &Path) -> Result<CheckpointManifest, TrainError> {
    let mpath = dir.join(MANIFEST);
    if !mpath.is_file() {
        let partial = dir.with_file_name(format!(
            "{}.partial",
            dir.file_name().unwrap_or_default().to_string_lossy()
        ));
        return Err(PersistError::Incomplete {
            dir: dir.to_path_buf(),
            manifest: MANIFEST,
            hint: if partial.exists() || dir.to_string_lossy().ends_with(".partial") {
                "; a .partial folder is a checkpoint whose writing did not finish"
            } else {
                ""
            },
        }
        .into());
    }
    let text = std::fs::read(&mpath).map_err(io(&mpath))?;
    let cpath = dir.join(MANIFEST_CRC);
    let want = std::fs::read_to_string(&cpath).map_err(io(&cpath))?;
    let corrupt = |path: &Path, message: String| {
        TrainError::ModelIo(ModelIoError::Corrupt {
            path: path.to_path_buf(),
            message,
        })
    };
    let want = u32::from_str_radix(want.trim(), 16)
        .map_err(|_| corrupt(&cpath, format!("not a CRC32: {:?}", want.trim())))?;
    if crc32fast::hash(&text) != want {
        return Err(corrupt(
            &mpath,
            format!("checksum mismatch (corrupt file; {MANIFEST_CRC} says {want:08x})"),
        ));
    }
    let m: CheckpointManifest =
        serde_json::from_slice(&text).map_err(|e| corrupt(&mpath, e.to_string()))?;
    if m.format != CHECKPOINT_FORMAT || m.version != CHECKPOINT_VERSION {
        return Err(corrupt(
            &mpath,
            format!(
                "format {} version {} (this shardrec reads {CHECKPOINT_FORMAT} version {CHECKPOINT_VERSION})",
                m.format, m.version
            ),
        ));
    }
    super::model_io::check_described(
        &mpath,
        &m.model,
        m.num_dense,
        &m.schema,
        &m.vocab_sizes,
        &m.files,
    )?;
    check_pieces(&mpath, &m)?;
    Ok(m)
}

/// Checks that the pieces lie inside their tables, that each piece's file holds its
/// rectangle, and that the pieces hold every value of every table: the table sizes a
/// manifest states are what is allocated, so they must be what its files hold.
fn check_pieces(mpath: &Path, m: &CheckpointManifest) -> Result<(), ModelIoError> {
    let corrupt = |message: String| ModelIoError::Corrupt {
        path: mpath.to_path_buf(),
        message,
    };
    for c in &m.collections {
        for (t, spec) in c.spec.tables.iter().enumerate() {
            // a dynamic table's pieces hold each block's rows in use (perhaps none)
            let prefixed = m.key_maps.iter().any(|k| k.tables.contains(&spec.name));
            let mut held = 0u128;
            for p in m
                .pieces
                .iter()
                .filter(|p| p.collection == c.name && p.table == t)
            {
                let [r0, r1] = p.rows;
                let [c0, c1] = p.cols;
                if (r0 >= r1 && !prefixed) || r0 > r1 || r1 > spec.rows || c0 >= c1 || c1 > spec.dim
                {
                    return Err(corrupt(format!(
                        "piece {} (rows {r0}..{r1}, cols {c0}..{c1}) is not inside table {} ({} x {})",
                        p.weights, spec.name, spec.rows, spec.dim
                    )));
                }
                let values = (r1 - r0) as u128 * (c1 - c0) as u128;
                let file = m.files.iter().find(|f| f.path == p.weights);
                if file.map(|f| f.bytes as u128) != Some(values * 4) {
                    return Err(corrupt(format!(
                        "piece {} holds {values} values, but its file is listed as {:?} bytes",
                        p.weights,
                        file.map(|f| f.bytes)
                    )));
                }
                held += values;
            }
            if held < spec.rows as u128 * spec.dim as u128 && !prefixed {
                return Err(corrupt(format!(
                    "table {} of {} is {} x {} but its pieces hold {held} values",
                    spec.name, c.name, spec.rows, spec.dim
                )));
            }
        }
    }
    Ok(())
}

/// The checkpoint `path` names: a checkpoint folder itself, or a run folder (its newest
/// complete checkpoint).
pub fn find_checkpoint(path: &Path) -> Result<PathBuf, TrainError> {
    if path.join(MANIFEST).is_file() || path.to_string_lossy().ends_with(".partial") {
        return Ok(path.to_path_buf());
    }
    let dir = path.join("checkpoints");
    let newest = list_checkpoints(&dir)?.pop();
    if let Some(chosen) = &newest {
        say_newer_incomplete(&dir, chosen);
    }
    newest.ok_or_else(|| {
        PersistError::NoCheckpoint {
            path: path.to_path_buf(),
            manifest: MANIFEST,
        }
        .into()
    })
}

/// Says which newer `step-N` folders were passed over for lacking a manifest (their
/// writing did not finish, or the manifest was deleted): resuming from an older step
/// must not go unnoticed.
fn say_newer_incomplete(dir: &Path, chosen: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let chosen_name = chosen.file_name().unwrap_or_default().to_os_string();
    let mut newer: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("step-") && *n > chosen_name)
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    newer.sort();
    for n in newer {
        eprintln!(
            "[shardrec] {}: no {MANIFEST} (its writing did not finish, or it was removed); resuming from the older {}",
            dir.join(&n).display(),
            chosen.display()
        );
    }
}

/// Complete checkpoints in `dir` (`step-N` with a manifest), oldest first.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(vec![]);
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            e.path().join(MANIFEST).is_file().then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Where a checkpoint of `step` goes in a run folder.
pub fn checkpoint_dir(run: &Path, step: usize) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:08}"))
}

/// Deletes all but the newest `keep` complete checkpoints (0: keeps all).
pub fn prune_checkpoints(run: &Path, keep: usize) -> Result<(), TrainError> {
    if keep == 0 {
        return Ok(());
    }
    let all = list_checkpoints(&run.join("checkpoints"))?;
    for old in &all[..all.len().saturating_sub(keep)] {
        std::fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(())
}

/// Saved tables to fill shards from: a checkpoint's pieces, or a one-process model's
/// whole tables (one piece each, no optimizer state).
pub struct SavedTables<'a> {
    pub dir: &'a Path,
    pub pieces: Vec<SavedPiece>,
    pub files: &'a [SavedFile],
    /// Layout of the saved optimizer state (None: weights only).
    pub state: Option<StateLayout>,
}

impl<'a> SavedTables<'a> {
    pub fn of_checkpoint(dir: &'a Path, m: &'a CheckpointManifest) -> Self {
        Self {
            dir,
            pieces: m.pieces.clone(),
            files: &m.files,
            state: m
                .has_optimizer_state()
                .then(|| m.sparse_optimizer.state_layout()),
        }
    }

    pub fn of_model(dir: &'a Path, m: &'a ModelManifest) -> Result<Self, TrainError> {
        let mut pieces = Vec::new();
        for c in &m.collections {
            let layout = shardrec_tables::CollectionLayout::new(c.spec.clone())?;
            for (t, spec) in c.spec.tables.iter().enumerate() {
                pieces.push(SavedPiece {
                    collection: c.name.clone(),
                    table: t,
                    table_name: spec.name.clone(),
                    rank: 0,
                    rows: [0, layout.table_rows(t)],
                    cols: [0, layout.table_dim(t)],
                    updates: 0,
                    weights: super::model_io::table_file(&c.name, t),
                    state: None,
                });
            }
        }
        Ok(Self {
            dir,
            pieces,
            files: &m.files,
            state: None,
        })
    }

    fn file(&self, rel: &str) -> Result<&SavedFile, TrainError> {
        self.files.iter().find(|f| f.path == rel).ok_or_else(|| {
            TrainError::ModelIo(ModelIoError::Corrupt {
                path: self.dir.join(MANIFEST),
                message: format!("lists a table piece {rel} but not its checksum"),
            })
        })
    }

    /// The part of `shard` (table `t` of `collection`) to fill, and the saved pieces that
    /// overlap it. A `prefix` table (a dynamic one) was saved up to its rows in use: only
    /// those are filled, the rest stay unset.
    fn pieces_over(
        &self,
        collection: &str,
        t: usize,
        shard: &TableShard,
        prefix: bool,
    ) -> (ShardExtent, Vec<&SavedPiece>) {
        let mut target = ShardExtent {
            rank: 0,
            rows: shard.rows.clone(),
            cols: shard.cols.clone(),
        };
        let overlapping: Vec<&SavedPiece> = self
            .pieces
            .iter()
            .filter(|p| p.collection == collection && p.table == t)
            .filter(|p| {
                p.rows[0] < target.rows.end
                    && target.rows.start < p.rows[1]
                    && p.cols[0] < target.cols.end
                    && target.cols.start < p.cols[1]
            })
            .collect();
        if prefix {
            let end = overlapping.iter().map(|p| p.rows[1]).max();
            target.rows.end = end.unwrap_or(target.rows.start);
        }
        (target, overlapping)
    }

    /// Fills every shard `engine` holds of `collection` from the overlapping pieces (and
    /// the optimizer state too when `with_state`). Files are checked before use. The
    /// tables named in `prefixed` (dynamic ones) were saved up to their rows in use; with
    /// `skip_prefixed` they are left alone (their rows move with their keys).
    pub fn fill(
        &self,
        collection: &str,
        engine: &mut EmbeddingEngine,
        with_state: bool,
        (prefixed, skip_prefixed): (&[String], bool),
    ) -> Result<(), TrainError> {
        let layout = engine.optimizer().state_layout();
        if with_state && self.state != Some(layout) && layout.planes() > 0 {
            return Err(PersistError::NoOptimizerState {
                dir: self.dir.to_path_buf(),
            }
            .into());
        }
        let mut maps: HashMap<String, Mmap> = HashMap::new();
        let mut mapped = |rel: &str| -> Result<(), TrainError> {
            if !maps.contains_key(rel) {
                let m = map_verified(self.dir, self.file(rel)?)?;
                maps.insert(rel.to_string(), m);
            }
            Ok(())
        };
        let mut jobs = Vec::new();
        for (t, shard) in engine.shards_mut() {
            if skip_prefixed && prefixed.contains(&shard.table) {
                continue;
            }
            let prefix = prefixed.contains(&shard.table);
            let (target, overlapping) = self.pieces_over(collection, t, shard, prefix);
            for p in &overlapping {
                mapped(&p.weights)?;
                if with_state && layout.planes() > 0 {
                    let s = p
                        .state
                        .as_ref()
                        .ok_or_else(|| PersistError::PieceWithoutState {
                            dir: self.dir.to_path_buf(),
                            table: p.table_name.clone(),
                        })?;
                    mapped(s)?;
                }
            }
            jobs.push((target, shard, overlapping));
        }
        for (target, shard, overlapping) in jobs {
            let name = shard.table.clone();
            let floats = |rel: &str| as_f32s(&self.dir.join(rel), &maps[rel]);
            let extents: Vec<ShardExtent> = overlapping.iter().map(|p| p.extent()).collect();
            let mut pieces = Vec::new();
            for (p, e) in overlapping.iter().zip(&extents) {
                pieces.push(Piece {
                    extent: e,
                    values: floats(&p.weights)?,
                });
            }
            let width = shard.width();
            for_blocks(shard, &target, |shard, block, first| {
                let mut rows = vec![0f32; block.rows.clone().count() * width];
                fill_from_pieces(&name, block, &pieces, 1, &mut rows)?;
                match first {
                    None => shard.set_weights(&rows),
                    Some(first) => shard.set_weights_rows(first, &rows),
                }
            })?;
            shard.set_steps(overlapping.iter().map(|p| p.updates).max().unwrap_or(0));
            if !with_state || layout.planes() == 0 {
                continue;
            }
            // per-row state is a rectangle of one column
            let per_row = layout == StateLayout::PerRow;
            let narrow = |e: &ShardExtent| ShardExtent {
                rank: e.rank,
                rows: e.rows.clone(),
                cols: if per_row { 0..1 } else { e.cols.clone() },
            };
            let target = narrow(&target);
            let saved: Vec<ShardExtent> = extents.iter().map(narrow).collect();
            for k in 0..layout.planes() {
                let mut pieces = Vec::new();
                for (p, e) in overlapping.iter().zip(&saved) {
                    let all = floats(p.state.as_deref().unwrap_or_default())?;
                    let n = (e.rows.end - e.rows.start) as usize * e.cols.len();
                    let values = all.get(k * n..(k + 1) * n).ok_or_else(|| {
                        TrainError::ModelIo(ModelIoError::Corrupt {
                            path: self.dir.join(p.state.as_deref().unwrap_or_default()),
                            message: format!(
                                "{} floats, too few for {} state planes of {n}",
                                all.len(),
                                layout.planes()
                            ),
                        })
                    })?;
                    pieces.push(Piece { extent: e, values });
                }
                for_blocks(shard, &target, |shard, block, first| {
                    let mut plane = vec![0f32; block.rows.clone().count() * block.cols.len()];
                    fill_from_pieces(&name, block, &pieces, 1, &mut plane)?;
                    match first {
                        None => shard.set_state_plane(layout, k, &plane),
                        Some(first) => shard.set_state_plane_rows(layout, k, first, &plane),
                    }
                })?;
            }
        }
        Ok(())
    }
}

/// Rows of a file-tier shard filled from a checkpoint at a time: the shard may be larger
/// than RAM, so it is filled a block at a time.
const FILL_BLOCK_ROWS: u64 = 1 << 16;

/// Calls `fill(shard, block, first)` for the whole `target` (first: None) or, in the
/// file tier, for blocks of its rows (first: the block's first local row).
fn for_blocks(
    shard: &mut TableShard,
    target: &ShardExtent,
    mut fill: impl FnMut(&mut TableShard, &ShardExtent, Option<usize>) -> Result<(), TableError>,
) -> Result<(), TrainError> {
    // RAM: at once, unless only a prefix is filled (a dynamic table's rows in use)
    if !shard.in_file_tier() && target.rows == shard.rows {
        return Ok(fill(shard, target, None)?);
    }
    let mut start = target.rows.start;
    while start < target.rows.end {
        let end = (start + FILL_BLOCK_ROWS).min(target.rows.end);
        let block = ShardExtent {
            rank: target.rank,
            rows: start..end,
            cols: target.cols.clone(),
        };
        fill(shard, &block, Some((start - target.rows.start) as usize))?;
        start = end;
    }
    Ok(())
}

/// Loads the dense parameters (and the dense optimizer's state and steps when given).
pub fn load_dense(
    dir: &Path,
    files: &[SavedFile],
    vs: &mut VarStore,
    opt: Option<(&mut DenseOptimizer, i64)>,
) -> Result<(), TrainError> {
    let find = |rel: &str| {
        files.iter().find(|f| f.path == rel).ok_or_else(|| {
            TrainError::ModelIo(ModelIoError::Corrupt {
                path: dir.join(MANIFEST),
                message: format!("does not list {rel}"),
            })
        })
    };
    super::checked_file::verify(dir, find(DENSE)?)?;
    let path = dir.join(DENSE);
    vs.load(&path).map_err(torch_err(&path))?;
    if let Some((opt, steps)) = opt {
        super::checked_file::verify(dir, find(DENSE_OPTIMIZER)?)?;
        let path = dir.join(DENSE_OPTIMIZER);
        let saved: HashMap<String, Tensor> = Tensor::read_safetensors(&path)
            .map_err(torch_err(&path))?
            .into_iter()
            .collect();
        let names = optimizer_var_names(vs, opt)?;
        let _guard = tch::no_grad_guard();
        for (name, (s1, s2)) in names.iter().zip(opt.state_mut()) {
            for (key, dst) in [(format!("m.{name}"), s1), (format!("v.{name}"), s2)] {
                let src = saved.get(&key).ok_or_else(|| {
                    TrainError::ModelIo(ModelIoError::Corrupt {
                        path: path.clone(),
                        message: format!("no tensor {key}"),
                    })
                })?;
                dst.f_copy_(src).map_err(torch_err(&path))?;
            }
        }
        opt.set_steps(steps);
    }
    Ok(())
}
