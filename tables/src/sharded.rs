//! One rank's part of a collection whose tables are spread over the ranks of a job by a
//! [`ShardingPlan`], and the two exchanges of a step (as TorchRec's sharded
//! `EmbeddingBagCollection`, with the dedup of its input-dist):
//!
//! - forward: the batch's distinct rows per table are split by owner; each rank sends
//!   every owner the rows it needs (one all-to-all of ids), owners gather them from their
//!   shards and send the values back (one all-to-all of floats);
//! - backward: each row's gradient, already summed over this rank's samples, goes back to
//!   its owner (one all-to-all of floats; data-parallel tables add one of ids, since every
//!   replica applies every rank's gradients); the owner sums the gradients of a row over
//!   the sending ranks in rank order and applies the sparse optimizer once per step.
//!
//! Only the owner holds a shard's rows and optimizer state. With one rank this computes
//! exactly what [`crate::LocalEmbeddings`] does; with several, the same up to the order of
//! floating-point sums across ranks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::collection::CollectionLayout;
use crate::exchange::Exchange;
use crate::lookup_plan::LookupPlan;
use crate::optimizer::{OptimizerKind, SparseOptimizer};
use crate::row_ops::{assemble_output, reduce_row_gradients, sum_in_source_order};
use crate::shard::{TableShard, TableStorage};
use crate::sharding::{Bucketized, ShardingKind, ShardingPlan};
use crate::{KeyedJaggedIds, TableError};

/// File-tier shards held here and the local rows of each to read ahead.
pub type FileRowsWanted = Vec<(std::sync::Arc<crate::FileRows>, Vec<u64>)>;

/// Time spent waiting in the exchanges, summed over steps.
#[derive(Debug, Default)]
struct ExchangeClock {
    ids_ns: AtomicU64,
    values_ns: AtomicU64,
    gradients_ns: AtomicU64,
}

fn timed<T>(counter: &AtomicU64, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    counter.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    out
}

/// Seconds spent in each exchange since the tables were built.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExchangeTimes {
    /// Forward: ids to their owners.
    pub ids: Duration,
    /// Forward: rows back from their owners.
    pub values: Duration,
    /// Backward: row gradients to their owners.
    pub gradients: Duration,
}

/// The tables' shards this rank owns.
#[derive(Debug)]
pub struct ShardedEmbeddings {
    layout: CollectionLayout,
    plan: ShardingPlan,
    optimizer: SparseOptimizer,
    rank: usize,
    dims: Vec<usize>,
    /// `shards[t]`: this rank's shard of table `t`, if it holds one.
    shards: Vec<Option<TableShard>>,
    clock: ExchangeClock,
    /// Serves and updates the held shards a step at a time (device tables fused per
    /// width); None: shard by shard.
    batched: Option<Box<dyn BatchedRows>>,
}

/// A rank's held shards served and updated in one batch a step (device tables fused
/// per width): one copy of rows out and one of gradients in per step, where serving
/// shard by shard copies once per shard and asking rank. Under mpirun with GPUs the rows
/// and gradients then cross the bus once each way and travel between ranks in host
/// buffers (MPICH here is not CUDA-aware).
pub trait BatchedRows: Send + Sync + std::fmt::Debug {
    /// The rows each request (held table, local rows) asks for, concatenated in order.
    fn gather(&self, requests: &[(usize, &[u64])]) -> Result<Vec<f32>, TableError>;
    /// One optimizer step (`step`: the 1-based update count) on every (held table, its
    /// ascending local rows, their gradients).
    fn apply(
        &mut self,
        opt: &SparseOptimizer,
        step: u64,
        updates: &[(usize, &[u64], &[f32])],
    ) -> Result<(), TableError>;
}

/// What forward leaves for backward.
#[derive(Debug)]
pub struct ShardedLookup {
    pub plan: LookupPlan,
    /// Per table, the distinct rows' values (`unique x dim`).
    pub gathered: Vec<Vec<f32>>,
    buckets: Vec<Bucketized>,
    /// What every rank asked this one for in forward (per sending rank: per-table counts,
    /// then the local rows), which tells backward whose gradients arrive for which rows.
    served: Vec<Vec<u64>>,
}

