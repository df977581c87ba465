//! Fused tables (`embedding.fused`, the default for tables on a GPU): every table of one
//! width lives in one libtorch tensor on `embedding.device` with per-table row offsets,
//! its optimizer state in one more (NVIDIA's JointEmbedding; FBGEMM's table-batched
//! embeddings, which TorchRec measures 13-23x faster than one bag per table). A step's
//! lookup is, per width, one `index_select` of the batch's distinct rows and one
//! `embedding_bag` that pools them into the batch's feature slots; its backward is one
//! `embedding_bag` over the output gradient that sums each distinct row's contributions
//! in an order planned on the host (a sorted reduction, no atomics: a seed gives the
//! same rows run after run), then the sparse optimizer as a few batched ops on the
//! touched rows and an `index_copy_` back. No per-table loop, no lock, no host round
//! trip of rows or gradients. The index arrays are planned on the host
//! ([`FusedLayout::step`]), which may run a step ahead ([`super::StepPlanner`]).
//!
//! The tables' shards stay in the [`LocalEmbeddings`], each holding views of its part of
//! the fused tensors, so checkpoints, saved models and evaluation read and write the
//! fused rows through the shards as they would any device table.

use shardrec_tables::{
    FusedLayout, GroupStep, KeyedJaggedIds, LocalEmbeddings, SparseOptimizer, TableError,
};
use tch::{Device, Kind, Tensor};

use super::device_rows::optimizer_step;
use super::TensorRows;

fn torch(e: tch::TchError) -> TableError {
    TableError::Exchange(format!("libtorch (fused tables): {e}"))
}

/// One width's rows and state, and where its slots go in the output.
#[derive(Debug)]
struct GroupTensors {
    weights: Tensor,
    state: Tensor,
    /// The group's output columns, in the order it writes them.
    columns: Tensor,
    /// A row of ones (the factor of a plain term in a group with `mul`).
    ones: Tensor,
}

/// A collection's tables fused per width on one device, with the host shards viewing them.
#[derive(Debug)]
pub struct FusedEmbeddings {
    host: LocalEmbeddings,
    layout: FusedLayout,
    groups: Vec<GroupTensors>,
    /// Each output column's place among the groups' outputs side by side (None: in order).
    output_gather: Option<Tensor>,
    device: Device,
}

/// A step's index arrays on the device, one entry per group.
pub struct FusedStep {
    batch: i64,
    groups: Vec<StepTensors>,
}

struct StepTensors {
    unique: Tensor,
    rows: i64,
    forward: BagTensors,
    backward: BagTensors,
    mul: Option<MulTensors>,
}

struct BagTensors {
    index: Tensor,
    weight: Option<Tensor>,
    offsets: Tensor,
}

struct MulTensors {
    row: Tensor,
    factor: Tensor,
    slot: Tensor,
    weight: Tensor,
    with_factor: Tensor,
    row_with_factor: Tensor,
}

/// What backward needs from forward: the step's arrays and the rows it read.
pub struct FusedSaved {
    step: FusedStep,
    rows: Vec<Tensor>,
}

/// Host arrays as tensors on `device` (from pinned memory, without waiting, on a GPU).
pub(super) fn upload_i64(v: &[i64], device: Device) -> Tensor {
    to_device(Tensor::from_slice(v), device)
}

fn upload_f32(v: &[f32], device: Device) -> Tensor {
    to_device(Tensor::from_slice(v), device)
}

fn to_device(t: Tensor, device: Device) -> Tensor {
    if device == Device::Cpu {
        return t;
    }
    t.pin_memory(device)
        .to_device_(device, t.kind(), true, false)
}

