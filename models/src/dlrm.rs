//! DLRM (Naumov et al., "Deep Learning Recommendation Model for Personalization and
//! Recommendation Systems", 2019): a bottom MLP maps dense features to the embedding
//! width; the pairwise dot products of {bottom output, embeddings} (strictly lower
//! triangle) are concatenated with the bottom output and fed to the top MLP.

use tch::nn;
use tch::{Kind, Tensor};

use crate::config::ModelConfig;
use crate::mlp::Mlp;
use crate::model::{CtrModel, ModelInput, ModelShape};
use crate::ModelError;

#[derive(Debug)]
pub struct Dlrm {
    bottom: Option<Mlp>,
    top: Mlp,
    features: i64,
    width: i64,
    /// Flat indices of the strictly lower triangle of the interaction matrix.
    tri: Tensor,
}

impl Dlrm {
    pub fn new(p: &nn::Path, cfg: &ModelConfig, shape: &ModelShape) -> Result<Self, ModelError> {
        let width = shape.uniform_width("dlrm")?;
        let features = shape.feature_widths.len() as i64;
        let bottom = (shape.num_dense > 0).then(|| {
            let mut layers = cfg.bottom.clone();
            layers.push(width);
            Mlp::new(
                &(p / "bottom"),
                shape.num_dense,
                &layers,
                None,
                cfg.batch_norm,
                0.0,
            )
        });
        let vectors = features + i64::from(bottom.is_some());
        let pairs = vectors * (vectors - 1) / 2;
        let top_in = pairs + if bottom.is_some() { width } else { 0 };
        let top = Mlp::new(
            &(p / "top"),
            top_in,
            &cfg.top,
            Some(1),
            cfg.batch_norm,
            cfg.dropout,
        );
        let idx = Tensor::tril_indices(vectors, vectors, -1, (Kind::Int64, p.device()));
        let tri = idx.get(0) * vectors + idx.get(1);
        Ok(Self {
            bottom,
            top,
            features,
            width,
            tri,
        })
    }
}

impl CtrModel for Dlrm {
    fn forward_t(&self, input: &ModelInput, train: bool) -> Tensor {
        let emb = input.emb.view([-1, self.features, self.width]);
        let (t, head) = match &self.bottom {
            Some(b) => {
                let x = b.forward_synced(input.dense, train, input.stats);
                (Tensor::cat(&[x.unsqueeze(1), emb], 1), Some(x))
            }
            None => (emb, None),
        };
        let n = t.size()[1];
        let z = t
            .bmm(&t.transpose(1, 2))
            .view([-1, n * n])
            .index_select(1, &self.tri);
        let top_in = match head {
            Some(x) => Tensor::cat(&[x, z], 1),
            None => z,
        };
        self.top
            .forward_synced(&top_in, train, input.stats)
            .squeeze_dim(1)
    }
}
