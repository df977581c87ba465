//! The file tier's part in a training run, as a [`TrainHook`]: reading ahead (FBGEMM's
//! prefetch pipeline), and its figures in the summary.
//!
//! While step k computes, a thread reads the rows step k+1 will look up into the
//! tables' caches, so the step's own lookups hit. The hook is told the next batch before
//! each step; the next step waits for the thread only if it is not done. In one process
//! the thread plans the batch itself; under several ranks the ranks first exchange the
//! next batch's ids (one small all-to-all on the step's thread), so each owner reads the
//! rows every rank will ask it for.
//!
//! The result does not depend on it: the cache holds the same values as the file, and
//! rows the current step uses are never evicted for a prefetch.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shardrec_tables::{Exchange, FilePrefetcher, TableError};

use crate::bundle::ModelBundle;
use crate::cluster::Cluster;
use crate::data::Batch;
use crate::train::TrainHook;
use crate::TrainError;

/// The file tier's hook: the prefetch of its rows a step ahead, and the summary's
/// `file_tier` figures of every rank.
pub struct FileTierHook<'c> {
    cluster: &'c Cluster,
    /// Whether to read ahead (`embedding.storage.prefetch`).
    read_ahead: bool,
    /// Made from the bundle at the first step (None before, or with no file tables).
    reader: Option<Option<Arc<FilePrefetcher>>>,
    pending: Option<JoinHandle<Result<u64, TableError>>>,
    /// Time the training thread waited for a prefetch to finish.
    waited: Duration,
    rows: u64,
}

impl<'c> FileTierHook<'c> {
    pub fn new(cluster: &'c Cluster, read_ahead: bool) -> Self {
        Self {
            cluster,
            read_ahead,
            reader: None,
            pending: None,
            waited: Duration::ZERO,
            rows: 0,
        }
    }

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

impl TrainHook for FileTierHook<'_> {
    fn next_batch(&mut self, bundle: &ModelBundle, next: Option<&Batch>) -> Result<(), TrainError> {
        self.finish()?;
        // a sequence model's lookups take the newest behaviours only: not planned here
        let Some(next) = next.filter(|_| self.read_ahead && bundle.sequence.is_none()) else {
            return Ok(());
        };
        // under several ranks the owners learn their rows from an exchange of the ids
        if let Some(wanted) = bundle.tables.file_rows_wanted(self.cluster, &next.sparse)? {
            self.pending = Some(std::thread::spawn(move || {
                wanted
                    .iter()
                    .try_fold(0, |n, (file, rows)| Ok(n + file.prefetch(rows)?))
            }));
            return Ok(());
        }
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
        bundle: &ModelBundle,
        _data: &crate::data::PreparedDataset,
        _run: &std::path::Path,
        summary: &mut serde_json::Value,
    ) -> Result<(), TrainError> {
        self.finish()?;
        let mut mine = bundle.tables.tier_reports(self.cluster.rank());
        // the read-ahead serves all of a rank's tables at once: its wait is the rank's
        for entry in mine.iter_mut().filter_map(|e| e.as_object_mut()) {
            entry.insert(
                "rank_prefetch_wait_s".into(),
                self.waited.as_secs_f64().into(),
            );
        }
        let tiers = self.cluster.all_gather_json(&mine)?;
        if let Some(o) = summary.as_object_mut() {
            if !tiers.is_empty() {
                o.insert("file_tier".into(), tiers.into());
            }
            o.insert(
                "file_tier_prefetch_wait_s".into(),
                self.waited.as_secs_f64().into(),
            );
            o.insert("file_tier_prefetched_rows".into(), self.rows.into());
        }
        Ok(())
    }
}
