//! The model interface the trainer drives, and the builder from `[model]`.

use tch::{nn, Tensor};

use crate::config::{ModelConfig, ModelKind};
use crate::dcnv2::Dcnv2;
use crate::deepfm::DeepFm;
use crate::din::Din;
use crate::dlrm::Dlrm;
use crate::logistic::Logistic;
use crate::sync_batch_norm::BatchStatsSync;
use crate::top_k_attention::TopKAttentionModel;
use crate::ModelError;

/// Shape of the inputs a model is built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelShape {
    pub num_dense: i64,
    /// Width of each categorical feature's embedding, in input order.
    pub feature_widths: Vec<i64>,
}

impl ModelShape {
    pub fn embedding_width(&self) -> i64 {
        self.feature_widths.iter().sum()
    }

    /// The common width when all features share one, else an error naming the model.
    pub fn uniform_width(&self, model: &'static str) -> Result<i64, ModelError> {
        let w = *self.feature_widths.first().ok_or(ModelError::Config {
            key: "kind",
            reason: format!("{model} needs at least one categorical feature"),
        })?;
        if self.feature_widths.iter().any(|&x| x != w) {
            return Err(ModelError::Config {
                key: "kind",
                reason: format!(
                    "{model} needs every feature at one width, got {:?}",
                    self.feature_widths
                ),
            });
        }
        Ok(w)
    }
}

/// One batch's inputs.
pub struct ModelInput<'a> {
    /// `[batch, num_dense]`
    pub dense: &'a Tensor,
    /// `[batch, embedding width]`
    pub emb: &'a Tensor,
    /// `[batch, features]`, present when the model needs first-order weights.
    pub first_order: Option<&'a Tensor>,
    /// Sequence models: how `emb` holds each sample's target and history.
    pub sequence: Option<&'a SequenceInput>,
    /// Training under data parallelism: batch norm normalises by the whole job's batch
    /// through this (SyncBatchNorm); `None` normalises by this process's rows.
    pub stats: Option<&'a BatchStatsSync<'a>>,
}

impl<'a> ModelInput<'a> {
    /// Dense values and embeddings alone: no first-order weights, no sequence, and batch
    /// norm over this process's rows.
    pub fn plain(dense: &'a Tensor, emb: &'a Tensor) -> Self {
        Self {
            dense,
            emb,
            first_order: None,
            sequence: None,
            stats: None,
        }
    }
}

/// Sequence models' view of `emb`: it has `batch * (len + 1)` rows, sample `b`'s target
/// in row `b * (len + 1)` and its history slots (oldest first, left-padded) in the `len`
/// rows after it; padded slots are zero rows.
pub struct SequenceInput {
    /// `L`: history slots per sample.
    pub len: i64,
    /// `[batch, L]` bool: the slot holds a behaviour.
    pub mask: Tensor,
}

/// The search stage's choice for every sample: history slots, most relevant first.
pub struct Retrieved {
    /// `[batch, K]` slot indices in `0..L`.
    pub slots: Tensor,
    /// `[batch, K]` bool: the chosen slot holds a behaviour (not padding).
    pub valid: Tensor,
}

/// A CTR model: inputs to one logit per sample.
pub trait CtrModel: Send {
    /// # Shapes
    /// `dense [B, nd], emb [B, W], first_order [B, F] -> logits [B]`
    fn forward_t(&self, input: &ModelInput, train: bool) -> Tensor;

    /// Training logits plus, for models with an auxiliary objective, the auxiliary
    /// logits whose loss is added to the main one.
    fn forward_train(&self, input: &ModelInput) -> (Tensor, Option<Tensor>) {
        (self.forward_t(input, true), None)
    }

    /// Sequence models: the `k` history slots the attention ranks highest.
    fn retrieve(&self, _input: &ModelInput, _k: i64) -> Option<Retrieved> {
        None
    }
}

/// The largest `model.dropout` (a rate of 1 would zero every activation); the trainer's
/// config check and [`build_model`] both use it.
pub const MAX_DROPOUT: f64 = 0.99;

/// Builds the configured model with its parameters under `p`.
pub fn build_model(
    p: &nn::Path,
    cfg: &ModelConfig,
    shape: &ModelShape,
) -> Result<Box<dyn CtrModel>, ModelError> {
    if !(0.0..=MAX_DROPOUT).contains(&cfg.dropout) {
        return Err(ModelError::Config {
            key: "dropout",
            reason: format!("{} is outside [0, {MAX_DROPOUT}]", cfg.dropout),
        });
    }
    for (key, layers) in [
        ("hidden", &cfg.hidden),
        ("attention_hidden", &cfg.attention_hidden),
        ("bottom", &cfg.bottom),
        ("top", &cfg.top),
    ] {
        if let Some(&bad) = layers.iter().find(|&&w| !(1..=1 << 20).contains(&w)) {
            return Err(ModelError::Config {
                key,
                reason: format!("layer width {bad} is outside [1, 1048576]"),
            });
        }
    }
    if cfg.kind.is_sequence() {
        for (key, v) in [
            ("sequence_len", cfg.sequence_len),
            ("top_k", cfg.top_k),
            ("attention_dim", cfg.attention_dim.unwrap_or(1)),
        ] {
            if !(1..=1 << 20).contains(&v) {
                return Err(ModelError::Config {
                    key,
                    reason: format!("{v} is outside [1, 1048576]"),
                });
            }
        }
    }
    Ok(match cfg.kind {
        ModelKind::Lr => Box::new(Logistic::new(p, shape, false)?),
        ModelKind::Fm => Box::new(Logistic::new(p, shape, true)?),
        ModelKind::Deepfm => Box::new(DeepFm::new(p, cfg, shape)?),
        ModelKind::Dcnv2 => Box::new(Dcnv2::new(p, cfg, shape)?),
        ModelKind::Dlrm => Box::new(Dlrm::new(p, cfg, shape)?),
        ModelKind::Din => Box::new(Din::new(p, cfg, shape)?),
        ModelKind::Twin | ModelKind::Dare => Box::new(TopKAttentionModel::new(p, cfg, shape)?),
    })
}
