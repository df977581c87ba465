//! The training loop of one process: prepare data, build tables and model, run epochs
//! with a loader thread feeding batches, validate, stop early, test, save, summarise.
//!
//! Each step: lookup (plan the batch's ids, gather rows into the input tensor), dense
//! forward/backward and optimizer step (libtorch), sparse update (reduce each touched
//! row's gradient, apply the sparse optimizer to it). Each phase is timed; the summary
//! reports the breakdown. The same seed repeats a run bitwise in one process.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use shardrec_models::DenseOptimizer;
use shardrec_tables::SparseOptimizer;

use shardrec_tables::{Exchange, ShardingKind};

use crate::bundle::ModelBundle;
use crate::cluster::Cluster;
use crate::config::{ExperimentConfig, SparseOptimizerConfig};
use crate::data::{
    prepare, prepare_with_vocab, spawn_loader, LoaderOptions, PreparedDataset, SplitName,
};
use crate::dense_sync::all_reduce_gradients;
use crate::device::resolve_device;
use crate::embedding::build_collections;
use crate::evaluate::{evaluate, EvalResult};
use crate::lockstep::{LockstepBatches, Step};
use crate::model_io::{load_table, read_manifest, save_model};
use crate::progress::Progress;
use crate::run_dir::{peak_rss_bytes, RunDir};
use crate::sharding_plan::{resolve_plans, write_plans, CollectionPlans};
use crate::TrainError;

fn sparse_optimizer(c: &SparseOptimizerConfig) -> SparseOptimizer {
    let mut o = SparseOptimizer::new(c.kind, c.lr);
    o.weight_decay = c.weight_decay;
    o.initial_accumulator = c.initial_accumulator;
    if let Some(e) = c.eps {
        o.eps = e;
    }
    if let Some(b) = c.beta1 {
        o.beta1 = b;
    }
    if let Some(b) = c.beta2 {
        o.beta2 = b;
    }
    o
}

/// Time spent in each phase of the steps.
#[derive(Debug, Default, Clone, Copy)]
struct Timing {
    data: Duration,
    /// Includes the forward exchanges (ids out, rows back) when sharded.
    lookup: Duration,
    dense: Duration,
    all_reduce: Duration,
    /// Includes the gradient exchange when sharded.
    sparse_update: Duration,
    exchanges: shardrec_tables::ExchangeTimes,
}

impl Timing {
    fn to_json(self) -> serde_json::Value {
        let total = (self.data + self.lookup + self.dense + self.all_reduce + self.sparse_update)
            .as_secs_f64()
            .max(1e-9);
        let x = self.exchanges;
        json!({
            "data_wait_s": self.data.as_secs_f64(),
            "lookup_s": self.lookup.as_secs_f64(),
            "dense_forward_backward_s": self.dense.as_secs_f64(),
            "all_reduce_s": self.all_reduce.as_secs_f64(),
            "sparse_update_s": self.sparse_update.as_secs_f64(),
            "id_exchange_s": x.ids.as_secs_f64(),
            "embedding_exchange_s": (x.values + x.gradients).as_secs_f64(),
            "embedding_exchange_forward_s": x.values.as_secs_f64(),
            "embedding_exchange_backward_s": x.gradients.as_secs_f64(),
            "exchange_share": (x.ids + x.values + x.gradients).as_secs_f64() / total,
            "lookup_plus_sparse_update_share": (self.lookup + self.sparse_update).as_secs_f64() / total,
        })
    }
}

/// Threads per rank: as configured, or the node's cores divided among its ranks.
fn threads_for(cfg: &ExperimentConfig, ranks_on_node: usize) -> usize {
    if cfg.train.threads > 0 {
        cfg.train.threads
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / ranks_on_node.max(1)).max(1)
    }
}

/// Runs `f` with libtorch and the table kernels limited to the configured threads.
fn with_threads<T: Send>(
    cfg: &ExperimentConfig,
    ranks_on_node: usize,
    f: impl FnOnce(usize) -> T + Send,
) -> Result<T, TrainError> {
    let threads = threads_for(cfg, ranks_on_node);
    tch::set_num_threads(threads as i32);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| TrainError::Invalid(format!("thread pool: {e}")))?;
    Ok(pool.install(|| f(threads)))
}

