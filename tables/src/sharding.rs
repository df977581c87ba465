//! The sharding plan: which rank holds which rows and columns of each table, as plain data
//! that can be written to TOML and read back for an identical placement (as TorchRec's
//! `ShardingPlan`). Routing an id to its owner is a pure function of the plan:
//!
//! - `table_wise`: one rank holds the whole table;
//! - `row_wise`: ranks hold contiguous blocks of `ceil(rows / n)` rows;
//! - `column_wise`: every listed rank holds all rows, a slice of the columns;
//! - `data_parallel`: every rank holds a full replica and reads its own.
//!
//! [`ShardingPlan::bucketize`] turns a table's distinct rows into per-owner requests;
//! [`Bucketized::unbucketize`] puts the owners' answers back in order, and
//! [`Bucketized::split_gradients`] sends each row's gradient columns to their owners.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::collection::CollectionLayout;
use crate::TableError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardingKind {
    DataParallel,
    TableWise,
    RowWise,
    ColumnWise,
}

/// Placement of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablePlacement {
    pub table: String,
    pub kind: ShardingKind,
    /// The ranks holding this table (one for `table_wise`).
    pub ranks: Vec<usize>,
    /// `column_wise` only: first column of each rank's slice; empty means an even split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub column_starts: Vec<usize>,
    /// The rows live in the file tier (the config put them there, or the planner moved
    /// them to meet `memory_limit_per_rank`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub in_file_tier: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// The part of a table one rank holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardExtent {
    pub rank: usize,
    pub rows: Range<u64>,
    pub cols: Range<usize>,
}

impl TablePlacement {
    /// Rows per rank of a row-wise table.
    pub fn row_block(&self, rows: u64) -> u64 {
        rows.div_ceil(self.ranks.len().max(1) as u64).max(1)
    }

    fn column_ranges(&self, dim: usize) -> Vec<Range<usize>> {
        let n = self.ranks.len();
        let starts: Vec<usize> = if self.column_starts.is_empty() {
            (0..n).map(|i| i * dim / n).collect()
        } else {
            self.column_starts.clone()
        };
        (0..n)
            .map(|i| starts[i]..starts.get(i + 1).copied().unwrap_or(dim))
            .collect()
    }

    /// Every rank's part of a `rows x dim` table (row-wise blocks may be empty at the end).
    pub fn extents(&self, rows: u64, dim: usize) -> Vec<ShardExtent> {
        match self.kind {
            ShardingKind::TableWise | ShardingKind::DataParallel => self
                .ranks
                .iter()
                .map(|&rank| ShardExtent {
                    rank,
                    rows: 0..rows,
                    cols: 0..dim,
                })
                .collect(),
            ShardingKind::RowWise => {
                let block = self.row_block(rows);
                self.ranks
                    .iter()
                    .enumerate()
                    .map(|(i, &rank)| {
                        let start = (i as u64 * block).min(rows);
                        ShardExtent {
                            rank,
                            rows: start..(start + block).min(rows),
                            cols: 0..dim,
                        }
                    })
                    .collect()
            }
            ShardingKind::ColumnWise => self
                .column_ranges(dim)
                .into_iter()
                .zip(&self.ranks)
                .map(|(cols, &rank)| ShardExtent {
                    rank,
                    rows: 0..rows,
                    cols,
                })
                .collect(),
        }
    }
}

/// Plan for every table of a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardingPlan {
    pub world_size: usize,
    pub tables: Vec<TablePlacement>,
}

/// A table's distinct rows split by owner.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucketized {
    /// One entry per extent the request touches.
    pub dests: Vec<BucketDest>,
}

/// What one owner is asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketDest {
    pub rank: usize,
    pub cols: Range<usize>,
    /// Rows local to the owner's shard, ascending.
    pub local_rows: Vec<u64>,
    /// Position of each of those rows in the table's distinct-row list.
    pub positions: Vec<u32>,
}

impl ShardingPlan {
    /// Everything on rank 0 of a one-rank world.
    pub fn single_process(layout: &CollectionLayout) -> Self {
        Self {
            world_size: 1,
            tables: layout
                .spec()
                .tables
                .iter()
                .map(|t| TablePlacement {
                    table: t.name.clone(),
                    kind: ShardingKind::TableWise,
                    ranks: vec![0],
                    column_starts: vec![],
                    in_file_tier: false,
                })
                .collect(),
        }
    }

    /// Placement of table `t` of the layout this plan was validated against.
    pub fn placement(&self, t: usize) -> &TablePlacement {
        &self.tables[t]
    }

