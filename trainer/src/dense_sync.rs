//! Data-parallel dense model: after each rank's backward, the gradients of every dense
//! parameter are summed over the ranks in one flattened buffer (one `MPI_Allreduce` per
//! step, as PyTorch DDP's bucketed all-reduce with a single bucket), so every replica
//! takes the same optimizer step and stays identical. Each rank's loss is already its
//! share of the global batch's mean, so the sum is the global batch's gradient.

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::cluster::Cluster;
use crate::TrainError;
use shardrec_tables::Exchange;

/// Batch norm's statistics summed over the job's ranks (SyncBatchNorm).
impl shardrec_models::StatsReducer for Cluster {
    fn all_reduce_sum(&self, values: &mut [f32]) {
        Cluster::all_reduce_sum(self, values);
    }
}

/// The trainable variables in name order: the same order on every rank.
fn trainable_by_name(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Sums every trainable variable's gradient over the ranks, in place, together with
/// `extra` (per-step scalars such as the loss, summed in the same message). `ordered`:
/// add the ranks' gradients one after another in rank order (an all-gather), as one
/// process adds its slices' (`train.slices`), rather than in MPI's reduction order.
pub fn all_reduce_gradients(
    vs: &VarStore,
    cluster: &Cluster,
    extra: &mut [f32],
    ordered: bool,
) -> Result<(), TrainError> {
    let vars = trainable_by_name(vs);
    for (_, v) in &vars {
        if !v.grad().defined() {
            // this rank's backward did not reach the variable (others' may have): give it
            // a zero gradient to receive theirs
            (v * 0.0).sum(Kind::Float).backward();
        }
    }
    let parts: Vec<Tensor> = vars
        .iter()
        .map(|(_, v)| {
            v.grad()
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .reshape([-1])
        })
        .collect();
    let flat = if parts.is_empty() {
        Tensor::zeros([0], (Kind::Float, Device::Cpu))
    } else {
        Tensor::cat(&parts, 0)
    };
    let mut buf = Vec::<f32>::try_from(&flat)?;
    let n = buf.len();
    buf.extend_from_slice(extra);
    if ordered && cluster.world_size() > 2 {
        let all = cluster.all_gather(&buf)?;
        let len = buf.len();
        buf.copy_from_slice(&all[..len]);
        for part in all[len..].chunks_exact(len) {
            buf.iter_mut().zip(part).for_each(|(a, v)| *a += v);
        }
    } else {
        // two addends sum the same in either order
        cluster.all_reduce_sum(&mut buf);
    }
    extra.copy_from_slice(&buf[n..]);
    let _guard = tch::no_grad_guard();
    let mut off = 0usize;
    for (_, v) in &vars {
        let k = v.numel();
        let summed = Tensor::from_slice(&buf[off..off + k])
            .view(v.size().as_slice())
            .to_device(v.device())
            .to_kind(v.kind());
        v.grad().copy_(&summed);
        off += k;
    }
    Ok(())
}

/// Averages the model's non-trainable float buffers (batch norm's running statistics)
/// over the ranks, so every replica keeps the statistics of the whole job's batches
/// rather than of its own share, and all ranks evaluate with the same ones.
pub fn average_buffers(vs: &VarStore, cluster: &Cluster) -> Result<(), TrainError> {
    let mut bufs: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| !t.requires_grad() && t.is_floating_point())
        .collect();
    if bufs.is_empty() {
        return Ok(());
    }
    bufs.sort_by(|a, b| a.0.cmp(&b.0));
    let parts: Vec<Tensor> = bufs
        .iter()
        .map(|(_, t)| t.to_device(Device::Cpu).to_kind(Kind::Float).reshape([-1]))
        .collect();
    let mut buf = Vec::<f32>::try_from(&Tensor::cat(&parts, 0))?;
    cluster.all_reduce_sum(&mut buf);
    let world = cluster.world_size() as f32;
    let _guard = tch::no_grad_guard();
    let mut off = 0usize;
    for (_, t) in &mut bufs {
        let k = t.numel();
        let mean = (Tensor::from_slice(&buf[off..off + k]) / f64::from(world))
            .view(t.size().as_slice())
            .to_device(t.device())
            .to_kind(t.kind());
        t.copy_(&mean);
        off += k;
    }
    Ok(())
}
