//! CTR models for shardrec as tch modules: LR, FM, DeepFM, DCNv2 and DLRM; the
//! behaviour-sequence models DIN, TWIN and DARE; the dense optimizers (Adam, Adagrad, SGD
//! with weight decay).
//!
//! Every model reads the same two inputs, produced outside libtorch by the embedding
//! tables: `dense` (`[batch, num_dense]`) and `emb` (`[batch, sum of feature widths]`,
//! each feature's vector in its own columns), plus `first_order` (`[batch, features]`,
//! one scalar weight per feature) for the models with a linear part. The models never own
//! embedding tables, so tables can be sharded, hashed or pruned without touching them.

mod config;
mod dcnv2;
mod deepfm;
mod dense_optimizer;
mod din;
mod dlrm;
mod error;
mod fm;
mod logistic;
mod mlp;
mod model;
mod sequence_head;
mod sequence_parts;
mod sync_batch_norm;
mod target_search;
mod top_k_attention;

pub use config::{ModelConfig, ModelKind};
pub use dense_optimizer::{DenseOptimizer, DenseOptimizerConfig, DenseOptimizerKind};
pub use error::ModelError;
pub use mlp::Mlp;
pub use model::{
    build_model, CtrModel, ModelInput, ModelShape, Retrieved, SequenceInput, MAX_DROPOUT,
};
pub use sequence_parts::SetWidths as SearchWidths;
pub use sync_batch_norm::{batch_norm_forward, BatchStatsSync, StatsReducer};
pub use target_search::{relevance_scores, search_top_k};
