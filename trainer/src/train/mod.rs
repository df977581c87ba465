//! The training loop of one process (one rank of a job): set up (data, tables, model,
//! resume, run folder), steps with a loader thread feeding batches, validation and
//! checkpoints when due, then test, save and summary.
//!
//! Each step: lookup (plan the batch's ids, gather rows into the input tensor), dense
//! forward/backward and optimizer step (libtorch), sparse update (reduce each touched
//! row's gradient, apply the sparse optimizer to it). Each phase is timed; the summary
//! reports the breakdown. The same seed repeats a run bitwise in one process.
//!
//! Features plug in through [`TrainHook`]; the loop names none of them.

mod days_plot;
mod hook;
mod job;
mod summary;
mod trainer;
mod validation;

use std::path::Path;

pub use hook::TrainHook;
pub(crate) use job::day_config;
pub use job::{BatchSizes, StreamDay, TrainJob};
pub use summary::{RunSummary, Timing};
#[cfg(test)]
pub(crate) use trainer::dense_optimizer;
pub use trainer::Trainer;

use crate::cluster::Cluster;
use crate::config::ExperimentConfig;
use crate::job::with_threads;
use crate::TrainError;

/// Trains as configured on the ranks of `cluster` (one plain process, or the ranks
/// mpirun started), with `hooks`; returns the summary (rank 0 also writes it to the run
/// folder). With `resume`, training continues from a checkpoint (or a run folder's
/// newest one), under any number of ranks.
pub fn train_with_hooks(
    cfg: &ExperimentConfig,
    name: &str,
    cluster: &Cluster,
    resume: Option<&Path>,
    hooks: Vec<&mut dyn TrainHook>,
) -> Result<serde_json::Value, TrainError> {
    if let Some(path) = resume {
        // before the data is prepared, which may take long
        crate::persist::checkpoint::find_checkpoint(path)?;
    }
    // the file tier plugs in like any feature, whichever stage trains
    let read_ahead = cfg
        .embedding
        .storage
        .prefetch
        .unwrap_or(shardrec_tables::Exchange::world_size(cluster) == 1);
    let mut file_tier = crate::embedding::FileTierHook::new(cluster, read_ahead);
    let mut hooks: Vec<&mut dyn TrainHook> =
        hooks.into_iter().map(|h| h as &mut dyn TrainHook).collect();
    if cfg.embedding.may_use_file_tier() {
        hooks.push(&mut file_tier);
    }
    let mut fused = crate::embedding::FusedTablesHook;
    if cfg.fused_tables() {
        hooks.push(&mut fused);
    }
    with_threads(cfg, cluster.local_size(), |threads| {
        let (job, colls) = TrainJob::set_up(cfg, name, threads, cluster)?;
        let mut trainer = Trainer::set_up(&job, colls, resume, hooks)?;
        trainer.run()?;
        trainer.finish()
    })?
}