fn group_feature(
    cfg: &ExperimentConfig,
    data: &PreparedDataset,
) -> Result<Option<usize>, TrainError> {
    let Some(g) = &cfg.eval.gauc_by else {
        return Ok(None);
    };
    let names: Vec<&str> = data
        .meta
        .schema
        .categorical
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    names.iter().position(|n| n == g).map(Some).ok_or_else(|| {
        TrainError::Invalid(format!(
            "eval.gauc_by = \"{g}\" is not a categorical feature (features: {})",
            names.join(", ")
        ))
    })
}

fn log(msg: &str) {
    eprintln!("[shardrec] {msg}");
}

fn eval_json(prefix: &str, r: &EvalResult) -> serde_json::Value {
    json!({ format!("{prefix}_auc"): r.auc, format!("{prefix}_logloss"): r.logloss, format!("{prefix}_gauc"): r.gauc, format!("{prefix}_rows"): r.rows })
}

/// Trains as configured on the ranks of `cluster` (one plain process, or the ranks
/// mpirun started); returns the summary (rank 0 also writes it to the run folder).
pub fn train(
    cfg: &ExperimentConfig,
    name: &str,
    cluster: &Cluster,
) -> Result<serde_json::Value, TrainError> {
    with_threads(cfg, cluster.local_size(), |threads| {
        train_inner(cfg, name, threads, cluster)
    })?
}

fn quiet(_: &str) {}

fn count_kind(plans: &CollectionPlans, kind: ShardingKind) -> usize {
    plans.main.tables.iter().filter(|t| t.kind == kind).count()
}

/// Prepares (or finds cached) data: rank 0 first, then the others read its cache, so
/// ranks never prepare the same files at once. A failure on rank 0 stops every rank.
fn prepare_on_ranks(
    cfg: &ExperimentConfig,
    cluster: &Cluster,
) -> Result<PreparedDataset, TrainError> {
    if cluster.world_size() == 1 {
        return Ok(prepare(&cfg.data, &log)?);
    }
    let first = cluster.is_root().then(|| prepare(&cfg.data, &log));
    let mut failed = [u32::from(matches!(first, Some(Err(_))))];
    cluster.all_reduce_max(&mut failed);
    match first {
        Some(r) => Ok(r?),
        None if failed[0] != 0 => Err(TrainError::Invalid(
            "rank 0 could not prepare the data (its error is above)".into(),
        )),
        None => Ok(prepare(&cfg.data, &quiet)?),
    }
}