impl FusedStep {
    /// `steps` (one per group, from [`FusedLayout::step`]) on `device`.
    pub fn upload(batch: usize, steps: &[GroupStep], device: Device) -> Self {
        let bags = |b: &shardrec_tables::Bags| BagTensors {
            index: upload_i64(&b.index, device),
            weight: (!b.weight.is_empty()).then(|| upload_f32(&b.weight, device)),
            offsets: upload_i64(&b.offsets, device),
        };
        let groups = steps
            .iter()
            .map(|s| StepTensors {
                unique: upload_i64(&s.unique, device),
                rows: s.unique.len() as i64,
                forward: bags(&s.forward),
                backward: bags(&s.backward),
                mul: s.mul.as_ref().map(|m| {
                    let row_with_factor: Vec<i64> =
                        m.with_factor.iter().map(|&j| m.row[j as usize]).collect();
                    MulTensors {
                        row: upload_i64(&m.row, device),
                        factor: upload_i64(&m.factor, device),
                        slot: upload_i64(&m.slot, device),
                        weight: upload_f32(&m.weight, device).unsqueeze(1),
                        with_factor: upload_i64(&m.with_factor, device),
                        row_with_factor: upload_i64(&row_with_factor, device),
                    }
                }),
            })
            .collect();
        Self {
            batch: batch as i64,
            groups,
        }
    }
}

/// `embedding_bag` in sum mode with the last offset included.
fn bag_sum(source: &Tensor, bags: &BagTensors) -> Result<Tensor, TableError> {
    Tensor::f_embedding_bag(
        source,
        &bags.index,
        &bags.offsets,
        false,
        0,
        false,
        bags.weight.as_ref(),
        true,
    )
    .map(|r| r.0)
    .map_err(torch)
}

impl FusedEmbeddings {
    /// Fuses the tables of `host` (one process, every table in RAM as f32, one shard
    /// each) per width on `device`; the shards then view the fused tensors.
    pub fn adopt(mut host: LocalEmbeddings, device: Device) -> Result<Self, TableError> {
        let layout = FusedLayout::new(host.layout());
        let opt = *host.optimizer();
        let sw = |dim| opt.state_width(dim) as i64;
        let mut groups = Vec::with_capacity(layout.groups.len());
        for (g, group) in layout.groups.iter().enumerate() {
            let (rows, dim) = (group.rows as i64, group.dim as i64);
            let opts = (Kind::Float, device);
            let weights = Tensor::f_empty([rows, dim], opts).map_err(torch)?;
            let state = Tensor::f_empty([rows, sw(group.dim)], opts).map_err(torch)?;
            for (&t, &first) in group.tables.iter().zip(&group.first_rows) {
                let shard = only_shard(&mut host, t)?;
                let n = shard.num_rows() as i64;
                let (w, s) = (
                    weights.narrow(0, first as i64, n),
                    state.narrow(0, first as i64, n),
                );
                let _no_grad = tch::no_grad_guard();
                let (host_w, host_s) = (shard.weights()?, shard.state()?);
                w.f_view([-1])
                    .and_then(|mut v| v.f_copy_(&Tensor::from_slice(&host_w)))
                    .and_then(|_| s.f_view([-1]))
                    .and_then(|mut v| v.f_copy_(&Tensor::from_slice(&host_s)))
                    .map_err(torch)?;
                drop((host_w, host_s));
                shard.move_to_device(&|_, _, _, _| {
                    Ok(Box::new(TensorRows::over(
                        w.shallow_clone(),
                        s.shallow_clone(),
                    )))
                })?;
            }
            groups.push(GroupTensors {
                weights,
                state,
                columns: upload_i64(&layout.group_columns(g), device),
                ones: Tensor::f_ones([1, dim], opts).map_err(torch)?,
            });
        }
        let output_gather = layout.output_gather().map(|p| upload_i64(&p, device));
        Ok(Self {
            host,
            layout,
            groups,
            output_gather,
            device,
        })
    }

    pub fn host(&self) -> &LocalEmbeddings {
        &self.host
    }

    pub fn host_mut(&mut self) -> &mut LocalEmbeddings {
        &mut self.host
    }

