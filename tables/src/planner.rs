//! Choosing a [`ShardingPlan`] for a collection: either one kind for every table, or
//! `auto`, which balances each rank's bytes of rows plus optimizer state (TorchRec's
//! planner balances the same quantity, with a cost model on top): large tables are split
//! row-wise over every rank, small ones placed whole on the least-loaded rank. Per-table
//! choices override it, and a per-rank memory limit is enforced with an error naming the
//! table, the bytes it needs and the bytes available.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::collection::CollectionLayout;
use crate::optimizer::SparseOptimizer;
use crate::row_dtype::RowDtype;
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
    /// Bytes of RAM one rank may hold for its tables (None: no limit): rows and optimizer
    /// state in RAM; for the file tier, its cache and one bit a row.
    pub memory_limit_per_rank: Option<u64>,
    pub tiers: TierRequest,
}

/// What the planner knows of where and how rows are held.
#[derive(Debug, Clone, Default)]
pub struct TierRequest {
    /// Precision of the stored rows (optimizer state is f32).
    pub row_dtype: RowDtype,
    /// Tables the config puts in the file tier.
    pub file_tables: BTreeSet<String>,
    /// RAM a rank spends on the file tier's caches once it holds any file table.
    pub cache_bytes: u64,
    /// With `auto` and a memory limit, the biggest tables may move to the file tier (it
    /// has a folder) rather than the plan failing.
    pub may_spill: bool,
}

/// Bytes of table `t`'s rows (f32) and optimizer state, all ranks together.
pub fn table_bytes(layout: &CollectionLayout, t: usize, opt: &SparseOptimizer) -> u64 {
    stored_bytes(layout, t, opt, RowDtype::F32)
}

/// Bytes of table `t`'s rows stored as `dtype` and its optimizer state.
pub fn stored_bytes(
    layout: &CollectionLayout,
    t: usize,
    opt: &SparseOptimizer,
    dtype: RowDtype,
) -> u64 {
    let dim = layout.table_dim(t);
    layout.table_rows(t) * (dtype.words(dim) + opt.state_width(dim)) as u64 * 4
}

/// Bytes of the part `e` of a table of `dim` columns whose rows take `row_bytes` each.
fn extent_bytes(e: &ShardExtent, row_bytes: u64, dim: usize) -> u64 {
    (e.rows.end - e.rows.start) * row_bytes * e.cols.len() as u64 / dim.max(1) as u64
}

/// RAM per rank under a placement: rows and state of RAM tables; for file tables the
/// written-rows bitmap, and the cache once on every rank holding one.
struct RamLoad<'a> {
    load: Vec<u64>,
    holds_file_rows: Vec<bool>,
    tiers: &'a TierRequest,
}

impl<'a> RamLoad<'a> {
    fn new(world: usize, tiers: &'a TierRequest) -> Self {
        Self {
            load: vec![0; world],
            holds_file_rows: vec![false; world],
            tiers,
        }
    }

    /// Adds the part `e` of a table of `dim` columns whose stored rows take `row_bytes`.
    fn add(&mut self, e: &ShardExtent, row_bytes: u64, dim: usize, in_file: bool) {
        let r = e.rank;
        if !in_file {
            self.load[r] += extent_bytes(e, row_bytes, dim);
            return;
        }
        // the written-rows bitmap, and the one set of the cache a shard has at least (with
        // the bookkeeping of LFU, the larger)
        let rows = e.rows.end - e.rows.start;
        let record = row_bytes * e.cols.len() as u64 / dim.max(1) as u64;
        self.load[r] += rows.div_ceil(64) * 8 + crate::file_rows::WAYS as u64 * (record + 21);
        if !std::mem::replace(&mut self.holds_file_rows[r], true) {
            self.load[r] += self.tiers.cache_bytes;
        }
    }
}

/// A table's share of a rank's fair load below which `auto` keeps it whole on one rank.
const WHOLE_TABLE_SHARE: u64 = 4;

