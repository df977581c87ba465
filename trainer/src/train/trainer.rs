//! The trainer: a value built by [`Trainer::set_up`], driven by [`Trainer::run`] (epochs
//! of [`Trainer::step`], each followed by validation and checkpoints when due) and
//! closed by [`Trainer::finish`] (test, save, summary). Features reach it only through
//! [`TrainHook`]s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use shardrec_models::{BatchStatsSync, DenseOptimizer};
use shardrec_tables::{Exchange, ShardingKind};

use super::hook::TrainHook;
use super::job::TrainJob;
use super::summary::{RunSummary, Timing, PER_RANK_KEYS};
use crate::bundle::{BundleSpec, ModelBundle};
use crate::data::{spawn_loader, Batch, LoaderOptions, PreparedSplit};
use crate::dense_sync::{all_reduce_gradients, average_buffers};
use crate::embedding::Collections;
use crate::evaluate::predict_split;
use crate::job::{log, JobError};
use crate::lockstep::{LockstepBatches, Step};
use crate::persist::{best_before, resume_from, Position, RunCheckpoints, ValidationState};
use crate::progress::Progress;
use crate::run_dir::{peak_rss_bytes, RunDir};
use crate::sharding_plan::{write_plans, CollectionPlans};
use crate::TrainError;

/// Whether the run goes on after a step or an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    /// Early stopping's patience ran out.
    StopEarly,
    /// `train.max_steps` reached.
    Done,
}

/// The running loss of the last `log_every` steps.
#[derive(Debug)]
struct LossWindow {
    loss: f64,
    rows: usize,
    since: Instant,
}

/// A training run in progress.
pub struct Trainer<'j, 'h> {
    pub(super) job: &'j TrainJob<'j>,
    pub(super) hooks: Vec<&'h mut dyn TrainHook>,
    pub(super) bundle: ModelBundle,
    opt: DenseOptimizer,
    /// Steps are trained in this many slices (one process standing in for as many ranks).
    slices: usize,
    pub(super) run: RunDir,
    pub(super) progress: Progress,
    pub(super) checkpoints: RunCheckpoints<'j>,
    pub(super) position: Position,
    pub(super) validation: ValidationState,
    resumed_from: Option<PathBuf>,
    resume_load_s: Option<f64>,
    collisionless_bytes: u64,
    budget_bytes: Option<u64>,
    log_every: usize,
    timing: Timing,
    window: LossWindow,
    /// The mean training loss of the first and of the latest logged window.
    logged_loss: Option<(f64, f64)>,
    train_time: Duration,
    samples_this_run: u64,
    epochs_run: usize,
    stopped_early: bool,
    start_step: usize,
}

fn count_kind(plans: &CollectionPlans, kind: ShardingKind) -> usize {
    plans.main.tables.iter().filter(|t| t.kind == kind).count()
}

