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
use shardrec_models::{BatchStatsSync, DenseOptimizer};
use shardrec_tables::SparseOptimizer;

use shardrec_tables::{Exchange, ShardingKind};

use crate::bundle::ModelBundle;
use crate::checkpoint::{
    checkpoint_dir, find_checkpoint, is_checkpoint, load_dense, prune_checkpoints, read_checkpoint,
    write_checkpoint, CheckpointManifest, CheckpointSource, Position, SavedTables, ValidationState,
};
use crate::cluster::Cluster;
use crate::config::{ExperimentConfig, SparseOptimizerConfig};
use crate::data::sequence_format::is_sequence_schema;
use crate::data::{
    prepare, prepare_with_vocab, spawn_loader, Batch, LoaderOptions, PreparedDataset, SplitName,
};
use crate::dense_sync::{all_reduce_gradients, average_buffers};
use crate::device::resolve_device;
use crate::embedding::build_collections;
use crate::evaluate::{evaluate, predict_split, EvalResult};
use crate::lockstep::{LockstepBatches, Step};
use crate::model_io::{read_manifest, save_model};
use crate::progress::Progress;
use crate::run_dir::{peak_rss_bytes, RunDir};
use crate::sequence::{
    retrieval_target, sequence_embedding_config, sequence_table_schema, sequence_test_metrics,
};
use crate::sharding_plan::{resolve_plans, write_plans, CollectionPlans};
use crate::TrainError;

