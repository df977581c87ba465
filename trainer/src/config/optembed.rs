//! `[optembed]`: the three stages of OptEmbed (Lyu et al., "OptEmbed: Learning Optimal
//! Embedding Table for Click-through Rate Prediction", CIKM 2022) — supernet with learned
//! per-field thresholds, evolutionary search over per-field widths, retraining — and
//! their hyperparameters, with the paper's values as defaults.

use serde::{Deserialize, Serialize};

use super::schema::InitConfig;

/// What a pruned row (L1 norm at or below its field's threshold) becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PrunedRows {
    /// A zero vector (the paper).
    #[default]
    Zero,
    /// A learned out-of-vocabulary vector of the field.
    Oov,
}

/// One stage of OptEmbed, for `shardrec train --stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OptEmbedStage {
    Supernet,
    Search,
    Retrain,
}

impl OptEmbedStage {
    pub const ALL: [OptEmbedStage; 3] = [Self::Supernet, Self::Search, Self::Retrain];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Supernet => "supernet",
            Self::Search => "search",
            Self::Retrain => "retrain",
        }
    }
}

fn default_enabled() -> bool {
    true
}
fn default_alpha() -> f64 {
    1e-4
}
fn default_threshold_lr() -> f64 {
    1e-4
}

/// `[optembed]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptEmbedConfig {
    /// false: train the plain, unpruned model (the baseline), as without this section.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Weight of the threshold regulariser `alpha * sum_f exp(-t_f)`.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Learning rate of the thresholds' plain SGD.
    #[serde(default = "default_threshold_lr")]
    pub threshold_lr: f64,
    /// Initial threshold of every field.
    #[serde(default)]
    pub threshold_init: f64,
    #[serde(default)]
    pub pruned: PrunedRows,
    /// Epochs of the supernet stage (default: `train.epochs`). It stops early as
    /// `[train]` says.
    #[serde(default)]
    pub supernet_epochs: Option<usize>,
    /// Epochs of the retrain stage (default: `train.epochs`). It stops early as `[train]`
    /// says.
    #[serde(default)]
    pub retrain_epochs: Option<usize>,
    /// Row initialisation of the supernet's tables (default: `embedding.init`; the
    /// retrain always starts from `embedding.init`). The row mask reads each row's L1
    /// norm, which measures what training put into the row only where the initial norm
    /// is small beside it: with TorchRec's default bound (sqrt(1 / rows)) and SGD, a large
    /// field's rows start near 0.034 and one epoch adds 0.001 to 0.03, so the mask would
    /// mostly read the random start (docs/benchmarks.md section 10).
    #[serde(default)]
    pub supernet_init: Option<InitConfig>,
    #[serde(default)]
    pub search: EvolutionConfig,
}

impl Default for OptEmbedConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialise")
    }
}

fn default_population() -> usize {
    20
}
fn default_parents() -> usize {
    10
}
fn default_children() -> usize {
    10
}
fn default_mutation_prob() -> f64 {
    0.1
}
fn default_generations() -> usize {
    30
}

/// `[optembed.search]`: the evolutionary search over per-field widths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvolutionConfig {
    /// Random candidates of the first generation.
    #[serde(default = "default_population")]
    pub population: usize,
    /// The best candidates so far that breed the next generation.
    #[serde(default = "default_parents")]
    pub parents: usize,
    /// Children by mutation per generation.
    #[serde(default = "default_children")]
    pub mutations: usize,
    /// Probability that mutation redraws a field's width.
    #[serde(default = "default_mutation_prob")]
    pub mutation_prob: f64,
    /// Children by one-point crossover of two distinct parents per generation.
    #[serde(default = "default_children")]
    pub crossovers: usize,
    #[serde(default = "default_generations")]
    pub generations: usize,
    /// Also score as many uniformly random width vectors as the search scored, and
    /// report the best (the search's baseline).
    #[serde(default)]
    pub random_baseline: bool,
}

impl Default for EvolutionConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialise")
    }
}