fn train_inner(
    cfg: &ExperimentConfig,
    name: &str,
    threads: usize,
    cluster: &Cluster,
) -> Result<serde_json::Value, TrainError> {
    let started = Instant::now();
    let (rank, world) = (cluster.rank(), cluster.world_size());
    let distributed = world > 1;
    let say = |m: &str| {
        if cluster.is_root() {
            log(m)
        }
    };
    if distributed {
        // every rank, so a user (or a test) can find a rank's process on its node
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        log(&format!(
            "rank {rank} of {world}: pid {} on {}",
            std::process::id(),
            host.trim()
        ));
    }
    // one GPU per rank: the rank's index on its node, modulo the node's devices
    let device =
        resolve_device(&cfg.train.device, cluster.local_rank()).map_err(TrainError::Invalid)?;
    let (global_bs, local_bs) = if cfg.train.batch_size_per_rank {
        (cfg.train.batch_size * world, cfg.train.batch_size)
    } else if !cfg.train.batch_size.is_multiple_of(world) {
        return Err(TrainError::Invalid(format!(
            "train.batch_size = {} is the batch of the whole job and must divide among its {world} ranks (or set train.batch_size_per_rank = true)",
            cfg.train.batch_size
        )));
    } else {
        (cfg.train.batch_size, cfg.train.batch_size / world)
    };
    let data = prepare_on_ranks(cfg, cluster)?;
    let train_split = data.split(SplitName::Train).cloned().ok_or_else(|| {
        TrainError::Invalid(format!(
            "{}: the training split has no rows",
            cfg.data.train.display()
        ))
    })?;
    let valid = data.split(SplitName::Valid).cloned();
    let test = data.split(SplitName::Test).cloned();
    if cfg.train.early_stopping_patience > 0 && valid.is_none() {
        return Err(TrainError::Invalid(
            "train.early_stopping_patience needs a non-empty validation split".into(),
        ));
    }
    let groups = group_feature(cfg, &data)?;
    let schema = &data.meta.schema;
    let colls = build_collections(
        &cfg.embedding,
        schema,
        &data.meta.vocab_sizes,
        cfg.seed,
        cfg.model.kind,
    )
    .map_err(TrainError::Invalid)?;
    let table_optimizer = sparse_optimizer(&cfg.embedding.optimizer);
    let plans = resolve_plans(
        &cfg.sharding,
        &colls.main,
        colls.first_order.as_ref(),
        world,
        &table_optimizer,
    )?;
    tch::manual_seed(cfg.seed as i64);
    let mut bundle = ModelBundle::new(
        colls.main,
        colls.first_order,
        table_optimizer,
        &cfg.model,
        schema.dense.len(),
        device,
        cluster,
        Some(&plans),
    )?;
    let mut opt = DenseOptimizer::new(&bundle.vs, cfg.optimizer.clone());
    let mut run =
        RunDir::create(cfg, name, cluster.is_root()).map_err(|source| TrainError::Io {
            path: "runs".into(),
            source,
        })?;
    if cluster.is_root() {
        write_plans(&run.path.join("sharding_plan.toml"), &plans)?;
    }
    let run_path = run.path.clone();
    let run_io = |source| TrainError::Io {
        path: run_path.clone(),
        source,
    };
    say(&format!(
        "run folder {}; {} train / {} valid / {} test rows; {} dense + {} categorical features; {} table parameters; {} threads{}",
        run.path.display(),
        train_split.rows,
        valid.as_ref().map_or(0, |s| s.rows),
        test.as_ref().map_or(0, |s| s.rows),
        schema.dense.len(),
        schema.categorical.len(),
        bundle.tables.layout().parameters(),
        threads,
        if distributed {
            format!(
                " per rank; {world} ranks ({} tables row-wise, {} table-wise, {} column-wise, {} data-parallel; plan in sharding_plan.toml), batch {local_bs} per rank ({global_bs} per step)",
                count_kind(&plans, ShardingKind::RowWise),
                count_kind(&plans, ShardingKind::TableWise),
                count_kind(&plans, ShardingKind::ColumnWise),
                count_kind(&plans, ShardingKind::DataParallel)
            )
        } else {
            String::new()
        }
    ));

    let bs = global_bs;
    let steps_per_epoch = train_split.rows.div_ceil(bs);
    let mut total_steps = steps_per_epoch * cfg.train.epochs;
    if cfg.train.max_steps > 0 {
        total_steps = total_steps.min(cfg.train.max_steps);
    }
    let log_every = if cfg.train.log_every > 0 {
        cfg.train.log_every
    } else {
        (steps_per_epoch / 20).max(1)
    };
    let progress = Progress::new(total_steps as u64, log_every, cluster.is_root());
    let mut timing = Timing::default();
    let (mut step, mut samples, mut epochs_run) = (0usize, 0u64, 0usize);
    let (mut window_loss, mut window_rows, mut window_clock) = (0f64, 0usize, Instant::now());
    let mut best_valid: Option<f64> = None;
    let mut evals_without_gain = 0usize;
    let mut stopped_early = false;
    let mut train_time = Duration::ZERO;
    let mut validations = Vec::new();

    'epochs: for epoch in 0..cfg.train.epochs {
        epochs_run = epoch + 1;
        let stream = spawn_loader(
            train_split.clone(),
            LoaderOptions {
                batch_size: local_bs,
                shuffle: cfg.train.shuffle,
                seed: cfg.seed,
                epoch: epoch as u64,
                window: cfg.train.shuffle_window,
                queue: cfg.train.loader_queue,
                shard: (rank, world),
                group_feature: None,
            },
        );
        for Step {
            batch,
            global_rows,
            data_wait: t_data,
        } in LockstepBatches::new(stream, cluster, schema.categorical.len(), false)
        {
            let t0 = Instant::now();
            let lk = bundle.lookup(&batch, true, cluster)?;
            let t1 = Instant::now();
            let logits = bundle.logits(&lk, &batch, true);
            opt.zero_grad();
            let mut t_all_reduce = Duration::ZERO;
            let loss_v = if distributed {
                let loss = bundle.loss_share(&logits, &batch, global_rows);
                loss.backward();
                let mut global_loss = [loss.double_value(&[]) as f32];
                let t = Instant::now();
                all_reduce_gradients(&bundle.vs, cluster, &mut global_loss)?;
                t_all_reduce = t.elapsed();
                f64::from(global_loss[0])
            } else {
                let loss = bundle.loss(&logits, &batch);
                loss.backward();
                loss.double_value(&[])
            };
            opt.step();
            let t2 = Instant::now();
            bundle.update_tables(lk, cluster)?;
            let t3 = Instant::now();
            timing.data += t_data;
            timing.lookup += t1 - t0;
            timing.dense += t2 - t1 - t_all_reduce;
            timing.all_reduce += t_all_reduce;
            timing.sparse_update += t3 - t2;
            train_time += t_data + (t3 - t0);
            step += 1;
            samples += global_rows as u64;
            if !loss_v.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "training diverged: loss is {loss_v} at step {step}; lower optimizer.lr or embedding.optimizer.lr"
                )));
            }
            window_loss += loss_v * global_rows as f64;
            window_rows += global_rows;
            progress.step(step, || {
                format!(
                    "epoch {} loss {:.5}",
                    epoch + 1,
                    window_loss / window_rows.max(1) as f64
                )
            });
            if step % log_every == 0 {
                let secs = window_clock.elapsed().as_secs_f64().max(1e-9);
                run.log_metrics(&json!({
                    "step": step, "epoch": epoch + 1,
                    "loss": window_loss / window_rows.max(1) as f64,
                    "samples_per_s": window_rows as f64 / secs,
                }))
                .map_err(run_io)?;
                (window_loss, window_rows, window_clock) = (0.0, 0, Instant::now());
            }
            let eval_now = cfg.train.eval_every > 0 && step % cfg.train.eval_every == 0;
            if eval_now {
                if let Some(v) = &valid {
                    if validate(
                        &bundle,
                        cluster,
                        v,
                        cfg,
                        groups,
                        step,
                        epoch,
                        &mut run,
                        &progress,
                        &mut best_valid,
                        &mut evals_without_gain,
                        &mut validations,
                    )? {
                        stopped_early = true;
                        break 'epochs;
                    }
                }
            }
            if cfg.train.max_steps > 0 && step >= cfg.train.max_steps {
                break 'epochs;
            }
        }
        if cfg.train.eval_every == 0 {
            if let Some(v) = &valid {
                if validate(
                    &bundle,
                    cluster,
                    v,
                    cfg,
                    groups,
                    step,
                    epoch,
                    &mut run,
                    &progress,
                    &mut best_valid,
                    &mut evals_without_gain,
                    &mut validations,
                )? {
                    stopped_early = true;
                    break 'epochs;
                }
            }
        }
    }
    progress.finish();
    timing.exchanges = bundle.exchange_times();
    let time_per_rank = if distributed {
        let x = timing.exchanges;
        let mine: Vec<f64> = [
            timing.data,
            timing.lookup,
            timing.dense,
            timing.all_reduce,
            timing.sparse_update,
            x.ids,
            x.values + x.gradients,
        ]
        .iter()
        .map(Duration::as_secs_f64)
        .collect();
        let all = cluster.all_gather(&mine)?;
        let keys = [
            "data_wait_s",
            "lookup_s",
            "dense_forward_backward_s",
            "all_reduce_s",
            "sparse_update_s",
            "id_exchange_s",
            "embedding_exchange_s",
        ];
        all.chunks(keys.len())
            .map(|c| {
                keys.iter()
                    .zip(c)
                    .map(|(k, v)| ((*k).to_string(), json!(v)))
                    .collect::<serde_json::Map<_, _>>()
            })
            .collect::<Vec<_>>()
    } else {
        Vec::new()
    };
    let test_result = match &test {
        Some(t) => Some(evaluate(&bundle, t, cfg.eval.batch_size, groups, cluster)?),
        None => None,
    };
    let model_saved = cfg.train.save_model && !distributed;
    if cfg.train.save_model && distributed {
        say("not saving the model: saving sharded tables arrives with distributed checkpoints; this run's summary has model_saved = false");
    }
    if model_saved {
        fn local(
            e: &crate::embedding::EmbeddingEngine,
        ) -> Result<&shardrec_tables::LocalEmbeddings, TrainError> {
            e.as_local().ok_or_else(|| {
                TrainError::Invalid("saving a sharded collection is not supported yet".into())
            })
        }
        let mut colls: Vec<(&str, &shardrec_tables::LocalEmbeddings)> =
            vec![("main", local(&bundle.tables)?)];
        if let Some(f) = &bundle.first_order {
            colls.push(("first_order", local(f)?));
        }
        save_model(
            &run.model_dir(),
            &bundle.vs,
            &cfg.model,
            schema,
            &data.meta.vocab_sizes,
            &data.dir.join("vocab.bin"),
            &colls,
        )?;
    }
    let (emb_bytes, state_bytes) = bundle.table_bytes();
    let mut per_rank_bytes = [emb_bytes as u64, state_bytes as u64];
    cluster.all_reduce_sum(&mut per_rank_bytes);
    let rss_per_rank = cluster.all_gather(&[peak_rss_bytes()])?;
    let params = bundle.tables.layout().parameters()
        + bundle
            .first_order
            .as_ref()
            .map_or(0, |f| f.layout().parameters());
    let mut summary = json!({
        "auc": test_result.as_ref().and_then(|r| r.auc),
        "logloss": test_result.as_ref().map(|r| r.logloss),
        "gauc": test_result.as_ref().and_then(|r| r.gauc),
        "best_valid_auc": best_valid,
        "train_samples_per_s": samples as f64 / train_time.as_secs_f64().max(1e-9),
        "rows_train": train_split.rows,
        "rows_valid": valid.as_ref().map_or(0, |s| s.rows),
        "rows_test": test.as_ref().map_or(0, |s| s.rows),
        "bad_rows_skipped": data.meta.bad_rows.total(),
        "bad_rows": data.meta.bad_rows.to_json(),
        "peak_rss_bytes": rss_per_rank.iter().copied().max().unwrap_or(0),
        "steps": step,
        "epochs": epochs_run,
        "stopped_early": stopped_early,
        "samples_seen": samples,
        "embedding_params": params,
        "embedding_bytes": per_rank_bytes[0],
        "optimizer_state_bytes": per_rank_bytes[1],
        "embedding_bytes_this_rank": emb_bytes,
        "optimizer_state_bytes_this_rank": state_bytes,
        "peak_rss_bytes_per_rank": rss_per_rank,
        "world_size": world,
        "batch_size_per_rank": local_bs,
        "batch_size": global_bs,
        "model_saved": model_saved,
        "model": format!("{:?}", cfg.model.kind).to_lowercase(),
        "threads": threads,
        "device": cfg.train.device,
        "seed": cfg.seed,
        "time": timing.to_json(),
        "time_per_rank": time_per_rank,
        "wall_s": started.elapsed().as_secs_f64(),
        "run_dir": run.path.display().to_string(),
        "validations": validations,
    });
    if let Some(r) = &test_result {
        summary["rows_test"] = r.rows.into();
    }
    run.write_summary(&summary).map_err(run_io)?;
    Ok(summary)
}

