//! The set-up of a training run that comes before the model: batch sizes, the prepared
//! data and its splits, the checks that need them, the table collections and the
//! sharding plans. The [`super::Trainer`] borrows it for the whole run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use shardrec_tables::Exchange;

use crate::cluster::Cluster;
use crate::config::ExperimentConfig;
use crate::data::{prepare, PreparedDataset, PreparedSplit, SplitName};
use crate::embedding::Collections;
use crate::job::{group_feature, log, model_collections, prepare_on_ranks, JobError};
use crate::sharding_plan::{resolve_plans, CollectionPlans};
use crate::TrainError;

/// The batch of a step: over the whole job and on this rank.
#[derive(Debug, Clone, Copy)]
pub struct BatchSizes {
    pub global: usize,
    pub local: usize,
}

impl BatchSizes {
    /// `train.batch_size` is the whole job's batch unless `batch_size_per_rank`.
    pub fn of(cfg: &ExperimentConfig, world: usize) -> Result<Self, TrainError> {
        if cfg.train.batch_size_per_rank {
            return Ok(Self {
                global: cfg.train.batch_size * world,
                local: cfg.train.batch_size,
            });
        }
        if !cfg.train.batch_size.is_multiple_of(world) {
            return Err(JobError::BatchNotDivisible {
                batch: cfg.train.batch_size,
                ranks: world,
            }
            .into());
        }
        Ok(Self {
            global: cfg.train.batch_size,
            local: cfg.train.batch_size / world,
        })
    }
}

/// What a run trains on and where its tables go.
pub struct TrainJob<'a> {
    pub cfg: &'a ExperimentConfig,
    pub name: &'a str,
    pub cluster: &'a Cluster,
    pub threads: usize,
    pub started: Instant,
    /// The dense model's device and the tables'.
    pub devices: (tch::Device, tch::Device),
    pub batch: BatchSizes,
    pub data: PreparedDataset,
    pub train: Arc<PreparedSplit>,
    /// `train.mode = "stream"`: the days in order (the first is `train`); otherwise empty.
    pub days: Vec<StreamDay>,
    pub valid: Option<Arc<PreparedSplit>>,
    pub test: Option<Arc<PreparedSplit>>,
    /// The GAUC group feature (`eval.gauc_by`).
    pub groups: Option<usize>,
    pub plans: CollectionPlans,
}

impl<'a> TrainJob<'a> {
    /// Prepares the data (rank 0 first) and plans the tables; returns the job and the
    /// collections the bundle is built from.
    pub fn set_up(
        cfg: &'a ExperimentConfig,
        name: &'a str,
        threads: usize,
        cluster: &'a Cluster,
    ) -> Result<(Self, Collections), TrainError> {
        let started = Instant::now();
        let world = cluster.world_size();
        if world > 1 {
            // every rank, so a user (or a test) can find a rank's process on its node
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            log(&format!(
                "rank {} of {world}: pid {} on {}",
                cluster.rank(),
                std::process::id(),
                host.trim()
            ));
        }
        let devices = crate::job::resolve_devices(cfg, cluster)?;
        let batch = BatchSizes::of(cfg, world)?;
        let stream = cfg.train.mode == crate::config::TrainMode::Stream;
        let vocab = match stream {
            true => stream_vocabulary(cfg, cluster)?,
            false => None,
        };
        let data = match stream {
            true => prepare_day(cluster, &cfg.data, &cfg.data.train, true, vocab.as_deref())?,
            false => prepare_on_ranks(cluster, |log| prepare(&cfg.data, log))?,
        };
        let train = data.split(SplitName::Train).cloned().ok_or_else(|| {
            TrainError::from(JobError::EmptyTrainingSplit {
                file: cfg.data.train.clone(),
            })
        })?;
        let days = if stream {
            stream_days(cfg, cluster, &data, &train, vocab.as_deref())?
        } else {
            Vec::new()
        };
        let valid = data.split(SplitName::Valid).cloned();
        let test = data.split(SplitName::Test).cloned();
        check_validation_split(cfg, valid.is_some())?;
        let groups = group_feature(cfg, &data)?;
        let colls = model_collections(cfg, &data)?;
        check_relevant_positions(cfg)?;
        let plans = resolve_plans(
            &cfg.sharding,
            &cfg.embedding,
            &colls.main,
            colls.first_order.as_ref(),
            world,
            &cfg.embedding.optimizer.init(),
            &colls.dynamic,
        )?;
        if cluster.rank() == 0 {
            log_moved_tables(cfg, &colls.main, &plans);
        }
        let job = Self {
            cfg,
            name,
            cluster,
            threads,
            started,
            devices,
            batch,
            data,
            train,
            days,
            valid,
            test,
            groups,
            plans,
        };
        Ok((job, colls))
    }

