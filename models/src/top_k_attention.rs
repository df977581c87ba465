//! TWIN and DARE: search the behaviour sequence for the `K` behaviours most relevant to
//! the target ([`crate::target_search`]), aggregate their representations with a softmax
//! over the `K` scores, predict with [`SequenceHead`].
//!
//! TWIN (Chang et al., "TWIN: TWo-stage Interest Network for Lifelong User Behavior
//! Modeling in CTR Prediction at Kuaishou", KDD 2023) scores and aggregates with one
//! embedding set. DARE (Feng et al., "Long-Sequence Recommendation Models Need Decoupled
//! Embeddings", ICLR 2025, arXiv 2410.02604) gives attention its own tables (possibly
//! narrower), so the gradients of "which behaviours matter" and "what they say about
//! the click" stop pulling one vector two ways. With `aux_loss`, the same head also
//! predicts from a softmax attention over the whole sequence, as the official scripts do.

use tch::nn;
use tch::Tensor;

use crate::config::ModelConfig;
use crate::model::{CtrModel, ModelInput, ModelShape, Retrieved};
use crate::sequence_head::SequenceHead;
use crate::sequence_parts::{split_parts, SequenceWidths};
use crate::target_search::{
    aggregate, aggregate_all, relevance_scores, search_top_k, PADDING_SCORE,
};
use crate::ModelError;

#[derive(Debug)]
pub struct TopKAttentionModel {
    widths: SequenceWidths,
    k: i64,
    aux_loss: bool,
    head: SequenceHead,
}

impl TopKAttentionModel {
    pub fn new(p: &nn::Path, cfg: &ModelConfig, shape: &ModelShape) -> Result<Self, ModelError> {
        let decoupled = cfg.kind.decoupled();
        let name = if decoupled { "dare" } else { "twin" };
        let widths = SequenceWidths::of(shape, decoupled, name)?;
        if cfg.top_k == 0 {
            return Err(ModelError::Config {
                key: "top_k",
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            widths,
            k: cfg.top_k as i64,
            aux_loss: cfg.aux_loss,
            head: SequenceHead::new(&(p / "head"), cfg, widths.representation.total()),
        })
    }

    /// Main logits and the full-sequence scores (for the auxiliary loss).
    fn run(&self, input: &ModelInput, train: bool) -> (Tensor, Tensor, Tensor) {
        let (parts, seq) = split_parts(input, &self.widths);
        let scores = relevance_scores(
            &parts.query,
            &parts.keys,
            &seq.mask,
            &self.widths.attention_set(),
        );
        let (top, slots) = search_top_k(&scores, self.k);
        let h = aggregate(&top, &slots, &parts.history);
        let logits = self.head.forward_t(&parts.target, &h, train);
        (logits, scores, parts.history.shallow_clone())
    }
}

impl CtrModel for TopKAttentionModel {
    fn forward_t(&self, input: &ModelInput, train: bool) -> Tensor {
        self.run(input, train).0
    }

    fn forward_train(&self, input: &ModelInput) -> (Tensor, Option<Tensor>) {
        let (logits, scores, history) = self.run(input, true);
        if !self.aux_loss {
            return (logits, None);
        }
        let (parts, _) = split_parts(input, &self.widths);
        let h_all = aggregate_all(&scores, &history);
        let aux = self.head.forward_t(&parts.target, &h_all, true);
        (logits, Some(aux))
    }

    fn retrieve(&self, input: &ModelInput, k: i64) -> Option<Retrieved> {
        let (parts, seq) = split_parts(input, &self.widths);
        let scores = relevance_scores(
            &parts.query,
            &parts.keys,
            &seq.mask,
            &self.widths.attention_set(),
        );
        let (top, slots) = search_top_k(&scores, k);
        Some(Retrieved {
            slots,
            valid: top.gt(PADDING_SCORE / 2.0),
        })
    }
}
