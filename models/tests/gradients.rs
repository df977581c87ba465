//! Autograd gradients of every model against central finite differences, in double
//! precision: with respect to the embedding input, the dense input and every parameter.

use shardrec_models::{build_model, ModelConfig, ModelInput, ModelKind, ModelShape};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn check(kind: ModelKind) {
    tch::manual_seed(3);
    let shape = ModelShape {
        num_dense: 3,
        feature_widths: vec![4, 4, 4],
    };
    let mut cfg = ModelConfig::new(kind);
    cfg.hidden = vec![6, 5];
    cfg.bottom = vec![5];
    cfg.top = vec![6];
    cfg.cross_layers = 2;
    let mut vs = VarStore::new(Device::Cpu);
    let model = build_model(&vs.root(), &cfg, &shape).unwrap();
    vs.double();
    let opts = (Kind::Double, Device::Cpu);
    let emb = (Tensor::randn([5, 12], opts) * 0.5).set_requires_grad(true);
    let dense = Tensor::randn([5, 3], opts).set_requires_grad(true);
    let fo = (Tensor::randn([5, 3], opts) * 0.1).set_requires_grad(true);
    let y = Tensor::from_slice(&[1.0f64, 0.0, 1.0, 0.0, 0.0]);
    let loss_of = |emb: &Tensor, dense: &Tensor, fo: &Tensor| {
        let input = ModelInput {
            dense,
            emb,
            first_order: kind.needs_first_order().then_some(fo),
            sequence: None,
            stats: None,
        };
        model
            .forward_t(&input, false)
            .binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::Mean)
    };
    let loss = loss_of(&emb, &dense, &fo);
    loss.backward();
    let mut tensors: Vec<(String, Tensor)> = vec![
        ("emb".into(), emb.shallow_clone()),
        ("dense".into(), dense.shallow_clone()),
    ];
    if kind.needs_first_order() {
        tensors.push(("first_order".into(), fo.shallow_clone()));
    }
    for (name, v) in vs.variables() {
        tensors.push((name, v));
    }
    let h = 1e-6;
    let mut checked = 0;
    for (name, t) in &tensors {
        let analytic = t.grad();
        assert!(analytic.defined(), "{kind:?}: no gradient for {name}");
        let flat = t.view([-1]);
        let n = flat.size()[0];
        for i in (0..n).step_by(((n / 6).max(1)) as usize) {
            let orig = flat.double_value(&[i]);
            let f = |x: f64| {
                tch::no_grad(|| {
                    let _ = flat.get(i).fill_(x);
                });
                tch::no_grad(|| loss_of(&emb, &dense, &fo).double_value(&[]))
            };
            let numeric = (f(orig + h) - f(orig - h)) / (2.0 * h);
            tch::no_grad(|| {
                let _ = flat.get(i).fill_(orig);
            });
            let a = analytic.view([-1]).double_value(&[i]);
            assert!(
                (a - numeric).abs() <= 1e-6 + 1e-4 * numeric.abs(),
                "{kind:?} {name}[{i}]: autograd {a} vs finite difference {numeric}"
            );
            checked += 1;
        }
    }
    assert!(checked > 10);
}

#[test]
fn lr_gradients_match_finite_differences() {
    check(ModelKind::Lr);
}

#[test]
fn fm_gradients_match_finite_differences() {
    check(ModelKind::Fm);
}

#[test]
fn deepfm_gradients_match_finite_differences() {
    check(ModelKind::Deepfm);
}

#[test]
fn dcnv2_gradients_match_finite_differences() {
    check(ModelKind::Dcnv2);
}

#[test]
fn dlrm_gradients_match_finite_differences() {
    check(ModelKind::Dlrm);
}
