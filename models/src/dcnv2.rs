//! DCN-V2 (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for
//! Web-scale Learning to Rank Systems", WWW 2021), stacked form: full-rank cross layers
//! `x_{l+1} = x_0 * (W_l x_l + b_l) + x_l` over the concatenated embeddings and dense
//! features, then an MLP, then a linear output. With no cross layers it is the plain
//! DNN baseline (an MLP over the concatenated inputs).

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::ModelConfig;
use crate::mlp::{torch_linear, Mlp};
use crate::model::{CtrModel, ModelInput, ModelShape};
use crate::ModelError;

#[derive(Debug)]
pub struct Dcnv2 {
    cross: Vec<nn::Linear>,
    mlp: Mlp,
}

impl Dcnv2 {
    pub fn new(p: &nn::Path, cfg: &ModelConfig, shape: &ModelShape) -> Result<Self, ModelError> {
        if cfg.cross_layers > 64 {
            return Err(ModelError::Config {
                key: "cross_layers",
                reason: format!("{} is outside [0, 64]", cfg.cross_layers),
            });
        }
        let n = shape.embedding_width() + shape.num_dense;
        let cross = (0..cfg.cross_layers)
            .map(|i| torch_linear(p / format!("cross{i}"), n, n))
            .collect();
        Ok(Self {
            cross,
            mlp: Mlp::new(
                &(p / "dnn"),
                n,
                &cfg.hidden,
                Some(1),
                cfg.batch_norm,
                cfg.dropout,
            ),
        })
    }
}

impl CtrModel for Dcnv2 {
    fn forward_t(&self, input: &ModelInput, train: bool) -> Tensor {
        let x0 = Tensor::cat(&[input.emb, input.dense], 1);
        let mut x = x0.shallow_clone();
        for layer in &self.cross {
            x = &x0 * layer.forward(&x) + &x;
        }
        self.mlp
            .forward_synced(&x, train, input.stats)
            .squeeze_dim(1)
    }
}
