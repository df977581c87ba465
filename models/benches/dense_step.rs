//! Where the dense half of a DLRM step goes on the CPU (issue 21's profile): the whole
//! step (forward, backward, Adam) of the model shardrec trains, then each of its GEMMs
//! alone at the same shapes, against a square GEMM as the machine's reference. Prints
//! milliseconds a step and GFLOP/s. A benchmark, not a test.
//!
//! ```sh
//! cargo bench -p shardrec-models --bench dense_step -- [threads] [batch] [steps]
//! ```
//! Defaults: 2 threads, batch 2048, 30 timed steps (after 5 to warm up); DLRM with 13
//! dense inputs, 26 features of width 16, bottom 512-256(-16), top 512-256(-1). Then
//! DCNv2's cross-layer GEMM at its 429 features and at the 432 it is padded to.

use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};

use shardrec_models::{
    build_model, DenseOptimizer, DenseOptimizerConfig, ModelConfig, ModelInput, ModelKind,
    ModelShape,
};

/// Milliseconds a call of `f`, the median of `reps` after 3 to warm up.
fn time_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[reps / 2]
}

/// The model's step, split into forward, backward and the optimizer.
fn model_step(batch: i64, steps: usize) {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut cfg = ModelConfig::new(ModelKind::Dlrm);
    cfg.bottom = vec![512, 256];
    cfg.top = vec![512, 256];
    let shape = ModelShape {
        num_dense: 13,
        feature_widths: vec![16; 26],
    };
    let model = build_model(&vs.root(), &cfg, &shape).expect("a DLRM");
    let mut opt = DenseOptimizer::new(&vs, DenseOptimizerConfig::default());
    let dense = Tensor::randn([batch, 13], (Kind::Float, Device::Cpu));
    let labels = Tensor::rand([batch], (Kind::Float, Device::Cpu)).round();
    let (mut fwd, mut bwd, mut step) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..steps + 5 {
        let emb =
            Tensor::randn([batch, 26 * 16], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        opt.zero_grad();
        let t0 = Instant::now();
        let input = ModelInput::plain(&dense, &emb);
        let (logits, _) = model.forward_train(&input);
        let loss = logits.binary_cross_entropy_with_logits::<Tensor>(
            &labels,
            None,
            None,
            tch::Reduction::Mean,
        );
        let t1 = Instant::now();
        loss.backward();
        let t2 = Instant::now();
        opt.step();
        let t3 = Instant::now();
        if i >= 5 {
            fwd.push((t1 - t0).as_secs_f64() * 1e3);
            bwd.push((t2 - t1).as_secs_f64() * 1e3);
            step.push((t3 - t2).as_secs_f64() * 1e3);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (f, b, s) = (mean(&fwd), mean(&bwd), mean(&step));
    // 2.84 MFLOP a sample forward and backward (issue 21's count)
    let gflops = 2.84e6 * batch as f64 / ((f + b) * 1e-3) / 1e9;
    println!(
        "model step, batch {batch}: forward {f:.2} ms, backward {b:.2} ms, Adam {s:.2} ms; {:.0} samples/s; forward+backward at {gflops:.1} GFLOP/s",
        batch as f64 / ((f + b + s) * 1e-3)
    );
}

/// One linear layer's three GEMMs at batch `b`, `n_in -> n_out`: forward `x w^T`, the
/// input's gradient `dy w`, the weight's gradient `dy^T x`.
fn layer_gemms(b: i64, n_in: i64, n_out: i64, reps: usize) -> (f64, f64, f64) {
    let opts = (Kind::Float, Device::Cpu);
    let (x, w, dy) = (
        Tensor::randn([b, n_in], opts),
        Tensor::randn([n_out, n_in], opts),
        Tensor::randn([b, n_out], opts),
    );
    let f = time_ms(reps, || drop(x.matmul(&w.tr())));
    let dx = time_ms(reps, || drop(dy.matmul(&w)));
    let dw = time_ms(reps, || drop(dy.tr().matmul(&x)));
    (f, dx, dw)
}

/// Prints one layer's row of the GEMM table; returns its three GEMMs' milliseconds.
fn layer_row(name: &str, batch: i64, (n_in, n_out): (i64, i64), reps: usize) -> f64 {
    let (f, dx, dw) = layer_gemms(batch, n_in, n_out, reps);
    let flop = 2.0 * (batch * n_in * n_out) as f64;
    let g = |ms: f64| flop / (ms * 1e-3) / 1e9;
    println!(
        "| {name}, batch {batch} | {f:.3} | {dx:.3} | {dw:.3} | {:.0}, {:.0}, {:.0} |",
        g(f),
        g(dx),
        g(dw)
    );
    f + dx + dw
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (threads, batch, steps) = (arg(0, 2), arg(1, 2048) as i64, arg(2, 30));
    tch::set_num_threads(threads as i32);
    let _no_grad_for_gemms = ();
    model_step(batch, steps);
    let reps = 20;
    // the DLRM's layers: bottom 13-512-256-16, top (16 + 351 interactions)-512-256-1
    let layers = [
        ("bottom 13->512", 13, 512),
        ("bottom 512->256", 512, 256),
        ("bottom 256->16", 256, 16),
        ("top 367->512", 367, 512),
        ("top 512->256", 512, 256),
        ("top 256->1", 256, 1),
    ];
    let _g = tch::no_grad_guard();
    println!("| GEMM | forward ms | input grad ms | weight grad ms | GFLOP/s (f, dx, dw) |");
    println!("|---|---|---|---|---|");
    let total: f64 = layers
        .into_iter()
        .map(|(name, i, o)| layer_row(name, batch, (i, o), reps))
        .sum();
    let opts = (Kind::Float, Device::Cpu);
    let (a, b) = (
        Tensor::randn([batch, 27, 16], opts),
        Tensor::randn([batch, 16, 27], opts),
    );
    let inter = time_ms(reps, || drop(a.bmm(&b)));
    println!(
        "| interaction bmm [{batch},27,16]x[16,27] | {inter:.3} | | | {:.0} |",
        2.0 * (batch * 27 * 27 * 16) as f64 / (inter * 1e-3) / 1e9
    );
    // DCNv2's cross layer (configs/synthetic_dcnv2.toml: 13 + 26 x 16 = 429 features,
    // batch 1024) at its own width and at the aligned width it now runs at
    for (name, n) in [("DCNv2 cross 429->429", 429), ("DCNv2 cross 432->432", 432)] {
        layer_row(name, 1024, (n, n), reps);
    }
    let sq = Tensor::randn([2048, 512], opts);
    let w = Tensor::randn([512, 512], opts);
    let peak = time_ms(reps, || drop(sq.matmul(&w)));
    println!(
        "layer GEMMs {total:.2} ms + interaction {inter:.2} ms a step; reference 2048x512x512 GEMM {:.0} GFLOP/s",
        2.0 * 2048.0 * 512.0 * 512.0 / (peak * 1e-3) / 1e9
    );
}