impl ShardedEmbeddings {
    /// Initialises the shards `rank` owns under `plan`.
    pub fn new(
        layout: CollectionLayout,
        plan: ShardingPlan,
        optimizer: SparseOptimizer,
        rank: usize,
    ) -> Result<Self, TableError> {
        Self::with_storage(layout, plan, optimizer, rank, &[])
    }

    /// As [`Self::new`], with table `t` held as `storage[t]` says (RAM and f32 where
    /// none is given).
    pub fn with_storage(
        layout: CollectionLayout,
        plan: ShardingPlan,
        optimizer: SparseOptimizer,
        rank: usize,
        storage: &[TableStorage],
    ) -> Result<Self, TableError> {
        plan.validate(&layout)?;
        if rank >= plan.world_size {
            return Err(TableError::BadPlan(format!(
                "rank {rank} is outside the plan's world of {} ranks",
                plan.world_size
            )));
        }
        if optimizer.kind == OptimizerKind::RowwiseAdagrad {
            if let Some(p) = plan
                .tables
                .iter()
                .find(|p| p.kind == ShardingKind::ColumnWise && p.ranks.len() > 1)
            {
                return Err(TableError::BadPlan(format!(
                    "table `{}`: row-wise Adagrad keeps one accumulator per row, which a column-wise split would turn into one per column slice (training differently from the unsharded table); shard it row_wise or table_wise, or use adagrad",
                    p.table
                )));
            }
        }
        let dims = layout.table_dims();
        let shards = layout
            .spec()
            .tables
            .iter()
            .enumerate()
            .map(|(t, spec)| {
                plan.placement(t)
                    .extents(spec.rows, spec.dim)
                    .iter()
                    .find(|e| e.rank == rank)
                    .map(|e| {
                        TableShard::build(
                            spec,
                            e,
                            &optimizer,
                            storage.get(t).unwrap_or(&TableStorage::default()),
                        )
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            layout,
            plan,
            optimizer,
            rank,
            dims,
            shards,
            clock: ExchangeClock::default(),
            batched: None,
        })
    }

    /// Time spent in the exchanges so far.
    pub fn exchange_times(&self) -> ExchangeTimes {
        let d = |c: &AtomicU64| Duration::from_nanos(c.load(Ordering::Relaxed));
        ExchangeTimes {
            ids: d(&self.clock.ids_ns),
            values: d(&self.clock.values_ns),
            gradients: d(&self.clock.gradients_ns),
        }
    }

    pub fn layout(&self) -> &CollectionLayout {
        &self.layout
    }

    pub fn sharding(&self) -> &ShardingPlan {
        &self.plan
    }

    pub fn optimizer(&self) -> &SparseOptimizer {
        &self.optimizer
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// This rank's shard of table `t`, if it holds one.
    pub fn shard(&self, t: usize) -> Option<&TableShard> {
        self.shards[t].as_ref()
    }

    pub fn shard_mut(&mut self, t: usize) -> Option<&mut TableShard> {
        self.shards[t].as_mut()
    }

    /// Every shard this rank holds, with its table.
    pub fn held(&self) -> impl Iterator<Item = (usize, &TableShard)> {
        self.shards
            .iter()
            .enumerate()
            .filter_map(|(t, s)| s.as_ref().map(|s| (t, s)))
    }

    /// From now on, serves and updates the held shards through `rows`, which holds them.
    pub fn serve_in_batches(&mut self, rows: Box<dyn BatchedRows>) {
        self.batched = Some(rows);
    }

    /// Whether the held shards are served in batches ([`Self::serve_in_batches`]).
    pub fn serves_in_batches(&self) -> bool {
        self.batched.is_some()
    }

    pub fn held_mut(&mut self) -> impl Iterator<Item = (usize, &mut TableShard)> {
        self.shards
            .iter_mut()
            .enumerate()
            .filter_map(|(t, s)| s.as_mut().map(|s| (t, s)))
    }

    /// Bytes of parameters and optimizer state held by this rank.
    pub fn bytes(&self) -> (usize, usize) {
        self.shards
            .iter()
            .flatten()
            .map(TableShard::bytes)
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }

    fn check_world(&self, ex: &dyn Exchange) -> Result<(), TableError> {
        if ex.world_size() != self.plan.world_size || ex.rank() != self.rank {
            return Err(TableError::BadPlan(format!(
                "the plan is for rank {} of {} but this process is rank {} of {}",
                self.rank,
                self.plan.world_size,
                ex.rank(),
                ex.world_size()
            )));
        }
        Ok(())
    }

    /// Forward: plans this rank's batch, fetches every distinct row from its owner and
    /// writes the `batch x width` embedding input to `out`. Collective: every rank calls it
    /// once per step.
    pub fn forward(
        &self,
        ex: &dyn Exchange,
        batch: &KeyedJaggedIds,
        out: &mut [f32],
    ) -> Result<ShardedLookup, TableError> {
        self.check_world(ex)?;
        let n = ex.world_size();
        let tables = self.layout.num_tables();
        let plan = LookupPlan::build(&self.layout, batch)?;
        let buckets: Vec<Bucketized> = (0..tables)
            .map(|t| {
                self.plan.bucketize(
                    t,
                    self.layout.table_rows(t),
                    self.dims[t],
                    &plan.tables[t].unique_rows,
                    self.rank,
                )
            })
            .collect();
        let send = self.requests(n, buckets.iter().enumerate());
        let served = timed(&self.clock.ids_ns, || ex.all_to_all_u64(send))?;
        let answers = match &self.batched {
            Some(rows) => self.serve_batched(rows.as_ref(), &served)?,
            None => served
                .iter()
                .enumerate()
                .map(|(src, msg)| self.serve(src, msg))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let received = timed(&self.clock.values_ns, || ex.all_to_all_f32(answers))?;
        // Owners answer table by table in the order asked; take each dest's slice in turn.
        let mut offsets = vec![0usize; n];
        let mut gathered = Vec::with_capacity(tables);
        for (t, b) in buckets.iter().enumerate() {
            let mut parts = Vec::with_capacity(b.dests.len());
            for d in &b.dests {
                let len = d.local_rows.len() * d.cols.len();
                let from = &received[d.rank];
                let part = from
                    .get(offsets[d.rank]..offsets[d.rank] + len)
                    .ok_or_else(|| {
                        TableError::Exchange(format!(
                            "rank {}: rank {} answered {} floats, fewer than asked for",
                            self.rank,
                            d.rank,
                            from.len()
                        ))
                    })?;
                parts.push(part.to_vec());
                offsets[d.rank] += len;
            }
            gathered.push(b.unbucketize(plan.tables[t].unique_rows.len(), self.dims[t], &parts)?);
        }
        assemble_output(&plan, &self.dims, &gathered, out)?;
        Ok(ShardedLookup {
            plan,
            gathered,
            buckets,
            served,
        })
    }

    /// Reading ahead under several ranks (FBGEMM's prefetch): plans this rank's `batch`
    /// (the next step's), tells each owner of a file-tier table which of its rows that
    /// batch will ask for, and returns, for each file-tier shard held here, the distinct
    /// local rows every rank's next batch looks up. Collective: every rank calls it once
    /// per step (with an empty batch when it has none), or none does.
    pub fn file_rows_wanted(
        &self,
        ex: &dyn Exchange,
        batch: &KeyedJaggedIds,
    ) -> Result<FileRowsWanted, TableError> {
        self.check_world(ex)?;
        let tables = self.layout.num_tables();
        let plan = LookupPlan::build(&self.layout, batch)?;
        let buckets: Vec<(usize, Bucketized)> = (0..tables)
            .filter(|&t| self.plan.placement(t).in_file_tier)
            .map(|t| {
                let rows = &plan.tables[t].unique_rows;
                let b = self.plan.bucketize(
                    t,
                    self.layout.table_rows(t),
                    self.dims[t],
                    rows,
                    self.rank,
                );
                (t, b)
            })
            .collect();
        let send = self.requests(ex.world_size(), buckets.iter().map(|(t, b)| (*t, b)));
        let asked = ex.all_to_all_u64(send)?;
        let mut wanted: Vec<Vec<u64>> = vec![Vec::new(); tables];
        for (src, msg) in asked.iter().enumerate() {
            for (t, rows) in self.sections(src, msg)?.into_iter().enumerate() {
                wanted[t].extend_from_slice(rows);
            }
        }
        Ok(wanted
            .into_iter()
            .enumerate()
            .filter_map(|(t, mut rows)| {
                let file = self.shards[t].as_ref()?.file_rows()?;
                rows.sort_unstable();
                rows.dedup();
                Some((file, rows))
            })
            .collect())
    }

    /// Whether any table is in the file tier on some rank (then every rank takes part in
    /// [`Self::file_rows_wanted`]).
    pub fn has_file_tier(&self) -> bool {
        self.plan.tables.iter().any(|p| p.in_file_tier)
    }

    /// The ids each of `n` owners is asked for (`buckets`: tables in ascending order):
    /// per-table counts, then the local rows, table by table; [`Self::sections`] splits
    /// one back.
    fn requests<'a>(
        &self,
        n: usize,
        buckets: impl Iterator<Item = (usize, &'a Bucketized)>,
    ) -> Vec<Vec<u64>> {
        let mut send: Vec<Vec<u64>> = vec![vec![0; self.layout.num_tables()]; n];
        for (t, b) in buckets {
            for d in &b.dests {
                send[d.rank][t] = d.local_rows.len() as u64;
                send[d.rank].extend_from_slice(&d.local_rows);
            }
        }
        send
    }

    /// Splits a forward request from `src` into (table, local rows) sections.
    fn sections<'a>(&self, src: usize, msg: &'a [u64]) -> Result<Vec<&'a [u64]>, TableError> {
        let tables = self.layout.num_tables();
        let bad = |what: String| {
            TableError::Exchange(format!(
                "rank {}: malformed request from rank {src}: {what}",
                self.rank
            ))
        };
        if msg.len() < tables {
            return Err(bad(format!(
                "{} values, fewer than {tables} counts",
                msg.len()
            )));
        }
        let (counts, mut rest) = msg.split_at(tables);
        let mut out = Vec::with_capacity(tables);
        for (t, &c) in counts.iter().enumerate() {
            let c = c as usize;
            if c > rest.len() {
                return Err(bad(format!("table {t} count {c} overruns the message")));
            }
            if c > 0 && self.shards[t].is_none() {
                return Err(TableError::BadPlan(format!(
                    "rank {src} asked rank {} for rows of table `{}`, which it does not hold (do the ranks use the same plan?)",
                    self.rank,
                    self.layout.spec().tables[t].name
                )));
            }
            let (rows, tail) = rest.split_at(c);
            out.push(rows);
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(bad(format!("{} values after the last table", rest.len())));
        }
        Ok(out)
    }

    /// An owner's answer to one rank's request: the asked rows, table by table.
    fn serve(&self, src: usize, msg: &[u64]) -> Result<Vec<f32>, TableError> {
        let mut out = Vec::new();
        for (t, rows) in self.sections(src, msg)?.into_iter().enumerate() {
            if let Some(shard) = &self.shards[t] {
                if !rows.is_empty() {
                    out.extend_from_slice(&shard.gather(rows)?);
                }
            }
        }
        Ok(out)
    }

    /// Every rank's answer at once, the rows gathered in one batch.
    fn serve_batched(
        &self,
        rows: &dyn BatchedRows,
        served: &[Vec<u64>],
    ) -> Result<Vec<Vec<f32>>, TableError> {
        let mut requests = Vec::new();
        let mut floats = Vec::with_capacity(served.len());
        for (src, msg) in served.iter().enumerate() {
            let mut n = 0;
            for (t, asked) in self.sections(src, msg)?.into_iter().enumerate() {
                if let (Some(shard), false) = (&self.shards[t], asked.is_empty()) {
                    requests.push((t, asked));
                    n += asked.len() * shard.width();
                }
            }
            floats.push(n);
        }
        let all = rows.gather(&requests)?;
        let mut rest = all.as_slice();
        let mut answers = Vec::with_capacity(floats.len());
        for n in floats {
            let (mine, tail) = rest.split_at(n.min(rest.len()));
            answers.push(mine.to_vec());
            rest = tail;
        }
        Ok(answers)
    }

    /// Backward: reduces the output gradient per distinct row, sends each row's gradient to
    /// its owner(s), and applies the optimizer to every held shard. Collective.
    pub fn backward(
        &mut self,
        ex: &dyn Exchange,
        lookup: ShardedLookup,
        out_grad: &[f32],
    ) -> Result<(), TableError> {
        self.check_world(ex)?;
        let n = ex.world_size();
        let tables = self.layout.num_tables();
        let grads = reduce_row_gradients(&lookup.plan, &self.dims, &lookup.gathered, out_grad)?;
        let dp: Vec<bool> = (0..tables)
            .map(|t| self.plan.placement(t).kind == ShardingKind::DataParallel)
            .collect();
        let any_dp = dp.iter().any(|&x| x);
        let (send_g, send_dp_rows) = Self::gradients_to_send(&lookup, &grads, &self.dims, &dp, n);
        let recv_g = timed(&self.clock.gradients_ns, || ex.all_to_all_f32(send_g))?;
        let recv_dp = if any_dp {
            timed(&self.clock.gradients_ns, || ex.all_to_all_u64(send_dp_rows))?
        } else {
            vec![vec![0; tables]; n]
        };
        // Per held table: (local rows, sending rank, gradient slice start) of every sender.
        let mut arrivals: Vec<Vec<(&[u64], usize, usize)>> = vec![Vec::new(); tables];
        for src in 0..n {
            let mut off = 0usize;
            let fwd = self.sections(src, &lookup.served[src])?;
            let dpr = self.sections(src, &recv_dp[src])?;
            for (t, rows) in fwd
                .iter()
                .enumerate()
                .filter(|(t, _)| !dp[*t])
                .chain(dpr.iter().enumerate().filter(|(t, _)| dp[*t]))
            {
                let Some(shard) = &self.shards[t] else {
                    continue;
                };
                arrivals[t].push((rows, src, off));
                off += rows.len() * shard.width();
            }
            if off != recv_g[src].len() {
                return Err(TableError::Exchange(format!(
                    "rank {}: rank {src} sent {} gradient values for {off} expected",
                    self.rank,
                    recv_g[src].len()
                )));
            }
        }
        let opt = self.optimizer;
        let mut summed = Vec::new();
        for (t, arr) in arrivals.into_iter().enumerate() {
            let Some(shard) = self.shards[t].as_mut() else {
                continue;
            };
            let w = shard.width();
            // equal rows are summed in sending-rank order, a fixed order
            let sources: Vec<(&[u64], &[f32])> = arr
                .iter()
                .map(|&(rows, src, off)| (rows, &recv_g[src][off..off + rows.len() * w]))
                .collect();
            let (rows, g) = sum_in_source_order(&sources, w);
            match self.batched {
                Some(_) => summed.push((t, rows, g)),
                None => shard.apply(&opt, &rows, &g)?,
            }
        }
        self.apply_batched(&summed)
    }

    /// What backward sends each rank: the gradients of the rows it owns, in forward's
    /// order, then the data-parallel tables' gradients (to every replica); and the rows
    /// of those data-parallel gradients (per rank: per-table counts, then the rows).
    fn gradients_to_send(
        lookup: &ShardedLookup,
        grads: &[Vec<f32>],
        dims: &[usize],
        dp: &[bool],
        n: usize,
    ) -> (Vec<Vec<f32>>, Vec<Vec<u64>>) {
        let tables = dp.len();
        let mut send_g: Vec<Vec<f32>> = vec![Vec::new(); n];
        for (t, b) in lookup.buckets.iter().enumerate() {
            if dp[t] {
                continue;
            }
            for (d, part) in b.dests.iter().zip(b.split_gradients(dims[t], &grads[t])) {
                send_g[d.rank].extend_from_slice(&part);
            }
        }
        let mut send_dp_rows: Vec<Vec<u64>> = vec![vec![0; tables]; n];
        for t in (0..tables).filter(|&t| dp[t]) {
            let rows = &lookup.plan.tables[t].unique_rows;
            for dest in 0..n {
                send_dp_rows[dest][t] = rows.len() as u64;
                send_dp_rows[dest].extend_from_slice(rows);
                send_g[dest].extend_from_slice(&grads[t]);
            }
        }
        (send_g, send_dp_rows)
    }

    /// With batched serving: one update of every held table's summed gradients
    /// (table, rows, gradients), every held shard counting the step as shard-by-shard
    /// updates do.
    fn apply_batched(&mut self, summed: &[(usize, Vec<u64>, Vec<f32>)]) -> Result<(), TableError> {
        let Some(batched) = self.batched.as_mut() else {
            return Ok(());
        };
        let step = self
            .shards
            .iter()
            .flatten()
            .map(|s| s.steps() + 1)
            .max()
            .unwrap_or(1);
        for shard in self.shards.iter_mut().flatten() {
            shard.set_steps(step);
        }
        let updates: Vec<(usize, &[u64], &[f32])> = summed
            .iter()
            .filter(|(_, rows, _)| !rows.is_empty())
            .map(|(t, rows, g)| (*t, rows.as_slice(), g.as_slice()))
            .collect();
        batched.apply(&self.optimizer, step, &updates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::conformance_plan;
    use crate::spec::CollectionSpec;
    use crate::RowInit;

    fn layout() -> CollectionLayout {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        CollectionLayout::new(CollectionSpec::plain(
            &names,
            &[50, 37, 20],
            4,
            RowInit::Zeros,
        ))
        .unwrap()
    }

    #[test]
    fn malformed_or_misrouted_requests_are_errors_naming_rank_and_table() {
        let e = ShardedEmbeddings::new(
            layout(),
            conformance_plan(2, [ShardingKind::TableWise; 3]),
            SparseOptimizer::new(OptimizerKind::Sgd, 0.1),
            0,
        )
        .unwrap();
        // table `a` lives on rank 1 under this plan; a request for it reaching rank 0
        let err = e.serve(1, &[2, 0, 0, 3, 4]).unwrap_err().to_string();
        assert!(err.contains("`a`") && err.contains("rank 1"), "{err}");
        let short = e.serve(1, &[5]).unwrap_err().to_string();
        assert!(short.contains("malformed request from rank 1"), "{short}");
        let long = e.serve(1, &[0, 0, 1]).unwrap_err().to_string();
        assert!(long.contains("overruns"), "{long}");
    }

    #[test]
    fn rowwise_adagrad_on_a_column_split_is_refused_naming_the_table() {
        let mut plan = conformance_plan(2, [ShardingKind::RowWise; 3]);
        plan.tables[1].kind = ShardingKind::ColumnWise;
        let err = ShardedEmbeddings::new(
            layout(),
            plan,
            SparseOptimizer::new(OptimizerKind::RowwiseAdagrad, 0.1),
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("table `b`") && err.contains("column"), "{err}");
    }

    #[test]
    fn a_rank_outside_the_plan_is_refused() {
        let err = ShardedEmbeddings::new(
            layout(),
            conformance_plan(2, [ShardingKind::RowWise; 3]),
            SparseOptimizer::new(OptimizerKind::Sgd, 0.1),
            2,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("rank 2") && err.contains("2 ranks"), "{err}");
    }
}
