//! DCN-V2 (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for
//! Web-scale Learning to Rank Systems", WWW 2021), stacked form: full-rank cross layers
//! `x_{l+1} = x_0 * (W_l x_l + b_l) + x_l` over the concatenated embeddings and dense
//! features, then an MLP, then a linear output. With no cross layers it is the plain
//! DNN baseline (an MLP over the concatenated inputs).

use tch::nn;
use tch::Tensor;

use crate::config::ModelConfig;
use crate::mlp::{cat_padded, padded_linear, torch_linear, Mlp};
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
        // padded to an aligned width: its zero columns stay zero through every cross
        // layer (x_0 is zero there), and the layers' GEMMs run at full speed
        let x0 = cat_padded(&[input.emb, input.dense]);
        let width = x0.size()[1];
        let mut x = x0.shallow_clone();
        for layer in &self.cross {
            x = &x0 * padded_linear(layer, &x, Some(width)) + &x;
        }
        self.mlp
            .forward_synced(&x, train, input.stats)
            .squeeze_dim(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelKind;
    use tch::{Device, Kind};

    /// The cross layers and MLP as written in the paper, on the unpadded input.
    fn unpadded(m: &Dcnv2, emb: &Tensor, dense: &Tensor) -> Tensor {
        let x0 = Tensor::cat(&[emb, dense], 1);
        let mut x = x0.shallow_clone();
        for layer in &m.cross {
            x = &x0 * x.linear(&layer.ws, layer.bs.as_ref()) + &x;
        }
        // an input of exactly the MLP's width reaches its layers unpadded
        m.mlp.forward_t(&x, true).squeeze_dim(1)
    }

    #[test]
    fn the_padded_step_computes_the_unpadded_model_and_its_gradients() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut cfg = ModelConfig::new(ModelKind::Dcnv2);
        cfg.cross_layers = 2;
        cfg.hidden = vec![32, 16];
        // 13 + 26 x 16 = 429 inputs: padded to 432 inside
        let shape = ModelShape {
            num_dense: 13,
            feature_widths: vec![16; 26],
        };
        let m = Dcnv2::new(&vs.root(), &cfg, &shape).unwrap();
        let opts = (Kind::Float, Device::Cpu);
        let emb = Tensor::randn([64, 416], opts).set_requires_grad(true);
        let dense = Tensor::randn([64, 13], opts);
        let mut wrt = vs.trainable_variables();
        wrt.push(emb.shallow_clone());
        let grads =
            |logits: Tensor| Tensor::run_backward(&[logits.sum(Kind::Float)], &wrt, false, false);
        let input = ModelInput::plain(&dense, &emb);
        let padded = m.forward_t(&input, true);
        let plain = unpadded(&m, &emb, &dense);
        assert_eq!(padded.size(), [64]);
        let close = |a: &Tensor, b: &Tensor| a.allclose(b, 1e-5, 1e-6, false);
        assert!(close(&padded, &plain), "the same logits");
        let (gp, gu) = (grads(padded), grads(plain));
        assert_eq!(gp.len(), gu.len());
        for (a, b) in gp.iter().zip(&gu) {
            assert_eq!(a.size(), b.size(), "parameters keep their shapes");
            assert!(close(a, b), "the same gradient");
        }
        assert!(gp
            .iter()
            .all(|g| g.abs().sum(Kind::Float).double_value(&[]) > 0.0));
    }
}
