//! OptEmbed's three stages, run in order by `shardrec train` (or one at a time with
//! `--stage`), each in its own folder of the run so a later stage starts from an
//! earlier one's output:
//!
//! - `supernet/`: trains tables, model and per-field thresholds with sampled widths;
//!   leaves `model/` and `row_mask.bin` (rows above their field's threshold, computed
//!   at the rows' owners);
//! - `search/`: loads the supernet, fixes the row mask, searches per-field widths on the
//!   validation split; leaves `widths.json`;
//! - `retrain/`: fresh tables and model trained with the fixed row mask and widths;
//!   leaves the masked `model/` and the compact `model_compact/`, checked to predict
//!   what the masked model predicts.
//!
//! Every stage runs under mpirun with the tables sharded like any training run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use shardrec_tables::Exchange;

use super::compact::{export_compact, gather_rows, CompactIds};
use super::evolution::{best_random, evolve};
use super::field_tables::FieldTables;
use super::layer::{OptEmbedLayer, OptEmbedSetup, RowSelection, Widths};
use super::row_mask::{owner_row_norms, RowMask};
use super::OptEmbedError;
use crate::bundle::{BundleSpec, EmbeddingLayerSpec, ModelBundle};
use crate::cluster::Cluster;
use crate::config::{ExperimentConfig, OptEmbedConfig, OptEmbedStage};
use crate::data::{prepare, PreparedDataset, SplitName};
use crate::embedding::EmbeddingEngine;
use crate::evaluate::{evaluate, predict_split};
use crate::job::{model_collections, prepare_on_ranks, resolve_devices, with_threads};
use crate::persist::model_io::{save_model, ModelDescription};
use crate::persist::{fill_saved, CompactModelInfo, ModelManifest, SavedFolder, COMPACT_ROW_MASK};
use crate::run_dir::RunDir;
use crate::sharding_plan::resolve_plans;
use crate::train::{train_with_hooks, TrainHook};
use crate::TrainError;

const ROW_MASK: &str = "row_mask.bin";
const WIDTHS: &str = "widths.json";

fn log(msg: &str) {
    eprintln!("[shardrec] optembed: {msg}");
}

/// `search/widths.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchResult {
    widths: Vec<usize>,
    valid_auc: f64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|source| OptEmbedError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text).map_err(io(path))
}

