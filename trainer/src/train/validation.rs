//! Validation during training: evaluate on the validation split, log it, and keep the
//! early-stopping state.

use std::sync::Arc;

use serde_json::json;

use super::Trainer;
use crate::data::PreparedSplit;
use crate::evaluate::evaluate;
use crate::TrainError;

/// What one validation found.
pub struct Validated {
    /// Early stopping's patience ran out.
    pub stop: bool,
    /// This validation is the best so far.
    pub improved: bool,
}

impl Trainer<'_, '_> {
    /// Evaluates on the validation split, logs it, updates early stopping. A step
    /// already validated (before the checkpoint a run resumed from) is not repeated.
    pub(super) fn validate(
        &mut self,
        split: &Arc<PreparedSplit>,
        epoch: usize,
    ) -> Result<Validated, TrainError> {
        let step = self.position.step;
        let (cfg, state) = (self.job.cfg, &mut self.validation);
        if state.last_step == Some(step) {
            return Ok(Validated {
                stop: false,
                improved: false,
            });
        }
        let r = evaluate(
            &self.bundle,
            split,
            cfg.eval.batch_size,
            self.job.groups,
            self.job.cluster,
        )?;
        let line = json!({
            "valid_auc": r.auc, "valid_logloss": r.logloss, "valid_gauc": r.gauc,
            "valid_rows": r.rows, "step": step, "epoch": epoch + 1,
        });
        self.run
            .log_metrics(&line)
            .map_err(|source| TrainError::Io {
                path: self.run.path.clone(),
                source,
            })?;
        self.progress.println(&format!(
            "[shardrec] step {step}: valid auc {} logloss {:.5}",
            r.auc.map_or("n/a".into(), |a| format!("{a:.5}")),
            r.logloss
        ));
        state
            .history
            .push(json!({ "step": step, "auc": r.auc, "logloss": r.logloss }));
        state.last_step = Some(step);
        let auc = r.auc.unwrap_or(f64::NAN);
        let improved = state.best_auc.is_none_or(|b| auc > b);
        if improved {
            state.best_auc = Some(auc);
            state.evals_without_gain = 0;
        } else {
            state.evals_without_gain += 1;
        }
        let stop = cfg.train.early_stopping_patience > 0
            && state.evals_without_gain >= cfg.train.early_stopping_patience;
        Ok(Validated { stop, improved })
    }
}