/// Plans `layout` over `world` ranks. Under `auto` with a memory limit RAM cannot meet,
/// and a file tier to go to, the biggest tables move there one by one until it fits.
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
        .map(|t| stored_bytes(layout, t, opt, req.tiers.row_dtype))
        .collect();
    let mut in_file: Vec<bool> = names
        .iter()
        .map(|n| req.tiers.file_tables.contains(*n))
        .collect();
    let spill = req.tiers.may_spill && req.strategy == PlanStrategy::Auto;
    loop {
        match place(layout, world, req, (&names, &bytes), &in_file) {
            Ok(plan) => {
                plan.validate(layout)?;
                return Ok(plan);
            }
            Err(Unplaced::OverLimit(e)) if spill => {
                let biggest_in_ram = (0..names.len())
                    .filter(|&t| !in_file[t])
                    .max_by_key(|&t| (bytes[t], std::cmp::Reverse(t)));
                match biggest_in_ram {
                    Some(t) => in_file[t] = true,
                    None => return Err(e),
                }
            }
            Err(Unplaced::OverLimit(e) | Unplaced::Invalid(e)) => return Err(e),
        }
    }
}

/// Why [`place`] found no plan.
enum Unplaced {
    /// A rank would hold more than the memory limit.
    OverLimit(TableError),
    Invalid(TableError),
}

/// The kind `strategy` gives a table of `rows` rows and `bytes` bytes, against a rank's
/// fair share `fair` of all tables' bytes.
fn strategy_kind(
    strategy: PlanStrategy,
    world: usize,
    rows: u64,
    bytes: u64,
    fair: u64,
) -> ShardingKind {
    match strategy {
        PlanStrategy::RowWise => ShardingKind::RowWise,
        PlanStrategy::TableWise => ShardingKind::TableWise,
        PlanStrategy::ColumnWise => ShardingKind::ColumnWise,
        PlanStrategy::DataParallel => ShardingKind::DataParallel,
        PlanStrategy::Auto => {
            if world == 1 || bytes * WHOLE_TABLE_SHARE <= fair || rows < world as u64 {
                ShardingKind::TableWise
            } else {
                ShardingKind::RowWise
            }
        }
    }
}

/// One placement of every table (`names`, of `bytes` stored), biggest first, `in_file[t]`
/// saying where `t`'s rows live.
fn place(
    layout: &CollectionLayout,
    world: usize,
    req: &PlanRequest,
    (names, bytes): (&[&str], &[u64]),
    in_file: &[bool],
) -> Result<ShardingPlan, Unplaced> {
    let fair = bytes.iter().sum::<u64>() / world as u64;
    let mut ram = RamLoad::new(world, &req.tiers);
    let mut placements: Vec<Option<TablePlacement>> = vec![None; names.len()];
    // biggest first, so the small tables fill in the gaps
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by_key(|&t| (std::cmp::Reverse(bytes[t]), t));
    for t in order {
        let rows = layout.table_rows(t);
        let dim = layout.table_dim(t);
        let kind = match req.tables.get(names[t]) {
            Some(&k) => k,
            None => strategy_kind(req.strategy, world, rows, bytes[t], fair),
        };
        let least_loaded = (0..world).min_by_key(|&r| (ram.load[r], r)).unwrap_or(0);
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
            in_file_tier: in_file[t],
        };
        // what each rank gains
        let row_bytes = bytes[t] / rows.max(1);
        for e in placement.extents(rows, dim) {
            ram.add(&e, row_bytes, dim, in_file[t]);
            let held = ram.load[e.rank];
            match req.memory_limit_per_rank {
                Some(limit) if held > limit => {
                    let tier = if in_file[t] { "in the file tier, " } else { "" };
                    return Err(Unplaced::OverLimit(TableError::BadPlan(format!(
                        "table `{}` ({kind:?}, {tier}{} bytes of rows and optimizer state) does not fit: rank {} would hold {held} bytes of RAM, above the limit of {limit} bytes per rank (sharding.memory_limit_per_rank); use more ranks, row_wise, a smaller table, a lighter optimizer, 16-bit rows (embedding.row_dtype) or the file tier (embedding.storage)",
                        names[t], bytes[t], e.rank
                    ))));
                }
                _ => {}
            }
        }
        placements[t] = Some(placement);
    }
    let plan = ShardingPlan {
        world_size: world,
        tables: placements.into_iter().flatten().collect(),
    };
    if plan.tables.len() != names.len() {
        return Err(Unplaced::Invalid(TableError::BadPlan(
            "a table was not placed".into(),
        )));
    }
    Ok(plan)
}

