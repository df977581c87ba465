//! What `shardrec train` runs: OptEmbed's stages when `[optembed]` is enabled, else the
//! training loop with the hooks the model needs (sequence models' retrieval). The one
//! place that knows both the loop and the features that plug into it.

use std::path::Path;

use crate::cluster::Cluster;
use crate::config::ExperimentConfig;
use crate::sequence::SequenceHook;
use crate::train::train_with_hooks;
use crate::TrainError;

/// Trains as configured on the ranks of `cluster`; returns the summary. See
/// [`train_with_hooks`].
pub fn train(
    cfg: &ExperimentConfig,
    name: &str,
    cluster: &Cluster,
    resume: Option<&Path>,
) -> Result<serde_json::Value, TrainError> {
    if cfg.optembed.as_ref().is_some_and(|o| o.enabled) {
        return crate::optembed::run_stages(cfg, name, cluster, resume, None);
    }
    let mut sequence = SequenceHook::new(cfg);
    train_with_hooks(cfg, name, cluster, resume, vec![&mut sequence])
}
