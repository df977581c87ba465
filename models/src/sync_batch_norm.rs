//! Batch norm whose training statistics cover the whole job's batch, not one rank's share
//! of it (PyTorch's `nn.SyncBatchNorm`; Ioffe and Szegedy 2015 for batch norm itself).
//!
//! Under data parallelism each rank sees `1/N` of a step's batch. Plain batch norm then
//! normalises with statistics of that share, so `mpirun -np 2` trains a different model
//! than one process on the same global batch. Here every rank sums its rows' `x` and `x²`
//! per channel, the sums are all-reduced, and all ranks normalise with the global mean
//! and (biased) variance; the running statistics follow the global ones (unbiased, as
//! PyTorch keeps them), so they stay identical on every rank.
//!
//! The gradient needs the other ranks too: rank `r`'s loss depends on rank `s`'s rows
//! through the global sums. Rust cannot register a custom autograd function with
//! libtorch, so the backward is prepared layer by layer, last layer first (see
//! [`BatchStatsSync::cross_rank_term`]): each rank takes the gradient of its loss with
//! respect to the layer's global-sum nodes, those gradients are all-reduced, and each rank
//! adds to its loss the surrogate `sum(S * (G - g_own))` (constant factor), whose gradient
//! through its own rows is what the other ranks' losses contribute through that layer.
//! Layers below then see the corrected loss, as PyTorch's SyncBatchNorm backward (two
//! all-reduced sums per layer, top down) does. Gradients summed over the ranks are those
//! of one process normalising the whole batch.

use std::cell::RefCell;

use tch::nn::{self, BatchNorm, ModuleT};
use tch::{Kind, TchError, Tensor};

/// `nn::BatchNormConfig::default()`'s values, which the models build their layers with.
const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// A batch norm layer over `channels` initialised as `torch.nn.BatchNorm1d` is (scale 1,
/// shift 0; tch's default draws the scale uniformly from [0, 1]).
pub fn torch_batch_norm1d<'a>(
    p: impl std::borrow::Borrow<nn::Path<'a>>,
    channels: i64,
) -> BatchNorm {
    nn::batch_norm1d(
        p,
        channels,
        nn::BatchNormConfig {
            ws_init: nn::Init::Const(1.0),
            ..Default::default()
        },
    )
}

/// Sums a buffer over the job's ranks, in place (every rank calls it in the same order).
pub trait StatsReducer {
    fn all_reduce_sum(&self, values: &mut [f32]);
}

/// One training step's synchronisation: the reducer, and the global-sum nodes that this
/// step's forward passes created (the backward correction needs them).
pub struct BatchStatsSync<'a> {
    reducer: &'a dyn StatsReducer,
    /// Per batch-norm application, in forward order: its global sums of `x` and `x²`.
    nodes: RefCell<Vec<[Tensor; 2]>>,
}

impl<'a> BatchStatsSync<'a> {
    pub fn new(reducer: &'a dyn StatsReducer) -> Self {
        Self {
            reducer,
            nodes: RefCell::new(Vec::new()),
        }
    }

    /// After the step's forward passes and before its backward: the term to add to this
    /// rank's loss so that its backward also carries the other ranks' gradients through
    /// the shared statistics (`None` when the step normalised nothing). Collective: every
    /// rank calls it once per step. Clears the step's nodes.
    pub fn cross_rank_term(&self, loss: &Tensor) -> Result<Option<Tensor>, TchError> {
        let layers = std::mem::take(&mut *self.nodes.borrow_mut());
        if layers.is_empty() {
            return Ok(None);
        }
        let mut term = loss.zeros_like();
        // last applied first: a layer's statistics feed only the layers after it, whose
        // cross-rank terms are then already in the loss differentiated here
        for nodes in layers.iter().rev() {
            let objective = loss + &term;
            let own = Tensor::f_run_backward(&[&objective], nodes, true, false)?;
            let own: Vec<Tensor> = own
                .into_iter()
                .zip(nodes)
                .map(|(g, n)| if g.defined() { g } else { n.zeros_like() })
                .collect();
            let flat = Tensor::cat(&own, 0).to_device(tch::Device::Cpu);
            let mut buf = Vec::<f32>::try_from(&flat.to_kind(Kind::Float))?;
            self.reducer.all_reduce_sum(&mut buf);
            let total = Tensor::from_slice(&buf).to_device(loss.device());
            let others = total - flat.to_device(loss.device());
            let mut off = 0i64;
            for n in nodes {
                let len = n.size()[0];
                term += (n * others.narrow(0, off, len)).sum(Kind::Float);
                off += len;
            }
        }
        Ok(Some(term))
    }
}