/// Bytes of RAM each rank holds for its tables under `plan` (see [`PlanRequest`]).
pub fn rank_loads(
    plan: &ShardingPlan,
    layout: &CollectionLayout,
    opt: &SparseOptimizer,
    tiers: &TierRequest,
) -> Vec<u64> {
    let mut ram = RamLoad::new(plan.world_size, tiers);
    for (t, p) in plan.tables.iter().enumerate() {
        let (rows, dim) = (layout.table_rows(t), layout.table_dim(t));
        let row_bytes = stored_bytes(layout, t, opt, tiers.row_dtype) / rows.max(1);
        for e in p.extents(rows, dim) {
            ram.add(&e, row_bytes, dim, p.in_file_tier);
        }
    }
    ram.load
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
        let loads = rank_loads(&p, &l, &adagrad(), &TierRequest::default());
        let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        assert!(*hi as f64 <= *lo as f64 * 1.01 + 10_000.0, "{loads:?}");
    }

    #[test]
    fn many_similar_tables_are_spread_table_wise() {
        let l = layout(&[1000; 26]);
        let p = plan_collection(&l, 2, &adagrad(), &PlanRequest::default()).unwrap();
        // each table is 1/26 of the total, under a quarter of a rank's fair share
        assert!(p.tables.iter().all(|t| t.kind == ShardingKind::TableWise));
        let loads = rank_loads(&p, &l, &adagrad(), &TierRequest::default());
        assert_eq!(loads[0], loads[1]);
    }

    #[test]
    fn overrides_and_uniform_strategies_are_obeyed() {
        let l = layout(&[1000, 2000, 3000]);
        let req = PlanRequest {
            strategy: PlanStrategy::ColumnWise,
            tables: [("t1".to_string(), ShardingKind::DataParallel)].into(),
            ..PlanRequest::default()
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

    #[test]
    fn the_file_tier_counts_its_cache_and_takes_the_biggest_tables_when_ram_cannot() {
        // t0: 128 MB, t1: 12.8 MB, t2: 1.28 KB of f32 rows and Adagrad state
        let l = layout(&[1_000_000, 100_000, 10]);
        let tiers = TierRequest {
            cache_bytes: 4_000_000,
            may_spill: true,
            ..TierRequest::default()
        };
        let req = PlanRequest {
            memory_limit_per_rank: Some(20_000_000),
            tiers: tiers.clone(),
            ..PlanRequest::default()
        };
        let p = plan_collection(&l, 1, &adagrad(), &req).unwrap();
        let moved: Vec<bool> = p.tables.iter().map(|t| t.in_file_tier).collect();
        assert_eq!(moved, vec![true, false, false], "only the biggest moves");
        // RAM: t1 and t2 whole; for t0 the cache, one bit a row and one set at least
        let loads = rank_loads(&p, &l, &adagrad(), &tiers);
        assert_eq!(
            loads,
            vec![12_800_000 + 1280 + 4_000_000 + 125_000 + 16 * (128 + 21)]
        );
        // a limit below even that moves the next one too, then fails naming the cache
        let tighter = PlanRequest {
            memory_limit_per_rank: Some(5_000_000),
            ..req.clone()
        };
        let p = plan_collection(&l, 1, &adagrad(), &tighter).unwrap();
        assert!(p.tables[0].in_file_tier && p.tables[1].in_file_tier);
        let hopeless = PlanRequest {
            memory_limit_per_rank: Some(1_000_000),
            ..req.clone()
        };
        let e = plan_collection(&l, 1, &adagrad(), &hopeless)
            .unwrap_err()
            .to_string();
        assert!(e.contains("file tier") && e.contains("1000000"), "{e}");
        // no folder for the tier, or another strategy: the limit fails as before
        for no_spill in [
            PlanRequest {
                tiers: TierRequest::default(),
                ..req.clone()
            },
            PlanRequest {
                strategy: PlanStrategy::RowWise,
                ..req.clone()
            },
        ] {
            assert!(plan_collection(&l, 1, &adagrad(), &no_spill).is_err());
        }
        // 16-bit rows: t0 is 96 MB (8 words + 16 state floats a row)
        let half = TierRequest {
            row_dtype: RowDtype::F16,
            ..TierRequest::default()
        };
        assert_eq!(stored_bytes(&l, 0, &adagrad(), RowDtype::F16), 96_000_000);
        let p = plan_collection(&l, 2, &adagrad(), &PlanRequest::default()).unwrap();
        let loads = rank_loads(&p, &l, &adagrad(), &half);
        assert_eq!(loads.iter().sum::<u64>(), (96_000_000 + 9_600_000 + 960));
    }
}
