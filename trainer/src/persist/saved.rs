//! Loading what a run saved into a freshly built bundle: a checkpoint to resume from
//! (checked against this run's config and data), a saved model or checkpoint to
//! evaluate, the best model a resumed run had written.

use std::path::{Path, PathBuf};

use shardrec_models::DenseOptimizer;

use super::checked_file::{verify, SavedFile};
use super::checkpoint::{
    find_checkpoint, is_checkpoint, load_dense, read_checkpoint, CheckpointManifest, SavedTables,
    ValidationState, DENSE, VOCAB,
};
use super::model_io::{read_manifest, ModelManifest};
use super::PersistError;
use crate::bundle::ModelBundle;
use crate::config::ExperimentConfig;
use crate::data::PreparedDataset;
use crate::TrainError;

/// What a saved folder holds.
pub enum SavedFolder {
    /// A one-process run's model (whole tables).
    Model(Box<ModelManifest>),
    /// A checkpoint, or a model written by several ranks (pieces of tables).
    Pieces(Box<CheckpointManifest>),
}

impl SavedFolder {
    /// Reads and checks the folder's manifest (and its files' sizes and checksums).
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        Ok(if is_checkpoint(dir) {
            Self::Pieces(Box::new(read_checkpoint(dir)?))
        } else {
            Self::Model(Box::new(read_manifest(dir)?))
        })
    }

    fn files(&self) -> &[SavedFile] {
        match self {
            Self::Model(m) => &m.files,
            Self::Pieces(m) => &m.files,
        }
    }
}

/// Fills a freshly built bundle's tables and dense parameters from a saved model (one
/// process's or several ranks') or a checkpoint already read, resharding to the bundle's
/// plan.
pub fn fill_saved(
    model_dir: &Path,
    saved: &SavedFolder,
    bundle: &mut ModelBundle,
) -> Result<(), TrainError> {
    let tables = match saved {
        SavedFolder::Model(m) => SavedTables::of_model(model_dir, m)?,
        SavedFolder::Pieces(m) => SavedTables::of_checkpoint(model_dir, m),
    };
    let prefixed = dynamic_tables(bundle);
    let moving =
        matches!(saved, SavedFolder::Pieces(m) if m.world_size != bundle.tables.world_size());
    tables.fill("main", &mut bundle.tables, false, (&prefixed, moving))?;
    if let Some(f) = bundle.first_order.as_mut() {
        tables.fill("first_order", f, false, (&prefixed, moving))?;
    }
    if let SavedFolder::Pieces(m) = saved {
        restore_dynamic(model_dir, m, bundle, false)?;
    }
    load_dense(model_dir, saved.files(), &mut bundle.vs, None)
}

/// A resumed run's best model so far: the `best/` beside the checkpoint it resumed from
/// (`<run>/checkpoints/step-N`), if it is the best validation the checkpoint records
/// and no newer than it.
pub fn best_before(checkpoint: &Path, validation: &ValidationState) -> Option<(usize, PathBuf)> {
    let dir = checkpoint.parent()?.parent()?.join("best");
    let m = read_checkpoint(&dir).ok()?;
    (m.position.step <= validation.last_step.unwrap_or(0)
        && m.validation.best_auc == validation.best_auc)
        .then_some((m.position.step, dir))
}

/// Loads a checkpoint into freshly built tables, model and optimizer (under this job's
/// plan, whatever plan wrote it) after checking it belongs to this config and data.
pub fn resume_from(
    path: &Path,
    cfg: &ExperimentConfig,
    data: &PreparedDataset,
    batch_size: usize,
    bundle: &mut ModelBundle,
    opt: &mut DenseOptimizer,
) -> Result<(PathBuf, CheckpointManifest), TrainError> {
    let dir = find_checkpoint(path)?;
    let m = read_checkpoint(&dir)?;
    // not read to resume (the data is prepared again), but it is part of the checkpoint
    if let Some(v) = m.files.iter().find(|f| f.path == VOCAB) {
        verify(&dir, v)?;
    }
    check_resumable(&dir, &m, cfg, data, bundle)?;
    if let Some(saved) = m.batch_size.filter(|&b| b != batch_size) {
        return Err(PersistError::OtherBatchSize {
            dir,
            saved,
            now: batch_size,
        }
        .into());
    }
    if let Some(saved) = m.dense_optimizer.filter(|&k| k != opt.kind()) {
        return Err(PersistError::OtherDenseOptimizer {
            dir,
            saved,
            now: opt.kind(),
        }
        .into());
    }
    let saved = SavedTables::of_checkpoint(&dir, &m);
    let prefixed = dynamic_tables(bundle);
    let moving = m.world_size != bundle.tables.world_size();
    for (name, engine) in [
        ("main", Some(&mut bundle.tables)),
        ("first_order", bundle.first_order.as_mut()),
    ] {
        let Some(engine) = engine else { continue };
        let spec = m.collections.iter().find(|c| c.name == name);
        if spec.map(|c| &c.spec) != Some(engine.layout().spec()) {
            return Err(PersistError::Differs {
                dir,
                what: format!("{name} tables"),
            }
            .into());
        }
        saved.fill(name, engine, true, (&prefixed, moving))?;
    }
    restore_dynamic(&dir, &m, bundle, true)?;
    let steps = m.dense_optimizer_steps.unwrap_or(0);
    load_dense(&dir, &m.files, &mut bundle.vs, Some((opt, steps)))?;
    Ok((dir, m))
}

