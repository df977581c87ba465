//! Where a collection's rows live for this process: all of them, in one process
//! ([`LocalEmbeddings`], the fast path without mpirun), or this rank's shards of a
//! collection spread over the job's ranks ([`ShardedEmbeddings`], whose forward and
//! backward are collective all-to-all exchanges).

use shardrec_tables::{
    CollectionLayout, Exchange, LocalEmbeddings, ShardedEmbeddings, ShardingKind, ShardingPlan,
    SparseOptimizer, TableError, TableShard,
};

#[derive(Debug)]
pub enum EmbeddingEngine {
    Local(LocalEmbeddings),
    Sharded(ShardedEmbeddings),
}

impl EmbeddingEngine {
    /// One process: every table here. Several ranks: this rank's shards under `plan`.
    pub fn new(
        layout: CollectionLayout,
        optimizer: SparseOptimizer,
        ex: &dyn Exchange,
        plan: Option<ShardingPlan>,
    ) -> Result<Self, TableError> {
        let n = ex.world_size();
        if n == 1 {
            return Ok(Self::Local(LocalEmbeddings::single_process(
                layout, optimizer,
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
        Ok(Self::Sharded(ShardedEmbeddings::new(
            layout,
            plan,
            optimizer,
            ex.rank(),
        )?))
    }

    pub fn layout(&self) -> &CollectionLayout {
        match self {
            Self::Local(e) => e.layout(),
            Self::Sharded(e) => e.layout(),
        }
    }

    /// Bytes of parameters and optimizer state held by this process.
    pub fn bytes(&self) -> (usize, usize) {
        match self {
            Self::Local(e) => e.bytes(),
            Self::Sharded(e) => e.bytes(),
        }
    }

    /// Time spent in the all-to-all exchanges so far (zero in one process).
    pub fn exchange_times(&self) -> shardrec_tables::ExchangeTimes {
        match self {
            Self::Local(_) => Default::default(),
            Self::Sharded(e) => e.exchange_times(),
        }
    }

    pub fn optimizer(&self) -> &SparseOptimizer {
        match self {
            Self::Local(e) => e.optimizer(),
            Self::Sharded(e) => e.optimizer(),
        }
    }

    /// The shards this process writes to a checkpoint: all it holds, except replicas of a
    /// data-parallel table on any rank but its first (one copy is enough).
    pub fn shards_to_save(&self) -> Vec<(usize, &TableShard)> {
        match self {
            Self::Local(e) => e
                .shards()
                .iter()
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
            Self::Local(e) => e
                .shards_mut()
                .iter_mut()
                .enumerate()
                .flat_map(|(t, s)| s.iter_mut().map(move |s| (t, s)))
                .collect(),
            Self::Sharded(e) => e.held_mut().collect(),
        }
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

    /// The whole collection, when this process holds it.
    pub fn as_local(&self) -> Option<&LocalEmbeddings> {
        match self {
            Self::Local(e) => Some(e),
            Self::Sharded(_) => None,
        }
    }

    pub fn as_local_mut(&mut self) -> Option<&mut LocalEmbeddings> {
        match self {
            Self::Local(e) => Some(e),
            Self::Sharded(_) => None,
        }
    }
}