    /// Steps of the whole run: every epoch's, or every day's in a stream, at most
    /// `train.max_steps`.
    pub fn total_steps(&self) -> usize {
        let steps = |rows: usize| rows.div_ceil(self.batch.global);
        let all = match self.days.is_empty() {
            true => steps(self.train.rows) * self.cfg.train.epochs,
            false => self.days.iter().map(|d| steps(d.rows)).sum(),
        };
        match self.cfg.train.max_steps {
            0 => all,
            limit => all.min(limit),
        }
    }

    /// The run folder rank 0 chose, on every rank (so all write to the same place).
    pub fn run_path(&self) -> Result<PathBuf, TrainError> {
        let chosen = crate::run_dir::RunDir::default_path(self.cfg, self.name);
        let chosen = self
            .cluster
            .broadcast_from_root(chosen.to_string_lossy().as_bytes())?;
        Ok(PathBuf::from(String::from_utf8_lossy(&chosen).into_owned()))
    }
}

/// The data options of one day of a stream: `file` as the whole training split (the
/// first day, `with_eval`, also brings `data.valid` and `data.test`).
pub(crate) fn day_config(
    data: &crate::config::DataConfig,
    file: &Path,
    with_eval: bool,
) -> crate::config::DataConfig {
    let mut d = data.clone();
    d.train = file.to_path_buf();
    d.more_train.clear();
    // in a stream, validation and test come from their own files, never from a day
    (d.split.valid, d.split.test) = (0.0, 0.0);
    if !with_eval {
        (d.valid, d.test) = (None, None);
        d.more_valid.clear();
        d.more_test.clear();
    }
    d
}

/// A stream whose features are not all dynamic: the vocabulary over every day (the
/// offline baseline a dynamic stream is compared with: it knows the days to come), as
/// the `vocab.bin` of all days prepared as one. None when every feature is dynamic.
fn stream_vocabulary(
    cfg: &ExperimentConfig,
    cluster: &Cluster,
) -> Result<Option<PathBuf>, TrainError> {
    let features = crate::data::RowParser::new(&cfg.data, &[])
        .map_or(usize::MAX, |p| p.schema().categorical.len());
    if cfg.data.keyed_features.len() == features {
        return Ok(None);
    }
    let mut all = cfg.data.clone();
    // every row of every day trains (no split, and so none of a tail split's limits)
    all.split.kind = crate::config::SplitKind::Random;
    (all.split.valid, all.split.test) = (0.0, 0.0);
    let union = prepare_on_ranks(cluster, |log| prepare(&all, log))?;
    Ok(Some(union.dir.join("vocab.bin")))
}

/// One day of a stream: its file, its rows, and its prepared folder (None: the first day,
/// the job's `train`). A day's columns are mapped only while it is evaluated and trained,
/// so a long stream does not keep every past day's pages resident.
#[derive(Debug, Clone)]
pub struct StreamDay {
    pub file: PathBuf,
    pub rows: usize,
    prepared: Option<PathBuf>,
}

impl StreamDay {
    /// The day's rows, opened now (the first day's are the job's training split).
    pub fn split(&self, job: &TrainJob) -> Result<Arc<PreparedSplit>, TrainError> {
        let Some(dir) = &self.prepared else {
            return Ok(job.train.clone());
        };
        PreparedDataset::open(dir)?
            .split(SplitName::Train)
            .cloned()
            .ok_or_else(|| {
                JobError::EmptyTrainingSplit {
                    file: self.file.clone(),
                }
                .into()
            })
    }
}

/// One day of a stream, prepared on its own (with `vocab` when given).
fn prepare_day(
    cluster: &Cluster,
    data: &crate::config::DataConfig,
    file: &Path,
    with_eval: bool,
    vocab: Option<&Path>,
) -> Result<PreparedDataset, TrainError> {
    let day = day_config(data, file, with_eval);
    prepare_on_ranks(cluster, |log| match vocab {
        Some(v) => crate::data::prepare_with_vocab(&day, v, log),
        None => prepare(&day, log),
    })
}

