//! Where a collection's rows live for this process: all of them, in one process
//! ([`LocalEmbeddings`], the fast path without mpirun), or this rank's shards of a
//! collection spread over the job's ranks ([`ShardedEmbeddings`], whose forward and
//! backward are collective all-to-all exchanges).

use shardrec_tables::{
    CollectionLayout, Exchange, LocalEmbeddings, ShardedEmbeddings, ShardingKind, ShardingPlan,
    SparseOptimizer, TableError, TablePlacement,
};

#[derive(Debug)]
pub enum EmbeddingEngine {
    Local(LocalEmbeddings),
    Sharded(ShardedEmbeddings),
}

impl EmbeddingEngine {
    /// One process: every table here. Several ranks: every table row-wise over all ranks
    /// (TorchRec's choice for large tables; a configurable plan is to come).
    pub fn new(
        layout: CollectionLayout,
        optimizer: SparseOptimizer,
        ex: &dyn Exchange,
    ) -> Result<Self, TableError> {
        let n = ex.world_size();
        if n == 1 {
            return Ok(Self::Local(LocalEmbeddings::single_process(
                layout, optimizer,
            )?));
        }
        let plan = ShardingPlan {
            world_size: n,
            tables: layout
                .spec()
                .tables
                .iter()
                .map(|t| TablePlacement {
                    table: t.name.clone(),
                    kind: ShardingKind::RowWise,
                    ranks: (0..n).collect(),
                    column_starts: vec![],
                })
                .collect(),
        };
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
