//! DeepFM (Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR
//! Prediction", IJCAI 2017): the FM logit (first-order + pairwise) plus an MLP over the
//! concatenated embeddings and dense features, sharing the embeddings.

use tch::nn;
use tch::Tensor;

use crate::config::ModelConfig;
use crate::fm::fm_pairwise;
use crate::logistic::linear_logit;
use crate::mlp::{torch_linear, Mlp};
use crate::model::{CtrModel, ModelInput, ModelShape};
use crate::ModelError;

#[derive(Debug)]
pub struct DeepFm {
    dense: Option<nn::Linear>,
    bias: Tensor,
    features: i64,
    width: i64,
    mlp: Mlp,
}

impl DeepFm {
    pub fn new(p: &nn::Path, cfg: &ModelConfig, shape: &ModelShape) -> Result<Self, ModelError> {
        let width = shape.uniform_width("deepfm")?;
        let input = shape.embedding_width() + shape.num_dense;
        Ok(Self {
            dense: (shape.num_dense > 0).then(|| torch_linear(p / "dense", shape.num_dense, 1)),
            bias: p.zeros("bias", &[1]),
            features: shape.feature_widths.len() as i64,
            width,
            mlp: Mlp::new(
                &(p / "dnn"),
                input,
                &cfg.hidden,
                Some(1),
                cfg.batch_norm,
                cfg.dropout,
            ),
        })
    }
}

impl CtrModel for DeepFm {
    fn forward_t(&self, input: &ModelInput, train: bool) -> Tensor {
        let fm = linear_logit(self.dense.as_ref(), &self.bias, input)
            + fm_pairwise(&input.emb.view([-1, self.features, self.width]));
        let x = Tensor::cat(&[input.emb, input.dense], 1);
        fm + self
            .mlp
            .forward_synced(&x, train, input.stats)
            .squeeze_dim(1)
    }
}
