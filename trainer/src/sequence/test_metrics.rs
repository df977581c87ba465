//! The figures DARE's evaluation adds for sequence models (Feng et al. 2025, arXiv
//! 2410.02604): AUC averaged over target categories and, on generated data whose relevant
//! behaviours are known, the search stage's NDCG@K.

use std::sync::Arc;

use serde_json::json;

use super::retrieval::RetrievalTarget;
use crate::bundle::ModelBundle;
use crate::config::ExperimentConfig;
use crate::data::sequence_format::TARGET_CATEGORY;
use crate::data::PreparedSplit;
use crate::evaluate::SplitPredictions;
use crate::train::{TrainHook, TrainJob};
use crate::TrainError;
use shardrec_data::metrics::group_mean_auc;

/// What the test pass scores the search stage against: the side file of
/// `eval.relevant_positions`, for sequence models (none otherwise).
pub fn retrieval_target(
    bundle: &ModelBundle,
    split: &PreparedSplit,
    cfg: &ExperimentConfig,
) -> Result<Option<RetrievalTarget>, TrainError> {
    let (Some(seq), Some(path)) = (bundle.sequence, &cfg.eval.relevant_positions) else {
        return Ok(None);
    };
    RetrievalTarget::read(path, split.rows, cfg.model.top_k, seq.len).map(Some)
}

/// `category_auc`, and `retrieval_ndcg` / `retrieval_k` / `retrieval_samples` when the
/// predictions' pass scored the search stage ([`retrieval_target`]). Empty for other
/// models.
pub fn sequence_test_metrics(
    bundle: &ModelBundle,
    split: &Arc<PreparedSplit>,
    preds: &SplitPredictions,
) -> serde_json::Value {
    if bundle.sequence.is_none() {
        return json!({});
    }
    let categories: Vec<u64> = (0..split.rows)
        .map(|r| split.first_value(TARGET_CATEGORY, r))
        .collect();
    let mut out = json!({
        "category_auc": group_mean_auc(&preds.labels, &preds.preds, &categories),
    });
    if let Some(r) = &preds.retrieval {
        out["retrieval_ndcg"] = json!(r.ndcg);
        out["retrieval_k"] = json!(r.k);
        out["retrieval_samples"] = json!(r.samples);
    }
    out
}

/// The sequence models' part of a training run: the test pass scores the search stage
/// against `eval.relevant_positions` (read and checked before the first step) and adds
/// the category AUC (nothing for other models).
pub struct SequenceHook<'a> {
    cfg: &'a ExperimentConfig,
    target: Option<RetrievalTarget>,
}

impl<'a> SequenceHook<'a> {
    pub fn new(cfg: &'a ExperimentConfig) -> Self {
        Self { cfg, target: None }
    }
}

impl TrainHook for SequenceHook<'_> {
    fn before_training(&mut self, job: &TrainJob) -> Result<(), TrainError> {
        let (Some(path), Some(test)) = (&self.cfg.eval.relevant_positions, &job.test) else {
            return Ok(());
        };
        if !self.cfg.model.kind.is_sequence() {
            return Ok(()); // refused by the job's own checks
        }
        let m = &self.cfg.model;
        let target = RetrievalTarget::read(path, test.rows, m.top_k, m.sequence_len)?;
        self.target = Some(target);
        Ok(())
    }

    fn retrieval_target(
        &self,
        _bundle: &ModelBundle,
        _split: &PreparedSplit,
    ) -> Result<Option<RetrievalTarget>, TrainError> {
        Ok(self.target.clone())
    }

    fn test_metrics(
        &self,
        bundle: &ModelBundle,
        split: &Arc<PreparedSplit>,
        preds: &SplitPredictions,
    ) -> serde_json::Value {
        sequence_test_metrics(bundle, split, preds)
    }
}
