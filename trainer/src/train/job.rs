//! The set-up of a training run that comes before the model: batch sizes, the prepared
//! data and its splits, the checks that need them, the table collections and the
//! sharding plans. The [`super::Trainer`] borrows it for the whole run.

use std::path::PathBuf;
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
        let data = prepare_on_ranks(cluster, |log| prepare(&cfg.data, log))?;
        let train = data.split(SplitName::Train).cloned().ok_or_else(|| {
            TrainError::from(JobError::EmptyTrainingSplit {
                file: cfg.data.train.clone(),
            })
        })?;
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
            valid,
            test,
            groups,
            plans,
        };
        Ok((job, colls))
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
