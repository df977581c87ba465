//! Table shards in a GPU's memory (`embedding.device = "cuda"`): the rows and optimizer
//! state are libtorch tensors on the device, a gather is one `index_select`, and the
//! sparse optimizer's update runs there on the touched rows only (`index_select`, the
//! update, `index_copy_`), with the formulas of [`shardrec_tables::SparseOptimizer`]
//! (SGD, Adagrad, row-wise Adagrad as FBGEMM's, lazy Adam). The lookup plan, the exchange
//! between ranks and the per-row gradient reduction stay on the host, so the rows a batch
//! needs cross the bus once each way per step.

use std::sync::Mutex;

use shardrec_tables::{DeviceRows, OptimizerKind, SparseOptimizer, TableError, TableShard};
use tch::{Device, Kind, Tensor};

/// A shard's `n x width` weights and `n x state_width` state on one device.
#[derive(Debug)]
pub struct TensorRows {
    /// (weights, state); tensors are not `Sync`, so shared access goes through the lock.
    tensors: Mutex<(Tensor, Tensor)>,
    device: Device,
    width: usize,
    state_width: usize,
    rows: usize,
}

fn torch(e: tch::TchError) -> TableError {
    TableError::Exchange(format!("libtorch (table rows on the device): {e}"))
}

impl TensorRows {
    /// Copies host rows and state to `device`.
    pub fn upload(
        weights: &[f32],
        state: &[f32],
        width: usize,
        state_width: usize,
        device: Device,
    ) -> Result<Self, TableError> {
        let rows = weights.len().checked_div(width).unwrap_or(0);
        let w = Tensor::f_from_slice(weights)
            .and_then(|t| t.f_view([rows as i64, width as i64]))
            .and_then(|t| t.f_to_device(device))
            .map_err(torch)?;
        let s = Tensor::f_from_slice(state)
            .and_then(|t| t.f_view([rows as i64, state_width as i64]))
            .and_then(|t| t.f_to_device(device))
            .map_err(torch)?;
        Ok(Self {
            tensors: Mutex::new((w, s)),
            device,
            width,
            state_width,
            rows,
        })
    }

    /// A shard whose rows and state are `weights` and `state` (`rows x width` and
    /// `rows x state_width`), typically views of a fused table's tensors: writes through
    /// either handle reach the same memory.
    pub fn over(weights: Tensor, state: Tensor) -> Self {
        let size = |t: &Tensor, d: usize| t.size().get(d).copied().unwrap_or(0) as usize;
        Self {
            device: weights.device(),
            rows: size(&weights, 0),
            width: size(&weights, 1),
            state_width: size(&state, 1),
            tensors: Mutex::new((weights, state)),
        }
    }

    /// Copies `shard`'s host rows and state into rows `first..` of `weights` and `state`
    /// (a fused tensor's and its state's), and makes the shard a view of them there.
    pub fn take_over(
        shard: &mut TableShard,
        weights: &Tensor,
        state: &Tensor,
        first: i64,
    ) -> Result<(), TableError> {
        let _no_grad = tch::no_grad_guard();
        let n = shard.num_rows() as i64;
        let (w, s) = (weights.narrow(0, first, n), state.narrow(0, first, n));
        let (host_w, host_s) = (shard.weights()?, shard.state()?);
        w.f_view([-1])
            .and_then(|mut v| v.f_copy_(&Tensor::from_slice(&host_w)))
            .and_then(|_| s.f_view([-1]))
            .and_then(|mut v| v.f_copy_(&Tensor::from_slice(&host_s)))
            .map_err(torch)?;
        drop((host_w, host_s));
        shard.move_to_device(&|_, _, _, _| {
            Ok(Box::new(Self::over(w.shallow_clone(), s.shallow_clone())))
        })
    }

    fn index(&self, local_rows: &[u64]) -> Tensor {
        let idx: Vec<i64> = local_rows.iter().map(|&r| r as i64).collect();
        Tensor::from_slice(&idx).to_device(self.device)
    }

