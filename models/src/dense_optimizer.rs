//! Optimizers for the dense (data-parallel) parameters: Adam (Kingma and Ba 2015),
//! Adagrad (Duchi et al. 2011) and SGD with momentum, each with L2 weight decay added to
//! the gradient as `torch.optim` does. Written here rather than taken from tch because
//! tch has no Adagrad and the distributed trainer all-reduces gradients between
//! `backward` and [`DenseOptimizer::step`].

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DenseOptimizerKind {
    #[default]
    Adam,
    Adagrad,
    Sgd,
}

fn default_lr() -> f64 {
    1e-3
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}

/// `[optimizer]`: the dense optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseOptimizerConfig {
    #[serde(default)]
    pub kind: DenseOptimizerKind,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// SGD momentum.
    #[serde(default)]
    pub momentum: f64,
}

impl Default for DenseOptimizerConfig {
    fn default() -> Self {
        Self {
            kind: DenseOptimizerKind::Adam,
            lr: default_lr(),
            weight_decay: 0.0,
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            momentum: 0.0,
        }
    }
}

/// Optimizer over a var store's trainable variables.
pub struct DenseOptimizer {
    cfg: DenseOptimizerConfig,
    vars: Vec<Tensor>,
    /// Per variable: (first moment or accumulator or momentum, second moment).
    state: Vec<(Tensor, Tensor)>,
    steps: i64,
}

impl DenseOptimizer {
    pub fn new(vs: &nn::VarStore, cfg: DenseOptimizerConfig) -> Self {
        Self::with_variables(vs.trainable_variables(), cfg)
    }

    /// Over the given variables only (others, e.g. OptEmbed's thresholds, have an
    /// optimizer of their own).
    pub fn with_variables(vars: Vec<Tensor>, cfg: DenseOptimizerConfig) -> Self {
        let state = vars
            .iter()
            .map(|v| (v.zeros_like(), v.zeros_like()))
            .collect();
        Self {
            cfg,
            vars,
            state,
            steps: 0,
        }
    }

    /// The kind of optimizer (what its state means).
    pub fn kind(&self) -> DenseOptimizerKind {
        self.cfg.kind
    }

    /// The variables it updates (their gradients are what the trainer all-reduces).
    pub fn variables(&self) -> &[Tensor] {
        &self.vars
    }