/// The dynamic tables of a bundle, main and first-order (saved up to their rows in use).
fn dynamic_tables(bundle: &ModelBundle) -> Vec<String> {
    bundle
        .dynamic
        .iter()
        .flat_map(|d| d.tables().cloned())
        .collect()
}

/// The key maps of dynamic tables: as the same ranks wrote them, or resharded to this
/// job's ranks with their rows moved to their keys' new owners (with the optimizer state
/// when `with_state`).
fn restore_dynamic(
    dir: &Path,
    m: &CheckpointManifest,
    bundle: &mut ModelBundle,
    with_state: bool,
) -> Result<(), TrainError> {
    // a learned default row is a row of the table that keys never take: read as the
    // other kind, it would be a key's row or be lost
    let defaults = |d: &[crate::embedding::DynamicTable]| -> Vec<_> {
        d.iter().map(|d| (d.feature, d.default_row)).collect()
    };
    if defaults(&m.dynamic) != defaults(&bundle.dynamic) {
        return Err(PersistError::Differs {
            dir: dir.to_path_buf(),
            what: "embedding.dynamic.default".into(),
        }
        .into());
    }
    if m.world_size != bundle.tables.world_size() && bundle.keys.is_some() {
        return super::dynamic_reshard::reshard_dynamic(dir, m, bundle, with_state);
    }
    let rank = bundle.tables.rank();
    super::key_map_files::restore_key_maps(dir, &m.key_maps, &m.files, bundle.keys.as_mut(), rank)
}

/// Refuses a checkpoint that another config or other data wrote: weights only, other
/// preprocessing, columns, vocabulary, model, seed or sparse optimizer.
fn check_resumable(
    dir: &Path,
    m: &CheckpointManifest,
    cfg: &ExperimentConfig,
    data: &PreparedDataset,
    bundle: &ModelBundle,
) -> Result<(), TrainError> {
    let differs = |what: &str| {
        TrainError::from(PersistError::Differs {
            dir: dir.to_path_buf(),
            what: what.to_string(),
        })
    };
    if !m.has_optimizer_state() {
        return Err(PersistError::WeightsOnly {
            dir: dir.to_path_buf(),
        }
        .into());
    }
    PersistError::check_preprocessing(
        dir,
        m.preprocessing.as_ref(),
        &cfg.data.preprocessing(),
        true,
    )?;
    if m.schema != data.meta.schema || m.vocab_sizes != data.meta.vocab_sizes {
        return Err(differs("data columns or vocabulary"));
    }
    if m.model != cfg.model || m.num_dense != bundle.num_dense {
        return Err(differs("[model]"));
    }
    if m.seed != cfg.seed {
        return Err(differs("seed"));
    }
    if m.sparse_optimizer.kind != bundle.tables.optimizer().kind {
        return Err(differs("sparse optimizer"));
    }
    if m.row_dtype != cfg.embedding.row_dtype {
        return Err(differs(&format!(
            "embedding.row_dtype ({:?} then, {:?} now)",
            m.row_dtype, cfg.embedding.row_dtype
        )));
    }
    Ok(())
}

/// An OptEmbed supernet's or retrain's own `model/` holds full tables whose rows and
/// columns only count through the stage's masks; evaluated plainly it would predict
/// something else, so it is refused in favour of the compact export.
pub fn refuse_masked_optembed_model(model_dir: &Path) -> Result<(), TrainError> {
    let path = model_dir.join(DENSE);
    let Ok(tensors) = tch::Tensor::read_safetensors(&path) else {
        return Ok(()); // load_dense reports an unreadable file, naming it
    };
    if tensors
        .iter()
        .any(|(name, _)| name.starts_with("optembed."))
    {
        return Err(PersistError::MaskedOptEmbedModel {
            dir: model_dir.to_path_buf(),
        }
        .into());
    }
    Ok(())
}
