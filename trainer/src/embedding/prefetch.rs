//! Reading the file tier ahead (FBGEMM's prefetch pipeline): while step k computes, a
//! thread reads the rows step k+1 will look up into the tables' caches, so the step's
//! own lookups hit. It plugs into the training loop as a [`TrainHook`] told the next
//! batch before each step; the next step waits for it only if it is not done.
//!
//! The result does not depend on it: the cache holds the same values as the file, and
//! rows the current step uses are never evicted for a prefetch.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shardrec_tables::{FilePrefetcher, TableError};

use crate::bundle::ModelBundle;
use crate::data::Batch;
use crate::train::TrainHook;
use crate::TrainError;

/// The prefetch of the file tier's rows, a step ahead.
#[derive(Default)]
pub struct FileTierPrefetch {
    /// Made from the bundle at the first step (None before, or with no file tables).
    reader: Option<Option<Arc<FilePrefetcher>>>,
    pending: Option<JoinHandle<Result<u64, TableError>>>,
    /// Time the training thread waited for a prefetch to finish.
    waited: Duration,
    rows: u64,
}

impl FileTierPrefetch {
    /// Waits for the prefetch under way, if any.
    fn finish(&mut self) -> Result<(), TrainError> {
        if let Some(h) = self.pending.take() {
            let t = Instant::now();
            let read = h.join().unwrap_or_else(|_| {
                Err(TableError::Storage {
                    path: "file tier".into(),
                    reason: "the prefetch thread panicked".into(),
                })
            })?;
            self.waited += t.elapsed();
            self.rows += read;
        }
        Ok(())
    }
}

impl TrainHook for FileTierPrefetch {
    fn next_batch(&mut self, bundle: &ModelBundle, next: Option<&Batch>) -> Result<(), TrainError> {
        self.finish()?;
        // a sequence model's lookups take the newest behaviours only: not planned here
        let Some(next) = next.filter(|_| bundle.sequence.is_none()) else {
            return Ok(());
        };
        let reader = self
            .reader
            .get_or_insert_with(|| bundle.tables.file_prefetcher().map(Arc::new));
        let Some(reader) = reader.clone() else {
            return Ok(());
        };
        // planned on the prefetch thread too: the step's thread only copies the ids
        let ids = next.sparse.clone();
        self.pending = Some(std::thread::spawn(move || reader.prefetch(&ids)));
        Ok(())
    }

    fn after_training(
        &mut self,
        _bundle: &ModelBundle,
        _data: &crate::data::PreparedDataset,
        _run: &std::path::Path,
        summary: &mut serde_json::Value,
    ) -> Result<(), TrainError> {
        self.finish()?;
        if let Some(o) = summary.as_object_mut() {
            o.insert(
                "file_tier_prefetch_wait_s".into(),
                self.waited.as_secs_f64().into(),
            );
            o.insert("file_tier_prefetched_rows".into(), self.rows.into());
        }
        Ok(())
    }
}