    pub fn zero_grad(&mut self) {
        for v in &mut self.vars {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Optimizer state tensors (for checkpoints), two per variable.
    pub fn state(&self) -> &[(Tensor, Tensor)] {
        &self.state
    }

    /// Mutable state (to restore from a checkpoint).
    pub fn state_mut(&mut self) -> &mut [(Tensor, Tensor)] {
        &mut self.state
    }

    pub fn set_steps(&mut self, steps: i64) {
        self.steps = steps;
    }

    /// One update from the variables' current gradients.
    pub fn step(&mut self) {
        self.steps += 1;
        let c = &self.cfg;
        let t = self.steps as i32;
        let _guard = tch::no_grad_guard();
        let adam = AdamScalars::of(c, t);
        for (v, (s1, s2)) in self.vars.iter_mut().zip(self.state.iter_mut()) {
            let g = v.grad();
            if !g.defined() {
                continue;
            }
            if c.kind == DenseOptimizerKind::Adam && adam.fused_update(v, &g, s1, s2) {
                continue;
            }
            let g = if c.weight_decay != 0.0 {
                &g + &*v * c.weight_decay
            } else {
                g
            };
            match c.kind {
                DenseOptimizerKind::Adam => adam_ops(c, t, v, &g, s1, s2),
                DenseOptimizerKind::Adagrad => {
                    let _ = s1.addcmul_(&g, &g);
                    let _ = v.g_sub_(&(&g / (s1.sqrt() + c.eps) * c.lr));
                }
                DenseOptimizerKind::Sgd => {
                    if c.momentum != 0.0 {
                        let _ = s1.g_mul_scalar_(c.momentum);
                        let _ = s1.g_add_(&g);
                        let _ = v.g_sub_(&(&*s1 * c.lr));
                    } else {
                        let _ = v.g_sub_(&(&g * c.lr));
                    }
                }
            }
        }
    }
}

/// Adam's update of one variable with libtorch's ops (`g`: the gradient with weight
/// decay added), for tensors [`AdamScalars::fused_update`] does not take (on a GPU).
fn adam_ops(
    c: &DenseOptimizerConfig,
    t: i32,
    v: &mut Tensor,
    g: &Tensor,
    s1: &mut Tensor,
    s2: &mut Tensor,
) {
    let _ = s1.g_mul_scalar_(c.beta1);
    let _ = s1.g_add_(&(g * (1.0 - c.beta1)));
    let _ = s2.g_mul_scalar_(c.beta2);
    let _ = s2.addcmul_(&(g * (1.0 - c.beta2)), g);
    let bc1 = 1.0 - c.beta1.powi(t);
    let bc2 = 1.0 - c.beta2.powi(t);
    let denom = (&*s2 / bc2).sqrt() + c.eps;
    let _ = v.g_sub_(&(&*s1 / &denom * (c.lr / bc1)));
}

/// Adam's per-step constants in f32, as libtorch applies them.
struct AdamScalars {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    /// `1 - beta2^t`
    correction2: f32,
    eps: f32,
    /// `lr / (1 - beta1^t)`
    step: f32,
    weight_decay: f32,
}

impl AdamScalars {
    /// The step-`t` constants of `c`: libtorch casts each f64 scalar to the tensors'
    /// f32 before the op.
    fn of(c: &DenseOptimizerConfig, t: i32) -> Self {
        Self {
            beta1: c.beta1 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            correction2: (1.0 - c.beta2.powi(t)) as f32,
            eps: c.eps as f32,
            step: (c.lr / (1.0 - c.beta1.powi(t))) as f32,
            weight_decay: c.weight_decay as f32,
        }
    }

    /// Adam's update of one variable in two passes over its memory and one libtorch op,
    /// where the variable, its gradient and its two moments are contiguous CPU f32 tensors
    /// (false otherwise: the caller then runs [`adam_ops`]). The op-by-op update makes a
    /// dozen passes over the variable's size, each a parallel region of its own (DLRM,
    /// batch 2048: 2.3–2.7 ms a step against 1.2–1.5 this way; docs/benchmarks.md,
    /// section 23).
    ///
    /// Each element takes the op-by-op update's f32 operations in the same order, so the
    /// result is the same to the bit (checked in the tests). The square root stays
    /// libtorch's: its CPU kernel (MKL's vector square root) is not correctly rounded (about
    /// 0.7% of its results differ by one ulp from `f32::sqrt`), so the first pass writes
    /// `v / (1 - beta2^t)` to a tensor the shape of the variable, libtorch takes its root in
    /// place, and the second pass finishes the update.
    fn fused_update(&self, v: &mut Tensor, g: &Tensor, s1: &mut Tensor, s2: &mut Tensor) -> bool {
        let cpu_f32 = |x: &Tensor| {
            x.device() == tch::Device::Cpu && x.kind() == tch::Kind::Float && x.is_contiguous()
        };
        let n = v.numel();
        if ![&*v, g, &*s1, &*s2].into_iter().all(cpu_f32)
            || [g.numel(), s1.numel(), s2.numel()] != [n; 3]
        {
            return false;
        }
        if n == 0 {
            return true;
        }
        // as the op-by-op update's `s2 / bc2`: a fresh tensor of the same shape (and so the
        // same split over threads in libtorch's square root)
        let mut root = s2.empty_like();
        let f32s = |t: &Tensor| {
            // SAFETY: the tensors are contiguous CPU f32 tensors of `n` elements, checked
            // above (`root` made so). They are distinct storages (a variable, the gradient
            // autograd allocated for it, two moments made by `zeros_like`, and `root`), so no
            // mutable slice aliases another, and no libtorch op runs while the slices live:
            // they end before `sqrt_` and are made again after it.
            unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) }
        };
        self.first_pass(f32s(v), f32s(g), f32s(s1), f32s(s2), f32s(&root));
        let _ = root.sqrt_();
        self.second_pass(f32s(v), f32s(s1), f32s(&root));
        true
    }

