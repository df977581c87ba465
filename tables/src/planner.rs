//! Choosing a [`ShardingPlan`] for a collection: either one kind for every table, or
//! `auto`, which balances each rank's bytes of rows plus optimizer state (TorchRec's
//! planner balances the same quantity, with a cost model on top): large tables are split
//! row-wise over every rank, small ones placed whole on the least-loaded rank. Per-table
//! choices override it, and a per-rank memory limit is enforced with an error naming the
//! table, the bytes it needs and the bytes available.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::collection::CollectionLayout;
use crate::optimizer::SparseOptimizer;
use crate::sharding::{ShardExtent, ShardingKind, ShardingPlan, TablePlacement};
use crate::TableError;

/// How tables are placed when no per-table choice is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PlanStrategy {
    #[default]
    Auto,
    RowWise,
    TableWise,
    ColumnWise,
    DataParallel,
}

/// What the planner is asked.
#[derive(Debug, Clone, Default)]
pub struct PlanRequest {
    pub strategy: PlanStrategy,
    /// Per-table kind, by table name.
    pub tables: BTreeMap<String, ShardingKind>,
    /// Bytes of rows + optimizer state one rank may hold (None: no limit).
    pub memory_limit_per_rank: Option<u64>,
}

/// Bytes of table `t`'s rows and optimizer state, all ranks together.
pub fn table_bytes(layout: &CollectionLayout, t: usize, opt: &SparseOptimizer) -> u64 {
    let dim = layout.table_dim(t);
    layout.table_rows(t) * (dim + opt.state_width(dim)) as u64 * 4
}

/// Bytes of the part `e` of a table of `dim` columns whose rows take `row_bytes` each.
fn extent_bytes(e: &ShardExtent, row_bytes: u64, dim: usize) -> u64 {
    (e.rows.end - e.rows.start) * row_bytes * e.cols.len() as u64 / dim.max(1) as u64
}

/// A table's share of a rank's fair load below which `auto` keeps it whole on one rank.
const WHOLE_TABLE_SHARE: u64 = 4;

/// Plans `layout` over `world` ranks.
pub fn plan_collection(
    layout: &CollectionLayout,
    world: usize,
    opt: &SparseOptimizer,
    req: &PlanRequest,
) -> Result<ShardingPlan, TableError> {
    let names: Vec<&str> = layout
        .spec()
        .tables
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    if let Some(unknown) = req.tables.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(TableError::BadPlan(format!(
            "no table named `{unknown}` (tables: {})",
            names.join(", ")
        )));
    }
    let bytes: Vec<u64> = (0..names.len())
        .map(|t| table_bytes(layout, t, opt))
        .collect();
    let total: u64 = bytes.iter().sum();
    let fair = total / world as u64;
    let mut load = vec![0u64; world];
    let mut placements: Vec<Option<TablePlacement>> = vec![None; names.len()];
    // biggest first, so the small tables fill in the gaps
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by_key(|&t| (std::cmp::Reverse(bytes[t]), t));
    for t in order {
        let rows = layout.table_rows(t);
        let dim = layout.table_dim(t);
        let kind = match req.tables.get(names[t]) {
            Some(&k) => k,
            None => match req.strategy {
                PlanStrategy::RowWise => ShardingKind::RowWise,
                PlanStrategy::TableWise => ShardingKind::TableWise,
                PlanStrategy::ColumnWise => ShardingKind::ColumnWise,
                PlanStrategy::DataParallel => ShardingKind::DataParallel,
                PlanStrategy::Auto => {
                    if world == 1 || bytes[t] * WHOLE_TABLE_SHARE <= fair || rows < world as u64 {
                        ShardingKind::TableWise
                    } else {
                        ShardingKind::RowWise
                    }
                }
            },
        };
        let least_loaded = (0..world).min_by_key(|&r| (load[r], r)).unwrap_or(0);
        let ranks: Vec<usize> = match kind {
            ShardingKind::TableWise => vec![least_loaded],
            ShardingKind::ColumnWise => (0..world.min(dim)).collect(),
            ShardingKind::RowWise | ShardingKind::DataParallel => (0..world).collect(),
        };
        let placement = TablePlacement {
            table: names[t].to_string(),
            kind,
            ranks,
            column_starts: vec![],
        };
        // what each rank gains
        let row_bytes = bytes[t] / rows.max(1);
        for e in placement.extents(rows, dim) {
            load[e.rank] += extent_bytes(&e, row_bytes, dim);
            if let Some(limit) = req.memory_limit_per_rank {
                if load[e.rank] > limit {
                    return Err(TableError::BadPlan(format!(
                        "table `{}` ({kind:?}, {} bytes of rows and optimizer state) does not fit: rank {} would hold {} bytes, above the limit of {limit} bytes per rank (sharding.memory_limit_per_rank); use more ranks, row_wise, a smaller table or a lighter optimizer",
                        names[t], bytes[t], e.rank, load[e.rank]
                    )));
                }
            }
        }
        placements[t] = Some(placement);
    }
    let plan = ShardingPlan {
        world_size: world,
        tables: placements.into_iter().flatten().collect(),
    };
    plan.validate(layout)?;
    Ok(plan)
}

