//! Experiment configuration: typed TOML sections, strictly checked.
//!
//! Loading is two steps, as ripgrep separates low-level from high-level arguments: the
//! TOML text (plus `--set key=value` overrides) is deserialised into these structs with
//! `deny_unknown_fields`, so a misspelt key is an error naming it, its line and the closest
//! valid key ([`load`]); then [`validate`] checks every value's range and the
//! combinations, naming the key. Paths are relative to the working directory.

mod load;
mod optembed;
mod schema;
mod validate;

pub use load::{load_config, load_config_str, ConfigError};
pub use optembed::*;
pub use schema::*;
pub use shardrec_data::config::{
    BadRowPolicy, ColumnConfig, ColumnRole, DataConfig, DataFormat, DenseTransform, JoinConfig,
    Preprocessing, SplitConfig, SplitKind, Violation,
};
pub use validate::{model_section_violations, validate};
