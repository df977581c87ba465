//! How a feature plugs into the training loop without the loop knowing it: OptEmbed's
//! stages (a layer between tables and model, and work on the trained model), the
//! sequence models' retrieval (what the test pass scores besides the clicks).

use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use super::job::TrainJob;
use crate::bundle::{EmbeddingLayerSpec, ModelBundle};
use crate::data::{PreparedDataset, PreparedSplit};
use crate::evaluate::SplitPredictions;
use crate::sequence::RetrievalTarget;
use crate::TrainError;

/// What a feature adds to a training run. Every method has a default that adds nothing.
pub trait TrainHook: Send {
    /// Checks and reads what the hook needs from the job before the first step, so a bad
    /// input fails the run before it trains rather than after.
    fn before_training(&mut self, _job: &TrainJob) -> Result<(), TrainError> {
        Ok(())
    }

    /// The batch the step after this one trains on (None when this step is the epoch's
    /// last), told before this step runs: a hook can start reading what it will need.
    fn next_batch(
        &mut self,
        _bundle: &ModelBundle,
        _next: Option<&crate::data::Batch>,
    ) -> Result<(), TrainError> {
        Ok(())
    }

    /// The layer between the tables and the dense model the run's bundle is built with.
    fn embedding_layer(&self) -> Option<&dyn EmbeddingLayerSpec> {
        None
    }

    /// What the test pass should score besides the predictions (a sequence model's
    /// search against known relevant behaviours).
    fn retrieval_target(
        &self,
        _bundle: &ModelBundle,
        _split: &PreparedSplit,
    ) -> Result<Option<RetrievalTarget>, TrainError> {
        Ok(None)
    }

    /// Figures the hook adds to the summary from the test predictions.
    fn test_metrics(
        &self,
        _bundle: &ModelBundle,
        _split: &Arc<PreparedSplit>,
        _preds: &SplitPredictions,
    ) -> serde_json::Value {
        json!({})
    }

    /// Work on the trained (and tested) bundle before the summary is written, adding to
    /// it; collective under mpirun (every rank calls it).
    fn after_training(
        &mut self,
        _bundle: &ModelBundle,
        _data: &PreparedDataset,
        _run: &Path,
        _summary: &mut serde_json::Value,
    ) -> Result<(), TrainError> {
        Ok(())
    }
}