/// Bytes of every file under `dir`.
fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => folder_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes of a saved model's main-collection table files.
fn main_table_bytes(model: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(model.join("tables")) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("main_"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .sum()
}

/// The config a training stage runs: its own run folder, and its own epochs where
/// `[optembed]` sets them.
fn stage_cfg(
    cfg: &ExperimentConfig,
    top: &Path,
    stage: OptEmbedStage,
    oe: &OptEmbedConfig,
) -> ExperimentConfig {
    let mut c = cfg.clone();
    c.train.run_dir = Some(top.join(stage.as_str()));
    let epochs = match stage {
        OptEmbedStage::Supernet => oe.supernet_epochs,
        OptEmbedStage::Search => None,
        OptEmbedStage::Retrain => oe.retrain_epochs,
    };
    if let Some(e) = epochs {
        c.train.epochs = e;
    }
    c
}

/// Output an earlier stage left, or an error saying which stage to run first.
fn earlier(top: &Path, stage: OptEmbedStage, file: &str) -> Result<PathBuf, TrainError> {
    let p = top.join(stage.as_str()).join(file);
    if p.exists() {
        Ok(p)
    } else {
        Err(OptEmbedError::StageMissing {
            path: p,
            stage: stage.as_str(),
            run: top.to_path_buf(),
        }
        .into())
    }
}

/// Runs the stages (all three in order, or `only` one) in one run folder; returns the
/// last stage's summary with every stage's under `optembed_stages`.
pub fn run_stages(
    cfg: &ExperimentConfig,
    name: &str,
    cluster: &Cluster,
    resume: Option<&Path>,
    only: Option<OptEmbedStage>,
) -> Result<serde_json::Value, TrainError> {
    if resume.is_some() {
        return Err(OptEmbedError::NoResume.into());
    }
    let oe = cfg.optembed.clone().unwrap_or_default();
    let chosen = RunDir::default_path(cfg, name);
    let chosen = cluster.broadcast_from_root(chosen.to_string_lossy().as_bytes())?;
    let top = PathBuf::from(String::from_utf8_lossy(&chosen).into_owned());
    if cluster.is_root() {
        std::fs::create_dir_all(&top).map_err(io(&top))?;
    }
    let stages = only.map_or(OptEmbedStage::ALL.to_vec(), |s| vec![s]);
    let mut all = serde_json::Map::new();
    let mut last = json!({});
    for st in stages {
        if cluster.is_root() {
            log(&format!(
                "stage {} in {}",
                st.as_str(),
                top.join(st.as_str()).display()
            ));
        }
        last = match st {
            OptEmbedStage::Supernet => supernet(cfg, name, cluster, &top, &oe)?,
            OptEmbedStage::Search => with_threads(cfg, cluster.local_size(), |_| {
                search(cfg, cluster, &top, &oe)
            })??,
            OptEmbedStage::Retrain => retrain(cfg, name, cluster, &top, &oe)?,
        };
        all.insert(st.as_str().into(), last.clone());
        // rank 0 wrote the stage's output (row mask, widths): every rank waits for it
        cluster.barrier();
    }
    let mut summary = last;
    summary["optembed_stages"] = serde_json::Value::Object(all);
    summary["run_dir"] = top.display().to_string().into();
    if cluster.is_root() {
        write_json(&top.join("summary.json"), &summary)?;
    }
    Ok(summary)
}

/// An OptEmbed stage's part of the training loop: the masks between tables and model,
/// and `after`, work on the trained bundle before the summary is written (collective
/// under mpirun).
struct StageHook<F> {
    setup: OptEmbedSetup,
    after: F,
}

impl<F> TrainHook for StageHook<F>
where
    F: FnMut(
            &ModelBundle,
            &PreparedDataset,
            &Path,
            &mut serde_json::Value,
        ) -> Result<(), TrainError>
        + Send,
{
    fn embedding_layer(&self) -> Option<&dyn EmbeddingLayerSpec> {
        Some(&self.setup)
    }

    fn after_training(
        &mut self,
        bundle: &ModelBundle,
        data: &PreparedDataset,
        run: &Path,
        summary: &mut serde_json::Value,
    ) -> Result<(), TrainError> {
        (self.after)(bundle, data, run, summary)
    }
}

fn train_stage(
    cfg: &ExperimentConfig,
    name: &str,
    cluster: &Cluster,
    mut hook: impl TrainHook,
) -> Result<serde_json::Value, TrainError> {
    train_with_hooks(cfg, name, cluster, None, vec![&mut hook])
}

fn supernet(
    cfg: &ExperimentConfig,
    name: &str,
    cluster: &Cluster,
    top: &Path,
    oe: &OptEmbedConfig,
) -> Result<serde_json::Value, TrainError> {
    let mut c = stage_cfg(cfg, top, OptEmbedStage::Supernet, oe);
    c.train.save_model = true; // the search starts from it
    if let Some(init) = &oe.supernet_init {
        c.embedding.init = init.clone();
    }
    let dim = c.embedding.dim;
    let after = move |bundle: &ModelBundle,
                      _: &PreparedDataset,
                      run: &Path,
                      summary: &mut serde_json::Value|
          -> Result<(), TrainError> {
        let ft = FieldTables::of(bundle.tables.layout(), dim)?;
        let thresholds = OptEmbedLayer::of(bundle)
            .map(|o| o.thresholds())
            .unwrap_or_default();
        let norms = owner_row_norms(&bundle.tables, &ft.table_of, &ft.rows, cluster)?;
        let mask = RowMask::from_norms(&norms, &thresholds);
        if cluster.is_root() {
            mask.save(&run.join(ROW_MASK))?;
        }
        let kept: Vec<u64> = (0..mask.features()).map(|f| mask.kept_rows(f)).collect();
        let total: u64 = ft.rows.iter().sum();
        summary["thresholds"] = json!(thresholds);
        summary["fields"] = json!(ft.names);
        summary["vocab_rows"] = json!(ft.rows);
        summary["kept_rows"] = json!(kept);
        summary["row_sparsity"] =
            json!(1.0 - kept.iter().sum::<u64>() as f64 / total.max(1) as f64);
        Ok(())
    };
    train_stage(
        &c,
        name,
        cluster,
        StageHook {
            setup: OptEmbedSetup {
                cfg: oe.clone(),
                dim,
                rows: RowSelection::Thresholds,
                widths: Widths::SampledInTraining,
            },
            after,
        },
    )
}

fn search(
    cfg: &ExperimentConfig,
    cluster: &Cluster,
    top: &Path,
    oe: &OptEmbedConfig,
) -> Result<serde_json::Value, TrainError> {
    let started = Instant::now();
    let mask = Arc::new(RowMask::load(&earlier(
        top,
        OptEmbedStage::Supernet,
        ROW_MASK,
    )?)?);
    let model_dir = earlier(top, OptEmbedStage::Supernet, "model")?;
    let data = prepare_on_ranks(cluster, |log| prepare(&cfg.data, log))?;
    let valid = data
        .split(SplitName::Valid)
        .cloned()
        .ok_or(OptEmbedError::NoValidation)?;
    let schema = &data.meta.schema;
    let colls = model_collections(cfg, &data)?;
    let dim = cfg.embedding.dim;
    let ft = FieldTables::of(&colls.main, dim)?;
    if mask.features() != ft.rows.len() || (0..mask.features()).any(|f| mask.rows(f) != ft.rows[f])
    {
        return Err(OptEmbedError::MaskDoesNotFit {
            path: top.join("supernet").join(ROW_MASK),
        }
        .into());
    }
    let opt = cfg.embedding.optimizer.init();
    let plans = resolve_plans(
        &cfg.sharding,
        &cfg.embedding,
        &colls.main,
        colls.first_order.as_ref(),
        cluster.world_size(),
        &opt,
        &[],
    )?;
    let (device, table_device) = resolve_devices(cfg, cluster)?;
    let setup = OptEmbedSetup {
        cfg: oe.clone(),
        dim,
        rows: RowSelection::Fixed(mask.clone()),
        widths: Widths::Full,
    };
    let mut bundle = BundleSpec {
        main: colls.main,
        first_order: colls.first_order,
        optimizer: opt,
        model: &cfg.model,
        num_dense: schema.dense.len(),
        device,
        table_device,
        fused: false,
        plans: Some(&plans),
        layer: Some(&setup),
        storage: Some(&cfg.embedding),
        dynamic: &[],
    }
    .init(cluster)?;
    fill_saved(&model_dir, &SavedFolder::read(&model_dir)?, &mut bundle)?;
    let fields = ft.rows.len();
    let mut scored = 0usize;
    let root = cluster.is_root();
    let population = oe.search.population.max(1);
    let mut fitness = |w: &[usize]| -> Result<f64, TrainError> {
        if let Some(o) = OptEmbedLayer::of_mut(&mut bundle) {
            o.widths = Widths::Fixed(w.iter().map(|&x| x as i64).collect());
        }
        let r = evaluate(&bundle, &valid, cfg.eval.batch_size, None, cluster)?;
        scored += 1;
        if root && scored.is_multiple_of(population) {
            log(&format!("search: {scored} candidates scored"));
        }
        Ok(r.auc.unwrap_or(f64::NAN))
    };
    let full_width_auc = fitness(&vec![dim; fields])?;
    let out = evolve(&oe.search, fields, dim, cfg.seed, &mut fitness)?;
    let search_s = started.elapsed().as_secs_f64();
    if root {
        for (g, (here, best)) in out.generation_best.iter().zip(&out.best_so_far).enumerate() {
            log(&format!(
                "generation {}: best valid auc {here:.5} (best so far {best:.5})",
                g + 1
            ));
        }
    }
    let random = if oe.search.random_baseline {
        Some(best_random(
            out.evaluations,
            fields,
            dim,
            cfg.seed,
            &mut fitness,
        )?)
    } else {
        None
    };
    let params: u64 = (0..fields)
        .map(|f| mask.kept_rows(f) * out.best.widths[f] as u64)
        .sum();
    let full: u64 = ft.rows.iter().sum::<u64>() * dim as u64;
    let summary = json!({
        "stage": "search",
        "fields": ft.names,
        "widths": out.best.widths,
        "best_valid_auc": out.best.auc,
        "valid_auc_full_width": full_width_auc,
        "generation_best_valid_auc": out.generation_best,
        "best_so_far_valid_auc": out.best_so_far,
        "evaluations": out.evaluations,
        "random_baseline_best_valid_auc": random.as_ref().map(|r| r.auc),
        "random_baseline_widths": random.as_ref().map(|r| r.widths.clone()),
        "random_baseline_evaluations": random.as_ref().map(|_| out.evaluations),
        "embedding_params": params,
        "embedding_params_full": full,
        "sparsity": 1.0 - params as f64 / full.max(1) as f64,
        "search_s": search_s,
        "world_size": cluster.world_size(),
    });
    if root {
        let dir = top.join(OptEmbedStage::Search.as_str());
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let result = SearchResult {
            widths: out.best.widths.clone(),
            valid_auc: out.best.auc,
        };
        write_json(&dir.join(WIDTHS), &result)?;
        write_json(&dir.join("summary.json"), &summary)?;
    }
    Ok(summary)
}

fn read_widths(path: &Path, fields: usize, dim: usize) -> Result<Vec<usize>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let r: SearchResult = serde_json::from_str(&text).map_err(|source| OptEmbedError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    if r.widths.len() != fields || r.widths.iter().any(|&w| !(1..=dim).contains(&w)) {
        return Err(OptEmbedError::BadWidths {
            path: path.to_path_buf(),
            fields,
            dim,
            widths: r.widths,
        }
        .into());
    }
    Ok(r.widths)
}

fn retrain(
    cfg: &ExperimentConfig,
    name: &str,
    cluster: &Cluster,
    top: &Path,
    oe: &OptEmbedConfig,
) -> Result<serde_json::Value, TrainError> {
    let c = stage_cfg(cfg, top, OptEmbedStage::Retrain, oe);
    let dim = c.embedding.dim;
    let mask = Arc::new(RowMask::load(&earlier(
        top,
        OptEmbedStage::Supernet,
        ROW_MASK,
    )?)?);
    let widths = read_widths(
        &earlier(top, OptEmbedStage::Search, WIDTHS)?,
        mask.features(),
        dim,
    )?;
    let after = |bundle: &ModelBundle,
                 data: &PreparedDataset,
                 run: &Path,
                 summary: &mut serde_json::Value|
     -> Result<(), TrainError> {
        export(&c, oe, bundle, data, run, &mask, &widths, cluster, summary)
    };
    train_stage(
        &c,
        name,
        cluster,
        StageHook {
            setup: OptEmbedSetup {
                cfg: oe.clone(),
                dim,
                rows: RowSelection::Fixed(mask.clone()),
                widths: Widths::Fixed(widths.iter().map(|&w| w as i64).collect()),
            },
            after,
        },
    )
}

/// Writes `model_compact/` from the retrained (masked) bundle and checks, on rank 0, that
/// the compact model predicts the test rows as the masked one does.
#[allow(clippy::too_many_arguments)]
fn export(
    cfg: &ExperimentConfig,
    oe: &OptEmbedConfig,
    bundle: &ModelBundle,
    data: &PreparedDataset,
    run: &Path,
    mask: &RowMask,
    widths: &[usize],
    cluster: &Cluster,
    summary: &mut serde_json::Value,
) -> Result<(), TrainError> {
    let dim = cfg.embedding.dim;
    let ft = FieldTables::of(bundle.tables.layout(), dim)?;
    let oov = OptEmbedLayer::of(bundle).and_then(|o| o.oov_values());
    let compact = export_compact(
        &bundle.tables,
        &ft.table_of,
        mask,
        widths,
        &ft.names,
        oov.as_deref(),
        dim,
        cluster,
    )?;
    let first = match &bundle.first_order {
        Some(fo) => {
            let n = fo.layout().num_tables();
            gather_rows(
                fo,
                fo.layout().clone(),
                &(0..n).collect::<Vec<_>>(),
                &|_, r| Some(r),
                cluster,
            )?
        }
        None => None,
    };
    let split = data
        .split(SplitName::Test)
        .or_else(|| data.split(SplitName::Valid))
        .cloned();
    let masked = match &split {
        Some(s) => Some(predict_split(
            bundle,
            s,
            cfg.eval.batch_size,
            None,
            None,
            cluster,
        )?),
        None => None,
    };
    let kept: Vec<u64> = (0..mask.features()).map(|f| mask.kept_rows(f)).collect();
    let params: u64 = kept.iter().zip(widths).map(|(&k, &w)| k * w as u64).sum();
    let full: u64 = ft.rows.iter().sum::<u64>() * dim as u64;
    summary["stage"] = "retrain".into();
    summary["fields"] = json!(ft.names);
    summary["widths"] = json!(widths);
    summary["kept_rows"] = json!(kept);
    summary["vocab_rows"] = json!(ft.rows);
    summary["embedding_params"] = json!(params);
    summary["embedding_params_full"] = json!(full);
    summary["sparsity"] = json!(1.0 - params as f64 / full.max(1) as f64);
    let Some(compact) = compact else {
        return Ok(()); // ranks other than 0: their part is done
    };
    let info = CompactModelInfo {
        dim,
        widths: widths.to_vec(),
        kept_rows: kept,
        row_mask: COMPACT_ROW_MASK.into(),
        pruned: oe.pruned,
        config: oe.clone(),
    };
    let setup = OptEmbedSetup {
        cfg: oe.clone(),
        dim,
        rows: RowSelection::Compact(Arc::new(CompactIds::new(mask, widths, dim))),
        widths: Widths::Full,
    };
    let solo = Cluster::solo();
    let mut cb = BundleSpec {
        main: compact.layout().clone(),
        first_order: first.as_ref().map(|f| f.layout().clone()),
        optimizer: *compact.optimizer(),
        model: &cfg.model,
        num_dense: bundle.num_dense,
        device: bundle.device,
        table_device: tch::Device::Cpu,
        fused: false,
        plans: None,
        layer: Some(&setup),
        storage: None,
        dynamic: &[],
    }
    .init(&solo)?;
    cb.tables = EmbeddingEngine::Local(compact);
    cb.first_order = first.map(EmbeddingEngine::Local);
    cb.vs.copy(&bundle.vs)?;
    let dir = run.join("model_compact");
    let mut colls = Vec::new();
    if let Some(t) = cb.tables.as_local() {
        colls.push(("main", t));
    }
    if let Some(t) = cb.first_order.as_ref().and_then(|f| f.as_local()) {
        colls.push(("first_order", t));
    }
    let what = ModelDescription {
        model: &cfg.model,
        schema: &data.meta.schema,
        vocab_sizes: &data.meta.vocab_sizes,
        vocab_file: &data.dir.join("vocab.bin"),
        preprocessing: &cfg.data.preprocessing(),
    };
    save_model(&dir, &cb.vs, &what, &colls, Some((&info, &mask.to_bytes())))?;
    if let (Some(s), Some(masked)) = (&split, &masked) {
        let p = predict_split(&cb, s, cfg.eval.batch_size, None, None, &solo)?;
        let diff = masked
            .preds
            .iter()
            .zip(&p.preds)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        summary["compact_max_abs_prediction_diff"] = json!(diff);
        summary["compact_rows_compared"] = json!(p.preds.len());
        summary["compact_split"] = s.name.as_str().into();
    }
    summary["compact_main_table_bytes"] = json!(
        main_table_bytes(&dir) + dir.join(COMPACT_ROW_MASK).metadata().map_or(0, |m| m.len())
    );
    summary["full_main_table_bytes"] = json!(full * 4);
    summary["compact_model_bytes"] = json!(folder_bytes(&dir));
    summary["masked_model_bytes"] = json!(folder_bytes(&run.join("model")));
    summary["compact_model_dir"] = dir.display().to_string().into();
    Ok(())
}

/// The layer of a saved compact model (for `shardrec eval`).
pub fn compact_setup(
    dir: &Path,
    m: &ModelManifest,
    info: &CompactModelInfo,
) -> Result<OptEmbedSetup, TrainError> {
    let f = m
        .files
        .iter()
        .find(|f| f.path == info.row_mask)
        .ok_or_else(|| OptEmbedError::CompactMaskUnlisted {
            dir: dir.to_path_buf(),
            file: info.row_mask.clone(),
        })?;
    crate::persist::checked_file::verify(dir, f)?;
    let mask = RowMask::load(&dir.join(&info.row_mask))?;
    if mask.features() != info.widths.len() {
        return Err(OptEmbedError::CompactFieldsDiffer {
            dir: dir.to_path_buf(),
            mask: mask.features(),
            widths: info.widths.len(),
        }
        .into());
    }
    let mut cfg = info.config.clone();
    cfg.pruned = info.pruned;
    Ok(OptEmbedSetup {
        cfg,
        dim: info.dim,
        rows: RowSelection::Compact(Arc::new(CompactIds::new(&mask, &info.widths, info.dim))),
        widths: Widths::Full,
    })
}
