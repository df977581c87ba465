//! Behaviour sequences for DIN, TWIN and DARE: how a batch of sequence data (target plus
//! history, [`crate::data::sequence_format`]) becomes lookups in ordinary shardrec
//! tables, and how the search stage is scored against known relevant behaviours.

mod lookup_ids;
mod retrieval;
mod table_features;
mod test_metrics;

pub use lookup_ids::SequenceLookup;
pub use retrieval::{
    ndcg_at_k, RelevantPositions, RetrievalError, RetrievalScore, RetrievalTally, RetrievalTarget,
};
pub use table_features::{sequence_embedding_config, sequence_table_schema, TABLE_FEATURES};
pub use test_metrics::{retrieval_target, sequence_test_metrics, SequenceHook};