    /// Checks the plan against a collection: every table once, in the collection's order,
    /// with valid ranks and column slices.
    pub fn validate(&self, layout: &CollectionLayout) -> Result<(), TableError> {
        let bad = |m: String| Err(TableError::BadPlan(m));
        if self.world_size == 0 {
            return bad("world_size must be at least 1".into());
        }
        let tables = &layout.spec().tables;
        if self.tables.len() != tables.len() {
            return bad(format!(
                "{} placements for {} tables",
                self.tables.len(),
                tables.len()
            ));
        }
        for (p, t) in self.tables.iter().zip(tables) {
            if p.table != t.name {
                return bad(format!(
                    "placement for `{}` where table `{}` was expected",
                    p.table, t.name
                ));
            }
            if p.ranks.is_empty() {
                return bad(format!("table `{}` has no ranks", t.name));
            }
            let mut sorted = p.ranks.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != p.ranks.len() || sorted.last().is_some_and(|&r| r >= self.world_size)
            {
                return bad(format!(
                    "table `{}`: ranks {:?} must be distinct and below world size {}",
                    t.name, p.ranks, self.world_size
                ));
            }
            match p.kind {
                ShardingKind::TableWise if p.ranks.len() != 1 => {
                    return bad(format!(
                        "table `{}`: table_wise takes exactly one rank",
                        t.name
                    ))
                }
                ShardingKind::DataParallel if p.ranks.len() != self.world_size => {
                    return bad(format!(
                        "table `{}`: data_parallel needs every rank",
                        t.name
                    ))
                }
                ShardingKind::ColumnWise => {
                    if p.ranks.len() > t.dim {
                        return bad(format!(
                            "table `{}`: {} column shards for {} columns",
                            t.name,
                            p.ranks.len(),
                            t.dim
                        ));
                    }
                    if !p.column_starts.is_empty() {
                        let ok = p.column_starts.len() == p.ranks.len()
                            && p.column_starts[0] == 0
                            && p.column_starts.windows(2).all(|w| w[0] < w[1])
                            && *p.column_starts.last().unwrap_or(&0) < t.dim;
                        if !ok {
                            return bad(format!(
                                "table `{}`: column_starts {:?} must start at 0, increase, stay below {} and give one slice per rank",
                                t.name, p.column_starts, t.dim
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Splits table `t`'s distinct rows (ascending) by owner, as seen from `my_rank`.
    pub fn bucketize(
        &self,
        t: usize,
        rows: u64,
        dim: usize,
        unique_rows: &[u64],
        my_rank: usize,
    ) -> Bucketized {
        let p = &self.tables[t];
        let extents = p.extents(rows, dim);
        let whole = |e: &ShardExtent| BucketDest {
            rank: e.rank,
            cols: e.cols.clone(),
            local_rows: unique_rows.to_vec(),
            positions: (0..unique_rows.len() as u32).collect(),
        };
        let dests = match p.kind {
            ShardingKind::TableWise => vec![whole(&extents[0])],
            ShardingKind::ColumnWise => extents.iter().map(whole).collect(),
            ShardingKind::DataParallel => {
                let e = extents
                    .iter()
                    .find(|e| e.rank == my_rank)
                    .unwrap_or(&extents[0]);
                vec![whole(e)]
            }
            ShardingKind::RowWise => {
                let block = p.row_block(rows);
                let mut dests: Vec<BucketDest> = extents
                    .iter()
                    .map(|e| BucketDest {
                        rank: e.rank,
                        cols: e.cols.clone(),
                        local_rows: vec![],
                        positions: vec![],
                    })
                    .collect();
                for (i, &r) in unique_rows.iter().enumerate() {
                    let owner = (r / block) as usize;
                    let d = &mut dests[owner];
                    d.local_rows.push(r - extents[owner].rows.start);
                    d.positions.push(i as u32);
                }
                dests
            }
        };
        Bucketized { dests }
    }
}

impl Bucketized {
    /// Puts the owners' answers (`answers[d]`: `local_rows.len() x cols.len()` floats for
    /// dest `d`) back into `n_unique x dim` rows in distinct-row order.
    pub fn unbucketize(
        &self,
        n_unique: usize,
        dim: usize,
        answers: &[Vec<f32>],
    ) -> Result<Vec<f32>, TableError> {
        let mut out = vec![0.0f32; n_unique * dim];
        if answers.len() != self.dests.len() {
            return Err(TableError::SizeMismatch {
                what: "owner answers".into(),
                expected: self.dests.len(),
                got: answers.len(),
            });
        }
        for (d, a) in self.dests.iter().zip(answers) {
            let w = d.cols.len();
            if a.len() != d.positions.len() * w {
                return Err(TableError::SizeMismatch {
                    what: format!("answer of rank {}", d.rank),
                    expected: d.positions.len() * w,
                    got: a.len(),
                });
            }
            for (k, &pos) in d.positions.iter().enumerate() {
                out[pos as usize * dim + d.cols.start..][..w].copy_from_slice(&a[k * w..][..w]);
            }
        }
        Ok(out)
    }

    /// Splits `n_unique x dim` row gradients into what each owner must apply.
    pub fn split_gradients(&self, dim: usize, grads: &[f32]) -> Vec<Vec<f32>> {
        self.dests
            .iter()
            .map(|d| {
                let w = d.cols.len();
                let mut v = Vec::with_capacity(d.positions.len() * w);
                for &pos in &d.positions {
                    v.extend_from_slice(&grads[pos as usize * dim + d.cols.start..][..w]);
                }
                v
            })
            .collect()
    }
}

/// Table `t` of kind `kind` over ranks `0..n` (tests).
#[cfg(test)]
pub(crate) fn test_placement(kind: ShardingKind, n: usize) -> TablePlacement {
    TablePlacement {
        table: "t".into(),
        kind,
        ranks: (0..n).collect(),
        column_starts: vec![],
        in_file_tier: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn placement(kind: ShardingKind, n: usize) -> TablePlacement {
        test_placement(kind, n)
    }

    fn plan(kind: ShardingKind, n: usize) -> ShardingPlan {
        ShardingPlan {
            world_size: n,
            tables: vec![placement(kind, n)],
        }
    }

    proptest! {
        /// Row-wise blocks cover [0, rows) with no gaps or overlaps, and every row has
        /// exactly one owner whose block contains it.
        #[test]
        fn row_wise_blocks_cover_rows_once(rows in 1u64..10_000, n in 1usize..9, probe in 0u64..10_000) {
            let p = placement(ShardingKind::RowWise, n);
            let ext = p.extents(rows, 4);
            let mut next = 0;
            for e in &ext {
                prop_assert_eq!(e.rows.start, next.min(rows));
                next = e.rows.end.max(next);
            }
            prop_assert_eq!(next, rows);
            let row = probe % rows;
            let owners = ext.iter().filter(|e| e.rows.contains(&row)).count();
            prop_assert_eq!(owners, 1);
            let owner = (row / p.row_block(rows)) as usize;
            prop_assert!(ext[owner].rows.contains(&row));
        }

        /// Column slices cover [0, dim) exactly once.
        #[test]
        fn column_slices_cover_columns_once(dim in 1usize..128, n in 1usize..9) {
            prop_assume!(n <= dim);
            let ext = placement(ShardingKind::ColumnWise, n).extents(10, dim);
            let mut covered = vec![0; dim];
            for e in &ext {
                prop_assert!(!e.cols.is_empty());
                for c in e.cols.clone() { covered[c] += 1; }
            }
            prop_assert!(covered.iter().all(|&c| c == 1));
        }

        /// Asking owners for their local rows and putting the answers back gives the same
        /// rows as reading the whole table, for every sharding kind; gradients split and
        /// reassembled are unchanged.
        #[test]
        fn bucketize_then_unbucketize_is_identity(
            mut ids in proptest::collection::vec(0u64..500, 0..60),
            n in 1usize..6,
            kind_i in 0usize..4,
        ) {
            ids.sort_unstable();
            ids.dedup();
            let (rows, dim) = (500u64, 6usize);
            let kind = [ShardingKind::TableWise, ShardingKind::RowWise, ShardingKind::ColumnWise, ShardingKind::DataParallel][kind_i];
            let n = if kind == ShardingKind::TableWise { 1 } else { n };
            let plan = plan(kind, n);
            let value = |r: u64, c: usize| (r * 100 + c as u64) as f32;
            let b = plan.bucketize(0, rows, dim, &ids, n - 1);
            let exts = plan.tables[0].extents(rows, dim);
            let mut answers = Vec::new();
            for d in &b.dests {
                let e = exts.iter().find(|e| e.rank == d.rank).unwrap();
                let mut a = Vec::new();
                for &lr in &d.local_rows {
                    prop_assert!(lr < e.rows.end - e.rows.start);
                    a.extend(d.cols.clone().map(|c| value(e.rows.start + lr, c)));
                }
                answers.push(a);
            }
            let got = b.unbucketize(ids.len(), dim, &answers).unwrap();
            let want: Vec<f32> = ids.iter().flat_map(|&r| (0..dim).map(move |c| value(r, c))).collect();
            prop_assert_eq!(&got, &want);
            let parts = b.split_gradients(dim, &want);
            prop_assert_eq!(b.unbucketize(ids.len(), dim, &parts).unwrap(), want);
        }
    }

    #[test]
    fn validation_names_the_table() {
        let spec = crate::CollectionSpec::plain(&["c1".into()], &[10], 4, crate::RowInit::Zeros);
        let layout = CollectionLayout::new(spec).unwrap();
        let mut p = ShardingPlan::single_process(&layout);
        assert!(p.validate(&layout).is_ok());
        p.tables[0].ranks = vec![3];
        let e = p.validate(&layout).unwrap_err().to_string();
        assert!(e.contains("`c1`"), "{e}");
        p.tables[0] = TablePlacement {
            table: "c1".into(),
            kind: ShardingKind::ColumnWise,
            ranks: vec![0],
            column_starts: vec![1],
            in_file_tier: false,
        };
        assert!(p.validate(&layout).is_err());
    }
}
