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
        for (v, (s1, s2)) in self.vars.iter_mut().zip(self.state.iter_mut()) {
            let g = v.grad();
            if !g.defined() {
                continue;
            }
            let g = if c.weight_decay != 0.0 {
                &g + &*v * c.weight_decay
            } else {
                g
            };
            match c.kind {
                DenseOptimizerKind::Adam => {
                    let _ = s1.g_mul_scalar_(c.beta1);
                    let _ = s1.g_add_(&(&g * (1.0 - c.beta1)));
                    let _ = s2.g_mul_scalar_(c.beta2);
                    let _ = s2.addcmul_(&(&g * (1.0 - c.beta2)), &g);
                    let bc1 = 1.0 - c.beta1.powi(t);
                    let bc2 = 1.0 - c.beta2.powi(t);
                    let denom = (&*s2 / bc2).sqrt() + c.eps;
                    let _ = v.g_sub_(&(&*s1 / &denom * (c.lr / bc1)));
                }
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