/// Evaluates on the validation split, logs it, updates early stopping; true = stop.
#[allow(clippy::too_many_arguments)]
fn validate(
    bundle: &ModelBundle,
    cluster: &Cluster,
    split: &Arc<crate::data::PreparedSplit>,
    cfg: &ExperimentConfig,
    groups: Option<usize>,
    step: usize,
    epoch: usize,
    run: &mut RunDir,
    progress: &Progress,
    best: &mut Option<f64>,
    without_gain: &mut usize,
    history: &mut Vec<serde_json::Value>,
) -> Result<bool, TrainError> {
    let r = evaluate(bundle, split, cfg.eval.batch_size, groups, cluster)?;
    let mut line = eval_json("valid", &r);
    line["step"] = step.into();
    line["epoch"] = (epoch + 1).into();
    run.log_metrics(&line).map_err(|source| TrainError::Io {
        path: run.path.clone(),
        source,
    })?;
    progress.println(&format!(
        "[shardrec] step {step}: valid auc {} logloss {:.5}",
        r.auc.map_or("n/a".into(), |a| format!("{a:.5}")),
        r.logloss
    ));
    history.push(json!({ "step": step, "auc": r.auc, "logloss": r.logloss }));
    let auc = r.auc.unwrap_or(f64::NAN);
    if best.is_none_or(|b| auc > b) {
        *best = Some(auc);
        *without_gain = 0;
    } else {
        *without_gain += 1;
    }
    Ok(cfg.train.early_stopping_patience > 0 && *without_gain >= cfg.train.early_stopping_patience)
}

