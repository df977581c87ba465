//! Logistic regression and the factorisation machine (Rendle 2010): a bias, a linear term
//! over dense features, one learned weight per categorical value, and for FM the pairwise
//! term over the embeddings. LR reads its per-value weights as its main input (tables of
//! width 1); FM reads them as the separate first-order input.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::fm::fm_pairwise;
use crate::mlp::torch_linear;
use crate::model::{CtrModel, ModelInput, ModelShape};
use crate::ModelError;

#[derive(Debug)]
pub struct Logistic {
    dense: Option<nn::Linear>,
    bias: Tensor,
    /// (features, width) when the pairwise FM term is on.
    fm: Option<(i64, i64)>,
}

impl Logistic {
    pub fn new(p: &nn::Path, shape: &ModelShape, with_fm: bool) -> Result<Self, ModelError> {
        let fm = if with_fm {
            Some((
                shape.feature_widths.len() as i64,
                shape.uniform_width("fm")?,
            ))
        } else {
            None
        };
        Ok(Self {
            dense: (shape.num_dense > 0).then(|| torch_linear(p / "dense", shape.num_dense, 1)),
            bias: p.zeros("bias", &[1]),
            fm,
        })
    }
}

/// Sum of the first-order weights plus the dense linear term and bias: `[B]`.
pub(crate) fn linear_logit(
    dense: Option<&nn::Linear>,
    bias: &Tensor,
    input: &ModelInput,
) -> Tensor {
    let base = bias.expand([input.emb.size()[0]], false);
    let first_order = input
        .first_order
        .map(|fo| fo.sum_dim_intlist(1i64, false, None));
    let dense = dense.map(|d| d.forward(input.dense).squeeze_dim(1));
    // functional sums: `+=` would write into the expanded view of the bias
    [first_order, dense]
        .into_iter()
        .flatten()
        .fold(base, |acc, t| acc + t)
}

impl CtrModel for Logistic {
    fn forward_t(&self, input: &ModelInput, _train: bool) -> Tensor {
        let logit = linear_logit(self.dense.as_ref(), &self.bias, input);
        match self.fm {
            Some((f, w)) => logit + fm_pairwise(&input.emb.view([-1, f, w])),
            None => logit + input.emb.sum_dim_intlist(1i64, false, None),
        }
    }
}
