//! Embedding storage, id routing and sparse optimizers for shardrec.
//!
//! This crate holds everything about embedding tables that does not need libtorch or MPI,
//! so it builds and tests in seconds. The pieces, in the order a training step uses them:
//!
//! 1. [`KeyedJaggedIds`]: the sparse half of a batch (TorchRec's `KeyedJaggedTensor`).
//! 2. [`CollectionSpec`]: which tables exist and how each feature's ids reach their rows
//!    (plain offset, hashed bucket, and later unified chunks or quotient-remainder),
//!    validated into a [`CollectionLayout`] that fixes every feature's output columns.
//! 3. [`LookupPlan`]: one batch's requests, with duplicate rows merged per table and the
//!    requests grouped by row, so forward gathers each row once and backward reduces each
//!    row's gradient once, in a fixed order (bitwise repeatable). A batch of at most one
//!    id per feature and sample (sequence rows, single-valued fields) is planned table
//!    by table, without the list of requests (`one_id_plan`).
//! 4. [`ShardingPlan`]: plain data saying which rank owns which rows and columns of each
//!    table; routing an id to its owner is a pure function of it.
//! 5. [`TableShard`]: the rows (and optimizer state) one rank owns, behind the
//!    [`RowStorage`] seam (RAM now, memory-mapped files later).
//! 6. [`SparseOptimizer`]: SGD, Adagrad (row-wise and element-wise) and lazy Adam applied
//!    to the touched rows only.
//! 7. [`LocalEmbeddings`]: one process owning every shard, the fast path without mpirun.
//! 8. [`ShardedEmbeddings`]: one rank's shards and the all-to-all exchanges of a step,
//!    over any [`Exchange`] (MPI in the trainer, threads in tests).
//! 9. [`FusedLayout`]: the host half of fused device tables (every table of a width in
//!    one tensor): where each table's rows sit, and a step's index arrays
//!    ([`DeviceArrays`] for the device to deduplicate, [`GroupStep`] planned here);
//!    [`RowCache`], the directory of a device cache of hot rows; [`BatchedRows`], the
//!    hook through which a rank's shards are served and updated in one batch a step.

mod collection;
mod conformance;
mod dynamic;
mod error;
mod exchange;
mod file_rows;
mod fused_plan;
mod hashing;
mod init;
mod jagged;
mod key_index;
mod key_maps;
mod local;
mod lookup_plan;
mod one_id_plan;
mod optimizer;
mod planner;
mod prefetch;
mod reshard;
mod row_cache;
mod row_dtype;
mod row_ops;
mod shard;
mod sharded;
mod sharding;
mod spec;
mod storage;

pub use collection::{CollectionLayout, FeatureLayout};
pub use conformance::{
    check_against_one_process, conformance_cases, conformance_plan, ConformanceReport,
    ConformanceVerdict, CONFORMANCE_TABLES,
};
pub use dynamic::{
    key_owner, Admission, CountMinSketch, Eviction, KeyLookup, KeyRowStats, KeyRows, RowMove,
};
pub use error::TableError;
pub use exchange::{Exchange, SoloExchange, ThreadExchange};
pub use file_rows::{CachePolicy, FileRows, FileTier, Records, TierReport, TierStats};
pub use fused_plan::{Bags, DeviceArrays, FusedGroup, FusedLayout, GroupStep, MulTerms};
pub use hashing::{hash_id, mix64, unit_f32, KeyHashBuilder, KeyHasher};
pub use init::RowInit;
pub use jagged::KeyedJaggedIds;
pub use key_maps::{FeatureKeys, FreshRows, KeyMaps};
pub use local::{FilePrefetcher, LocalEmbeddings, SliceGradient};
pub use lookup_plan::{LookupPlan, PlanRequests, Request, TableRequests};
pub use optimizer::{OptimizerKind, SparseOptimizer, StateLayout};
pub use planner::{
    plan_collection, rank_loads, stored_bytes, table_bytes, PlanRequest, PlanStrategy, TierRequest,
};
pub use reshard::{fill_from_pieces, Piece};
pub use row_cache::{CacheStats, Placement, RowCache};
pub use row_dtype::{Rounding, RowDtype};
pub use row_ops::{assemble_output, reduce_row_gradients, sum_in_source_order};
pub use shard::{DeviceRows, TableShard, TableStorage, Upload};
pub use sharded::{BatchedRows, ExchangeTimes, FileRowsWanted, ShardedEmbeddings, ShardedLookup};
pub use sharding::{Bucketized, ShardExtent, ShardingKind, ShardingPlan, TablePlacement};
pub use spec::{CollectionSpec, Combine, FeatureSpec, Pooling, Probe, RowMap, TableSpec};
pub use storage::{InMemoryRows, RowStorage};
