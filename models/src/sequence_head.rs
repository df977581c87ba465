//! The prediction head of DIN, TWIN and DARE as the DARE code has it (Feng et al. 2025,
//! arXiv 2410.02604): `[v_t, h, v_t * h]` (target representation, aggregated history,
//! their product) -> batch norm -> Linear -> PReLU per hidden layer -> one logit.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::config::ModelConfig;
use crate::mlp::torch_linear;
use crate::sync_batch_norm::{batch_norm_forward, torch_batch_norm1d, BatchStatsSync};

#[derive(Debug)]
pub struct SequenceHead {
    norm: Option<nn::BatchNorm>,
    layers: Vec<(nn::Linear, Tensor)>,
    out: nn::Linear,
    dropout: f64,
}

impl SequenceHead {
    /// A head over target and history representations `width` wide.
    pub fn new(p: &nn::Path, cfg: &ModelConfig, width: i64) -> Self {
        let input = 3 * width;
        let norm = cfg.batch_norm.then(|| torch_batch_norm1d(p / "bn", input));
        let mut layers = Vec::new();
        let mut w = input;
        for (i, &h) in cfg.hidden.iter().enumerate() {
            let lin = torch_linear(p / format!("linear{i}"), w, h);
            // PyTorch's nn.PReLU default: one slope, 0.25
            let slope = p.var(&format!("prelu{i}"), &[1], nn::Init::Const(0.25));
            layers.push((lin, slope));
            w = h;
        }
        Self {
            norm,
            layers,
            out: torch_linear(p / "out", w, 1),
            dropout: cfg.dropout,
        }
    }

    /// # Shapes
    /// `target [B, D], history [B, D] -> [B]`
    /// With `stats`, batch norm normalises by every rank's rows (training only).
    pub fn forward_t(
        &self,
        target: &Tensor,
        history: &Tensor,
        train: bool,
        stats: Option<&BatchStatsSync>,
    ) -> Tensor {
        let mut x = Tensor::cat(&[target, history, &(target * history)], 1);
        if let Some(n) = &self.norm {
            x = batch_norm_forward(n, &x, train, stats);
        }
        for (lin, slope) in &self.layers {
            x = lin.forward(&x).prelu(slope);
            if self.dropout > 0.0 {
                x = x.dropout(self.dropout, train);
            }
        }
        self.out.forward(&x).squeeze_dim(1)
    }
}
