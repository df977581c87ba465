//! OptEmbed (Lyu et al., "OptEmbed: Learning Optimal Embedding Table for Click-through
//! Rate Prediction", CIKM 2022; `../shared/design/methods.md` section 2): learned row
//! pruning and per-field width search, exported as a compact table.
//!
//! - [`surrogate`]: the step function with its surrogate gradient;
//! - [`layer`]: the row and dimension masks between the tables and the dense model;
//! - [`row_mask`]: the fixed mask the supernet leaves, computed at the rows' owners;
//! - [`evolution`]: the evolutionary search over widths (and its random baseline);
//! - [`compact`]: pruned rows removed, ids remapped, each field at its own width;
//! - [`stages`]: supernet, search and retrain, run in order through the training loop.

pub mod compact;
pub mod evolution;
pub mod layer;
pub mod row_mask;
pub mod stages;
pub mod surrogate;

pub use compact::CompactIds;
pub use layer::{OptEmbedLayer, OptEmbedSetup, RowSelection, Widths};
pub use row_mask::RowMask;
pub use stages::{compact_setup, run_stages};