impl<'j, 'h> Trainer<'j, 'h> {
    /// Builds the bundle and its dense optimizer, resumes from a checkpoint when asked,
    /// creates the run folder.
    pub fn set_up(
        job: &'j TrainJob<'j>,
        colls: Collections,
        resume: Option<&std::path::Path>,
        mut hooks: Vec<&'h mut dyn TrainHook>,
    ) -> Result<Self, TrainError> {
        let (cfg, cluster) = (job.cfg, job.cluster);
        for hook in &mut hooks {
            hook.before_training(job)?;
        }
        let world = cluster.world_size();
        let (collisionless_bytes, budget_bytes) = (colls.collisionless_bytes, colls.budget_bytes);
        tch::manual_seed(cfg.seed as i64);
        let layer = hooks.iter().find_map(|h| h.embedding_layer());
        let mut bundle = BundleSpec {
            main: colls.main,
            first_order: colls.first_order,
            optimizer: cfg.embedding.optimizer.init(),
            model: &cfg.model,
            num_dense: job.data.meta.schema.dense.len(),
            device: job.devices.0,
            table_device: job.devices.1,
            fused: cfg.fused_tables(),
            plans: Some(&job.plans),
            layer,
            storage: Some(&cfg.embedding),
            dynamic: &colls.dynamic,
        }
        .init(cluster)?;
        let mut opt = dense_optimizer(&bundle, cfg);
        let slices = cfg.train.slices.max(1);
        if slices > 1 && world > 1 && slices != world {
            return Err(JobError::SlicesUnderMpi {
                slices,
                ranks: world,
            }
            .into());
        }
        let load_clock = Instant::now();
        let (position, validation, resumed_from) = match resume {
            Some(path) => {
                let (dir, m) = resume_from(
                    path,
                    cfg,
                    &job.data,
                    job.batch.global,
                    &mut bundle,
                    &mut opt,
                )?;
                if cluster.is_root() {
                    log(&format!(
                        "resumed from {} at step {} (epoch {}, {} steps into it; written by {} rank{}, now {world})",
                        dir.display(),
                        m.position.step,
                        m.position.epoch + 1,
                        m.position.steps_in_epoch,
                        m.world_size,
                        if m.world_size == 1 { "" } else { "s" }
                    ));
                }
                if m.position.epoch >= cfg.train.epochs && cluster.is_root() {
                    log(&format!(
                        "the checkpoint is past train.epochs = {}: no step is left to train; testing and saving its model",
                        cfg.train.epochs
                    ));
                }
                (m.position, m.validation, Some(dir))
            }
            None => (Position::default(), ValidationState::default(), None),
        };
        let resume_load_s = resume.map(|_| load_clock.elapsed().as_secs_f64());
        let run = RunDir::create(cfg, job.run_path()?, cluster.is_root(), resume.is_some())?;
        if cluster.is_root() {
            write_plans(&run.path.join("sharding_plan.toml"), &job.plans)?;
        }
        log_start(job, &run, &bundle);
        let steps_per_epoch = job.train.rows.div_ceil(job.batch.global);
        let total_steps = job.total_steps();
        let log_every = if cfg.train.log_every > 0 {
            cfg.train.log_every
        } else {
            (steps_per_epoch / 20).max(1)
        };
        let progress = Progress::new(total_steps as u64, log_every, cluster.is_root());
        let mut checkpoints = RunCheckpoints::new(
            run.path.clone(),
            cfg,
            cluster,
            &job.data,
            &job.plans,
            job.batch.global,
        );
        if cfg.train.restore_best {
            if let Some(dir) = &resumed_from {
                checkpoints.best = best_before(dir, &validation);
            }
        }
        Ok(Self {
            job,
            hooks,
            bundle,
            opt,
            slices,
            run,
            progress,
            checkpoints,
            epochs_run: position.epoch,
            start_step: position.step,
            position,
            validation,
            resumed_from,
            resume_load_s,
            collisionless_bytes,
            budget_bytes,
            log_every,
            timing: Timing::default(),
            window: LossWindow {
                loss: 0.0,
                rows: 0,
                since: Instant::now(),
            },
            logged_loss: None,
            train_time: Duration::ZERO,
            samples_this_run: 0,
            stopped_early: false,
        })
    }

    fn limit_reached(&self, step: usize) -> bool {
        self.job.cfg.train.max_steps > 0 && step >= self.job.cfg.train.max_steps
    }

    /// Passes the run makes: one an epoch, or in a stream one a day (what
    /// `Position::epoch` counts).
    fn passes(&self) -> usize {
        match self.job.days.len() {
            0 => self.job.cfg.train.epochs,
            days => days,
        }
    }

    /// The split pass `epoch` trains on: the training split, or that day's rows.
    fn pass_split(&self, epoch: usize) -> Result<Arc<PreparedSplit>, TrainError> {
        match self.job.days.get(epoch) {
            None => Ok(self.job.train.clone()),
            Some(day) => day.split(self.job),
        }
    }

