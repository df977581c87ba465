//! Offline evaluation of a split: predictions for every row, then exact AUC, logloss and
//! (when a grouping feature is configured) GAUC over all of them. Under mpirun each rank
//! predicts its slice of the split (the sharded lookups being collective, ranks step
//! together: [`LockstepBatches`]); labels, predictions and
//! groups of all ranks are then gathered, so the metrics are exact over the whole split,
//! never an average of per-rank figures.

use std::sync::Arc;

use serde::Serialize;

use crate::bundle::ModelBundle;
use crate::cluster::Cluster;
use crate::data::{spawn_loader, LoaderOptions, PreparedSplit};
use crate::lockstep::{LockstepBatches, Step};
use crate::metrics::{auc, gauc, logloss};
use crate::TrainError;
use shardrec_tables::Exchange;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalResult {
    pub rows: usize,
    pub auc: Option<f64>,
    pub logloss: f64,
    pub gauc: Option<f64>,
}

/// Predicts every row of `split` and scores the predictions (collective under mpirun;
/// every rank gets the same result).
pub fn evaluate(
    bundle: &ModelBundle,
    split: &Arc<PreparedSplit>,
    batch_size: usize,
    group_feature: Option<usize>,
    cluster: &Cluster,
) -> Result<EvalResult, TrainError> {
    let opts = LoaderOptions {
        batch_size,
        shuffle: false,
        seed: 0,
        epoch: 0,
        window: split.rows.max(1),
        queue: 2,
        shard: (cluster.rank(), cluster.world_size()),
        group_feature,
    };
    let mut labels = Vec::with_capacity(split.rows);
    let mut preds = Vec::with_capacity(split.rows);
    let mut groups = Vec::new();
    let stream = spawn_loader(split.clone(), opts);
    let steps = LockstepBatches::new(
        stream,
        cluster,
        split.num_categorical(),
        group_feature.is_some(),
    );
    for Step { batch, .. } in steps {
        preds.extend(bundle.predict(&batch, cluster)?);
        labels.extend_from_slice(&batch.labels);
        if let Some(g) = &batch.groups {
            groups.extend_from_slice(g);
        }
    }
    if cluster.world_size() > 1 {
        labels = cluster.all_gather(&labels)?;
        preds = cluster.all_gather(&preds)?;
        if group_feature.is_some() {
            groups = cluster.all_gather(&groups)?;
        }
    }
    Ok(EvalResult {
        rows: labels.len(),
        auc: auc(&labels, &preds),
        logloss: logloss(&labels, &preds),
        gauc: group_feature.and_then(|_| gauc(&labels, &preds, &groups)),
    })
}
