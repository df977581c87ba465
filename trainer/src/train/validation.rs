//! Validation during training: evaluate on the validation split, log it, and keep the
//! early-stopping state.

use std::sync::Arc;

use serde_json::json;

use super::trainer::log_line;
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
        if self.validation.last_step == Some(step) {
            return Ok(Validated {
                stop: false,
                improved: false,
            });
        }
        let r = self.score(split)?;
        let line = json!({
            "valid_auc": r.auc, "valid_logloss": r.logloss, "valid_gauc": r.gauc,
            "valid_rows": r.rows, "step": step, "epoch": epoch + 1,
            "samples": self.position.samples_seen,
        });
        log_line(&mut self.run, &line)?;
        self.progress.println(&format!(
            "[shardrec] step {step}: valid auc {} logloss {:.5}",
            auc_text(r.auc),
            r.logloss
        ));
        let (cfg, state) = (self.job.cfg, &mut self.validation);
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

    /// The metrics of `split` under the bundle as it is now (collective).
    fn score(&self, split: &Arc<PreparedSplit>) -> Result<crate::evaluate::EvalResult, TrainError> {
        let batch = self.job.cfg.eval.batch_size;
        evaluate(
            &self.bundle,
            split,
            batch,
            self.job.groups,
            self.job.cluster,
        )
    }

    /// Progressive validation of a stream: day `day` scored by the model trained on the
    /// days before it, logged to `metrics.jsonl` (once, also across a resume).
    pub(super) fn evaluate_day(
        &mut self,
        day: usize,
        split: &Arc<PreparedSplit>,
    ) -> Result<(), TrainError> {
        let done = |v: &serde_json::Value| v["day"].as_u64() == Some(day as u64);
        if self.validation.days.iter().any(done) {
            return Ok(());
        }
        let file = &self.job.days[day].file;
        let r = self.score(split)?;
        let line = json!({
            "day": day, "file": file.display().to_string(), "progressive_auc": r.auc,
            "progressive_logloss": r.logloss, "rows": r.rows, "step": self.position.step,
            "samples": self.position.samples_seen,
            "rss_bytes": crate::run_dir::current_rss_bytes(),
            "anon_rss_bytes": crate::run_dir::anon_rss_bytes(),
        });
        log_line(&mut self.run, &line)?;
        self.progress.println(&format!(
            "[shardrec] day {day} ({}): progressive auc {} logloss {:.5}",
            file.display(),
            auc_text(r.auc),
            r.logloss
        ));
        self.validation.days.push(line);
        Ok(())
    }
}

/// An AUC for the log (none when the split has a single class).
fn auc_text(auc: Option<f64>) -> String {
    auc.map_or("n/a".into(), |a| format!("{a:.5}"))
}