/// Bytes of rows + optimizer state each rank holds under `plan`.
pub fn rank_loads(
    plan: &ShardingPlan,
    layout: &CollectionLayout,
    opt: &SparseOptimizer,
) -> Vec<u64> {
    let mut load = vec![0u64; plan.world_size];
    for (t, p) in plan.tables.iter().enumerate() {
        let (rows, dim) = (layout.table_rows(t), layout.table_dim(t));
        let row_bytes = table_bytes(layout, t, opt) / rows.max(1);
        for e in p.extents(rows, dim) {
            load[e.rank] += extent_bytes(&e, row_bytes, dim);
        }
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::CollectionSpec;
    use crate::{OptimizerKind, RowInit};

    fn layout(rows: &[u64]) -> CollectionLayout {
        let names: Vec<String> = (0..rows.len()).map(|i| format!("t{i}")).collect();
        CollectionLayout::new(CollectionSpec::plain(&names, rows, 16, RowInit::Zeros)).unwrap()
    }

    fn adagrad() -> SparseOptimizer {
        SparseOptimizer::new(OptimizerKind::Adagrad, 0.01)
    }

    #[test]
    fn auto_splits_big_tables_and_balances_small_ones() {
        let l = layout(&[1_000_000, 900_000, 50, 60, 70, 80]);
        let p = plan_collection(&l, 4, &adagrad(), &PlanRequest::default()).unwrap();
        assert_eq!(p.tables[0].kind, ShardingKind::RowWise);
        assert_eq!(p.tables[1].kind, ShardingKind::RowWise);
        for t in 2..6 {
            assert_eq!(p.tables[t].kind, ShardingKind::TableWise, "{t}");
        }
        // the four small tables go to four different ranks
        let mut small: Vec<usize> = (2..6).map(|t| p.tables[t].ranks[0]).collect();
        small.sort_unstable();
        assert_eq!(small, vec![0, 1, 2, 3]);
        let loads = rank_loads(&p, &l, &adagrad());
        let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        assert!(*hi as f64 <= *lo as f64 * 1.01 + 10_000.0, "{loads:?}");
    }

    #[test]
    fn many_similar_tables_are_spread_table_wise() {
        let l = layout(&[1000; 26]);
        let p = plan_collection(&l, 2, &adagrad(), &PlanRequest::default()).unwrap();
        // each table is 1/26 of the total, under a quarter of a rank's fair share
        assert!(p.tables.iter().all(|t| t.kind == ShardingKind::TableWise));
        let loads = rank_loads(&p, &l, &adagrad());
        assert_eq!(loads[0], loads[1]);
    }

    #[test]
    fn overrides_and_uniform_strategies_are_obeyed() {
        let l = layout(&[1000, 2000, 3000]);
        let req = PlanRequest {
            strategy: PlanStrategy::ColumnWise,
            tables: [("t1".to_string(), ShardingKind::DataParallel)].into(),
            memory_limit_per_rank: None,
        };
        let p = plan_collection(&l, 3, &adagrad(), &req).unwrap();
        assert_eq!(p.tables[0].kind, ShardingKind::ColumnWise);
        assert_eq!(p.tables[1].kind, ShardingKind::DataParallel);
        assert_eq!(p.tables[1].ranks, vec![0, 1, 2]);
        assert_eq!(p.tables[2].kind, ShardingKind::ColumnWise);
        let bad = PlanRequest {
            tables: [("nope".to_string(), ShardingKind::RowWise)].into(),
            ..PlanRequest::default()
        };
        let e = plan_collection(&l, 3, &adagrad(), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`nope`") && e.contains("t0, t1, t2"), "{e}");
    }

    #[test]
    fn a_memory_limit_that_cannot_be_met_names_table_and_bytes() {
        // 1M rows x (16 + 16) floats x 4 bytes = 128 MB; over 2 ranks 64 MB each
        let l = layout(&[1_000_000, 10]);
        let fits = PlanRequest {
            memory_limit_per_rank: Some(70_000_000),
            ..PlanRequest::default()
        };
        assert!(plan_collection(&l, 2, &adagrad(), &fits).is_ok());
        let tight = PlanRequest {
            memory_limit_per_rank: Some(60_000_000),
            ..PlanRequest::default()
        };
        let e = plan_collection(&l, 2, &adagrad(), &tight)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("table `t0`") && e.contains("128000000 bytes") && e.contains("60000000"),
            "{e}"
        );
    }
}
