//! Everything a run keeps on disk and reads back, in one place: the training loop calls
//! it, and it knows nothing of the loop.
//!
//! - [`checked_file`]: files written with their size and CRC32, verified before use;
//! - [`checkpoint`]: checkpoints of any number of ranks, loaded under any other
//!   (resharding), written atomically;
//! - [`model_io`]: a one-process model folder (whole tables), and OptEmbed's compact one;
//! - [`saved`]: loading a checkpoint or model into a fresh bundle (resume, eval, the best
//!   model a resumed run had);
//! - [`run_checkpoints`]: what a run writes as it trains (checkpoints, the best
//!   validation's model, the final model).

pub mod checked_file;
pub mod checkpoint;
pub mod model_io;
pub mod run_checkpoints;
pub mod saved;

pub use checkpoint::{CheckpointManifest, Position, ValidationState};
pub use model_io::{CompactModelInfo, ModelIoError, ModelManifest, COMPACT_ROW_MASK};
pub use run_checkpoints::RunCheckpoints;
pub use saved::{best_before, fill_saved, refuse_masked_optembed_model, resume_from, SavedFolder};
