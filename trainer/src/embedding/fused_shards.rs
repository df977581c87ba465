//! Under mpirun, a rank's held shards fused per width on its device ([`FusedShards`]):
//! the sharded engine serves every rank's requests for rows in one gather (one
//! `index_select`, one copy into the host buffer the exchange sends) and applies all the
//! gradients that arrive in one update (one copy to the device, the optimizer as batched
//! ops), where shard by shard it copies once per shard and asking rank each way. MPICH
//! here is not CUDA-aware, so rows and gradients travel between ranks in host memory.
//!
//! The shards stay in the sharded engine, each viewing its part of the fused tensors, so
//! checkpoints and saved models read and write them as any device table.

use std::sync::Mutex;

use shardrec_tables::{BatchedRows, SparseOptimizer, TableError, TableShard};
use tch::{Device, Kind, Tensor};

use super::device_rows::optimizer_step;
use super::TensorRows;

fn torch(e: tch::TchError) -> TableError {
    TableError::Exchange(format!("libtorch (fused shards): {e}"))
}

/// The held shards of one width, in one tensor (and their state in one more).
#[derive(Debug)]
struct ShardGroup {
    dim: usize,
    weights: Tensor,
    state: Tensor,
}

/// Fused rows per group, and each pair's (group, first position there, rows).
struct FusedIds {
    ids: Vec<Vec<i64>>,
    spans: Vec<(usize, usize, usize)>,
}

/// A rank's held shards fused per width on one device.
#[derive(Debug)]
pub struct FusedShards {
    /// Tensors are not `Sync`; the engine serves from `&self`, so they sit behind a lock.
    groups: Mutex<Vec<ShardGroup>>,
    /// Per table of the collection: its group and first fused row, if held here.
    placement: Vec<Option<(usize, i64)>>,
    device: Device,
}

impl FusedShards {
    /// Fuses `held` (table index, shard: f32 rows in RAM) of a collection of `tables`
    /// tables per width on `device`; the shards then view the fused tensors.
    pub fn adopt(
        held: Vec<(usize, &mut TableShard)>,
        tables: usize,
        opt: &SparseOptimizer,
        device: Device,
    ) -> Result<Self, TableError> {
        let mut widths: Vec<usize> = held.iter().map(|(_, s)| s.width()).collect();
        widths.sort_unstable();
        widths.dedup();
        let mut placement = vec![None; tables];
        let mut groups = Vec::with_capacity(widths.len());
        let _no_grad = tch::no_grad_guard();
        let mut held = held;
        for (g, &dim) in widths.iter().enumerate() {
            let mine: Vec<&mut (usize, &mut TableShard)> =
                held.iter_mut().filter(|(_, s)| s.width() == dim).collect();
            let rows: usize = mine.iter().map(|(_, s)| s.num_rows()).sum();
            let sw = opt.state_width(dim);
            let opts = (Kind::Float, device);
            let weights = Tensor::f_zeros([rows as i64, dim as i64], opts).map_err(torch)?;
            let state = Tensor::f_zeros([rows as i64, sw as i64], opts).map_err(torch)?;
            let mut first = 0i64;
            for (t, shard) in mine {
                if shard.in_file_tier() || shard.on_device() {
                    return Err(TableError::InvalidTable {
                        table: shard.table.clone(),
                        reason: "fused shards hold f32 rows from RAM".into(),
                    });
                }
                TensorRows::take_over(shard, &weights, &state, first)?;
                placement[*t] = Some((g, first));
                first += shard.num_rows() as i64;
            }
            groups.push(ShardGroup {
                dim,
                weights,
                state,
            });
        }
        Ok(Self {
            groups: Mutex::new(groups),
            placement,
            device,
        })
    }

    /// The fused rows of the (held table, local rows) pairs, per group.
    fn fused_rows(&self, pairs: &[(usize, &[u64])], groups: usize) -> Result<FusedIds, TableError> {
        let mut out = FusedIds {
            ids: vec![Vec::new(); groups],
            spans: Vec::with_capacity(pairs.len()),
        };
        for &(t, rows) in pairs {
            let (g, first) = self.placement.get(t).copied().flatten().ok_or_else(|| {
                TableError::BadPlan(format!("table {t} is not held by this rank"))
            })?;
            out.spans.push((g, out.ids[g].len(), rows.len()));
            out.ids[g].extend(rows.iter().map(|&r| first + r as i64));
        }
        Ok(out)
    }

    fn upload_i64(&self, v: &[i64]) -> Tensor {
        let t = Tensor::from_slice(v);
        if self.device == Device::Cpu {
            return t;
        }
        t.pin_memory(self.device)
            .to_device_(self.device, Kind::Int64, true, false)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ShardGroup>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BatchedRows for FusedShards {
    fn gather(&self, requests: &[(usize, &[u64])]) -> Result<Vec<f32>, TableError> {
        let groups = self.lock();
        let FusedIds { ids, spans } = self.fused_rows(requests, groups.len())?;
        // one gather and one copy to the host per width
        let mut per_group = Vec::with_capacity(groups.len());
        for (group, ids) in groups.iter().zip(&ids) {
            if ids.is_empty() {
                per_group.push(Vec::new());
                continue;
            }
            let rows = group
                .weights
                .f_index_select(0, &self.upload_i64(ids))
                .and_then(|r| r.f_to_device(Device::Cpu))
                .and_then(|r| r.f_reshape([-1]))
                .map_err(torch)?;
            per_group.push(Vec::<f32>::try_from(&rows).map_err(torch)?);
        }
        let mut out = Vec::with_capacity(per_group.iter().map(Vec::len).sum());
        for (g, start, len) in spans {
            let dim = groups[g].dim;
            out.extend_from_slice(&per_group[g][start * dim..(start + len) * dim]);
        }
        Ok(out)
    }

    fn apply(
        &mut self,
        opt: &SparseOptimizer,
        step: u64,
        updates: &[(usize, &[u64], &[f32])],
    ) -> Result<(), TableError> {
        let _no_grad = tch::no_grad_guard();
        let n = self.lock().len();
        let pairs: Vec<(usize, &[u64])> = updates.iter().map(|u| (u.0, u.1)).collect();
        let FusedIds { ids, spans } = self.fused_rows(&pairs, n)?;
        let mut grads: Vec<Vec<f32>> = vec![Vec::new(); n];
        for ((g, _, _), (_, _, grad)) in spans.iter().zip(updates) {
            grads[*g].extend_from_slice(grad);
        }
        let device = self.device;
        let mut groups = self.lock();
        for ((group, ids), grads) in groups.iter_mut().zip(&ids).zip(&grads) {
            if ids.is_empty() {
                continue;
            }
            // one copy of the rows' ids and gradients to the device per width
            let idx = self.upload_i64(ids);
            let g = Tensor::from_slice(grads)
                .f_view([ids.len() as i64, group.dim as i64])
                .and_then(|g| g.f_to_device(device))
                .map_err(torch)?;
            let rows = group.weights.f_index_select(0, &idx).map_err(torch)?;
            let state = group.state.f_index_select(0, &idx).map_err(torch)?;
            let (new_w, new_s) = optimizer_step(opt, step, &rows, &state, &g);
            let _ = group
                .weights
                .f_index_copy_(0, &idx, &new_w)
                .map_err(torch)?;
            if group.state.size()[1] > 0 {
                let _ = group.state.f_index_copy_(0, &idx, &new_s).map_err(torch)?;
            }
        }
        Ok(())
    }
}
