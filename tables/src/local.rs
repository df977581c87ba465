//! One process owning every shard of a collection: the single-rank case of the sharded
//! engine, used when shardrec runs without mpirun and as the reference the MPI engine is
//! tested against. The steps mirror the distributed ones (bucketize by owner, gather at
//! the owner, unbucketize; split gradients by owner, apply at the owner) with the
//! exchange being a function call.

use crate::collection::CollectionLayout;
use crate::lookup_plan::LookupPlan;
use crate::optimizer::SparseOptimizer;
use crate::row_ops::{assemble_output, reduce_row_gradients, sum_in_source_order};
use crate::shard::{TableShard, TableStorage};
use crate::sharding::ShardingPlan;
use crate::{FileRows, KeyedJaggedIds, TableError};

/// One slice of a step trained in slices: its lookup plan, the rows its forward fetched
/// and the gradient of its output.
#[derive(Debug, Clone, Copy)]
pub struct SliceGradient<'a> {
    pub plan: &'a LookupPlan,
    pub gathered: &'a [Vec<f32>],
    pub out_grad: &'a [f32],
}

#[derive(Debug)]
pub struct LocalEmbeddings {
    layout: CollectionLayout,
    plan: ShardingPlan,
    optimizer: SparseOptimizer,
    /// Shards of table t, in the order of `plan.tables[t].extents(..)`.
    shards: Vec<Vec<TableShard>>,
    dims: Vec<usize>,
}

/// Reads the file-tier rows a batch will look up into the tables' caches (FBGEMM's
/// prefetch), from another thread than the step's.
#[derive(Debug, Clone)]
pub struct FilePrefetcher {
    layout: CollectionLayout,
    /// Each file-tier shard: its table, its global rows, its file.
    shards: Vec<(usize, std::ops::Range<u64>, std::sync::Arc<FileRows>)>,
}

impl FilePrefetcher {
    /// Plans `batch`'s lookups and reads the rows not cached; returns the rows read.
    pub fn prefetch(&self, batch: &KeyedJaggedIds) -> Result<u64, TableError> {
        let plan = LookupPlan::build(&self.layout, batch)?;
        let mut read = 0;
        for (t, rows, file) in &self.shards {
            let local: Vec<u64> = plan.tables[*t]
                .unique_rows
                .iter()
                .filter(|r| rows.contains(r))
                .map(|r| r - rows.start)
                .collect();
            read += file.prefetch(&local)?;
        }
        Ok(read)
    }
}

impl LocalEmbeddings {
    /// Initialises every table under `plan` (every extent held here, whatever its rank).
    pub fn new(
        layout: CollectionLayout,
        plan: ShardingPlan,
        optimizer: SparseOptimizer,
    ) -> Result<Self, TableError> {
        Self::with_storage(layout, plan, optimizer, &[])
    }