pub(crate) fn sparse_optimizer(c: &SparseOptimizerConfig) -> SparseOptimizer {
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

/// The dense model's device and the tables' (`train.device`, `embedding.device`); under
/// mpirun each rank takes the GPU of its index on its node, modulo the node's devices.
pub(crate) fn resolve_devices(
    cfg: &ExperimentConfig,
    cluster: &Cluster,
) -> Result<(tch::Device, tch::Device), TrainError> {
    let device =
        resolve_device(&cfg.train.device, cluster.local_rank()).map_err(TrainError::Invalid)?;
    let table_device = resolve_device(&cfg.embedding.device, cluster.local_rank())
        .map_err(|e| TrainError::Invalid(e.replace("train.device", "embedding.device")))?;
    Ok((device, table_device))
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
pub(crate) fn with_threads<T: Send>(
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

/// The collections the configured model reads: one embedding feature per categorical
/// feature, or for sequence models their item, category and time tables.
pub(crate) fn model_collections(
    cfg: &ExperimentConfig,
    data: &PreparedDataset,
) -> Result<crate::embedding::Collections, TrainError> {
    let schema = &data.meta.schema;
    let sequence_data = is_sequence_schema(schema);
    if !cfg.model.kind.is_sequence() {
        return build_collections(
            &cfg.embedding,
            &cfg.budget,
            schema,
            &data.meta.vocab_sizes,
            cfg.seed,
            cfg.model.kind,
        )
        .map_err(TrainError::Invalid);
    }
    if !sequence_data {
        return Err(TrainError::Invalid(format!(
            "model.kind = \"{}\" trains on behaviour sequences: set data.format = \"sequence\" (the data's features are {})",
            serde_json::to_value(cfg.model.kind).unwrap_or_default().as_str().unwrap_or("?"),
            schema.categorical.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    if cfg.optembed.as_ref().is_some_and(|o| o.enabled) {
        return Err(TrainError::Invalid(
            "[optembed] prunes single-valued feature tables; it does not apply to sequence models"
                .into(),
        ));
    }
    let (table_schema, rows) = sequence_table_schema(&cfg.model, &data.meta.vocab_sizes);
    build_collections(
        &sequence_embedding_config(&cfg.embedding, &cfg.model),
        &cfg.budget,
        &table_schema,
        &rows,
        cfg.seed,
        cfg.model.kind,
    )
    .map_err(TrainError::Invalid)
}

pub(crate) fn group_feature(
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
/// With `resume`, training continues from a checkpoint (or a run folder's newest one),
/// under any number of ranks.
pub fn train(
    cfg: &ExperimentConfig,
    name: &str,
    cluster: &Cluster,
    resume: Option<&Path>,
) -> Result<serde_json::Value, TrainError> {
    if cfg.optembed.as_ref().is_some_and(|o| o.enabled) {
        return crate::optembed::run_stages(cfg, name, cluster, resume, None);
    }
    with_threads(cfg, cluster.local_size(), |threads| {
        train_inner(cfg, name, threads, cluster, resume, None)
    })?
}

/// What an OptEmbed stage adds to the training loop: the masks, and work on the trained
/// bundle before the summary is written (collective under mpirun).
pub(crate) struct StageHooks<'a> {
    pub setup: crate::optembed::OptEmbedSetup,
    #[allow(clippy::type_complexity)]
    pub after: &'a mut (dyn FnMut(
        &ModelBundle,
        &PreparedDataset,
        &Path,
        &mut serde_json::Value,
    ) -> Result<(), TrainError>
                 + Send),
}

fn quiet(_: &str) {}

fn count_kind(plans: &CollectionPlans, kind: ShardingKind) -> usize {
    plans.main.tables.iter().filter(|t| t.kind == kind).count()
}

/// Prepares (or finds cached) data: rank 0 first, then the others read its cache, so
/// ranks never prepare the same files at once. A failure on rank 0 stops every rank.
pub(crate) fn prepare_on_ranks(
    cluster: &Cluster,
    prepare: impl Fn(&dyn Fn(&str)) -> Result<PreparedDataset, crate::data::DataError>,
) -> Result<PreparedDataset, TrainError> {
    if cluster.world_size() == 1 {
        return Ok(prepare(&log)?);
    }
    let first = cluster.is_root().then(|| prepare(&log));
    let mut failed = [u32::from(matches!(first, Some(Err(_))))];
    cluster.all_reduce_max(&mut failed);
    match first {
        Some(r) => Ok(r?),
        None if failed[0] != 0 => Err(TrainError::Invalid(
            "rank 0 could not prepare the data (its error is above)".into(),
        )),
        None => Ok(prepare(&quiet)?),
    }
}

pub(crate) fn train_inner(
    cfg: &ExperimentConfig,
    name: &str,
    threads: usize,
    cluster: &Cluster,
    resume: Option<&Path>,
    mut stage: Option<StageHooks>,
) -> Result<serde_json::Value, TrainError> {
    let started = Instant::now();
    let (rank, world) = (cluster.rank(), cluster.world_size());
    let distributed = world > 1;
    // SyncBatchNorm: every rank normalises by the whole step's batch
    let sync_stats = distributed && cfg.model.batch_norm && cfg.model.sync_batch_norm;
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
    let (device, table_device) = resolve_devices(cfg, cluster)?;
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
    let data = prepare_on_ranks(cluster, |log| prepare(&cfg.data, log))?;
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
    if cfg.train.restore_best && valid.is_none() {
        return Err(TrainError::Invalid(
            "train.restore_best needs a non-empty validation split".into(),
        ));
    }
    let groups = group_feature(cfg, &data)?;
    let schema = &data.meta.schema;
    let colls = model_collections(cfg, &data)?;
    if let Some(p) = &cfg.eval.relevant_positions {
        // read at the end; refused now rather than after training
        if !cfg.model.kind.is_sequence() || !p.is_file() {
            return Err(TrainError::Invalid(format!(
                "eval.relevant_positions = {}: {}",
                p.display(),
                if p.is_file() {
                    "only sequence models (din, twin, dare) retrieve behaviours"
                } else {
                    "no such file"
                }
            )));
        }
    }
    let (collisionless_bytes, budget_bytes) = (colls.collisionless_bytes, colls.budget_bytes);
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
        table_device,
        cluster,
        Some(&plans),
        stage.as_ref().map(|s| &s.setup),
    )?;
    let mut opt = match &bundle.optembed {
        // the thresholds take their own plain SGD
        Some(o) => DenseOptimizer::with_variables(
            bundle
                .vs
                .trainable_variables()
                .into_iter()
                .filter(|v| !o.is_threshold(v))
                .collect(),
            cfg.optimizer.clone(),
        ),
        None => DenseOptimizer::new(&bundle.vs, cfg.optimizer.clone()),
    };
    // OptEmbed's supernet learns thresholds: alpha * sum_f exp(-t_f) joins the loss
    let threshold_training = stage
        .as_ref()
        .filter(|s| matches!(s.setup.rows, crate::optembed::RowSelection::Thresholds))
        .map(|s| (s.setup.cfg.alpha, s.setup.cfg.threshold_lr));
    let slices = cfg.train.slices.max(1);
    if slices > 1 && distributed && slices != world {
        return Err(TrainError::Invalid(format!(
            "train.slices = {slices}: under mpirun it must be 1 or the number of ranks ({world})"
        )));
    }
    let sliced = slices > 1 && !distributed;
    let load_clock = Instant::now();
    let (mut position, mut validation, resumed_from) = match resume {
        Some(path) => {
            let (dir, m) = resume_from(path, cfg, &data, &mut bundle, &mut opt)?;
            say(&format!(
                "resumed from {} at step {} (epoch {}, {} steps into it; written by {} rank{}, now {world})",
                dir.display(),
                m.position.step,
                m.position.epoch + 1,
                m.position.steps_in_epoch,
                m.world_size,
                if m.world_size == 1 { "" } else { "s" }
            ));
            (m.position, m.validation, Some(dir))
        }
        None => (Position::default(), ValidationState::default(), None),
    };
    let resume_load_s = resume.map(|_| load_clock.elapsed().as_secs_f64());
    // rank 0 names the run folder, so every rank writes checkpoints to the same place
    let chosen = RunDir::default_path(cfg, name);
    let chosen = cluster.broadcast_from_root(chosen.to_string_lossy().as_bytes())?;
    let run_path = std::path::PathBuf::from(String::from_utf8_lossy(&chosen).into_owned());
    let mut run =
        RunDir::create(cfg, run_path, cluster.is_root(), resume.is_some()).map_err(|source| {
            TrainError::Io {
                path: "runs".into(),
                source,
            }
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
    let mut epochs_run = position.epoch;
    let (mut window_loss, mut window_rows, mut window_clock) = (0f64, 0usize, Instant::now());
    let mut stopped_early = false;
    let mut train_time = Duration::ZERO;
    let mut samples_this_run = 0u64;
    let mut checkpoints = Checkpoints::new(run.path.clone(), &data, &plans);
    if cfg.train.restore_best {
        if let Some(dir) = &resumed_from {
            checkpoints.best = best_before(dir, &validation);
        }
    }
    let limit_reached = |step: usize| cfg.train.max_steps > 0 && step >= cfg.train.max_steps;
    let ctx = Ctx {
        cfg,
        cluster,
        groups,
        progress: &progress,
    };
    let start_epoch = position.epoch;
    let start_step = position.step;

    'epochs: for epoch in start_epoch..cfg.train.epochs {
        if limit_reached(position.step) {
            break;
        }
        epochs_run = epoch + 1;
        if epoch != position.epoch {
            (position.epoch, position.steps_in_epoch) = (epoch, 0);
        }
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
                interleave_batches: false,
                // every step trains on the rows one process would, whatever the ranks
                split_batches: true,
                skip_batches: position.steps_in_epoch,
                group_feature: None,
            },
        );
        for Step {
            batch,
            global_rows,
            data_wait: t_data,
        } in LockstepBatches::new(stream, cluster, schema.categorical.len(), false)
        {
            // one process trains a step in `slices` slices as that many ranks would
            let pieces: Vec<Batch> = if sliced {
                let n = batch.len();
                (0..slices)
                    .map(|k| (n * k / slices, n * (k + 1) / slices))
                    .filter(|(a, b)| a < b)
                    .map(|(a, b)| batch.rows(a, b))
                    .collect()
            } else {
                vec![batch]
            };
            opt.zero_grad();
            let mut t_all_reduce = Duration::ZERO;
            let mut t_lookup = Duration::ZERO;
            let t0 = Instant::now();
            let mut lookups = Vec::with_capacity(pieces.len());
            // the logged loss is the main BCE (no regulariser, no auxiliary loss)
            let mut loss_v = 0.0;
            for piece in &pieces {
                // the random state of a step is a function of (seed, step), so a resumed
                // run draws what the uninterrupted one would (dropout), and every slice
                // what its rank would
                tch::manual_seed((cfg.seed as i64).wrapping_add(position.step as i64));
                let tl = Instant::now();
                let lk = bundle.lookup(piece, true, cluster)?;
                t_lookup += tl.elapsed();
                let stats = sync_stats.then(|| BatchStatsSync::new(cluster));
                let (logits, aux_logits) = bundle.train_logits(&lk, piece, stats.as_ref())?;
                let regulariser = match (threshold_training, &bundle.optembed) {
                    // each rank (slice) adds its share, so the summed gradient has it once
                    (Some((alpha, _)), Some(o)) => {
                        Some(o.regulariser(alpha / (world * pieces.len()) as f64))
                    }
                    _ => None,
                };
                // a share of the step's batch (ranks, slices) is its part of the mean
                let bce = |l: &tch::Tensor| {
                    if distributed || sliced {
                        bundle.loss_share(l, piece, global_rows)
                    } else {
                        bundle.loss(l, piece)
                    }
                };
                let mut loss = bce(&logits);
                loss_v += loss.double_value(&[]);
                if let Some(r) = &regulariser {
                    loss += r;
                }
                if let Some(a) = &aux_logits {
                    loss += bce(a);
                }
                // synchronised batch norm (several ranks only)
                if let Some(term) = stats
                    .as_ref()
                    .map(|s| s.cross_rank_term(&loss))
                    .transpose()?
                    .flatten()
                {
                    loss += term;
                }
                loss.backward();
                lookups.push(lk);
            }
            let t1 = t0 + t_lookup;
            if distributed {
                let mut global_loss = [loss_v as f32];
                let t = Instant::now();
                all_reduce_gradients(&bundle.vs, cluster, &mut global_loss, slices > 1)?;
                t_all_reduce = t.elapsed();
                loss_v = f64::from(global_loss[0]);
            }
            opt.step();
            if distributed {
                average_buffers(&bundle.vs, cluster)?;
            }
            if let (Some((_, lr)), Some(o)) = (threshold_training, bundle.optembed.as_mut()) {
                o.step_thresholds(lr);
            }
            let t2 = Instant::now();
            bundle.update_tables(lookups, cluster)?;
            let t3 = Instant::now();
            timing.data += t_data;
            timing.lookup += t1 - t0;
            timing.dense += t2 - t1 - t_all_reduce;
            timing.all_reduce += t_all_reduce;
            timing.sparse_update += t3 - t2;
            train_time += t_data + (t3 - t0);
            position.step += 1;
            position.steps_in_epoch += 1;
            position.samples_seen += global_rows as u64;
            samples_this_run += global_rows as u64;
            let step = position.step;
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
            let mut stop = false;
            if cfg.train.eval_every > 0 && step % cfg.train.eval_every == 0 {
                if let Some(v) = &valid {
                    let improved;
                    (stop, improved) =
                        validate(&ctx, &bundle, v, step, epoch, &mut run, &mut validation)?;
                    if improved && cfg.train.restore_best {
                        checkpoints.write_best(&ctx, &bundle, position, &validation)?;
                    }
                }
            }
            if cfg.train.checkpoint_every > 0 && step % cfg.train.checkpoint_every == 0 {
                checkpoints.write(&ctx, &bundle, &opt, position, &validation)?;
            }
            if stop {
                stopped_early = true;
                break 'epochs;
            }
            if limit_reached(step) {
                break 'epochs;
            }
        }
        if cfg.train.eval_every == 0 {
            if let Some(v) = &valid {
                let step = position.step;
                let (stop, improved) =
                    validate(&ctx, &bundle, v, step, epoch, &mut run, &mut validation)?;
                if improved && cfg.train.restore_best {
                    checkpoints.write_best(&ctx, &bundle, position, &validation)?;
                }
                if stop {
                    stopped_early = true;
                    break 'epochs;
                }
            }
        }
    }
    // at the end too, unless this run took no step (a resumed run that was already done)
    if cfg.train.checkpoint_every > 0
        && checkpoints.last_step != Some(position.step)
        && position.step > start_step
    {
        checkpoints.write(&ctx, &bundle, &opt, position, &validation)?;
    }
    // the best validation's model, if a later step is what the bundle holds now
    let restored_best_step = match checkpoints.best {
        Some((best_step, ref dir)) if cfg.train.restore_best => {
            if best_step != position.step {
                fill_saved(dir, &SavedFolder::read(dir)?, &mut bundle)?;
            }
            say(&format!(
                "testing the model of step {best_step}, the best validation AUC ({})",
                dir.display()
            ));
            Some(best_step)
        }
        _ => None,
    };
    let step = position.step;
    let samples = position.samples_seen;
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
    let (test_result, sequence_metrics) = match &test {
        Some(t) => {
            let target = retrieval_target(&bundle, t, cfg)?;
            let p = predict_split(
                &bundle,
                t,
                cfg.eval.batch_size,
                groups,
                target.as_ref(),
                cluster,
            )?;
            let extra = sequence_test_metrics(&bundle, t, &p);
            (Some(p.score(groups)), extra)
        }
        None => (None, json!({})),
    };
    let model_saved = cfg.train.save_model;
    if model_saved && !distributed {
        fn local(
            e: &crate::embedding::EmbeddingEngine,
        ) -> Result<&shardrec_tables::LocalEmbeddings, TrainError> {
            e.as_local().ok_or_else(|| {
                TrainError::Invalid("one process holds every table, yet one is sharded".into())
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
            None,
        )?;
    } else if model_saved {
        // no rank holds the whole tables: every rank writes its shards (the checkpoint
        // format without optimizer state), which `shardrec eval` reads under any ranks
        write_checkpoint(
            &run.model_dir(),
            &CheckpointSource {
                bundle: &bundle,
                dense_optimizer: None,
                position,
                validation: &validation,
                seed: cfg.seed,
                schema,
                vocab_sizes: &data.meta.vocab_sizes,
                vocab_file: &data.dir.join("vocab.bin"),
                model: &cfg.model,
                plans: &plans,
            },
            cluster,
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
        "best_valid_auc": validation.best_auc,
        "restored_best_step": restored_best_step,
        "train_samples_per_s": samples_this_run as f64 / train_time.as_secs_f64().max(1e-9),
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
        "collisionless_bytes": collisionless_bytes,
        "embedding_bytes_main": bundle.tables.layout().parameters() * 4,
        "budget_bytes": budget_bytes,
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
        "validations": validation.history,
        "checkpoints_written": checkpoints.written,
        "checkpoint_write_s": checkpoints.seconds,
        "last_checkpoint": checkpoints.last_dir.as_ref().map(|d| d.display().to_string()),
        "resumed_from": resumed_from.as_ref().map(|d| d.display().to_string()),
        "resume_load_s": resume_load_s,
    });
    if let Some(r) = &test_result {
        summary["rows_test"] = r.rows.into();
    }
    merge_json(&mut summary, sequence_metrics);
    if let Some(s) = stage.as_mut() {
        (s.after)(&bundle, &data, &run.path, &mut summary)?;
    }
    run.write_summary(&summary).map_err(run_io)?;
    Ok(summary)
}

/// What validation and checkpoints need from the run.
struct Ctx<'a> {
    cfg: &'a ExperimentConfig,
    cluster: &'a Cluster,
    groups: Option<usize>,
    progress: &'a Progress,
}

/// Evaluates on the validation split, logs it, updates early stopping; returns (stop,
/// this validation is the best so far). A step already validated (before the checkpoint
/// a run resumed from) is not repeated.
fn validate(
    ctx: &Ctx,
    bundle: &ModelBundle,
    split: &Arc<crate::data::PreparedSplit>,
    step: usize,
    epoch: usize,
    run: &mut RunDir,
    state: &mut ValidationState,
) -> Result<(bool, bool), TrainError> {
    if state.last_step == Some(step) {
        return Ok((false, false));
    }
    let cfg = ctx.cfg;
    let r = evaluate(bundle, split, cfg.eval.batch_size, ctx.groups, ctx.cluster)?;
    let mut line = eval_json("valid", &r);
    line["step"] = step.into();
    line["epoch"] = (epoch + 1).into();
    run.log_metrics(&line).map_err(|source| TrainError::Io {
        path: run.path.clone(),
        source,
    })?;
    ctx.progress.println(&format!(
        "[shardrec] step {step}: valid auc {} logloss {:.5}",
        r.auc.map_or("n/a".into(), |a| format!("{a:.5}")),
        r.logloss
    ));
    state
        .history
        .push(json!({ "step": step, "auc": r.auc, "logloss": r.logloss }));
    state.last_step = Some(step);
    let auc = r.auc.unwrap_or(f64::NAN);
    let improved = state.best_auc.is_none_or(|b| auc > b);
    if improved {
        state.best_auc = Some(auc);
        state.evals_without_gain = 0;
    } else {
        state.evals_without_gain += 1;
    }
    let stop = cfg.train.early_stopping_patience > 0
        && state.evals_without_gain >= cfg.train.early_stopping_patience;
    Ok((stop, improved))
}

/// The checkpoints a run writes.
struct Checkpoints<'a> {
    run: std::path::PathBuf,
    data: &'a PreparedDataset,
    plans: &'a CollectionPlans,
    written: usize,
    seconds: f64,
    last_step: Option<usize>,
    last_dir: Option<std::path::PathBuf>,
    /// `train.restore_best`: the step and folder of the best validation's model.
    best: Option<(usize, std::path::PathBuf)>,
}

impl<'a> Checkpoints<'a> {
    fn new(run: std::path::PathBuf, data: &'a PreparedDataset, plans: &'a CollectionPlans) -> Self {
        Self {
            run,
            data,
            plans,
            written: 0,
            seconds: 0.0,
            last_step: None,
            last_dir: None,
            best: None,
        }
    }

    /// What a checkpoint or the best model is written from (`opt`: None for weights only).
    fn source<'s>(
        &'s self,
        ctx: &'s Ctx,
        bundle: &'s ModelBundle,
        opt: Option<&'s DenseOptimizer>,
        position: Position,
        validation: &'s ValidationState,
        vocab_file: &'s Path,
    ) -> CheckpointSource<'s> {
        CheckpointSource {
            bundle,
            dense_optimizer: opt,
            position,
            validation,
            seed: ctx.cfg.seed,
            schema: &self.data.meta.schema,
            vocab_sizes: &self.data.meta.vocab_sizes,
            vocab_file,
            model: &ctx.cfg.model,
            plans: self.plans,
        }
    }

    /// Writes the model (weights only) to `<run>/best`, replacing the previous best
    /// (collective).
    fn write_best(
        &mut self,
        ctx: &Ctx,
        bundle: &ModelBundle,
        position: Position,
        validation: &ValidationState,
    ) -> Result<(), TrainError> {
        let t = Instant::now();
        let dir = self.run.join("best");
        let cleared = if ctx.cluster.is_root() && dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| TrainError::Io {
                path: dir.clone(),
                source,
            })
        } else {
            Ok(())
        };
        let what = format!("replacing the best model {}", dir.display());
        crate::checkpoint::agree(ctx.cluster, cleared, &what)?;
        let vocab = self.data.dir.join("vocab.bin");
        let src = self.source(ctx, bundle, None, position, validation, &vocab);
        write_checkpoint(&dir, &src, ctx.cluster)?;
        self.seconds += t.elapsed().as_secs_f64();
        self.best = Some((position.step, dir));
        Ok(())
    }

    /// Writes `<run>/checkpoints/step-N` (collective) and drops the oldest beyond
    /// `train.checkpoint_keep`.
    fn write(
        &mut self,
        ctx: &Ctx,
        bundle: &ModelBundle,
        opt: &DenseOptimizer,
        position: Position,
        validation: &ValidationState,
    ) -> Result<(), TrainError> {
        let t = Instant::now();
        let dir = checkpoint_dir(&self.run, position.step);
        let vocab = self.data.dir.join("vocab.bin");
        let src = self.source(ctx, bundle, Some(opt), position, validation, &vocab);
        let bytes = write_checkpoint(&dir, &src, ctx.cluster)?;
        if ctx.cluster.is_root() {
            prune_checkpoints(&self.run, ctx.cfg.train.checkpoint_keep)?;
        }
        let mut total = [bytes];
        ctx.cluster.all_reduce_sum(&mut total);
        let secs = t.elapsed().as_secs_f64();
        ctx.progress.println(&format!(
            "[shardrec] step {}: checkpoint {} ({:.1} MB from {} rank{}) in {secs:.2} s",
            position.step,
            dir.display(),
            total[0] as f64 / 1e6,
            ctx.cluster.world_size(),
            if ctx.cluster.world_size() == 1 {
                ""
            } else {
                "s"
            }
        ));
        self.written += 1;
        self.seconds += secs;
        self.last_step = Some(position.step);
        self.last_dir = Some(dir);
        Ok(())
    }
}

