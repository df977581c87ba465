//! `shardrec eval`: a saved model (a run's `model/`, written by one process or by several
//! ranks), a checkpoint, or OptEmbed's compact model, evaluated on the config's test data.

use std::path::Path;

use serde_json::json;

use shardrec_tables::Exchange;

use crate::bundle::BundleSpec;
use crate::cluster::Cluster;
use crate::config::ExperimentConfig;
use crate::data::{prepare_with_vocab, SplitName};
use crate::evaluate::predict_split;
use crate::job::{group_feature, prepare_on_ranks, resolve_devices, with_threads, JobError};
use crate::persist::{fill_saved, refuse_masked_optembed_model, PersistError, SavedFolder};
use crate::run_dir::peak_rss_bytes;
use crate::sequence::{retrieval_target, sequence_test_metrics};
use crate::sharding_plan::resolve_plans;
use crate::TrainError;

/// `shardrec eval`: evaluates a saved model (a run's `model/`, written by one process or
/// by several ranks) or a checkpoint on the config's test data. Under mpirun the tables
/// are sharded by the config's `[sharding]` for this job's ranks, whatever plan wrote
/// them; the metrics do not depend on the number of ranks.
pub fn eval_saved_model(
    cfg: &ExperimentConfig,
    model_dir: &Path,
    cluster: &Cluster,
) -> Result<serde_json::Value, TrainError> {
    with_threads(cfg, cluster.local_size(), |threads| {
        eval_inner(cfg, model_dir, cluster, threads)
    })?
}

/// The data options evaluation prepares: a stream's evaluation files come with its first
/// day (its days are trained, not read).
fn evaluation_data(cfg: &ExperimentConfig) -> std::borrow::Cow<'_, crate::config::DataConfig> {
    match cfg.train.mode {
        crate::config::TrainMode::Stream => {
            std::borrow::Cow::Owned(crate::train::day_config(&cfg.data, &cfg.data.train, true))
        }
        crate::config::TrainMode::Epochs => std::borrow::Cow::Borrowed(&cfg.data),
    }
}

fn eval_inner(
    cfg: &ExperimentConfig,
    model_dir: &Path,
    cluster: &Cluster,
    threads: usize,
) -> Result<serde_json::Value, TrainError> {
    let saved = SavedFolder::read(model_dir)?;
    let (schema, num_dense, model_cfg, collections, files, written_by) = match &saved {
        SavedFolder::Model(m) => (
            &m.schema,
            m.num_dense,
            &m.model,
            &m.collections,
            &m.files,
            1,
        ),
        SavedFolder::Pieces(m) => (
            &m.schema,
            m.num_dense,
            &m.model,
            &m.collections,
            &m.files,
            m.world_size,
        ),
    };
    if let Some(v) = files.iter().find(|f| f.path == "vocab.bin") {
        crate::persist::checked_file::verify(model_dir, v)?;
    }
    let preprocessing = match &saved {
        SavedFolder::Model(m) => m.preprocessing.as_ref(),
        SavedFolder::Pieces(m) => m.preprocessing.as_ref(),
    };
    // the saved vocabulary is read, so min_count does not matter here
    PersistError::check_preprocessing(model_dir, preprocessing, &cfg.data.preprocessing(), false)?;
    let (device, table_device) = resolve_devices(cfg, cluster)?;
    let vocab = model_dir.join("vocab.bin");
    let data_cfg = evaluation_data(cfg);
    let data = prepare_on_ranks(cluster, |log| prepare_with_vocab(&data_cfg, &vocab, log))?;
    if &data.meta.schema != schema {
        return Err(JobError::DataColumnsDiffer {
            file: cfg.data.train.clone(),
        }
        .into());
    }
    let split = data
        .split(SplitName::Test)
        .or_else(|| data.split(SplitName::Valid))
        .cloned()
        .ok_or_else(|| TrainError::from(JobError::NothingToEvaluate))?;
    let layout = |name: &str| -> Result<Option<shardrec_tables::CollectionLayout>, TrainError> {
        collections
            .iter()
            .find(|c| c.name == name)
            .map(|c| shardrec_tables::CollectionLayout::new(c.spec.clone()))
            .transpose()
            .map_err(TrainError::from)
    };
    let main = layout("main")?.ok_or_else(|| {
        TrainError::from(JobError::NoMainCollection {
            dir: model_dir.to_path_buf(),
        })
    })?;
    let first = layout("first_order")?;
    let table_optimizer = cfg.embedding.optimizer.init();
    // dynamic tables: sharded as they were written (their maps are per rank)
    let dynamic = match &saved {
        SavedFolder::Pieces(m) => m.dynamic.clone(),
        SavedFolder::Model(_) => Vec::new(),
    };
    let plans = resolve_plans(
        &cfg.sharding,
        &cfg.embedding,
        &main,
        first.as_ref(),
        cluster.world_size(),
        &table_optimizer,
        &dynamic,
    )?;
    // a compact OptEmbed model: ids remapped to kept rows, fields padded back to D
    let compact = match &saved {
        SavedFolder::Model(m) => match &m.optembed {
            Some(info) => Some(crate::optembed::compact_setup(model_dir, m, info)?),
            None => None,
        },
        SavedFolder::Pieces(_) => None,
    };
    if compact.is_none() {
        refuse_masked_optembed_model(model_dir)?;
    }
    let mut bundle = BundleSpec {
        main,
        first_order: first,
        optimizer: table_optimizer,
        model: model_cfg,
        num_dense,
        device,
        table_device,
        fused: cfg.fused_tables(),
        plans: Some(&plans),
        layer: compact
            .as_ref()
            .map(|c| c as &dyn crate::bundle::EmbeddingLayerSpec),
        // this config's tiers: a model trained in RAM evaluates from a file, and back
        storage: Some(&cfg.embedding),
        dynamic: &dynamic,
    }
    .init(cluster)?;
    fill_saved(model_dir, &saved, &mut bundle)?;
    let groups = group_feature(cfg, &data)?;
    let target = retrieval_target(&bundle, &split, cfg)?;
    let p = predict_split(
        &bundle,
        &split,
        cfg.eval.batch_size,
        groups,
        target.as_ref(),
        cluster,
    )?;
    let r = p.score(groups);
    let extra = sequence_test_metrics(&bundle, &split, &p);
    let rss = cluster.all_gather(&[peak_rss_bytes()])?;
    let mut out = json!({
        "auc": r.auc, "logloss": r.logloss, "gauc": r.gauc, "rows_test": r.rows,
        "split": split.name.as_str(), "model_dir": model_dir.display().to_string(),
        "bad_rows_skipped": data.meta.bad_rows.total(), "threads": threads,
        "world_size": cluster.world_size(), "saved_by_ranks": written_by,
        "peak_rss_bytes": rss.iter().copied().max().unwrap_or(0),
        "peak_rss_bytes_per_rank": rss,
    });
    merge_json(&mut out, extra);
    Ok(out)
}

/// Adds `extra`'s keys to `into` (both JSON objects).
fn merge_json(into: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), extra) {
        a.extend(b);
    }
}