/// `shardrec eval`: evaluates a saved model on the config's test data (prepared with the
/// model's vocabulary).
pub fn eval_saved_model(
    cfg: &ExperimentConfig,
    model_dir: &Path,
) -> Result<serde_json::Value, TrainError> {
    with_threads(cfg, 1, |threads| {
        let manifest = read_manifest(model_dir)?;
        let device = resolve_device(&cfg.train.device, 0).map_err(TrainError::Invalid)?;
        let data = prepare_with_vocab(&cfg.data, &model_dir.join("vocab.bin"), &log)?;
        if data.meta.schema != manifest.schema {
            return Err(TrainError::Invalid(format!(
                "{}: the data's columns differ from the model's",
                cfg.data.train.display()
            )));
        }
        let split = data
            .split(SplitName::Test)
            .or_else(|| data.split(SplitName::Valid))
            .cloned()
            .ok_or_else(|| {
                TrainError::Invalid(
                    "no test (or validation) rows to evaluate; set data.test".into(),
                )
            })?;
        let layout = |name: &str| -> Result<Option<shardrec_tables::CollectionLayout>, TrainError> {
            manifest
                .collections
                .iter()
                .find(|c| c.name == name)
                .map(|c| shardrec_tables::CollectionLayout::new(c.spec.clone()))
                .transpose()
                .map_err(TrainError::from)
        };
        let main = layout("main")?.ok_or_else(|| {
            TrainError::Invalid(format!("{}: no main collection", model_dir.display()))
        })?;
        let solo = Cluster::solo();
        let mut vs_bundle = ModelBundle::new(
            main,
            layout("first_order")?,
            sparse_optimizer(&cfg.embedding.optimizer),
            &manifest.model,
            manifest.num_dense,
            device,
            &solo,
            None,
        )?;
        let whole = "one process holds every table when evaluating a saved model";
        for (name, engine) in [
            ("main", Some(&mut vs_bundle.tables)),
            ("first_order", vs_bundle.first_order.as_mut()),
        ] {
            let Some(engine) = engine else { continue };
            let local = engine
                .as_local_mut()
                .ok_or_else(|| TrainError::Invalid(whole.into()))?;
            for t in 0..local.layout().num_tables() {
                load_table(model_dir, name, local, t)?;
            }
        }
        let dense = model_dir.join("dense.safetensors");
        vs_bundle
            .vs
            .load(&dense)
            .map_err(|source| crate::model_io::ModelIoError::Torch {
                path: dense.clone(),
                source,
            })?;
        let groups = group_feature(cfg, &data)?;
        let r = evaluate(&vs_bundle, &split, cfg.eval.batch_size, groups, &solo)?;
        Ok(json!({
            "auc": r.auc, "logloss": r.logloss, "gauc": r.gauc, "rows_test": r.rows,
            "split": split.name.as_str(), "model_dir": model_dir.display().to_string(),
            "bad_rows_skipped": data.meta.bad_rows.total(), "threads": threads,
            "peak_rss_bytes": peak_rss_bytes(),
        }))
    })?
}