/// A resumed run's best model so far: the `best/` beside the checkpoint it resumed from
/// (`<run>/checkpoints/step-N`), if it is the best validation the checkpoint records
/// and no newer than it.
fn best_before(
    checkpoint: &Path,
    validation: &ValidationState,
) -> Option<(usize, std::path::PathBuf)> {
    let dir = checkpoint.parent()?.parent()?.join("best");
    let m = read_checkpoint(&dir).ok()?;
    (m.position.step <= validation.last_step.unwrap_or(0)
        && m.validation.best_auc == validation.best_auc)
        .then_some((m.position.step, dir))
}

/// Loads a checkpoint into freshly built tables, model and optimizer (under this job's
/// plan, whatever plan wrote it) after checking it belongs to this config and data.
fn resume_from(
    path: &Path,
    cfg: &ExperimentConfig,
    data: &PreparedDataset,
    bundle: &mut ModelBundle,
    opt: &mut DenseOptimizer,
) -> Result<(std::path::PathBuf, CheckpointManifest), TrainError> {
    let dir = find_checkpoint(path)?;
    let m = read_checkpoint(&dir)?;
    let differs = |what: &str| {
        TrainError::Invalid(format!(
            "{}: the checkpoint's {what} differs from this run's; resume with the config and data it was trained with",
            dir.display()
        ))
    };
    if !m.has_optimizer_state() {
        return Err(TrainError::Invalid(format!(
            "{}: a saved model (weights only) cannot resume training; give a checkpoint (train.checkpoint_every)",
            dir.display()
        )));
    }
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
    let saved = SavedTables::of_checkpoint(&dir, &m);
    for (name, engine) in [
        ("main", Some(&mut bundle.tables)),
        ("first_order", bundle.first_order.as_mut()),
    ] {
        let Some(engine) = engine else { continue };
        let spec = m.collections.iter().find(|c| c.name == name);
        if spec.map(|c| &c.spec) != Some(engine.layout().spec()) {
            return Err(differs(&format!("{name} tables")));
        }
        saved.fill(name, engine, true)?;
    }
    let steps = m.dense_optimizer_steps.unwrap_or(0);
    load_dense(&dir, &m.files, &mut bundle.vs, Some((opt, steps)))?;
    Ok((dir, m))
}

