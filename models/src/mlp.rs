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

/// Inner GEMM sizes at which MKL's CPU kernels run at full speed: multiples of 16 floats
/// (one 64-byte line). On the AMD VM a 1024x429x429 GEMM (DCNv2's cross layer) runs at
/// 107–123 GFLOP/s and a 1024x432x432 one at 143–160 (docs/benchmarks.md, section 21).
const GEMM_ALIGN: i64 = 16;

/// `width` rounded up to a multiple of [`GEMM_ALIGN`].
pub fn gemm_width(width: i64) -> i64 {
    (width + GEMM_ALIGN - 1) / GEMM_ALIGN * GEMM_ALIGN
}

/// `parts` side by side (along dim 1), then zero columns up to [`gemm_width`]: the input
/// of a layer applied with [`padded_linear`], which gives those columns zero weights. The
/// concatenation copies anyway, so the padding costs no pass of its own.
pub fn cat_padded(parts: &[&Tensor]) -> Tensor {
    let width: i64 = parts.iter().map(|t| t.size()[1]).sum();
    let pad = gemm_width(width) - width;
    if pad == 0 {
        return Tensor::cat(parts, 1);
    }
    let first = parts[0];
    let zeros = Tensor::zeros([first.size()[0], pad], (first.kind(), first.device()));
    let mut all: Vec<&Tensor> = parts.to_vec();
    all.push(&zeros);
    Tensor::cat(&all, 1)
}

/// `lin` applied to `x`, whose last dimension may be wider than the layer's input: the
/// weight is padded with zero columns to that width, so the columns past the layer's
/// input add nothing and the GEMM runs at `x`'s (aligned) inner size. With `out_width`,
/// the output is padded likewise with zero rows of weight and bias: its extra columns are
/// zeros. The parameters keep their own shapes (checkpoints and exports do not change),
/// and their gradients are the padded ones' slices. Only the GEMM's summation order can
/// change.
pub fn padded_linear(lin: &nn::Linear, x: &Tensor, out_width: Option<i64>) -> Tensor {
    let [outputs, inputs] = lin.ws.size()[..] else {
        return lin.forward(x);
    };
    // the features are the last dimension (a sequence model's MLPs see [batch, L, n])
    let pad_in = x.size().last().map_or(0, |&n| n - inputs);
    let pad_out = out_width.map_or(0, |w| w - outputs);
    if pad_in <= 0 && pad_out <= 0 {
        return lin.forward(x);
    }
    let ws = lin
        .ws
        .constant_pad_nd([0, pad_in.max(0), 0, pad_out.max(0)]);
    let bs = lin
        .bs
        .as_ref()
        .map(|b| b.constant_pad_nd([0, pad_out.max(0)]));
    x.linear(&ws, bs.as_ref())
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
    /// given. `xs` may carry zero padding columns past the input width
    /// ([`cat_padded`]); the first layer ignores them.
    pub fn forward_synced(
        &self,
        xs: &Tensor,
        train: bool,
        stats: Option<&BatchStatsSync>,
    ) -> Tensor {
        let mut x = xs.shallow_clone();
        for (lin, bn) in &self.layers {
            x = padded_linear(lin, &x, None);
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
            Some(o) => padded_linear(o, &x, None),
            None => x,
        }
    }
}