    /// As [`Self::new`], with table `t` held as `storage[t]` says (RAM and f32 where
    /// none is given).
    pub fn with_storage(
        layout: CollectionLayout,
        plan: ShardingPlan,
        optimizer: SparseOptimizer,
        storage: &[TableStorage],
    ) -> Result<Self, TableError> {
        plan.validate(&layout)?;
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
                    .take(
                        if plan.placement(t).kind == crate::ShardingKind::DataParallel {
                            1
                        } else {
                            usize::MAX
                        },
                    )
                    .map(|e| {
                        TableShard::build(
                            spec,
                            e,
                            &optimizer,
                            storage.get(t).unwrap_or(&TableStorage::default()),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            layout,
            plan,
            optimizer,
            shards,
            dims,
        })
    }

    /// Everything table-wise on this process.
    pub fn single_process(
        layout: CollectionLayout,
        optimizer: SparseOptimizer,
    ) -> Result<Self, TableError> {
        let plan = ShardingPlan::single_process(&layout);
        Self::new(layout, plan, optimizer)
    }

    pub fn layout(&self) -> &CollectionLayout {
        &self.layout
    }

    pub fn optimizer(&self) -> &SparseOptimizer {
        &self.optimizer
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    pub fn shards(&self) -> &[Vec<TableShard>] {
        &self.shards
    }

    pub fn shards_mut(&mut self) -> &mut [Vec<TableShard>] {
        &mut self.shards
    }

    /// Plans a batch's lookups.
    pub fn plan(&self, batch: &KeyedJaggedIds) -> Result<LookupPlan, TableError> {
        LookupPlan::build(&self.layout, batch)
    }

    /// What reading a batch's file-tier rows ahead needs, detached from the tables so it
    /// runs on another thread (None with no file-tier table).
    pub fn file_prefetcher(&self) -> Option<FilePrefetcher> {
        let shards: Vec<_> = self
            .shards
            .iter()
            .enumerate()
            .flat_map(|(t, s)| s.iter().map(move |s| (t, s)))
            .filter_map(|(t, s)| Some((t, s.rows.clone(), s.file_rows()?)))
            .collect();
        (!shards.is_empty()).then(|| FilePrefetcher {
            layout: self.layout.clone(),
            shards,
        })
    }

    /// Fetches every table's distinct rows of the plan (the forward exchange).
    pub fn fetch(&self, plan: &LookupPlan) -> Result<Vec<Vec<f32>>, TableError> {
        use rayon::prelude::*;
        (0..self.layout.num_tables())
            .into_par_iter()
            .map(|t| {
                let reqs = &plan.tables[t];
                let b = self.plan.bucketize(
                    t,
                    self.layout.table_rows(t),
                    self.dims[t],
                    &reqs.unique_rows,
                    0,
                );
                let answers = b
                    .dests
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        self.shards[t][i.min(self.shards[t].len() - 1)].gather(&d.local_rows)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                b.unbucketize(reqs.unique_rows.len(), self.dims[t], &answers)
            })
            .collect()
    }

    /// Forward: the batch x width embedding input of the dense model, written to `out`.
    /// Returns the fetched rows, which backward needs.
    pub fn forward(&self, plan: &LookupPlan, out: &mut [f32]) -> Result<Vec<Vec<f32>>, TableError> {
        let gathered = self.fetch(plan)?;
        assemble_output(plan, &self.dims, &gathered, out)?;
        Ok(gathered)
    }

    /// Backward: reduces the output gradient per distinct row and applies the optimizer at
    /// the owners.
    pub fn backward(
        &mut self,
        plan: &LookupPlan,
        gathered: &[Vec<f32>],
        out_grad: &[f32],
    ) -> Result<(), TableError> {
        let grads = reduce_row_gradients(plan, &self.dims, gathered, out_grad)?;
        self.apply_row_gradients(plan, &grads)
    }

    /// Backward for one step trained in slices (each a batch of its own plan, fetched
    /// rows and output gradient): each slice's gradient is reduced per distinct row as a
    /// rank reduces its share, the slices' sums are added in slice order as an owner adds
    /// the ranks' in rank order, and the optimizer steps once. A step in `k` slices thus
    /// updates the rows exactly as `k` ranks with one slice each do.
    pub fn backward_slices(&mut self, slices: &[SliceGradient<'_>]) -> Result<(), TableError> {
        let reduced = slices
            .iter()
            .map(|s| reduce_row_gradients(s.plan, &self.dims, s.gathered, s.out_grad))
            .collect::<Result<Vec<_>, _>>()?;
        let (rows, grads): (Vec<Vec<u64>>, Vec<Vec<f32>>) = (0..self.layout.num_tables())
            .map(|t| {
                let sources: Vec<(&[u64], &[f32])> = slices
                    .iter()
                    .zip(&reduced)
                    .map(|(s, g)| (s.plan.tables[t].unique_rows.as_slice(), g[t].as_slice()))
                    .collect();
                sum_in_source_order(&sources, self.dims[t])
            })
            .unzip();
        let rows: Vec<&[u64]> = rows.iter().map(Vec::as_slice).collect();
        self.apply_rows(&rows, &grads)
    }

    /// Applies per-distinct-row gradients (`grads[t]`: unique x dim) at the owners.
    pub fn apply_row_gradients(
        &mut self,
        plan: &LookupPlan,
        grads: &[Vec<f32>],
    ) -> Result<(), TableError> {
        let rows: Vec<&[u64]> = plan
            .tables
            .iter()
            .map(|r| r.unique_rows.as_slice())
            .collect();
        self.apply_rows(&rows, grads)
    }

    /// Applies `grads[t]` (`rows[t].len() x dim`) to the ascending global rows `rows[t]`.
    fn apply_rows(&mut self, rows: &[&[u64]], grads: &[Vec<f32>]) -> Result<(), TableError> {
        use rayon::prelude::*;
        let opt = self.optimizer;
        let dims = &self.dims;
        let sharding = &self.plan;
        let layout = &self.layout;
        self.shards
            .par_iter_mut()
            .enumerate()
            .try_for_each(|(t, shards)| {
                let b = sharding.bucketize(t, layout.table_rows(t), dims[t], rows[t], 0);
                let parts = b.split_gradients(dims[t], &grads[t]);
                for ((i, d), g) in b.dests.iter().enumerate().zip(&parts) {
                    let s = i.min(shards.len() - 1);
                    shards[s].apply(&opt, &d.local_rows, g)?;
                }
                Ok(())
            })
    }

    /// Bytes of parameters and optimizer state over all shards.
    pub fn bytes(&self) -> (usize, usize) {
        self.shards
            .iter()
            .flatten()
            .map(|s| s.bytes())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CollectionSpec, OptimizerKind, RowInit, ShardingKind, TablePlacement};

    fn layout() -> CollectionLayout {
        CollectionLayout::new(CollectionSpec::plain(
            &["a".into(), "b".into()],
            &[7, 5],
            4,
            RowInit::Uniform {
                bound: 0.5,
                seed: 9,
            },
        ))
        .unwrap()
    }

    /// Every sharding kind (all shards in one process) gives the same embeddings and the
    /// same rows after an update as the unsharded table.
    #[test]
    fn sharded_placements_match_single_table() {
        let opt = SparseOptimizer::new(OptimizerKind::Adam, 0.1);
        let batch = KeyedJaggedIds::from_single_valued(2, 3, &[1, 4, 6, 0, 1, 4]).unwrap();
        let mut reference = LocalEmbeddings::single_process(layout(), opt).unwrap();
        let run = |e: &mut LocalEmbeddings| {
            let plan = e.plan(&batch).unwrap();
            let mut out = vec![0.0; 3 * 8];
            let g = e.forward(&plan, &mut out).unwrap();
            let grad: Vec<f32> = (0..24).map(|i| i as f32 * 0.1 - 1.0).collect();
            e.backward(&plan, &g, &grad).unwrap();
            let mut after = vec![0.0; 3 * 8];
            e.forward(&plan, &mut after).unwrap();
            (out, after)
        };
        let want = run(&mut reference);
        for kind in [
            ShardingKind::RowWise,
            ShardingKind::ColumnWise,
            ShardingKind::DataParallel,
        ] {
            let n = 3;
            let plan = ShardingPlan {
                world_size: n,
                tables: ["a", "b"]
                    .iter()
                    .map(|t| TablePlacement {
                        table: t.to_string(),
                        kind,
                        ranks: (0..n).collect(),
                        column_starts: vec![],
                        in_file_tier: false,
                    })
                    .collect(),
            };
            let mut e = LocalEmbeddings::new(layout(), plan, opt).unwrap();
            assert_eq!(run(&mut e), want, "{kind:?}");
        }
    }
}