    /// Trains the configured epochs or days (from where a resumed run stopped),
    /// validating and checkpointing as configured, until early stopping or
    /// `train.max_steps`. In a stream each day after the first is evaluated first.
    pub fn run(&mut self) -> Result<(), TrainError> {
        for epoch in self.position.epoch..self.passes() {
            if self.limit_reached(self.position.step) {
                break;
            }
            self.epochs_run = epoch + 1;
            if epoch != self.position.epoch {
                (self.position.epoch, self.position.steps_in_epoch) = (epoch, 0);
            }
            let split = self.pass_split(epoch)?;
            if !self.job.days.is_empty() && epoch > 0 && self.position.steps_in_epoch == 0 {
                self.evaluate_day(epoch, &split)?;
            }
            let flow = match self.train_pass(split, epoch)? {
                Flow::Continue => self.end_of_epoch(epoch)?,
                done => done,
            };
            match flow {
                Flow::Continue => {}
                Flow::StopEarly => {
                    self.stopped_early = true;
                    return Ok(());
                }
                Flow::Done => return Ok(()),
            }
        }
        Ok(())
    }

    /// One pass over `split` (an epoch or a day), from where the position says.
    fn train_pass(&mut self, split: Arc<PreparedSplit>, epoch: usize) -> Result<Flow, TrainError> {
        let cluster = self.job.cluster;
        let stream = spawn_loader(split, self.loader_options(epoch));
        let features = self.job.data.meta.schema.categorical.len();
        let mut steps = LockstepBatches::new(stream, cluster, features, false).peekable();
        while let Some(step) = steps.next() {
            let next = steps.peek().map(|s| &s.batch);
            for hook in &mut self.hooks {
                hook.next_batch(&self.bundle, next)?;
            }
            self.step(step, epoch)?;
            match self.after_step(epoch)? {
                Flow::Continue => {}
                stop => return Ok(stop),
            }
        }
        Ok(Flow::Continue)
    }

    fn loader_options(&self, epoch: usize) -> LoaderOptions {
        let (cfg, cluster) = (self.job.cfg, self.job.cluster);
        LoaderOptions {
            batch_size: self.job.batch.local,
            shuffle: cfg.train.shuffle,
            seed: cfg.seed,
            epoch: epoch as u64,
            window: cfg.train.shuffle_window,
            queue: cfg.train.loader_queue,
            shard: (cluster.rank(), cluster.world_size()),
            interleave_batches: false,
            // every step trains on the rows one process would, whatever the ranks
            split_batches: true,
            skip_batches: self.position.steps_in_epoch,
            group_feature: None,
        }
    }

    /// One process trains a step in `train.slices` slices as that many ranks would.
    fn pieces(&self, batch: Batch) -> Vec<Batch> {
        let slices = self.slices;
        if slices <= 1 || self.job.cluster.world_size() > 1 {
            return vec![batch];
        }
        let n = batch.len();
        (0..slices)
            .map(|k| (n * k / slices, n * (k + 1) / slices))
            .filter(|(a, b)| a < b)
            .map(|(a, b)| batch.rows(a, b))
            .collect()
    }

