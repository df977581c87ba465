//! The dense optimizers against libtorch's own (`torch::optim` through tch): the same
//! parameters and gradients give the same parameters after several steps.

use shardrec_models::{DenseOptimizer, DenseOptimizerConfig, DenseOptimizerKind};
use tch::nn::{self, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

fn params(vs: &VarStore) -> (Tensor, Tensor) {
    let p = vs.root();
    (
        p.randn("w", &[5, 3], 0.0, 1.0),
        p.randn("b", &[3], 0.0, 1.0),
    )
}

fn run(kind: DenseOptimizerKind) {
    tch::manual_seed(5);
    let vs_a = VarStore::new(Device::Cpu);
    let (wa, ba) = params(&vs_a);
    let mut vs_b = VarStore::new(Device::Cpu);
    let (wb, bb) = params(&vs_b);
    vs_b.copy(&vs_a).unwrap();
    let cfg = DenseOptimizerConfig {
        kind,
        lr: 0.01,
        weight_decay: 0.001,
        momentum: 0.0,
        ..Default::default()
    };
    let mut ours = DenseOptimizer::new(&vs_a, cfg);
    let mut theirs = match kind {
        DenseOptimizerKind::Adam => nn::Adam {
            wd: 0.001,
            ..Default::default()
        }
        .build(&vs_b, 0.01)
        .unwrap(),
        DenseOptimizerKind::Sgd => nn::Sgd {
            wd: 0.001,
            ..Default::default()
        }
        .build(&vs_b, 0.01)
        .unwrap(),
        DenseOptimizerKind::Adagrad => unreachable!(),
    };
    for step in 0..5 {
        let x = Tensor::randn([7, 5], (Kind::Float, Device::Cpu)) * (step + 1) as f64;
        let la = (x.matmul(&wa) + &ba).tanh().sum(Kind::Float);
        let lb = (x.matmul(&wb) + &bb).tanh().sum(Kind::Float);
        ours.zero_grad();
        la.backward();
        ours.step();
        theirs.zero_grad();
        lb.backward();
        theirs.step();
    }
    let d = (&wa - &wb)
        .abs()
        .max()
        .double_value(&[])
        .max((&ba - &bb).abs().max().double_value(&[]));
    assert!(d < 1e-6, "{kind:?}: parameters differ by {d}");
}

#[test]
fn adam_matches_libtorch() {
    run(DenseOptimizerKind::Adam);
}

#[test]
fn sgd_matches_libtorch() {
    run(DenseOptimizerKind::Sgd);
}

#[test]
fn adagrad_follows_its_formula() {
    let vs = VarStore::new(Device::Cpu);
    let w = vs.root().zeros("w", &[2]);
    let cfg = DenseOptimizerConfig {
        kind: DenseOptimizerKind::Adagrad,
        lr: 0.5,
        eps: 0.0,
        ..Default::default()
    };
    let mut opt = DenseOptimizer::new(&vs, cfg);
    for g in [[1.0f32, 2.0], [3.0, -2.0]] {
        opt.zero_grad();
        (&w * Tensor::from_slice(&g)).sum(Kind::Float).backward();
        opt.step();
    }
    // accumulators [1, 4] then [10, 8]: w = -0.5 (1/1 + 3/sqrt(10)), -0.5 (2/2 - 2/sqrt(8))
    let got = Vec::<f32>::try_from(&w).unwrap();
    let want = [
        -0.5 * (1.0 + 3.0 / 10f32.sqrt()),
        -0.5 * (1.0 - 2.0 / 8f32.sqrt()),
    ];
    assert!(
        (got[0] - want[0]).abs() < 1e-6 && (got[1] - want[1]).abs() < 1e-6,
        "{got:?} vs {want:?}"
    );
}
