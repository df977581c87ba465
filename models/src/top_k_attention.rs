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
use crate::sequence_parts::{split_parts, SequenceParts, SequenceWidths};
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

    /// The batch's embeddings by role and every slot's relevance score.
    fn scored(&self, input: &ModelInput) -> (SequenceParts, Tensor) {
        let (parts, seq) = split_parts(input, &self.widths);
        let scores = relevance_scores(
            &parts.query,
            &parts.keys,
            &seq.mask,
            &self.widths.attention_set(),
        );
        (parts, scores)
    }

    /// Main logits, the parts and the scores (for the auxiliary loss).
    fn run(&self, input: &ModelInput, train: bool) -> (Tensor, SequenceParts, Tensor) {
        let (parts, scores) = self.scored(input);
        let (top, slots) = search_top_k(&scores, self.k);
        let h = aggregate(&top, &slots, &parts.history);
        let logits = self.head.forward_t(&parts.target, &h, train, input.stats);
        (logits, parts, scores)
    }
}

impl CtrModel for TopKAttentionModel {
    fn forward_t(&self, input: &ModelInput, train: bool) -> Tensor {
        self.run(input, train).0
    }

    fn forward_train(&self, input: &ModelInput) -> (Tensor, Option<Tensor>) {
        let (logits, parts, scores) = self.run(input, true);
        if !self.aux_loss {
            return (logits, None);
        }
        let h_all = aggregate_all(&scores, &parts.history);
        let aux = self
            .head
            .forward_t(&parts.target, &h_all, true, input.stats);
        (logits, Some(aux))
    }

    fn retrieve(&self, input: &ModelInput, k: i64) -> Option<Retrieved> {
        let (_, scores) = self.scored(input);
        let (top, slots) = search_top_k(&scores, k);
        Some(Retrieved {
            slots,
            valid: top.gt(PADDING_SCORE / 2.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelKind;
    use crate::model::SequenceInput;
    use tch::{nn::VarStore, Device, Kind};

    fn model(kind: ModelKind, k: usize, aux: bool) -> (VarStore, Box<dyn CtrModel>, ModelShape) {
        let vs = VarStore::new(Device::Cpu);
        let mut cfg = ModelConfig::new(kind);
        cfg.hidden = vec![8];
        cfg.top_k = k;
        cfg.aux_loss = aux;
        cfg.batch_norm = true;
        let widths = if kind == ModelKind::Dare {
            vec![4, 4, 2, 2, 2, 2]
        } else {
            vec![4, 4, 2]
        };
        let shape = ModelShape {
            num_dense: 0,
            feature_widths: widths,
        };
        let m = crate::build_model(&vs.root(), &cfg, &shape).unwrap();
        (vs, m, shape)
    }

    #[test]
    fn padding_is_never_retrieved_and_aux_logits_come_with_the_option() {
        tch::manual_seed(3);
        for kind in [ModelKind::Twin, ModelKind::Dare, ModelKind::Din] {
            let (_vs, m, shape) = model(kind, 3, true);
            let (b, l) = (2i64, 5i64);
            let w = shape.embedding_width();
            let emb = Tensor::randn([b * (l + 1), w], (Kind::Float, Device::Cpu));
            // sample 0: two behaviours (slots 3, 4); sample 1: a full history
            let mask = Tensor::from_slice(&[
                false, false, false, true, true, true, true, true, true, true,
            ])
            .view([b, l]);
            let seq = SequenceInput { len: l, mask };
            let dense = Tensor::zeros([b, 0], (Kind::Float, Device::Cpu));
            let input = ModelInput {
                dense: &dense,
                emb: &emb,
                first_order: None,
                sequence: Some(&seq),
                stats: None,
            };
            let r = m.retrieve(&input, 3).unwrap();
            let slots = Vec::<i64>::try_from(r.slots.view([-1])).unwrap();
            let valid = Vec::<bool>::try_from(r.valid.view([-1])).unwrap();
            assert_eq!(&valid[..3], &[true, true, false], "{kind:?}");
            let mut first: Vec<i64> = slots[..2].to_vec();
            first.sort();
            assert_eq!(first, vec![3, 4], "{kind:?}");
            assert!(valid[3..].iter().all(|&v| v));
            let (logits, aux) = m.forward_train(&input);
            assert_eq!(logits.size(), vec![b]);
            assert_eq!(aux.is_some(), kind != ModelKind::Din, "{kind:?}");
            assert!(m.forward_t(&input, false).isfinite().all().int64_value(&[]) == 1);
        }
    }
}
