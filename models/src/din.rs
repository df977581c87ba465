//! DIN (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018)
//! as the long-sequence papers run it: an activation unit (an MLP over `[q, k, q - k,
//! q * k]`) scores every behaviour against the target, a softmax over the whole sequence
//! (padding masked) weighs the behaviours, and [`SequenceHead`] predicts. One embedding
//! set serves attention and representation. The unit costs `L` MLP evaluations per
//! sample: the cost TWIN and DARE's dot-product search avoids.

use tch::nn;
use tch::{Kind, Tensor};

use crate::config::ModelConfig;
use crate::mlp::Mlp;
use crate::model::{CtrModel, ModelInput, ModelShape, Retrieved};
use crate::sequence_head::SequenceHead;
use crate::sequence_parts::{split_parts, SequenceWidths};
use crate::target_search::{aggregate_all, search_top_k, PADDING_SCORE};
use crate::ModelError;

#[derive(Debug)]
pub struct Din {
    widths: SequenceWidths,
    unit: Mlp,
    head: SequenceHead,
}

impl Din {
    pub fn new(p: &nn::Path, cfg: &ModelConfig, shape: &ModelShape) -> Result<Self, ModelError> {
        let widths = SequenceWidths::of(shape, false, "din")?;
        let d = widths.representation.total();
        Ok(Self {
            widths,
            unit: Mlp::new(
                &(p / "unit"),
                4 * d,
                &cfg.attention_hidden,
                Some(1),
                false,
                0.0,
            ),
            head: SequenceHead::new(&(p / "head"), cfg, d),
        })
    }

    /// `[B, L]` activation-unit scores, padding masked.
    fn scores(&self, input: &ModelInput) -> (Tensor, Tensor, Tensor) {
        let (parts, seq) = split_parts(input, &self.widths);
        let q = parts.query.unsqueeze(1).expand_as(&parts.keys);
        let k = &parts.keys;
        let x = Tensor::cat(&[&q, k, &(&q - k), &(&q * k)], 2);
        let s = self
            .unit
            .forward_t(&x, false)
            .squeeze_dim(2)
            .to_kind(Kind::Float)
            .masked_fill(&seq.mask.logical_not(), PADDING_SCORE);
        (s, parts.target, parts.history)
    }
}

impl CtrModel for Din {
    fn forward_t(&self, input: &ModelInput, train: bool) -> Tensor {
        let (s, target, history) = self.scores(input);
        let h = aggregate_all(&s, &history);
        self.head.forward_t(&target, &h, train, input.stats)
    }

    fn retrieve(&self, input: &ModelInput, k: i64) -> Option<Retrieved> {
        let (s, _, _) = self.scores(input);
        let (top, slots) = search_top_k(&s, k);
        Some(Retrieved {
            slots,
            valid: top.gt(PADDING_SCORE / 2.0),
        })
    }
}
