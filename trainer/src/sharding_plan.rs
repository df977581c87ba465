//! The job's sharding plans (one per table collection) from `[sharding]`: computed by the
//! planner, or read back from a `sharding_plan.toml` an earlier run wrote, so a placement
//! can be repeated exactly. Every run writes the plan it used to its run folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shardrec_tables::{
    plan_collection, rank_loads, CollectionLayout, PlanRequest, PlanStrategy, ShardingPlan,
    SparseOptimizer, TableError, TierRequest,
};

use crate::config::{EmbeddingConfig, ShardingConfig};
use crate::TrainError;

/// Plans of the main collection and of the first-order weights (LR, FM, DeepFM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionPlans {
    pub main: ShardingPlan,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_order: Option<ShardingPlan>,
}

/// Why the job's sharding plans cannot be had; each names the plan file or rank.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{path}: [{collection}] is a plan for {planned} ranks, but this job has {ranks}")]
    OtherWorldSize {
        path: PathBuf,
        collection: String,
        planned: usize,
        ranks: usize,
    },
    #[error("{path}: [{collection}]: {source}")]
    DoesNotFit {
        path: PathBuf,
        collection: String,
        source: TableError,
    },
    #[error("{path}: [{collection}] does not match this model's collections")]
    OtherCollections { path: PathBuf, collection: String },
    #[error("[sharding]: {0}")]
    Planner(TableError),
    #[error("[sharding]: rank {rank} would hold {load} bytes of RAM for its tables (rows and optimizer state in RAM, file-tier caches; tables plus first-order weights), above sharding.memory_limit_per_rank = {limit}")]
    OverMemoryLimit { rank: usize, load: u64, limit: u64 },
    #[error("sharding.tables.{table} = {kind:?}: a dynamic table is sharded row-wise (its keys are spread over the ranks by hash)")]
    DynamicNotRowWise {
        table: String,
        kind: shardrec_tables::ShardingKind,
    },
    #[error("{path}: not a sharding plan: {message}")]
    NotAPlan { path: PathBuf, message: String },
    #[error("sharding plan: {0}")]
    Write(#[from] toml::ser::Error),
}

/// The plans for `world` ranks as `[sharding]` says, for tables held as `[embedding]`
/// says (first-order weights: f32 in RAM).
pub fn resolve_plans(
    cfg: &ShardingConfig,
    embedding: &EmbeddingConfig,
    main: &CollectionLayout,
    first_order: Option<&CollectionLayout>,
    world: usize,
    opt: &SparseOptimizer,
    dynamic: &[crate::embedding::DynamicTable],
) -> Result<CollectionPlans, TrainError> {
    if let Some(path) = &cfg.plan_file {
        let plans = read_plans(path)?;
        let check =
            |name: &str, plan: Option<&ShardingPlan>, layout: Option<&CollectionLayout>| match (
                plan, layout,
            ) {
                (Some(p), Some(l)) => {
                    if p.world_size != world {
                        return Err(PlanError::OtherWorldSize {
                            path: path.clone(),
                            collection: name.into(),
                            planned: p.world_size,
                            ranks: world,
                        });
                    }
                    p.validate(l).map_err(|source| PlanError::DoesNotFit {
                        path: path.clone(),
                        collection: name.into(),
                        source,
                    })
                }
                (None, None) => Ok(()),
                _ => Err(PlanError::OtherCollections {
                    path: path.clone(),
                    collection: name.into(),
                }),
            };
        check("main", Some(&plans.main), Some(main))?;
        check("first_order", plans.first_order.as_ref(), first_order)?;
        return Ok(plans);
    }
    let mut tables = cfg.tables.clone();
    if cfg.strategy == PlanStrategy::Auto {
        // the unified pool is a few big tables every feature reads: row-wise over all
        // ranks spreads both its bytes and its lookups (Coleman et al. shard it so)
        for t in main
            .spec()
            .tables
            .iter()
            .filter(|t| t.name.starts_with("unified."))
        {
            tables
                .entry(t.name.clone())
                .or_insert(shardrec_tables::ShardingKind::RowWise);
        }
    }
    row_wise_dynamic(&mut tables, dynamic, world)?;
    let req = PlanRequest {
        strategy: cfg.strategy,
        tables,
        memory_limit_per_rank: cfg.memory_limit_per_rank,
        tiers: embedding.tier_request(main),
    };
    let named = PlanError::Planner;
    let main_plan = plan_collection(main, world, opt, &req).map_err(named)?;
    // the per-table choices name main tables; first-order tables follow the strategy,
    // and stay f32 in RAM
    let first_req = PlanRequest {
        tables: dynamic
            .iter()
            .filter_map(|d| d.first_order_table.clone())
            .map(|t| (t, shardrec_tables::ShardingKind::RowWise))
            .collect(),
        tiers: TierRequest::default(),
        ..req.clone()
    };
    let first_plan = first_order
        .map(|l| plan_collection(l, world, opt, &first_req).map_err(named))
        .transpose()?;
    if let Some(limit) = cfg.memory_limit_per_rank {
        let mut loads = rank_loads(&main_plan, main, opt, &req.tiers);
        if let (Some(p), Some(l)) = (&first_plan, first_order) {
            for (a, b) in loads
                .iter_mut()
                .zip(rank_loads(p, l, opt, &first_req.tiers))
            {
                *a += b;
            }
        }
        if let Some((rank, &load)) = loads.iter().enumerate().find(|(_, &b)| b > limit) {
            return Err(PlanError::OverMemoryLimit { rank, load, limit }.into());
        }
    }
    Ok(CollectionPlans {
        main: main_plan,
        first_order: first_plan,
    })
}

/// A dynamic table's keys are spread over the ranks by hash, each owner holding them in
/// its own block of rows: it is row-wise (another kind in `sharding.tables` is refused).
fn row_wise_dynamic(
    tables: &mut std::collections::BTreeMap<String, shardrec_tables::ShardingKind>,
    dynamic: &[crate::embedding::DynamicTable],
    world: usize,
) -> Result<(), TrainError> {
    use shardrec_tables::ShardingKind::RowWise;
    for d in dynamic {
        match tables.get(&d.table) {
            Some(&kind) if kind != RowWise && world > 1 => {
                let table = d.table.clone();
                return Err(PlanError::DynamicNotRowWise { table, kind }.into());
            }
            _ => tables.insert(d.table.clone(), RowWise),
        };
    }
    Ok(())
}

pub fn read_plans(path: &Path) -> Result<CollectionPlans, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| {
        PlanError::NotAPlan {
            path: path.to_path_buf(),
            message: e.to_string().replace('\n', " "),
        }
        .into()
    })
}

pub fn write_plans(path: &Path, plans: &CollectionPlans) -> Result<(), TrainError> {
    let text = toml::to_string(plans).map_err(PlanError::from)?;
    std::fs::write(path, text).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}