/// Every day of a stream, each prepared on its own: the first is `first`, the others
/// `data.more_train` in order. Without `vocab` every feature must be dynamic.
fn stream_days(
    cfg: &ExperimentConfig,
    cluster: &Cluster,
    data: &PreparedDataset,
    first: &Arc<PreparedSplit>,
    vocab: Option<&Path>,
) -> Result<Vec<StreamDay>, TrainError> {
    let names = &data.meta.schema.categorical;
    let unkeyed = names
        .iter()
        .enumerate()
        .find(|(f, _)| !data.meta.is_keyed(*f));
    if let (Some(c), None) = (unkeyed, vocab) {
        return Err(JobError::StreamNeedsDynamic {
            feature: c.1.name.clone(),
        }
        .into());
    }
    let mut days = vec![StreamDay {
        file: cfg.data.train.clone(),
        rows: first.rows,
        prepared: None,
    }];
    for file in &cfg.data.more_train {
        let prepared = prepare_day(cluster, &cfg.data, file, false, vocab)?;
        let rows = prepared.split(SplitName::Train).map_or(0, |s| s.rows);
        if rows == 0 {
            return Err(JobError::EmptyTrainingSplit { file: file.clone() }.into());
        }
        days.push(StreamDay {
            file: file.clone(),
            rows,
            prepared: Some(prepared.dir.clone()),
        });
    }
    Ok(days)
}

fn check_validation_split(cfg: &ExperimentConfig, has_valid: bool) -> Result<(), TrainError> {
    if cfg.train.early_stopping_patience > 0 && !has_valid {
        return Err(JobError::NeedsValidation {
            key: "train.early_stopping_patience",
        }
        .into());
    }
    if cfg.train.restore_best && !has_valid {
        return Err(JobError::NeedsValidation {
            key: "train.restore_best",
        }
        .into());
    }
    Ok(())
}

/// `eval.relevant_positions` is read at the end; refused now rather than after training.
fn check_relevant_positions(cfg: &ExperimentConfig) -> Result<(), TrainError> {
    let Some(p) = &cfg.eval.relevant_positions else {
        return Ok(());
    };
    if cfg.model.kind.is_sequence() && p.is_file() {
        return Ok(());
    }
    Err(JobError::RelevantPositions {
        path: p.clone(),
        why: if p.is_file() {
            "only sequence models (din, twin, dare) retrieve behaviours"
        } else {
            "no such file"
        },
    }
    .into())
}

/// Says which tables the planner moved to the file tier to meet the memory limit.
fn log_moved_tables(
    cfg: &ExperimentConfig,
    main: &shardrec_tables::CollectionLayout,
    plans: &CollectionPlans,
) {
    let configured = cfg.embedding.tier_request(main).file_tables;
    let moved: Vec<&str> = plans
        .main
        .tables
        .iter()
        .filter(|p| p.in_file_tier && !configured.contains(&p.table))
        .map(|p| p.table.as_str())
        .collect();
    if let (false, Some(dir)) = (moved.is_empty(), &cfg.embedding.storage.dir) {
        log(&format!(
            "sharding: {} table(s) moved to the file tier under {} to fit sharding.memory_limit_per_rank = {} bytes of RAM: {}",
            moved.len(),
            dir.display(),
            cfg.sharding.memory_limit_per_rank.unwrap_or(0),
            moved.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A day of a stream prepares that day alone: no further training files, no split
    /// taken from it, and, without evaluation, none of the validation or test files.
    #[test]
    fn a_day_config_holds_the_day_alone() {
        let text = "[data]\nformat = \"criteo\"\ntrain = [\"d0.tsv\", \"d1.tsv\"]\nvalid = [\"v0.tsv\", \"v1.tsv\"]\ntest = [\"t0.tsv\", \"t1.tsv\"]\n";
        let data = crate::config::DataConfig::from_toml_section(text).unwrap();
        assert_eq!((data.more_valid.len(), data.more_test.len()), (1, 1));
        let day = day_config(&data, Path::new("d1.tsv"), false);
        assert_eq!(day.train, Path::new("d1.tsv"));
        assert!(day.more_train.is_empty() && day.valid.is_none() && day.test.is_none());
        assert!(day.more_valid.is_empty() && day.more_test.is_empty());
        assert_eq!((day.split.valid, day.split.test), (0.0, 0.0));
        let with_eval = day_config(&data, Path::new("d0.tsv"), true);
        assert_eq!(with_eval.more_test, data.more_test);
    }
}