/// Batch norm of `x` (`[rows, channels]`): in training with `sync`, by the statistics of
/// every rank's rows together; otherwise as `nn::BatchNorm` does (a batch of one row is
/// normalised by the running statistics, since it has no variance).
pub fn batch_norm_forward(
    bn: &BatchNorm,
    x: &Tensor,
    train: bool,
    sync: Option<&BatchStatsSync>,
) -> Tensor {
    match sync {
        Some(s) if train => synced(bn, x, s),
        _ => bn.forward_t(x, train && x.size()[0] > 1),
    }
}

fn synced(bn: &BatchNorm, x: &Tensor, sync: &BatchStatsSync) -> Tensor {
    let channels = x.size()[1];
    let s1 = x.sum_dim_intlist(0, false, Kind::Float);
    let s2 = (x * x).sum_dim_intlist(0, false, Kind::Float);
    let local = Tensor::cat(&[s1.detach(), s2.detach()], 0).to_device(tch::Device::Cpu);
    let mut buf = Vec::<f32>::try_from(&local).expect("float statistics");
    buf.push(x.size()[0] as f32);
    sync.reducer.all_reduce_sum(&mut buf);
    let n = f64::from(buf[2 * channels as usize]);
    if n < 2.0 {
        // the whole step has one row: no variance to normalise by (every rank agrees)
        return bn.forward_t(x, false);
    }
    let total = Tensor::from_slice(&buf[..2 * channels as usize]).to_device(x.device());
    // the global sums, differentiable through this rank's rows only
    let g1 = &s1 + (total.narrow(0, 0, channels) - s1.detach());
    let g2 = &s2 + (total.narrow(0, channels, channels) - s2.detach());
    let mean = &g1 / n;
    let var = (&g2 / n - &mean * &mean).clamp_min(0.0);
    {
        let _guard = tch::no_grad_guard();
        let mut rm = bn.running_mean.shallow_clone();
        let mut rv = bn.running_var.shallow_clone();
        rm.copy_(&(&rm * (1.0 - MOMENTUM) + mean.detach() * MOMENTUM));
        rv.copy_(&(&rv * (1.0 - MOMENTUM) + var.detach() * (MOMENTUM * n / (n - 1.0))));
    }
    sync.nodes.borrow_mut().push([g1, g2]);
    let mut y = (x - &mean) * (var + EPS).rsqrt();
    if let Some(w) = &bn.ws {
        y *= w;
    }
    if let Some(b) = &bn.bs {
        y += b;
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, Mutex};
    use tch::nn::VarStore;
    use tch::Device;

    /// Ranks as threads: sums through a shared buffer between barriers.
    struct ThreadReducer {
        barrier: Arc<Barrier>,
        sum: Arc<Mutex<Vec<f32>>>,
    }

    impl StatsReducer for ThreadReducer {
        fn all_reduce_sum(&self, values: &mut [f32]) {
            {
                let mut s = self.sum.lock().unwrap();
                if s.len() < values.len() {
                    s.resize(values.len(), 0.0);
                }
                for (a, v) in s.iter_mut().zip(values.iter()) {
                    *a += *v;
                }
            }
            self.barrier.wait();
            values.copy_from_slice(&self.sum.lock().unwrap()[..values.len()]);
            if self.barrier.wait().is_leader() {
                self.sum.lock().unwrap().iter_mut().for_each(|v| *v = 0.0);
            }
            self.barrier.wait();
        }
    }

    /// A small net `x -> Linear -> BN -> ReLU -> Linear -> BN -> loss` as one rank sees it
    /// (two stacked layers: the second's statistics depend on the first's; fixed weights, no
    /// RNG: the ranks are threads); returns the gradients of the input rows, of the linear
    /// weight and of the BN scale and shift, the running mean and variance after the step,
    /// and the normalised output.
    fn step(
        x: &[f32],
        rows: i64,
        sync: Option<&BatchStatsSync>,
        global_rows: i64,
        cross_rank_term: bool,
    ) -> Vec<Vec<f32>> {
        let vs = VarStore::new(Device::Cpu);
        let p = vs.root();
        let lin = nn::linear(&p / "lin", 3, 4, Default::default());
        tch::no_grad(|| {
            let w: Vec<f32> = (0..12).map(|i| ((i * 5 % 7) as f32 - 3.0) / 4.0).collect();
            lin.ws
                .shallow_clone()
                .copy_(&Tensor::from_slice(&w).view([4, 3]));
            let mut b = lin.bs.as_ref().unwrap().shallow_clone();
            b.copy_(&Tensor::from_slice(&[0.1f32, -0.2, 0.0, 0.3]));
        });
        let bn = torch_batch_norm1d(&p / "bn", 4);
        tch::no_grad(|| {
            let mut w = bn.ws.as_ref().unwrap().shallow_clone();
            w.copy_(&Tensor::from_slice(&[0.5f32, 1.5, 1.0, 2.0]));
            let mut b = bn.bs.as_ref().unwrap().shallow_clone();
            b.copy_(&Tensor::from_slice(&[0.0f32, 0.1, -0.1, 0.2]));
        });
        let lin2 = nn::linear(&p / "lin2", 4, 4, Default::default());
        let bn2 = torch_batch_norm1d(&p / "bn2", 4);
        tch::no_grad(|| {
            let w: Vec<f32> = (0..16).map(|i| ((i * 3 % 5) as f32 - 2.0) / 3.0).collect();
            lin2.ws
                .shallow_clone()
                .copy_(&Tensor::from_slice(&w).view([4, 4]));
            let mut b = lin2.bs.as_ref().unwrap().shallow_clone();
            b.copy_(&Tensor::from_slice(&[0.0f32, 0.2, -0.3, 0.1]));
        });
        let x = Tensor::from_slice(x)
            .view([rows, 3])
            .set_requires_grad(true);
        let h = x.apply(&lin);
        let h2 = batch_norm_forward(&bn, &h, true, sync).relu().apply(&lin2);
        let y = batch_norm_forward(&bn2, &h2, true, sync);
        // an uneven per-row loss, so the statistics' gradients are not zero; each rank's
        // share of the global batch's mean, as the trainer builds it
        let target = Tensor::from_slice(&[0.3f32, -1.0, 2.0, 0.5]);
        let mut loss = ((&y - &target).pow_tensor_scalar(3)).sum(Kind::Float) / global_rows as f64;
        if let (Some(s), true) = (sync, cross_rank_term) {
            if let Some(t) = s.cross_rank_term(&loss).unwrap() {
                loss += t;
            }
        }
        loss.backward();
        let v = |t: &Tensor| Vec::<f32>::try_from(&t.reshape([-1])).unwrap();
        vec![
            v(&x.grad()),
            v(&lin.ws.grad()),
            v(&bn.ws.as_ref().unwrap().grad()),
            v(&bn.bs.as_ref().unwrap().grad()),
            v(&bn.running_mean),
            v(&bn.running_var),
            v(&y.detach()),
        ]
    }

    /// Rows `x` (3 columns) dealt to threads by `shares` (start row, rows), each running
    /// [`step`] with a synchronisation over the threads.
    fn as_ranks(x: &[f32], shares: &[(usize, i64)], cross_rank_term: bool) -> Vec<Vec<Vec<f32>>> {
        let rows = (x.len() / 3) as i64;
        let barrier = Arc::new(Barrier::new(shares.len()));
        let sum = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|sc| {
            let handles: Vec<_> = shares
                .iter()
                .map(|&(start, n)| {
                    let reducer = ThreadReducer {
                        barrier: barrier.clone(),
                        sum: sum.clone(),
                    };
                    let part = x[start * 3..(start + n as usize) * 3].to_vec();
                    sc.spawn(move || {
                        let sync = BatchStatsSync::new(&reducer);
                        step(&part, n, Some(&sync), rows, cross_rank_term)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn two_synced_ranks_match_one_process_on_the_whole_batch() {
        let rows = 6i64;
        let x: Vec<f32> = (0..rows * 3)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let whole = step(&x, rows, None, rows, false);
        // rank 0 takes 4 rows, rank 1 takes 2 (uneven shares, as at an epoch's end)
        let shares = [(0usize, 4i64), (4usize, 2i64)];
        let results = as_ranks(&x, &shares, true);
        let close = |a: &[f32], b: &[f32], what: &str| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (i, (p, q)) in a.iter().zip(b).enumerate() {
                assert!(
                    (p - q).abs() < 1e-4 * (1.0 + q.abs()),
                    "{what}[{i}]: {p} vs {q}"
                );
            }
        };
        // input-row gradients and outputs: each rank's rows as in the whole batch
        let x_grad: Vec<f32> = results.iter().flat_map(|r| r[0].clone()).collect();
        close(&x_grad, &whole[0], "input gradient");
        let y: Vec<f32> = results.iter().flat_map(|r| r[6].clone()).collect();
        close(&y, &whole[6], "normalised output");
        // parameter gradients summed over the ranks (the trainer's all-reduce)
        for (k, what) in [(1, "linear weight"), (2, "bn scale"), (3, "bn shift")] {
            let summed: Vec<f32> = (0..whole[k].len())
                .map(|i| results[0][k][i] + results[1][k][i])
                .collect();
            close(&summed, &whole[k], what);
        }
        // running statistics: the whole batch's, the same on both ranks
        for (k, what) in [(4, "running mean"), (5, "running var")] {
            close(&results[0][k], &whole[k], what);
            close(&results[1][k], &whole[k], what);
        }
        // without the cross-rank term the input gradient differs: the test can fail
        let partial: Vec<f32> = as_ranks(&x, &shares, false)
            .into_iter()
            .flat_map(|mut r| r.remove(0))
            .collect();
        let differs = partial
            .iter()
            .zip(&whole[0])
            .any(|(p, q)| (p - q).abs() > 1e-3 * (1.0 + q.abs()));
        assert!(differs, "the cross-rank term should matter on this batch");
    }

    #[test]
    fn without_sync_it_is_plain_batch_norm() {
        let vs = VarStore::new(Device::Cpu);
        let bn = torch_batch_norm1d(vs.root() / "bn", 2);
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 5.0, 4.0, 0.0]).view([3, 2]);
        let ours = batch_norm_forward(&bn, &x, true, None);
        let vs2 = VarStore::new(Device::Cpu);
        let bn2 = torch_batch_norm1d(vs2.root() / "bn", 2);
        let theirs = bn2.forward_t(&x, true);
        assert!(ours.allclose(&theirs, 1e-6, 1e-6, false));
        // one row: running statistics, no error
        let one = batch_norm_forward(&bn, &x.narrow(0, 0, 1), true, None);
        assert_eq!(one.size(), vec![1, 2]);
    }
}
