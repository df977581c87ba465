//! The `[model]` section of an experiment: which architecture and its layer sizes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Logistic regression over dense features and one weight per categorical value.
    Lr,
    /// Factorisation machine (Rendle 2010).
    Fm,
    /// DeepFM (Guo et al. 2017): FM plus an MLP over the same embeddings.
    Deepfm,
    /// DCN-V2 (Wang et al. 2021): stacked full-rank cross layers, then an MLP.
    Dcnv2,
    /// DLRM (Naumov et al. 2019): bottom MLP, pairwise dot interaction, top MLP.
    Dlrm,
    /// DIN (Zhou et al. 2018): target attention by an MLP activation unit over the whole
    /// behaviour sequence.
    Din,
    /// TWIN (Chang et al. 2023): top-K search over the sequence, then softmax
    /// aggregation, with one embedding set for both roles.
    Twin,
    /// DARE (Feng et al. 2025): TWIN's search and aggregation with decoupled attention
    /// and representation embeddings.
    Dare,
}

impl ModelKind {
    /// Whether the model reads a first-order (one weight per value) input beside its
    /// embeddings. LR has no embeddings: its main input *is* the first-order weights.
    pub fn needs_first_order(self) -> bool {
        matches!(self, ModelKind::Fm | ModelKind::Deepfm)
    }

    /// Width the main tables must have when the model fixes it (LR: one weight per value).
    pub fn fixed_embedding_width(self) -> Option<usize> {
        matches!(self, ModelKind::Lr).then_some(1)
    }

    /// Whether the model reads a target item and its behaviour sequence (sequence data)
    /// instead of independent categorical features.
    pub fn is_sequence(self) -> bool {
        matches!(self, ModelKind::Din | ModelKind::Twin | ModelKind::Dare)
    }

    /// Whether the model has a second (attention) embedding set.
    pub fn decoupled(self) -> bool {
        matches!(self, ModelKind::Dare)
    }
}

fn default_true() -> bool {
    true
}

fn default_hidden() -> Vec<i64> {
    vec![256, 128]
}
fn default_bottom() -> Vec<i64> {
    vec![512, 256]
}
fn default_top() -> Vec<i64> {
    vec![512, 256]
}
fn default_cross() -> usize {
    3
}
fn default_sequence_len() -> usize {
    200
}
fn default_top_k() -> usize {
    20
}
fn default_attention_hidden() -> Vec<i64> {
    vec![36]
}

/// Architecture and layer sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub kind: ModelKind,
    /// Hidden layers of the MLP of DeepFM and DCNv2.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<i64>,
    /// DLRM bottom MLP over dense features; a last layer of the embedding width is added.
    #[serde(default = "default_bottom")]
    pub bottom: Vec<i64>,
    /// DLRM top MLP; a last layer of width 1 is added.
    #[serde(default = "default_top")]
    pub top: Vec<i64>,
    /// DCNv2 cross layers.
    #[serde(default = "default_cross")]
    pub cross_layers: usize,
    /// Dropout after each hidden layer, in [0, 1).
    #[serde(default)]
    pub dropout: f64,
    /// Batch normalisation after each hidden linear layer (sequence models: of the
    /// head's input, as DARE's head has it).
    #[serde(default)]
    pub batch_norm: bool,
    /// Under mpirun, batch norm normalises by the whole step's batch over all ranks
    /// (PyTorch's SyncBatchNorm), so the model trained matches one process's; false:
    /// each rank by its own share (DDP without SyncBatchNorm).
    #[serde(default = "default_true")]
    pub sync_batch_norm: bool,
    /// Sequence models: `L`, the newest behaviours kept (older ones are dropped, shorter
    /// histories left-padded).
    #[serde(default = "default_sequence_len")]
    pub sequence_len: usize,
    /// TWIN and DARE: `K`, the behaviours the search keeps.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// DARE: width of each attention table (item, category, time); unset: the
    /// representation width `embedding.dim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_dim: Option<usize>,
    /// DIN: hidden layers of the attention activation unit.
    #[serde(default = "default_attention_hidden")]
    pub attention_hidden: Vec<i64>,
    /// TWIN and DARE: add the loss of the same head over a softmax attention across the
    /// whole sequence (the official DARE scripts' auxiliary loss).
    #[serde(default)]
    pub aux_loss: bool,
}

impl ModelConfig {
    pub fn new(kind: ModelKind) -> Self {
        Self {
            kind,
            hidden: default_hidden(),
            bottom: default_bottom(),
            top: default_top(),
            cross_layers: default_cross(),
            dropout: 0.0,
            batch_norm: false,
            sync_batch_norm: true,
            sequence_len: default_sequence_len(),
            top_k: default_top_k(),
            attention_dim: None,
            attention_hidden: default_attention_hidden(),
            aux_loss: false,
        }
    }
}