    pub fn layout(&self) -> &FusedLayout {
        &self.layout
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn optimizer(&self) -> &SparseOptimizer {
        self.host.optimizer()
    }

    /// Plans `batch` on the host and copies the arrays to the device.
    pub fn plan(&self, batch: &KeyedJaggedIds) -> Result<FusedStep, TableError> {
        let plan = self.host.plan(batch)?;
        Ok(FusedStep::upload(
            plan.batch_size,
            &self.layout.step(&plan),
            self.device,
        ))
    }

    /// The batch's `batch x width` embeddings on the device, and what backward needs.
    pub fn forward(&self, step: FusedStep) -> Result<(Tensor, FusedSaved), TableError> {
        let _no_grad = tch::no_grad_guard();
        let mut outs = Vec::with_capacity(self.groups.len());
        let mut rows = Vec::with_capacity(self.groups.len());
        for ((t, p), group) in self
            .groups
            .iter()
            .zip(&step.groups)
            .zip(&self.layout.groups)
        {
            let columns = (group.slot_columns.len() * group.dim) as i64;
            let r = t.weights.f_index_select(0, &p.unique).map_err(torch)?;
            let out = if p.rows == 0 {
                Tensor::f_zeros([step.batch, columns], (Kind::Float, self.device)).map_err(torch)?
            } else {
                let source = match &p.mul {
                    None => r.shallow_clone(),
                    Some(m) => {
                        let ext = Tensor::cat(&[&r, &t.ones], 0);
                        ext.index_select(0, &m.row) * ext.index_select(0, &m.factor)
                    }
                };
                bag_sum(&source, &p.forward)?.view([step.batch, columns])
            };
            outs.push(out);
            rows.push(r);
        }
        let side_by_side = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::f_cat(&outs, 1).map_err(torch)?
        };
        let out = match &self.output_gather {
            Some(ix) => side_by_side.f_index_select(1, ix).map_err(torch)?,
            None => side_by_side,
        };
        Ok((out, FusedSaved { step, rows }))
    }

    /// Reduces `grad` (`batch x width`, any device) per distinct row and applies the
    /// sparse optimizer to those rows.
    pub fn backward(&mut self, saved: FusedSaved, grad: &Tensor) -> Result<(), TableError> {
        let _no_grad = tch::no_grad_guard();
        let grad = grad
            .f_to_device(self.device)
            .and_then(|g| g.f_to_kind(Kind::Float))
            .map_err(torch)?;
        let step = self.next_step();
        let whole = self.groups.len() == 1 && self.output_gather.is_none();
        let opt = *self.host.optimizer();
        for (((t, p), rows), group) in self
            .groups
            .iter_mut()
            .zip(&saved.step.groups)
            .zip(&saved.rows)
            .zip(&self.layout.groups)
        {
            if p.rows == 0 {
                continue;
            }
            let dim = group.dim as i64;
            let slots = if whole {
                grad.contiguous()
            } else {
                grad.f_index_select(1, &t.columns).map_err(torch)?
            }
            .view([-1, dim]);
            let row_grad = match &p.mul {
                None => bag_sum(&slots, &p.backward)?,
                Some(m) => bag_sum(&mul_contributions(&slots, rows, &t.ones, m), &p.backward)?,
            };
            let state = t.state.f_index_select(0, &p.unique).map_err(torch)?;
            let (new_w, new_s) = optimizer_step(&opt, step, rows, &state, &row_grad);
            let _ = t
                .weights
                .f_index_copy_(0, &p.unique, &new_w)
                .map_err(torch)?;
            if t.state.size()[1] > 0 {
                let _ = t.state.f_index_copy_(0, &p.unique, &new_s).map_err(torch)?;
            }
        }
        Ok(())
    }

    /// The 1-based number of this update, counted by the shards (so checkpoints carry it).
    fn next_step(&mut self) -> u64 {
        let shards = self.host.shards_mut();
        let step = shards
            .iter()
            .flatten()
            .map(|s| s.steps())
            .max()
            .unwrap_or(0)
            + 1;
        for s in shards.iter_mut().flatten() {
            s.set_steps(step);
        }
        step
    }
}