    /// One step: lookup, dense forward and backward of each slice, all-reduce and
    /// optimizer step of the dense part, sparse update of the tables.
    pub fn step(&mut self, step: Step, epoch: usize) -> Result<(), TrainError> {
        let Step {
            batch,
            global_rows,
            data_wait,
        } = step;
        let (cluster, world) = (self.job.cluster, self.job.cluster.world_size());
        let mut pieces = self.pieces(batch);
        self.opt.zero_grad();
        let t0 = Instant::now();
        // dynamic features: keys to rows (admission, eviction) before the lookups
        self.bundle
            .map_keys(&mut pieces, self.position.step as u64 + 1, cluster)?;
        let t_map = t0.elapsed();
        self.bundle.stage_tables(&pieces)?;
        let t_keys = t0.elapsed();
        let (lookups, mut loss_v, t_lookup) = self.forward_backward(&pieces, global_rows)?;
        let t1 = t0 + t_keys + t_lookup;
        let mut t_all_reduce = Duration::ZERO;
        if world > 1 {
            let mut global_loss = [loss_v as f32];
            let t = Instant::now();
            all_reduce_gradients(&self.bundle.vs, cluster, &mut global_loss, self.slices > 1)?;
            t_all_reduce = t.elapsed();
            loss_v = f64::from(global_loss[0]);
        }
        self.opt.step();
        if world > 1 {
            average_buffers(&self.bundle.vs, cluster)?;
        }
        if let Some(layer) = self.bundle.layer.as_mut() {
            layer.after_dense_step();
        }
        let t2 = Instant::now();
        self.bundle.update_tables(lookups, cluster)?;
        let t3 = Instant::now();
        let timing = &mut self.timing;
        timing.data += data_wait;
        timing.lookup += t1 - t0;
        if self.bundle.keys.is_some() {
            timing.key_mapping += t_map;
        }
        timing.dense += t2 - t1 - t_all_reduce;
        timing.all_reduce += t_all_reduce;
        timing.sparse_update += t3 - t2;
        self.train_time += data_wait + (t3 - t0);
        self.count_step(global_rows, loss_v, epoch)
    }

