//! Batches for collective steps. With tables sharded over ranks, every lookup is an
//! all-to-all, so all ranks must take the same number of steps even though their data
//! slices may need different numbers of batches: each step the ranks agree (one small
//! all-reduce) on how many rows the step has in all, a rank whose slice is done feeds an
//! empty batch, and the stream ends when no rank has rows left. In one process this is
//! the loader stream itself.

use std::time::{Duration, Instant};

use shardrec_tables::Exchange;

use crate::cluster::Cluster;
use crate::data::{Batch, BatchStream};

/// One step's batch on this rank.
pub struct Step {
    pub batch: Batch,
    /// Rows of the step over all ranks.
    pub global_rows: usize,
    /// Time this rank waited for its loader.
    pub data_wait: Duration,
}

pub struct LockstepBatches<'a> {
    stream: BatchStream,
    cluster: &'a Cluster,
    num_categorical: usize,
    with_groups: bool,
}

impl<'a> LockstepBatches<'a> {
    pub fn new(
        stream: BatchStream,
        cluster: &'a Cluster,
        num_categorical: usize,
        with_groups: bool,
    ) -> Self {
        Self {
            stream,
            cluster,
            num_categorical,
            with_groups,
        }
    }
}

impl Iterator for LockstepBatches<'_> {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        let wait = Instant::now();
        let next = self.stream.next();
        let data_wait = wait.elapsed();
        let mut rows = [next.as_ref().map_or(0, Batch::len) as u64];
        if self.cluster.world_size() > 1 {
            self.cluster.all_reduce_sum(&mut rows);
        }
        if rows[0] == 0 {
            return None;
        }
        Some(Step {
            batch: next.unwrap_or_else(|| Batch::empty(self.num_categorical, self.with_groups)),
            global_rows: rows[0] as usize,
            data_wait,
        })
    }
}