/// What a saved folder holds.
pub(crate) enum SavedFolder {
    /// A one-process run's model (whole tables).
    Model(Box<crate::model_io::ModelManifest>),
    /// A checkpoint, or a model written by several ranks (pieces of tables).
    Pieces(Box<CheckpointManifest>),
}

impl SavedFolder {
    /// Reads and checks the folder's manifest (and its files' sizes and checksums).
    pub(crate) fn read(dir: &Path) -> Result<Self, TrainError> {
        Ok(if is_checkpoint(dir) {
            Self::Pieces(Box::new(read_checkpoint(dir)?))
        } else {
            Self::Model(Box::new(read_manifest(dir)?))
        })
    }

    fn files(&self) -> &[crate::checked_file::SavedFile] {
        match self {
            Self::Model(m) => &m.files,
            Self::Pieces(m) => &m.files,
        }
    }
}

/// Fills a freshly built bundle's tables and dense parameters from a saved model (one
/// process's or several ranks') or a checkpoint already read, resharding to the bundle's
/// plan.
pub(crate) fn fill_saved(
    model_dir: &Path,
    saved: &SavedFolder,
    bundle: &mut ModelBundle,
) -> Result<(), TrainError> {
    let tables = match saved {
        SavedFolder::Model(m) => SavedTables::of_model(model_dir, m)?,
        SavedFolder::Pieces(m) => SavedTables::of_checkpoint(model_dir, m),
    };
    tables.fill("main", &mut bundle.tables, false)?;
    if let Some(f) = bundle.first_order.as_mut() {
        tables.fill("first_order", f, false)?;
    }
    load_dense(model_dir, saved.files(), &mut bundle.vs, None)
}

