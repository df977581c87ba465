//! Where a collection's rows live for this process: all of them, in one process
//! ([`LocalEmbeddings`], the fast path without mpirun), or this rank's shards of a
//! collection spread over the job's ranks ([`ShardedEmbeddings`], whose forward and
//! backward are collective all-to-all exchanges).

use shardrec_tables::{
    CollectionLayout, Exchange, LocalEmbeddings, ShardedEmbeddings, ShardingPlan, SparseOptimizer,
    TableError,
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