    fn to_host(t: &Tensor) -> Result<Vec<f32>, TableError> {
        let flat = t
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_reshape([-1]))
            .and_then(|t| t.f_contiguous())
            .map_err(torch)?;
        Vec::<f32>::try_from(&flat).map_err(torch)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Tensor, Tensor)> {
        self.tensors.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One step of `opt` on gathered rows, as batched tensor ops with the formulas of
/// [`SparseOptimizer`]'s host kernels: `w` the rows (`k x dim`), `s` their state
/// (`k x state_width`), `g` their gradients (`k x dim`); `step` is the 1-based update
/// count (Adam's bias correction). Returns the new rows and state (SGD: `s` as it was).
pub(super) fn optimizer_step(
    opt: &SparseOptimizer,
    step: u64,
    w: &Tensor,
    s: &Tensor,
    g: &Tensor,
) -> (Tensor, Tensor) {
    let (lr, wd, eps) = (
        f64::from(opt.lr),
        f64::from(opt.weight_decay),
        f64::from(opt.eps),
    );
    let g = g + w * wd;
    match opt.kind {
        OptimizerKind::Sgd => (w - &g * lr, s.shallow_clone()),
        OptimizerKind::Adagrad => {
            let s = s + &g * &g;
            (w - &g * lr / (s.sqrt() + eps), s)
        }
        OptimizerKind::RowwiseAdagrad => {
            let s = s + (&g * &g).mean_dim(1, true, Kind::Float);
            (w - &g * lr / (s.sqrt() + eps), s)
        }
        OptimizerKind::Adam => {
            let dim = w.size()[1];
            let (b1, b2) = (f64::from(opt.beta1), f64::from(opt.beta2));
            let (bc1, bc2) = opt.bias_corrections(step);
            let m = s.narrow(1, 0, dim) * b1 + &g * (1.0 - b1);
            let v = s.narrow(1, dim, dim) * b2 + &g * &g * (1.0 - b2);
            let new_w = w - (&m / f64::from(bc1)) * lr / ((&v / f64::from(bc2)).sqrt() + eps);
            (new_w, Tensor::cat(&[m, v], 1))
        }
    }
}

impl DeviceRows for TensorRows {
    fn gather(&self, local_rows: &[u64]) -> Result<Vec<f32>, TableError> {
        if local_rows.is_empty() {
            return Ok(vec![]);
        }
        let idx = self.index(local_rows);
        let g = self.lock();
        let rows = g.0.f_index_select(0, &idx).map_err(torch)?;
        Self::to_host(&rows)
    }

    fn apply(
        &mut self,
        opt: &SparseOptimizer,
        step: u64,
        local_rows: &[u64],
        grads: &[f32],
    ) -> Result<(), TableError> {
        if local_rows.is_empty() {
            return Ok(());
        }
        let _no_grad = tch::no_grad_guard();
        let k = local_rows.len() as i64;
        let w = self.width as i64;
        let idx = self.index(local_rows);
        let g = Tensor::from_slice(grads)
            .view([k, w])
            .to_device(self.device);
        let mut guard = self.lock();
        let (weights, state) = &mut *guard;
        let wr = weights.index_select(0, &idx);
        let (new_w, new_s) = optimizer_step(opt, step, &wr, &state.index_select(0, &idx), &g);
        if self.state_width > 0 {
            let _ = state.index_copy_(0, &idx, &new_s);
        }
        let _ = weights.index_copy_(0, &idx, &new_w);
        Ok(())
    }

    fn weights(&self) -> Result<Vec<f32>, TableError> {
        Self::to_host(&self.lock().0)
    }

    fn state(&self) -> Result<Vec<f32>, TableError> {
        Self::to_host(&self.lock().1)
    }

    fn set_weights(&mut self, v: &[f32]) -> Result<(), TableError> {
        let _no_grad = tch::no_grad_guard();
        let src = Tensor::from_slice(v).view([self.rows as i64, self.width as i64]);
        self.lock().0.f_copy_(&src).map_err(torch)
    }

    fn set_state(&mut self, v: &[f32]) -> Result<(), TableError> {
        let _no_grad = tch::no_grad_guard();
        let src = Tensor::from_slice(v).view([self.rows as i64, self.state_width as i64]);
        self.lock().1.f_copy_(&src).map_err(torch)
    }

    fn bytes(&self) -> (usize, usize) {
        (self.rows * self.width * 4, self.rows * self.state_width * 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardrec_tables::{ShardExtent, TableShard};

    /// On the CPU device, the tensor update gives the host kernels' rows and state
    /// (within float rounding) for every sparse optimizer, with weight decay.
    #[test]
    fn tensor_rows_update_like_the_host_kernels() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adagrad,
            OptimizerKind::RowwiseAdagrad,
            OptimizerKind::Adam,
        ] {
            let mut opt = SparseOptimizer::new(kind, 0.05);
            opt.weight_decay = 0.01;
            let extent = ShardExtent {
                rank: 0,
                rows: 10..30,
                cols: 0..6,
            };
            let init = shardrec_tables::RowInit::Uniform {
                bound: 0.5,
                seed: 3,
            };
            let mut host = TableShard::new("t", 6, &extent, &init, &opt);
            let mut dev = TableShard::new("t", 6, &extent, &init, &opt);
            dev.move_to_device(&|w, s, width, sw| {
                Ok(Box::new(TensorRows::upload(w, s, width, sw, Device::Cpu)?))
            })
            .unwrap();
            assert!(dev.on_device());
            for step in 0..4u64 {
                let rows: Vec<u64> = (0..20).filter(|r| (r + step) % 3 != 0).collect();
                let grads: Vec<f32> = (0..rows.len() * 6)
                    .map(|i| ((i as f32 + step as f32) * 0.37).sin())
                    .collect();
                host.apply(&opt, &rows, &grads).unwrap();
                dev.apply(&opt, &rows, &grads).unwrap();
            }
            let close = |a: &[f32], b: &[f32]| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6)
            };
            assert!(
                close(&host.weights().unwrap(), &dev.weights().unwrap()),
                "{kind:?} weights"
            );
            assert!(
                close(&host.state().unwrap(), &dev.state().unwrap()),
                "{kind:?} state"
            );
            let some = [0u64, 7, 19];
            assert!(close(
                &host.gather(&some).unwrap(),
                &dev.gather(&some).unwrap()
            ));
            let a: Vec<f32> = (0..120).map(|i| i as f32).collect();
            dev.set_weights(&a).unwrap();
            assert_eq!(dev.gather(&[2]).unwrap(), a[12..18].to_vec());
            assert_eq!(host.bytes(), dev.bytes());
        }
    }
}
