//! Where a collection's rows live for this process: all of them, in one process
//! ([`LocalEmbeddings`], the fast path without mpirun), or this rank's shards of a
//! collection spread over the job's ranks ([`ShardedEmbeddings`], whose forward and
//! backward are collective all-to-all exchanges), or, in one process, all of them fused
//! per width into libtorch tensors on a device ([`FusedEmbeddings`]).

use shardrec_tables::{
    CollectionLayout, Exchange, FileTier, LocalEmbeddings, ShardedEmbeddings, ShardingKind,
    ShardingPlan, SparseOptimizer, TableError, TableShard, TableStorage,
};

use super::FusedEmbeddings;
use crate::config::EmbeddingConfig;

#[derive(Debug)]
pub enum EmbeddingEngine {
    Local(LocalEmbeddings),
    Sharded(ShardedEmbeddings),
    Fused(Box<FusedEmbeddings>),
}

/// How each table's rows are held on this rank: as `embedding.row_dtype`, in the file
/// tier for the tables whose own `storage` or `embedding.storage` says `file` or that the
/// plan moved there (each with its cache), else in RAM; the tables named in `keyed`
/// (dynamic tables) are set row by row as keys take them.
pub fn table_storage(
    cfg: &EmbeddingConfig,
    layout: &CollectionLayout,
    plan: Option<&ShardingPlan>,
    held_rows: impl Fn(usize) -> u64,
    keyed: &[String],
) -> Result<Vec<TableStorage>, TableError> {
    let tables = &layout.spec().tables;
    let moved = |t: usize| {
        plan.and_then(|p| p.tables.get(t))
            .is_some_and(|p| p.in_file_tier)
    };
    Ok(file_tiers(cfg, layout, moved, held_rows)?
        .into_iter()
        .zip(tables)
        .map(|(file, spec)| TableStorage {
            file,
            dtype: cfg.row_dtype,
            keyed: keyed.contains(&spec.name),
        })
        .collect())
}

/// Which tables are in the file tier, each with its cache: a table's own `file` entry
/// brings its own cache; the others there (by `embedding.storage`, or `moved` there by the
/// planner) share `embedding.storage.cache_bytes` in proportion to the rows this rank
/// holds of them.
fn file_tiers(
    cfg: &EmbeddingConfig,
    layout: &CollectionLayout,
    moved: impl Fn(usize) -> bool,
    held_rows: impl Fn(usize) -> u64,
) -> Result<Vec<Option<FileTier>>, TableError> {
    let tables = &layout.spec().tables;
    let own_file = |t: usize| {
        cfg.own_storage(&tables[t].name)
            .and_then(|s| s.init(s.cache_bytes))
    };
    let shared =
        |t: usize| own_file(t).is_none() && (moved(t) || (cfg.puts_in_file(&tables[t].name)));
    let shared_rows: u64 = (0..tables.len())
        .filter(|&t| shared(t))
        .map(&held_rows)
        .sum();
    let tier_of = |t: usize| match own_file(t) {
        Some(tier) => Ok(Some(tier)),
        None if shared(t) => {
            let share =
                cfg.storage.cache_bytes as u128 * held_rows(t) as u128 / shared_rows.max(1) as u128;
            match cfg.storage.spill(share as u64) {
                Some(tier) => Ok(Some(tier)),
                None => Err(TableError::InvalidTable {
                    table: tables[t].name.clone(),
                    reason: "the sharding plan puts it in the file tier, but embedding.storage.dir is not set".into(),
                }),
            }
        }
        None => Ok(None),
    };
    let tiers = (0..tables.len())
        .map(tier_of)
        .collect::<Result<Vec<_>, _>>()?;
    for tier in tiers.iter().flatten() {
        std::fs::create_dir_all(&tier.dir).map_err(|e| TableError::Storage {
            path: tier.dir.display().to_string(),
            reason: format!("cannot create the file tier's folder: {e}"),
        })?;
        remove_stale_scratch(&tier.dir);
    }
    Ok(tiers)
}