    /// The moments' update, and `v / (1 - beta2^t)` into `root`. Compiled for FMA where
    /// the CPU has it: without it `f32::mul_add` is a call into libm per element.
    fn first_pass(&self, p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32], root: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked just above
            unsafe { self.first_pass_fma(p, g, m, v, root) };
            return;
        }
        self.moments(p, g, m, v, root);
    }

    /// [`AdamScalars::moments`] compiled for AVX2 and FMA.
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn first_pass_fma(
        &self,
        p: &[f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        root: &mut [f32],
    ) {
        self.moments(p, g, m, v, root);
    }

    /// The op-by-op update's operations, in its order: weight decay into the gradient,
    /// `m = m * beta1 + g * (1 - beta1)`, `v = v * beta2 + (g * (1 - beta2)) * g` (one
    /// fused multiply-add, as libtorch's `addcmul_` kernel does), `v / (1 - beta2^t)`.
    #[inline(always)]
    fn moments(&self, p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32], root: &mut [f32]) {
        let each = p.iter().zip(g).zip(m).zip(v).zip(root);
        for ((((&p, &g), m), v), root) in each {
            let g = if self.weight_decay != 0.0 {
                g + p * self.weight_decay
            } else {
                g
            };
            *m *= self.beta1;
            *m += g * self.one_minus_beta1;
            *v *= self.beta2;
            *v = (g * self.one_minus_beta2).mul_add(g, *v);
            *root = *v / self.correction2;
        }
    }

    /// `p -= m / (root + eps) * lr / (1 - beta1^t)`, `root` holding the square root.
    fn second_pass(&self, p: &mut [f32], m: &[f32], root: &[f32]) {
        for ((p, &m), &root) in p.iter_mut().zip(m).zip(root) {
            *p -= m / (root + self.eps) * self.step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The fused update gives libtorch's op-by-op update to the bit, with and without
    /// weight decay, over sizes with and without a vector tail, for several steps.
    #[test]
    fn the_fused_update_equals_the_op_by_op_update_bit_for_bit() {
        tch::manual_seed(11);
        for (n, weight_decay) in [
            (1, 0.0),
            (37, 0.0),
            (100_003, 0.0),
            (4099, 1e-6),
            (1_000_003, 0.01),
        ] {
            let c = DenseOptimizerConfig {
                weight_decay,
                lr: 0.003,
                ..Default::default()
            };
            let start = Tensor::randn([n], (Kind::Float, Device::Cpu));
            let (mut pf, mut po) = (start.copy(), start.copy());
            let zeros = || Tensor::zeros([n], (Kind::Float, Device::Cpu));
            let (mut mf, mut sf, mut mo, mut so) = (zeros(), zeros(), zeros(), zeros());
            for t in 1..=6 {
                // gradients of several scales, some exact zeros
                let g = Tensor::randn([n], (Kind::Float, Device::Cpu)) * 10f64.powi(t - 4);
                let g = g.where_self(&g.abs().gt(0.3), &g.zeros_like());
                assert!(AdamScalars::of(&c, t).fused_update(&mut pf, &g, &mut mf, &mut sf));
                let gd = if weight_decay != 0.0 {
                    &g + &po * weight_decay
                } else {
                    g.shallow_clone()
                };
                adam_ops(&c, t, &mut po, &gd, &mut mo, &mut so);
            }
            for (f, o) in [(&pf, &po), (&mf, &mo), (&sf, &so)] {
                let (f, o) = (
                    Vec::<f32>::try_from(f).unwrap(),
                    Vec::<f32>::try_from(o).unwrap(),
                );
                let differ = f
                    .iter()
                    .zip(&o)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(
                    differ, 0,
                    "n = {n}, weight decay {weight_decay}: {differ} elements differ"
                );
            }
            assert!(pf.not_equal_tensor(&start).any().int64_value(&[]) == 1);
        }
    }

    #[test]
    fn the_fused_update_declines_other_tensors() {
        let c = DenseOptimizerConfig::default();
        let mut v = Tensor::zeros([4, 3], (Kind::Float, Device::Cpu)).tr();
        let g = Tensor::ones([3, 4], (Kind::Float, Device::Cpu));
        let (mut m, mut s) = (g.zeros_like(), g.zeros_like());
        assert!(
            !AdamScalars::of(&c, 1).fused_update(&mut v, &g, &mut m, &mut s),
            "not contiguous"
        );
        let mut d = Tensor::zeros([3], (Kind::Double, Device::Cpu));
        let gd = d.ones_like();
        let (mut m, mut s) = (d.zeros_like(), d.zeros_like());
        assert!(
            !AdamScalars::of(&c, 1).fused_update(&mut d, &gd, &mut m, &mut s),
            "not f32"
        );
    }
}
