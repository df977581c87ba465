//! The figures DARE's evaluation adds for sequence models (Feng et al. 2025, arXiv
//! 2410.02604): AUC averaged over target categories and, on generated data whose relevant
//! behaviours are known, the search stage's NDCG@K.

use std::sync::Arc;

use serde_json::json;

use super::retrieval::RelevantPositions;
use crate::bundle::ModelBundle;
use crate::cluster::Cluster;
use crate::config::ExperimentConfig;
use crate::data::sequence_format::TARGET_CATEGORY;
use crate::data::PreparedSplit;
use crate::evaluate::SplitPredictions;
use crate::metrics::group_mean_auc;
use crate::TrainError;

/// `category_auc`, and `retrieval_ndcg` / `retrieval_k` / `retrieval_samples` when
/// `eval.relevant_positions` is set (collective under mpirun). Empty for other models.
pub fn sequence_test_metrics(
    bundle: &ModelBundle,
    split: &Arc<PreparedSplit>,
    preds: &SplitPredictions,
    cfg: &ExperimentConfig,
    cluster: &Cluster,
) -> Result<serde_json::Value, TrainError> {
    if bundle.sequence.is_none() {
        return Ok(json!({}));
    }
    let categories: Vec<u64> = (0..split.rows)
        .map(|r| {
            split
                .cat_ids(TARGET_CATEGORY, r)
                .first()
                .map_or(0, |&c| u64::from(c))
        })
        .collect();
    let mut out = json!({
        "category_auc": group_mean_auc(&preds.labels, &preds.preds, &categories),
    });
    if let Some(path) = &cfg.eval.relevant_positions {
        let relevant = RelevantPositions::read(path)?;
        let r = bundle.retrieval_ndcg(
            split,
            &relevant,
            cfg.eval.batch_size,
            cfg.model.top_k,
            cluster,
        )?;
        out["retrieval_ndcg"] = json!(r.ndcg);
        out["retrieval_k"] = json!(r.k);
        out["retrieval_samples"] = json!(r.samples);
    }
    Ok(out)
}