/// Removes the table files a killed process left in `dir` (`<table>...p<pid>.rows` of a
/// pid no longer running on this host): a file tier is scratch space, rebuilt on resume.
fn remove_stale_scratch(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_suffix(".rows")
            .and_then(|n| n.rsplit_once(".p"))
            .and_then(|(_, pid)| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

impl EmbeddingEngine {
    /// One process: every table here. Several ranks: this rank's shards under `plan`.
    /// Tables go to the file tier as `storage` says (None: all in RAM); the `keyed`
    /// ones (dynamic tables) start untouched, their rows set as keys take them.
    pub fn new(
        layout: CollectionLayout,
        optimizer: SparseOptimizer,
        ex: &dyn Exchange,
        plan: Option<ShardingPlan>,
        storage: Option<&EmbeddingConfig>,
        keyed: &[String],
    ) -> Result<Self, TableError> {
        let default_cfg = EmbeddingConfig::default();
        let storage = storage.or((!keyed.is_empty()).then_some(&default_cfg));
        let n = ex.world_size();
        if n == 1 {
            let storage = match storage {
                Some(cfg) => table_storage(
                    cfg,
                    &layout,
                    plan.as_ref(),
                    |t| layout.spec().tables[t].rows,
                    keyed,
                )?,
                None => vec![],
            };
            let plan = ShardingPlan::single_process(&layout);
            return Ok(Self::Local(LocalEmbeddings::with_storage(
                layout, plan, optimizer, &storage,
            )?));
        }
        let plan = plan.ok_or_else(|| {
            TableError::BadPlan(format!("{n} ranks but no sharding plan for the tables"))
        })?;
        if plan.world_size != n {
            return Err(TableError::BadPlan(format!(
                "a plan for {} ranks in a job of {n}",
                plan.world_size
            )));
        }
        let rank = ex.rank();
        let storage = match storage {
            Some(cfg) => table_storage(
                cfg,
                &layout,
                Some(&plan),
                |t| {
                    let spec = &layout.spec().tables[t];
                    plan.placement(t)
                        .extents(spec.rows, spec.dim)
                        .iter()
                        .filter(|e| e.rank == rank)
                        .map(|e| e.rows.end - e.rows.start)
                        .sum()
                },
                keyed,
            )?,
            None => vec![],
        };
        Ok(Self::Sharded(ShardedEmbeddings::with_storage(
            layout, plan, optimizer, rank, &storage,
        )?))
    }

    /// This process's rank among the ranks holding the tables (0 in one process).
    pub fn rank(&self) -> usize {
        match self {
            Self::Local(_) | Self::Fused(_) => 0,
            Self::Sharded(e) => e.rank(),
        }
    }

    /// Ranks the tables are spread over (1 in one process).
    pub fn world_size(&self) -> usize {
        match self {
            Self::Local(_) | Self::Fused(_) => 1,
            Self::Sharded(e) => e.sharding().world_size,
        }
    }

    pub fn layout(&self) -> &CollectionLayout {
        match self {
            Self::Local(e) => e.layout(),
            Self::Sharded(e) => e.layout(),
            Self::Fused(e) => e.host().layout(),
        }
    }

    /// Bytes of parameters and optimizer state held by this process.
    pub fn bytes(&self) -> (usize, usize) {
        match self {
            Self::Local(e) => e.bytes(),
            Self::Sharded(e) => e.bytes(),
            Self::Fused(e) => e.host().bytes(),
        }
    }

    /// Time spent in the all-to-all exchanges so far (zero in one process).
    pub fn exchange_times(&self) -> shardrec_tables::ExchangeTimes {
        match self {
            Self::Local(_) | Self::Fused(_) => Default::default(),
            Self::Sharded(e) => e.exchange_times(),
        }
    }

    pub fn optimizer(&self) -> &SparseOptimizer {
        match self {
            Self::Local(e) => e.optimizer(),
            Self::Sharded(e) => e.optimizer(),
            Self::Fused(e) => e.optimizer(),
        }
    }

    /// The shards this process writes to a checkpoint: all it holds, except replicas of a
    /// data-parallel table on any rank but its first (one copy is enough).
    pub fn shards_to_save(&self) -> Vec<(usize, &TableShard)> {
        match self {
            Self::Local(_) | Self::Fused(_) => self
                .as_local()
                .into_iter()
                .flat_map(|e| e.shards())
                .enumerate()
                .flat_map(|(t, s)| s.iter().map(move |s| (t, s)))
                .collect(),
            Self::Sharded(e) => e
                .held()
                .filter(|&(t, _)| {
                    let p = e.sharding().placement(t);
                    p.kind != ShardingKind::DataParallel || p.ranks.first() == Some(&e.rank())
                })
                .collect(),
        }
    }

    /// Every shard this process holds (to fill from a checkpoint).
    pub fn shards_mut(&mut self) -> Vec<(usize, &mut TableShard)> {
        match self {
            Self::Local(_) | Self::Fused(_) => self
                .as_local_mut()
                .into_iter()
                .flat_map(|e| e.shards_mut().iter_mut())
                .enumerate()
                .flat_map(|(t, s)| s.iter_mut().map(move |s| (t, s)))
                .collect(),
            Self::Sharded(e) => e.held_mut().collect(),
        }
    }

    /// The reader of this process's file-tier rows a step ahead, in one process.
    pub fn file_prefetcher(&self) -> Option<shardrec_tables::FilePrefetcher> {
        match self {
            Self::Local(e) => e.file_prefetcher(),
            Self::Sharded(_) | Self::Fused(_) => None,
        }
    }

    /// Under several ranks with file tables: the file rows held here that the ranks'
    /// next batches (this rank's is `next`) look up, from an exchange of their ids.
    /// Collective; None in one process or with every table in RAM (no exchange).
    pub fn file_rows_wanted(
        &self,
        ex: &dyn Exchange,
        next: &shardrec_tables::KeyedJaggedIds,
    ) -> Result<Option<shardrec_tables::FileRowsWanted>, TableError> {
        match self {
            Self::Sharded(e) if e.has_file_tier() => e.file_rows_wanted(ex, next).map(Some),
            _ => Ok(None),
        }
    }

    /// What each file-tier shard held here holds and did (empty with every table in RAM).
    pub fn tier_reports(&self, rank: usize) -> Vec<serde_json::Value> {
        let names = &self.layout().spec().tables;
        // every shard held, replicas of data-parallel tables included: each has its file
        let held: Vec<(usize, &TableShard)> = match self {
            Self::Local(_) | Self::Fused(_) => self.shards_to_save(),
            Self::Sharded(e) => e.held().collect(),
        };
        held.into_iter()
            .filter_map(|(t, s)| {
                let r = s.tier_report()?;
                let accesses = (r.stats.hits + r.stats.misses).max(1);
                let mut v = serde_json::to_value(r).ok()?;
                let o = v.as_object_mut()?;
                o.insert("table".into(), names[t].name.clone().into());
                o.insert("rank".into(), rank.into());
                o.insert("rows".into(), s.num_rows().into());
                o.insert(
                    "hit_rate".into(),
                    (r.stats.hits as f64 / accesses as f64).into(),
                );
                Some(v)
            })
            .collect()
    }

    /// Moves every shard held here to `device`'s memory (gathers and sparse updates then
    /// run there).
    pub fn move_rows_to(&mut self, device: tch::Device) -> Result<(), TableError> {
        for (_, shard) in self.shards_mut() {
            shard.move_to_device(&|w, s, width, sw| {
                Ok(Box::new(super::TensorRows::upload(
                    w, s, width, sw, device,
                )?))
            })?;
        }
        Ok(())
    }

    /// This process's part of table `table` (the global rows it holds start at the
    /// returned shard's `rows.start`), if it holds one.
    pub fn held_shard_mut(&mut self, table: &str) -> Option<&mut TableShard> {
        let t = self
            .layout()
            .spec()
            .tables
            .iter()
            .position(|s| s.name == table)?;
        self.shards_mut()
            .into_iter()
            .find(|(i, _)| *i == t)
            .map(|(_, s)| s)
    }

    /// The extent of table `table` this rank holds: (first global row, rows), if any.
    pub fn held_rows(&self, table: &str, rank: usize) -> Option<(u64, u64)> {
        let layout = self.layout();
        let t = layout.spec().tables.iter().position(|s| s.name == table)?;
        let spec = &layout.spec().tables[t];
        match self {
            Self::Local(_) | Self::Fused(_) => Some((0, spec.rows)),
            Self::Sharded(e) => {
                let p = e.sharding().placement(t);
                if p.kind != ShardingKind::RowWise && p.ranks.len() > 1 {
                    return None;
                }
                p.extents(spec.rows, spec.dim)
                    .into_iter()
                    .find(|x| x.rank == rank)
                    .map(|x| (x.rows.start, x.rows.end - x.rows.start))
            }
        }
    }

    /// The whole collection, when this process holds it.
    pub fn as_local(&self) -> Option<&LocalEmbeddings> {
        match self {
            Self::Local(e) => Some(e),
            Self::Fused(e) => Some(e.host()),
            Self::Sharded(_) => None,
        }
    }

    pub fn as_local_mut(&mut self) -> Option<&mut LocalEmbeddings> {
        match self {
            Self::Local(e) => Some(e),
            Self::Fused(e) => Some(e.host_mut()),
            Self::Sharded(_) => None,
        }
    }

    /// One process's tables fused per width on `device` ([`FusedEmbeddings`]), behind a
    /// device cache of `cache_bytes` when that is less than their rows (0: no cache);
    /// under mpirun, the shards this rank holds fused per width on `device`, served and
    /// updated in one batch a step ([`super::FusedShards`]; no cache).
    pub fn fuse(self, device: tch::Device, cache_bytes: u64) -> Result<Self, TableError> {
        match self {
            Self::Local(e) => Ok(Self::Fused(Box::new(FusedEmbeddings::adopt(
                e,
                device,
                cache_bytes,
            )?))),
            Self::Sharded(mut e) => {
                let (tables, opt) = (e.layout().num_tables(), *e.optimizer());
                let rows = super::FusedShards::adopt(e.held_mut().collect(), tables, &opt, device)?;
                e.serve_in_batches(Box::new(rows));
                Ok(Self::Sharded(e))
            }
            other => Ok(other),
        }
    }

    /// How the rows are held and stepped, for the summary: `host`, `device` (a tensor
    /// per shard), `fused`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Fused(_) => "fused",
            Self::Sharded(e) if e.serves_in_batches() => "fused",
            _ if self.shards_to_save().iter().any(|(_, s)| s.on_device()) => "device",
            _ => "host",
        }
    }
}
