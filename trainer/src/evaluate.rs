//! Offline evaluation of a split: predictions for every row, then exact AUC, logloss and
//! (when a grouping feature is configured) GAUC over all of them. Under mpirun the
//! split's batches (the batches one process would make) are dealt to the ranks round
//! robin, so every row is predicted in the same batch whatever the number of ranks (the
//! sharded lookups being collective, ranks step together: [`LockstepBatches`]); labels,
//! predictions and groups of all ranks are then gathered and put back in the split's
//! order, so the metrics are exact over the whole split, never an average of per-rank
//! figures, and a model evaluates identically on 1, 2 or 4 ranks.

use std::sync::Arc;

use serde::Serialize;

use crate::bundle::ModelBundle;
use crate::cluster::Cluster;
use crate::data::{spawn_loader, LoaderOptions, PreparedSplit};
use crate::lockstep::{LockstepBatches, Step};
use crate::sequence::{RetrievalScore, RetrievalTally, RetrievalTarget};
use crate::TrainError;
use shardrec_data::metrics::{auc, gauc, logloss};
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
    Ok(
        predict_split(bundle, split, batch_size, group_feature, None, cluster)?
            .score(group_feature),
    )
}

/// Every row's label, prediction and group, in the split's row order.
#[derive(Debug, Clone, Default)]
pub struct SplitPredictions {
    pub labels: Vec<f32>,
    pub preds: Vec<f32>,
    pub groups: Vec<u64>,
    /// The search stage's NDCG@K, when the pass was given a [`RetrievalTarget`].
    pub retrieval: Option<RetrievalScore>,
}

impl SplitPredictions {
    pub fn score(&self, group_feature: Option<usize>) -> EvalResult {
        let (labels, preds) = (&self.labels, &self.preds);
        EvalResult {
            rows: labels.len(),
            auc: auc(labels, preds),
            logloss: logloss(labels, preds),
            gauc: group_feature.and_then(|_| gauc(labels, preds, &self.groups)),
        }
    }
}

/// The loader of an evaluation pass: the split in order, cut into the batches one
/// process would make, rank `r` taking batches `r, r + world, ...`.
pub fn evaluation_loader(
    split: &PreparedSplit,
    batch_size: usize,
    group_feature: Option<usize>,
    cluster: &Cluster,
) -> LoaderOptions {
    LoaderOptions {
        batch_size,
        shuffle: false,
        seed: 0,
        epoch: 0,
        window: split.rows.max(1),
        queue: 2,
        shard: (cluster.rank(), cluster.world_size()),
        interleave_batches: true,
        split_batches: false,
        skip_batches: 0,
        group_feature,
    }
}

/// Predicts every row of `split` (collective under mpirun; every rank gets all of them,
/// in the split's order). With `retrieval`, the same lookups also score a sequence
/// model's search stage.
pub fn predict_split(
    bundle: &ModelBundle,
    split: &Arc<PreparedSplit>,
    batch_size: usize,
    group_feature: Option<usize>,
    retrieval: Option<&RetrievalTarget>,
    cluster: &Cluster,
) -> Result<SplitPredictions, TrainError> {
    let opts = evaluation_loader(split, batch_size, group_feature, cluster);
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
    let (rank, world) = (cluster.rank(), cluster.world_size());
    let mut tally = RetrievalTally::default();
    let mut own = 0usize;
    for Step { batch, .. } in steps {
        let (p, found) =
            bundle.predict_and_retrieve(&batch, retrieval.map(|r| r.k as i64), cluster)?;
        preds.extend(p);
        if let (Some(target), Some(found)) = (retrieval, found) {
            if !batch.is_empty() {
                // this rank's batches are batches rank, rank + world, ... of the split
                tally.add(target, (rank + world * own) * batch_size, &found);
                own += 1;
            }
        }
        labels.extend_from_slice(&batch.labels);
        if let Some(g) = &batch.groups {
            groups.extend_from_slice(g);
        }
    }
    let retrieval = retrieval.map(|t| tally.finish(t, cluster));
    if world > 1 {
        let rows = split.rows;
        labels = to_split_order(&cluster.all_gather(&labels)?, rows, batch_size, world);
        preds = to_split_order(&cluster.all_gather(&preds)?, rows, batch_size, world);
        if group_feature.is_some() {
            groups = to_split_order(&cluster.all_gather(&groups)?, rows, batch_size, world);
        }
    }
    Ok(SplitPredictions {
        labels,
        preds,
        groups,
        retrieval,
    })
}

/// Values gathered in rank order, rank `r` holding batches `r, r + world, ...` of a split
/// of `rows` rows cut into batches of `batch`, put back in the split's row order.
fn to_split_order<T: Copy>(gathered: &[T], rows: usize, batch: usize, world: usize) -> Vec<T> {
    let batch = batch.max(1);
    let batches = rows.div_ceil(batch);
    let len = |b: usize| batch.min(rows - b * batch);
    let mut start = vec![0usize; world + 1];
    for b in 0..batches {
        start[b % world + 1] += len(b);
    }
    for r in 0..world {
        start[r + 1] += start[r];
    }
    let mut cursor = start[..world].to_vec();
    let mut out = Vec::with_capacity(gathered.len());
    for b in 0..batches {
        let r = b % world;
        out.extend_from_slice(&gathered[cursor[r]..cursor[r] + len(b)]);
        cursor[r] += len(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_split_order;

    #[test]
    fn round_robin_batches_go_back_to_row_order() {
        // 11 rows, batches of 3: [0,1,2] [3,4,5] [6,7,8] [9,10]; 3 ranks hold batches
        // {0, 3}, {1}, {2}
        let gathered = [0, 1, 2, 9, 10, 3, 4, 5, 6, 7, 8];
        assert_eq!(
            to_split_order(&gathered, 11, 3, 3),
            (0..11).collect::<Vec<_>>()
        );
        let one: Vec<i32> = (0..7).collect();
        assert_eq!(to_split_order(&one, 7, 2, 1), one);
    }
}
