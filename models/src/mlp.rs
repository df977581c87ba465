//! A multilayer perceptron: Linear, optional batch norm, ReLU, optional dropout per hidden
//! layer; optionally a final linear layer without activation.

use tch::nn::{self, Module};
use tch::Tensor;

use crate::sync_batch_norm::{batch_norm_forward, torch_batch_norm1d, BatchStatsSync};

/// A linear layer initialised as `torch.nn.Linear` is (weights and bias uniform in
/// +-1/sqrt(fan_in)), so results match what PyTorch users expect; tch's default
/// (Kaiming with a ReLU gain) starts sqrt(6) times wider.
pub fn torch_linear(p: nn::Path, input: i64, output: i64) -> nn::Linear {
    let bound = 1.0 / (input.max(1) as f64).sqrt();
    let init = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    nn::linear(
        p,
        input,
        output,
        nn::LinearConfig {
            ws_init: init,
            bs_init: Some(init),
            bias: true,
        },
    )
}

#[derive(Debug)]
pub struct Mlp {
    layers: Vec<(nn::Linear, Option<nn::BatchNorm>)>,
    output: Option<nn::Linear>,
    dropout: f64,
    relu_last_hidden: bool,
}

impl Mlp {
    /// `hidden` layers with ReLU; then, if `output` is given, a linear layer of that width.
    /// # Shapes
    /// `[batch, input] -> [batch, output or last hidden]`
    pub fn new(
        p: &nn::Path,
        input: i64,
        hidden: &[i64],
        output: Option<i64>,
        batch_norm: bool,
        dropout: f64,
    ) -> Self {
        let mut layers = Vec::with_capacity(hidden.len());
        let mut width = input;
        for (i, &h) in hidden.iter().enumerate() {
            let lin = torch_linear(p / format!("linear{i}"), width, h);
            let bn = batch_norm.then(|| torch_batch_norm1d(p / format!("bn{i}"), h));
            layers.push((lin, bn));
            width = h;
        }
        let output = output.map(|o| torch_linear(p / "out", width, o));
        Self {
            layers,
            output,
            dropout,
            relu_last_hidden: true,
        }
    }

    /// Width of the result.
    pub fn out_width(&self, input: i64) -> i64 {
        if let Some(o) = &self.output {
            o.ws.size()[0]
        } else if let Some((l, _)) = self.layers.last() {
            l.ws.size()[0]
        } else {
            input
        }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_synced(xs, train, None)
    }

    /// As [`Mlp::forward_t`], with batch norm over the whole job's batch when `stats` is
    /// given.
    pub fn forward_synced(
        &self,
        xs: &Tensor,
        train: bool,
        stats: Option<&BatchStatsSync>,
    ) -> Tensor {
        let mut x = xs.shallow_clone();
        for (lin, bn) in &self.layers {
            x = lin.forward(&x);
            if let Some(bn) = bn {
                x = batch_norm_forward(bn, &x, train, stats);
            }
            if self.relu_last_hidden {
                x = x.relu();
            }
            if self.dropout > 0.0 {
                x = x.dropout(self.dropout, train);
            }
        }
        match &self.output {
            Some(o) => o.forward(&x),
            None => x,
        }
    }
}
