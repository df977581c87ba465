//! Fused tables' part in a training run, as a [`TrainHook`]: the next batch's lookups
//! planned on another thread while this step trains (TorchRec's sparse-dist pipeline:
//! deduplicate and plan on the host while the device computes, copy the arrays from
//! pinned memory without waiting), and the summary's `fused_tables` figures: how long
//! the steps waited for their plans (the device's wait for input) and what the device
//! caches did.

use crate::bundle::ModelBundle;
use crate::data::Batch;
use crate::train::TrainHook;
use crate::TrainError;

/// Plans the next batch ahead, reports the fused tables.
#[derive(Debug, Default)]
pub struct FusedTablesHook;

impl TrainHook for FusedTablesHook {
    fn next_batch(&mut self, bundle: &ModelBundle, next: Option<&Batch>) -> Result<(), TrainError> {
        match next {
            Some(next) => bundle.plan_ahead(next),
            None => Ok(()),
        }
    }

    fn after_training(
        &mut self,
        bundle: &ModelBundle,
        _data: &crate::data::PreparedDataset,
        _run: &std::path::Path,
        summary: &mut serde_json::Value,
    ) -> Result<(), TrainError> {
        if let (Some(report), Some(o)) = (bundle.fused_report(), summary.as_object_mut()) {
            o.insert("fused_tables".into(), report);
        }
        Ok(())
    }
}