/// An OptEmbed supernet's or retrain's own `model/` holds full tables whose rows and
/// columns only count through the stage's masks; evaluated plainly it would predict
/// something else, so it is refused in favour of the compact export.
fn refuse_masked_optembed_model(model_dir: &Path) -> Result<(), TrainError> {
    let path = model_dir.join(crate::checkpoint::DENSE);
    let Ok(tensors) = tch::Tensor::read_safetensors(&path) else {
        return Ok(()); // load_dense reports an unreadable file, naming it
    };
    if tensors
        .iter()
        .any(|(name, _)| name.starts_with("optembed."))
    {
        return Err(TrainError::Invalid(format!(
            "{}: an OptEmbed stage's masked model; evaluate the compact export (<run>/retrain/model_compact), which applies the row mask and widths",
            model_dir.display()
        )));
    }
    Ok(())
}

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
        crate::checked_file::verify(model_dir, v)?;
    }
    let (device, table_device) = resolve_devices(cfg, cluster)?;
    let vocab = model_dir.join("vocab.bin");
    let data = prepare_on_ranks(cluster, |log| prepare_with_vocab(&cfg.data, &vocab, log))?;
    if &data.meta.schema != schema {
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
            TrainError::Invalid("no test (or validation) rows to evaluate; set data.test".into())
        })?;
    let layout = |name: &str| -> Result<Option<shardrec_tables::CollectionLayout>, TrainError> {
        collections
            .iter()
            .find(|c| c.name == name)
            .map(|c| shardrec_tables::CollectionLayout::new(c.spec.clone()))
            .transpose()
            .map_err(TrainError::from)
    };
    let main = layout("main")?.ok_or_else(|| {
        TrainError::Invalid(format!("{}: no main collection", model_dir.display()))
    })?;
    let first = layout("first_order")?;
    let table_optimizer = sparse_optimizer(&cfg.embedding.optimizer);
    let plans = resolve_plans(
        &cfg.sharding,
        &main,
        first.as_ref(),
        cluster.world_size(),
        &table_optimizer,
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
    let mut bundle = ModelBundle::new(
        main,
        first,
        table_optimizer,
        model_cfg,
        num_dense,
        device,
        table_device,
        cluster,
        Some(&plans),
        compact.as_ref(),
    )?;
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
