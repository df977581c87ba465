//! The bridge between the configured tables (in Rust memory, `shardrec-tables`) and the
//! dense model (libtorch): building the collections from `[embedding]` and the data's
//! schema, and moving embeddings into and gradients out of tch tensors.

mod budget;
mod builder;
mod device_rows;
mod engine;
mod fused;
mod fused_hook;
mod fused_shards;
mod keyed;
mod prefetch;
mod tensor_bridge;

pub use builder::{build_collections, Collections, DynamicTable, TableConfigError};
pub use device_rows::TensorRows;
pub use engine::EmbeddingEngine;
pub use fused::{FusedEmbeddings, FusedStep, StageTimes};
pub use fused_hook::FusedTablesHook;
pub use fused_shards::FusedShards;
pub use keyed::{key_maps, start_default_rows, start_fresh_rows};
pub use prefetch::FileTierHook;
pub use tensor_bridge::{apply_gradient, apply_gradient_slices, lookup, Activation};
