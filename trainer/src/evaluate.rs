//! Offline evaluation of a split: predictions for every row, then exact AUC, logloss and
//! (when a grouping feature is configured) GAUC over all of them.

use std::sync::Arc;

use serde::Serialize;

use crate::bundle::ModelBundle;
use crate::data::{spawn_loader, LoaderOptions, PreparedSplit};
use crate::metrics::{auc, gauc, logloss};
use crate::TrainError;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalResult {
    pub rows: usize,
    pub auc: Option<f64>,
    pub logloss: f64,
    pub gauc: Option<f64>,
}

/// Predicts every row of `split` and scores the predictions.
pub fn evaluate(
    bundle: &ModelBundle,
    split: &Arc<PreparedSplit>,
    batch_size: usize,
    group_feature: Option<usize>,
) -> Result<EvalResult, TrainError> {
    let opts = LoaderOptions {
        batch_size,
        shuffle: false,
        seed: 0,
        epoch: 0,
        window: split.rows.max(1),
        queue: 2,
        shard: (0, 1),
        group_feature,
    };
    let mut labels = Vec::with_capacity(split.rows);
    let mut preds = Vec::with_capacity(split.rows);
    let mut groups = Vec::new();
    for batch in spawn_loader(split.clone(), opts) {
        preds.extend(bundle.predict(&batch)?);
        labels.extend_from_slice(&batch.labels);
        if let Some(g) = &batch.groups {
            groups.extend_from_slice(g);
        }
    }
    Ok(EvalResult {
        rows: labels.len(),
        auc: auc(&labels, &preds),
        logloss: logloss(&labels, &preds),
        gauc: group_feature.and_then(|_| gauc(&labels, &preds, &groups)),
    })
}