/// A `mul` group's gradient contributions: every term's gradient times its factor, then
/// for each term with a factor row that row's gradient (the term's gradient times the
/// term's row).
fn mul_contributions(slots: &Tensor, rows: &Tensor, ones: &Tensor, m: &MulTensors) -> Tensor {
    let ext = Tensor::cat(&[rows, ones], 0);
    let term = slots.index_select(0, &m.slot) * &m.weight;
    let first = &term * ext.index_select(0, &m.factor);
    let second = term.index_select(0, &m.with_factor) * ext.index_select(0, &m.row_with_factor);
    Tensor::cat(&[first, second], 0)
}

/// Table `t`'s one shard, checked to hold all of it in RAM as f32.
fn only_shard(
    host: &mut LocalEmbeddings,
    t: usize,
) -> Result<&mut shardrec_tables::TableShard, TableError> {
    let spec = host.layout().spec().tables[t].clone();
    let shards = &mut host.shards_mut()[t];
    let whole = shards.len() == 1
        && shards[0].rows == (0..spec.rows)
        && shards[0].cols == (0..spec.dim)
        && !shards[0].in_file_tier()
        && !shards[0].on_device();
    if !whole {
        return Err(TableError::InvalidTable {
            table: spec.name,
            reason: "fused tables hold whole tables of f32 rows in RAM in one process".into(),
        });
    }
    Ok(&mut shards[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardrec_tables::{
        CollectionLayout, CollectionSpec, Combine, FeatureSpec, OptimizerKind, Pooling, Probe,
        RowInit, RowMap, TableSpec,
    };

    /// Widths 4, 2 and 8; a plain feature, a mean-pooled multi-valued one, a hashed one,
    /// a quotient-remainder product and a sum of two probes.
    fn layout() -> CollectionLayout {
        let table = |name: &str, rows, dim, seed| TableSpec {
            name: name.into(),
            rows,
            dim,
            init: RowInit::Uniform { bound: 0.5, seed },
        };
        let probe = |t: &str, map| Probe {
            table: t.into(),
            map,
        };
        let feature = |name: &str, probes, combine, pooling| FeatureSpec {
            name: name.into(),
            probes,
            combine,
            pooling,
        };
        let plain = |rows| RowMap::Offset {
            offset: 0,
            id_rows: rows,
        };
        let spec = CollectionSpec {
            tables: vec![
                table("a", 9, 4, 1),
                table("n", 7, 2, 2),
                table("b", 6, 4, 3),
                table("w", 5, 8, 4),
            ],
            features: vec![
                feature(
                    "fa",
                    vec![probe("a", plain(9))],
                    Combine::Concat,
                    Pooling::Sum,
                ),
                feature(
                    "m",
                    vec![probe("n", plain(7))],
                    Combine::Concat,
                    Pooling::Mean,
                ),
                feature(
                    "h",
                    vec![probe("w", RowMap::Hash { seed: 5 })],
                    Combine::Concat,
                    Pooling::Sum,
                ),
                feature(
                    "q",
                    vec![
                        probe("b", RowMap::Quotient { divisor: 2 }),
                        probe("a", RowMap::Remainder { modulus: 2 }),
                    ],
                    Combine::Mul,
                    Pooling::Mean,
                ),
                feature(
                    "s",
                    vec![probe("a", plain(9)), probe("b", plain(6))],
                    Combine::Sum,
                    Pooling::Sum,
                ),
            ],
        };
        CollectionLayout::new(spec).unwrap()
    }

    /// A batch of 6 samples; feature `m` has 0 to 3 ids.
    fn batch(step: u64) -> KeyedJaggedIds {
        let mut lengths = vec![];
        let mut values = vec![];
        for k in 0..5u64 {
            for b in 0..6u64 {
                let n = if k == 1 { (b + step) % 4 } else { 1 };
                lengths.push(n as u32);
                for i in 0..n {
                    let x = (b * 7 + i * 3 + step * 5 + k) % 31;
                    values.push(match k {
                        0 | 4 => x % 6,
                        1 => x % 7,
                        2 => x * 1000 + 17,
                        _ => x % 12,
                    });
                }
            }
        }
        KeyedJaggedIds::from_lengths(5, 6, &lengths, values).unwrap()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6)
    }

    /// After five steps the fused tensors hold the host path's rows and state (within
    /// 1e-6) for every sparse optimizer, and both looked up the same embeddings.
    #[test]
    fn fused_tables_train_like_the_host_tables() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adagrad,
            OptimizerKind::RowwiseAdagrad,
            OptimizerKind::Adam,
        ] {
            let mut opt = SparseOptimizer::new(kind, 0.05);
            opt.weight_decay = 0.01;
            let mut host = LocalEmbeddings::single_process(layout(), opt).unwrap();
            let fresh = LocalEmbeddings::single_process(layout(), opt).unwrap();
            let mut fused = FusedEmbeddings::adopt(fresh, Device::Cpu).unwrap();
            let width = layout().width();
            for step in 0..5u64 {
                let ids = batch(step);
                let plan = host.plan(&ids).unwrap();
                let mut want = vec![0.0; 6 * width];
                let gathered = host.forward(&plan, &mut want).unwrap();
                let (got, saved) = fused.forward(fused.plan(&ids).unwrap()).unwrap();
                let got = Vec::<f32>::try_from(got.reshape([-1])).unwrap();
                assert!(close(&got, &want), "{kind:?} step {step} lookup");
                let grad: Vec<f32> = (0..want.len())
                    .map(|i| ((i as f32 + step as f32) * 0.37).sin())
                    .collect();
                host.backward(&plan, &gathered, &grad).unwrap();
                let g = Tensor::from_slice(&grad).view([6, width as i64]);
                fused.backward(saved, &g).unwrap();
            }
            for (h, f) in host.shards().iter().zip(fused.host().shards()) {
                let (h, f) = (&h[0], &f[0]);
                assert!(f.on_device());
                assert!(
                    close(&h.weights().unwrap(), &f.weights().unwrap()),
                    "{kind:?} {}",
                    h.table
                );
                assert!(
                    close(&h.state().unwrap(), &f.state().unwrap()),
                    "{kind:?} {}",
                    h.table
                );
                assert_eq!(h.steps(), f.steps());
            }
        }
    }

    /// Rows written through a shard (a checkpoint's fill) are what the fused lookup reads.
    #[test]
    fn shards_write_through_to_the_fused_rows() {
        let opt = SparseOptimizer::new(OptimizerKind::Adagrad, 0.1);
        let fresh = LocalEmbeddings::single_process(layout(), opt).unwrap();
        let mut fused = FusedEmbeddings::adopt(fresh, Device::Cpu).unwrap();
        let shard = &mut fused.host_mut().shards_mut()[3][0];
        let rows: Vec<f32> = (0..40).map(|i| i as f32).collect();
        shard.set_weights(&rows).unwrap();
        let ids = batch(0);
        let (out, _) = fused.forward(fused.plan(&ids).unwrap()).unwrap();
        let plan = fused.host().plan(&ids).unwrap();
        // sample 0's second request (m has no id there) is feature h's (table w, width
        // 8), at columns 6..14
        assert_eq!(plan.requests[1].table, 3);
        let row = plan.tables[3].unique_rows[plan.requests[1].unique as usize] as i64;
        let got = Vec::<f32>::try_from(out.get(0).narrow(0, 6, 8)).unwrap();
        let want: Vec<f32> = (row * 8..row * 8 + 8).map(|v| v as f32).collect();
        assert_eq!(got, want);
    }
}