    /// Forward and backward of every slice of a step; returns the lookups (for the
    /// tables' update), the logged loss (the main BCE: no regulariser, no auxiliary
    /// loss) and the time spent in lookups.
    fn forward_backward(
        &self,
        pieces: &[Batch],
        global_rows: usize,
    ) -> Result<(Vec<crate::bundle::Lookups>, f64, Duration), TrainError> {
        let (cfg, cluster) = (self.job.cfg, self.job.cluster);
        let world = cluster.world_size();
        let shared = world > 1 || self.slices > 1;
        // SyncBatchNorm: every rank normalises by the whole step's batch
        let sync_stats = world > 1 && cfg.model.batch_norm && cfg.model.sync_batch_norm;
        let bundle = &self.bundle;
        let mut lookups = Vec::with_capacity(pieces.len());
        let (mut loss_v, mut t_lookup) = (0.0, Duration::ZERO);
        for piece in pieces {
            // the random state of a step is a function of (seed, step), so a resumed run
            // draws what the uninterrupted one would (dropout), and every slice what its
            // rank would
            tch::manual_seed((cfg.seed as i64).wrapping_add(self.position.step as i64));
            let tl = Instant::now();
            let lk = bundle.lookup(piece, true, cluster)?;
            t_lookup += tl.elapsed();
            let stats = sync_stats.then(|| BatchStatsSync::new(cluster));
            let (logits, aux_logits) = bundle.train_logits(&lk, piece, stats.as_ref())?;
            // each rank (slice) adds its share, so the summed gradient has it once
            let layer_term = bundle
                .layer
                .as_ref()
                .and_then(|l| l.loss_term(world * pieces.len()));
            // a share of the step's batch (ranks, slices) is its part of the mean
            let bce = |l: &tch::Tensor| {
                if shared {
                    bundle.loss_share(l, piece, global_rows)
                } else {
                    bundle.loss(l, piece)
                }
            };
            let mut loss = bce(&logits);
            loss_v += loss.double_value(&[]);
            if let Some(r) = &layer_term {
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
        Ok((lookups, loss_v, t_lookup))
    }

    /// Advances the position, checks the loss, logs the window's loss and speed.
    fn count_step(&mut self, rows: usize, loss: f64, epoch: usize) -> Result<(), TrainError> {
        self.position.step += 1;
        self.position.steps_in_epoch += 1;
        self.position.samples_seen += rows as u64;
        self.samples_this_run += rows as u64;
        let step = self.position.step;
        if !loss.is_finite() {
            return Err(TrainError::Diverged { loss, step });
        }
        let w = &mut self.window;
        w.loss += loss * rows as f64;
        w.rows += rows;
        self.progress.step(step, || {
            format!(
                "epoch {} loss {:.5}",
                epoch + 1,
                w.loss / w.rows.max(1) as f64
            )
        });
        if step.is_multiple_of(self.log_every) {
            let mean = w.loss / w.rows.max(1) as f64;
            let first = self.logged_loss.map_or(mean, |(first, _)| first);
            self.logged_loss = Some((first, mean));
            let secs = w.since.elapsed().as_secs_f64().max(1e-9);
            log_line(
                &mut self.run,
                &json!({
                    "step": step, "epoch": epoch + 1,
                    "samples": self.position.samples_seen,
                    "loss": w.loss / w.rows.max(1) as f64,
                    "samples_per_s": w.rows as f64 / secs,
                }),
            )?;
            *w = LossWindow {
                loss: 0.0,
                rows: 0,
                since: Instant::now(),
            };
        }
        Ok(())
    }

    /// Validation and checkpoints due after a step.
    fn after_step(&mut self, epoch: usize) -> Result<Flow, TrainError> {
        let cfg = self.job.cfg;
        let step = self.position.step;
        let mut stop = false;
        if cfg.train.eval_every > 0 && step.is_multiple_of(cfg.train.eval_every) {
            stop = self.validate_now(epoch)?;
        }
        if cfg.train.checkpoint_every > 0 && step.is_multiple_of(cfg.train.checkpoint_every) {
            self.write_checkpoint()?;
        }
        Ok(if stop {
            Flow::StopEarly
        } else if self.limit_reached(step) {
            Flow::Done
        } else {
            Flow::Continue
        })
    }

    fn write_checkpoint(&mut self) -> Result<(), TrainError> {
        self.bundle.write_back_tables()?;
        self.checkpoints.write(
            &self.bundle,
            &self.opt,
            self.position,
            &self.validation,
            &self.progress,
        )
    }

    /// Validation at the end of an epoch (when not every `train.eval_every` steps).
    fn end_of_epoch(&mut self, epoch: usize) -> Result<Flow, TrainError> {
        if self.job.cfg.train.eval_every == 0 && self.validate_now(epoch)? {
            return Ok(Flow::StopEarly);
        }
        Ok(Flow::Continue)
    }

    /// Validates (if there is a validation split), keeps the best model when it improved
    /// and `train.restore_best`; returns whether early stopping says stop.
    fn validate_now(&mut self, epoch: usize) -> Result<bool, TrainError> {
        let Some(split) = self.job.valid.clone() else {
            return Ok(false);
        };
        let v = self.validate(&split, epoch)?;
        if v.improved && self.job.cfg.train.restore_best {
            self.bundle.write_back_tables()?;
            self.checkpoints
                .write_best(&self.bundle, self.position, &self.validation)?;
        }
        Ok(v.stop)
    }

    /// After training: the last checkpoint, the best model back (`train.restore_best`),
    /// the test pass, the saved model, the summary (written to the run folder).
    pub fn finish(mut self) -> Result<serde_json::Value, TrainError> {
        let cfg = self.job.cfg;
        // at the end too, unless this run took no step (a resumed run that was already done)
        if cfg.train.checkpoint_every > 0
            && self.checkpoints.last_step != Some(self.position.step)
            && self.position.step > self.start_step
        {
            self.write_checkpoint()?;
        }
        let restored_best_step = self
            .checkpoints
            .restore_best(&mut self.bundle, self.position.step)?;
        if restored_best_step.is_some() {
            // the host tables hold the best model now; cached rows are stale
            self.bundle.forget_cached_rows();
        }
        self.progress.finish();
        self.timing.exchanges = self.bundle.exchange_times();
        let time_per_rank = self.time_per_rank()?;
        // before the test pass, so that a failure there still leaves the trained model
        if cfg.train.save_model {
            self.bundle.write_back_tables()?;
            self.checkpoints
                .save_model(&self.bundle, self.position, &self.validation)?;
        }
        let (test, mut extra) = self.test()?;
        let asked_for_test = cfg.data.test.is_some() || cfg.data.split.test > 0.0;
        let no_test_metric = asked_for_test && test.as_ref().and_then(|r| r.auc).is_none();
        let test_rows = test.as_ref().map_or(0, |r| r.rows);
        let warnings = self.warnings(test.as_ref());
        if !warnings.is_empty() {
            extra.insert("warnings".into(), json!(warnings));
        }
        let summary = self.summary(restored_best_step, test, time_per_rank, extra)?;
        let mut summary = summary.to_json();
        self.add_days(&mut summary);
        self.draw_curves();
        self.add_dynamic(&mut summary)?;
        for hook in &mut self.hooks {
            hook.after_training(&self.bundle, &self.job.data, &self.run.path, &mut summary)?;
        }
        self.run
            .write_summary(&summary)
            .map_err(|source| TrainError::Io {
                path: self.run.path.clone(),
                source,
            })?;
        if no_test_metric {
            // after the summary and model are written: nothing is lost, but the run failed
            return Err(JobError::NoTestMetric {
                rows: test_rows,
                run: self.run.path.clone(),
            }
            .into());
        }
        Ok(summary)
    }

    /// Signs that the run learned nothing, said on stderr (rank 0) and in the summary: a
    /// test AUC within 0.001 of chance, a training loss that ended more than 1% above
    /// where it began.
    fn warnings(&self, test: Option<&crate::evaluate::EvalResult>) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(auc) = test
            .and_then(|r| r.auc)
            .filter(|a| (a - 0.5).abs() <= 0.001)
        {
            out.push(format!(
                "test AUC {auc:.5} is within 0.001 of 0.5: the model ranks no better than chance (check the learning rates and the labels)"
            ));
        }
        // 1% above the start: a loss that hovers where it began is noise, not a blow-up
        if let Some((first, last)) = self
            .logged_loss
            .filter(|(first, last)| *last > first * 1.01)
        {
            out.push(format!(
                "the training loss rose from {first:.5} (first logged window) to {last:.5} (last): lower optimizer.lr or embedding.optimizer.lr"
            ));
        }
        if self.job.cluster.is_root() {
            for w in &out {
                log(&format!("warning: {w}"));
            }
        }
        out
    }

    /// Every rank's time breakdown (under mpirun; empty in one process).
    fn time_per_rank(&self) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, TrainError> {
        if self.job.cluster.world_size() == 1 {
            return Ok(Vec::new());
        }
        let all = self
            .job
            .cluster
            .all_gather(&self.timing.per_rank_seconds())?;
        Ok(all
            .chunks(PER_RANK_KEYS.len())
            .map(|c| {
                PER_RANK_KEYS
                    .iter()
                    .zip(c)
                    .map(|(k, v)| ((*k).to_string(), json!(v)))
                    .collect()
            })
            .collect())
    }

    /// Dynamic tables: what every rank's key maps hold and did, into the summary.
    fn add_dynamic(&self, summary: &mut serde_json::Value) -> Result<(), TrainError> {
        if self.bundle.keys.is_none() {
            return Ok(());
        }
        let tables = self
            .job
            .cluster
            .all_gather_json(&self.bundle.dynamic_report())?;
        summary["dynamic_tables"] = json!(tables);
        Ok(())
    }

    /// `curves.png` from the run's `metrics.jsonl` (rank 0); a run without a font or a
    /// point to draw only warns.
    fn draw_curves(&self) {
        if !self.job.cluster.is_root() {
            return;
        }
        let path = self.run.path.join("curves.png");
        let drawn = crate::curves::RunCurves::read(&self.run.path)
            .and_then(|c| crate::curves::draw(&path, &[c]));
        if let Err(why) = drawn {
            log(&format!("warning: {} not drawn: {why}", path.display()));
        }
    }

    /// A stream's progressive validation, day by day, into the summary and `days.png`.
    fn add_days(&self, summary: &mut serde_json::Value) {
        let days = &self.validation.days;
        if days.is_empty() {
            return;
        }
        summary["days"] = json!(days);
        if !self.job.cluster.is_root() {
            return;
        }
        let points: Vec<(u64, f64)> = days
            .iter()
            .filter_map(|d| Some((d["day"].as_u64()?, d["progressive_auc"].as_f64()?)))
            .collect();
        let path = self.run.path.join("days.png");
        if let Err(why) = super::days_plot::plot_days(&path, &points) {
            log(&format!("warning: {} not drawn: {why}", path.display()));
        }
    }

    /// The test split's metrics, and what the hooks add from its predictions.
    fn test(
        &self,
    ) -> Result<
        (
            Option<crate::evaluate::EvalResult>,
            serde_json::Map<String, serde_json::Value>,
        ),
        TrainError,
    > {
        let Some(t) = &self.job.test else {
            return Ok((None, serde_json::Map::new()));
        };
        let mut target = None;
        for hook in &self.hooks {
            if target.is_none() {
                target = hook.retrieval_target(&self.bundle, t)?;
            }
        }
        let p = predict_split(
            &self.bundle,
            t,
            self.job.cfg.eval.batch_size,
            self.job.groups,
            target.as_ref(),
            self.job.cluster,
        )?;
        let mut extra = serde_json::Map::new();
        for hook in &self.hooks {
            if let serde_json::Value::Object(m) = hook.test_metrics(&self.bundle, t, &p) {
                extra.extend(m);
            }
        }
        Ok((Some(p.score(self.job.groups)), extra))
    }

    fn summary(
        &self,
        restored_best_step: Option<usize>,
        test: Option<crate::evaluate::EvalResult>,
        time_per_rank: Vec<serde_json::Map<String, serde_json::Value>>,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<RunSummary, TrainError> {
        let (job, cfg, cluster) = (self.job, self.job.cfg, self.job.cluster);
        let bundle = &self.bundle;
        let (emb_bytes, state_bytes) = bundle.table_bytes();
        let mut per_rank_bytes = [emb_bytes as u64, state_bytes as u64];
        cluster.all_reduce_sum(&mut per_rank_bytes);
        let rss_per_rank = cluster.all_gather(&[peak_rss_bytes()])?;
        let params = bundle.tables.layout().parameters()
            + bundle
                .first_order
                .as_ref()
                .map_or(0, |f| f.layout().parameters());
        let data = &job.data;
        Ok(RunSummary {
            auc: test.as_ref().and_then(|r| r.auc),
            logloss: test.as_ref().map(|r| r.logloss),
            gauc: test.as_ref().and_then(|r| r.gauc),
            best_valid_auc: self.validation.best_auc,
            restored_best_step,
            train_samples_per_s: self.samples_this_run as f64
                / self.train_time.as_secs_f64().max(1e-9),
            rows_train: job.train.rows,
            rows_valid: job.valid.as_ref().map_or(0, |s| s.rows),
            rows_test: match &test {
                Some(r) => r.rows,
                None => job.test.as_ref().map_or(0, |s| s.rows),
            },
            bad_rows_skipped: data.meta.bad_rows.total(),
            bad_rows: data.meta.bad_rows.to_json(),
            peak_rss_bytes: rss_per_rank.iter().copied().max().unwrap_or(0),
            steps: self.position.step,
            epochs: self.epochs_run,
            stopped_early: self.stopped_early,
            samples_seen: self.position.samples_seen,
            embedding_params: params,
            collisionless_bytes: self.collisionless_bytes,
            embedding_bytes_main: bundle.tables.layout().parameters() * 4,
            budget_bytes: self.budget_bytes,
            embedding_bytes: per_rank_bytes[0],
            optimizer_state_bytes: per_rank_bytes[1],
            embedding_bytes_this_rank: emb_bytes,
            optimizer_state_bytes_this_rank: state_bytes,
            peak_rss_bytes_per_rank: rss_per_rank,
            world_size: cluster.world_size(),
            batch_size_per_rank: job.batch.local,
            batch_size: job.batch.global,
            model_saved: cfg.train.save_model,
            model: format!("{:?}", cfg.model.kind).to_lowercase(),
            threads: job.threads,
            openmp_spin_count: std::env::var("GOMP_SPINCOUNT").ok(),
            device: cfg.train.device.clone(),
            tables: bundle.tables.kind_name().into(),
            table_device: cfg.embedding.device.clone(),
            seed: cfg.seed,
            time: self.timing.to_json(),
            time_per_rank,
            wall_s: job.started.elapsed().as_secs_f64(),
            run_dir: self.run.path.display().to_string(),
            validations: self.validation.history.clone(),
            checkpoints_written: self.checkpoints.written,
            checkpoint_write_s: self.checkpoints.seconds,
            last_checkpoint: self
                .checkpoints
                .last_dir
                .as_ref()
                .map(|d| d.display().to_string()),
            resumed_from: self.resumed_from.as_ref().map(|d| d.display().to_string()),
            resume_load_s: self.resume_load_s,
            extra,
        })
    }
}

/// Appends `line` to the run's `metrics.jsonl`.
pub(super) fn log_line(run: &mut RunDir, line: &serde_json::Value) -> Result<(), TrainError> {
    run.log_metrics(line).map_err(|source| TrainError::Io {
        path: run.path.clone(),
        source,
    })
}

/// The dense optimizer, over every trainable variable but those a layer trains itself.
pub(crate) fn dense_optimizer(
    bundle: &ModelBundle,
    cfg: &crate::config::ExperimentConfig,
) -> DenseOptimizer {
    match &bundle.layer {
        Some(l) => DenseOptimizer::with_variables(
            bundle
                .vs
                .trainable_variables()
                .into_iter()
                .filter(|v| !l.owns_variable(v))
                .collect(),
            cfg.optimizer.clone(),
        ),
        None => DenseOptimizer::new(&bundle.vs, cfg.optimizer.clone()),
    }
}

/// The run's first line: where it writes, its data, its tables, its ranks.
fn log_start(job: &TrainJob, run: &RunDir, bundle: &ModelBundle) {
    let cluster = job.cluster;
    if !cluster.is_root() {
        return;
    }
    let world = cluster.world_size();
    let schema = &job.data.meta.schema;
    let plans = &job.plans;
    log(&format!(
        "run folder {}; {} train / {} valid / {} test rows; {} dense + {} categorical features; {} table parameters; {} threads{}",
        run.path.display(),
        job.train.rows,
        job.valid.as_ref().map_or(0, |s| s.rows),
        job.test.as_ref().map_or(0, |s| s.rows),
        schema.dense.len(),
        schema.categorical.len(),
        bundle.tables.layout().parameters(),
        job.threads,
        if world > 1 {
            format!(
                " per rank; {world} ranks ({} tables row-wise, {} table-wise, {} column-wise, {} data-parallel; plan in sharding_plan.toml), batch {} per rank ({} per step)",
                count_kind(plans, ShardingKind::RowWise),
                count_kind(plans, ShardingKind::TableWise),
                count_kind(plans, ShardingKind::ColumnWise),
                count_kind(plans, ShardingKind::DataParallel),
                job.batch.local,
                job.batch.global
            )
        } else {
            String::new()
        }
    ));
}
