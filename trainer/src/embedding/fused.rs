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

use std::collections::VecDeque;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shardrec_tables::{
    DeviceArrays, FusedLayout, GroupStep, KeyedJaggedIds, LocalEmbeddings, LookupPlan, RowCache,
    SparseOptimizer, TableError,
};
use tch::{Device, Kind, Tensor};

use super::device_rows::optimizer_step;
use device_plan::DeviceStep;

mod cache;
mod device_plan;
use super::TensorRows;

fn torch(e: tch::TchError) -> TableError {
    TableError::Exchange(format!("libtorch (fused tables): {e}"))
}

/// One width's rows and state (or its cache's slots), and where its slots go in the
/// output.
#[derive(Debug)]
pub(super) struct GroupTensors {
    pub(super) weights: Tensor,
    pub(super) state: Tensor,
    /// The group's output columns, in the order it writes them.
    columns: Tensor,
    /// A row of ones (the factor of a plain term in a group with `mul`).
    ones: Tensor,
}

/// A collection's tables fused per width on one device: all their rows there (the
/// host shards then view them), or a cache of the hot rows over the host shards.
#[derive(Debug)]
pub struct FusedEmbeddings {
    host: LocalEmbeddings,
    layout: FusedLayout,
    groups: Vec<GroupTensors>,
    /// Per group, the device cache's directory (`embedding.gpu_cache_bytes`); None:
    /// every row is on the device.
    caches: Option<Vec<RowCache>>,
    /// Each output column's place among the groups' outputs side by side (None: in order).
    output_gather: Option<Tensor>,
    device: Device,
    /// The next training step's arrays, staged before its lookup ([`Self::stage`]).
    staged: Mutex<Option<Staged>>,
    /// Whether training steps are deduplicated on the device (no `mul` group) rather
    /// than planned on the host.
    device_plan: bool,
    /// The next batches, being planned on other threads ([`Self::plan_ahead`]), oldest
    /// first.
    ahead: Mutex<VecDeque<PlanAhead>>,
    times: StageTimes,
    /// Training steps staged so far (the cache's recency clock).
    stages: u64,
}

/// A batch planned on another thread.
#[derive(Debug)]
struct PlanAhead {
    ids: KeyedJaggedIds,
    plan: JoinHandle<Result<Planned, TableError>>,
}

/// A step's host arrays: deduplicated on the host, or for the device to deduplicate.
#[derive(Debug)]
enum Planned {
    Host(Vec<GroupStep>),
    Device(Vec<DeviceArrays>),
}

/// A step's arrays on the device.
#[derive(Debug)]
enum Staged {
    Host(FusedStep),
    Device(DeviceStep),
}

impl Planned {
    /// `batch` planned by `fused` over `collection`, on the device when `device_plan`.
    fn new(
        fused: &FusedLayout,
        collection: &shardrec_tables::CollectionLayout,
        batch: &KeyedJaggedIds,
        device_plan: bool,
    ) -> Result<Self, TableError> {
        Ok(if device_plan {
            Self::Device(fused.device_arrays(collection, batch)?)
        } else {
            Self::Host(fused.step(&LookupPlan::build(collection, batch)?))
        })
    }
}

/// Where the time of staging went: what the device may wait for before a step.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    /// Waiting for the batch planned ahead.
    pub plan_wait: Duration,
    /// Planning on the step's thread (nothing planned ahead).
    pub plan_inline: Duration,
    /// The cache's write-backs and loads.
    pub cache_moves: Duration,
    pub planned_ahead: u64,
}

/// A step's index arrays on the device, one entry per group.
pub struct FusedStep {
    batch: i64,
    groups: Vec<StepTensors>,
}

impl std::fmt::Debug for FusedStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedStep")
            .field("batch", &self.batch)
            .field("groups", &self.groups.len())
            .finish()
    }
}

struct StepTensors {
    unique: Tensor,
    rows: i64,
    forward: BagTensors,
    backward: BagTensors,
    mul: Option<MulTensors>,
}

#[derive(Debug)]
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

/// What backward needs from forward: the step's arrays (and, planned on the host, the
/// rows it read).
pub enum FusedSaved {
    Host { step: FusedStep, rows: Vec<Tensor> },
    Device(DeviceStep),
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
    /// Fuses the tables of `host` (one process, one shard a table, f32 rows) per width
    /// on `device`. With `cache_bytes` smaller than the tables' rows and state, the rows
    /// stay in the host shards (RAM or the file tier) and the device holds a cache of
    /// that many bytes, each width caching the same share of its rows; otherwise every
    /// row moves to the device and the shards view it.
    pub fn adopt(
        mut host: LocalEmbeddings,
        device: Device,
        cache_bytes: u64,
    ) -> Result<Self, TableError> {
        let layout = FusedLayout::new(host.layout());
        let opt = *host.optimizer();
        let record = |dim: usize| 4 * (dim + opt.state_width(dim)) as u64;
        let all: u64 = layout.groups.iter().map(|g| g.rows * record(g.dim)).sum();
        let cached = cache_bytes > 0 && cache_bytes < all;
        let mut groups = Vec::with_capacity(layout.groups.len());
        let mut caches = Vec::new();
        for (g, group) in layout.groups.iter().enumerate() {
            for &t in &group.tables {
                check_shard(&host, t, cached)?;
            }
            let slots = if cached {
                // every width caches the same share of its rows
                let share = group.rows as u128 * cache_bytes as u128 / all as u128;
                let slots = share.clamp(1, group.rows as u128);
                caches.push(RowCache::new(
                    slots.min(u32::MAX as u128) as u32,
                    group.rows,
                ));
                slots as i64
            } else {
                group.rows as i64
            };
            let mut tensors = GroupTensors::empty(
                slots,
                group.dim,
                opt.state_width(group.dim),
                layout.group_columns(g),
                device,
            )?;
            if !cached {
                tensors.take_rows(&mut host, group)?;
            }
            groups.push(tensors);
        }
        let output_gather = layout.output_gather().map(|p| upload_i64(&p, device));
        Ok(Self {
            device_plan: layout.plans_on_device(),
            host,
            layout,
            groups,
            caches: cached.then_some(caches),
            output_gather,
            device,
            staged: Mutex::new(None),
            ahead: Mutex::new(VecDeque::new()),
            times: StageTimes::default(),
            stages: 0,
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

    pub fn times(&self) -> StageTimes {
        self.times
    }

    /// The summary's figures: the time the steps waited for their plans and spent
    /// moving cache rows, and per width its rows, slots and cache counts.
    pub fn report(&self) -> serde_json::Value {
        let groups: Vec<serde_json::Value> = self
            .layout
            .groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                let cache = self.caches.as_ref().map(|c| &c[g]);
                let stats = cache.map(|c| c.stats()).unwrap_or_default();
                let looked = (stats.hits + stats.misses).max(1) as f64;
                serde_json::json!({
                    "width": group.dim, "tables": group.tables.len(), "rows": group.rows,
                    "device_rows": cache.map_or(group.rows, |c| c.capacity() as u64),
                    "hits": stats.hits, "misses": stats.misses,
                    "write_backs": stats.write_backs,
                    "hit_rate": cache.map(|_| stats.hits as f64 / looked),
                })
            })
            .collect();
        let t = self.times;
        serde_json::json!({
            "device": format!("{:?}", self.device).to_lowercase(),
            "plan_wait_s": t.plan_wait.as_secs_f64(),
            "plan_inline_s": t.plan_inline.as_secs_f64(),
            "steps_planned_ahead": t.planned_ahead,
            "cache_moves_s": t.cache_moves.as_secs_f64(),
            "groups": groups,
        })
    }

    /// The device caches' directories (None: every row is on the device).
    pub fn caches(&self) -> Option<&[RowCache]> {
        self.caches.as_deref()
    }

    /// Starts planning `next` (the batch after the one about to train) on another
    /// thread, so its [`Self::stage`] finds its arrays ready.
    pub fn plan_ahead(&self, next: &KeyedJaggedIds) {
        let (collection, fused) = (self.host.layout().clone(), self.layout.clone());
        let ids = next.clone();
        let mine = ids.clone();
        let on_device = self.device_plan;
        let plan = std::thread::spawn(move || Planned::new(&fused, &collection, &mine, on_device));
        let mut ahead = lock(&self.ahead);
        // a batch planned but never trained (the pass ended) is not waited for forever
        while ahead.len() >= 2 {
            ahead.pop_front();
        }
        ahead.push_back(PlanAhead { ids, plan });
    }

    /// Training, before the step's lookup of `batch`: its arrays (planned ahead or now),
    /// its rows placed in the cache (evicted rows written back to the host, missed ones
    /// loaded, one batched copy each way), copied to the device without waiting.
    pub fn stage(&mut self, batch: &KeyedJaggedIds) -> Result<(), TableError> {
        self.stages += 1;
        let staged = match self.planned(batch)? {
            Planned::Device(arrays) => {
                let mut step = DeviceStep::upload(batch.batch_size(), &arrays, self.device);
                if self.caches.is_some() {
                    let t = Instant::now();
                    self.place_step(&mut step)?;
                    self.times.cache_moves += t.elapsed();
                }
                Staged::Device(step)
            }
            Planned::Host(mut steps) => {
                if self.caches.is_some() {
                    let t = Instant::now();
                    for (g, step) in steps.iter_mut().enumerate() {
                        step.unique = self.place_in_cache(g, &step.unique)?;
                    }
                    self.times.cache_moves += t.elapsed();
                }
                Staged::Host(FusedStep::upload(batch.batch_size(), &steps, self.device))
            }
        };
        *lock(&self.staged) = Some(staged);
        Ok(())
    }

    /// `batch`'s arrays: the ones planned ahead if they are this batch's, else planned now.
    fn planned(&mut self, batch: &KeyedJaggedIds) -> Result<Planned, TableError> {
        let mine = {
            let mut ahead = lock(&self.ahead);
            let at = ahead.iter().position(|a| a.ids == *batch);
            // older batches were skipped; newer ones stay for their steps
            at.and_then(|i| ahead.drain(..=i).next_back())
        };
        let t = Instant::now();
        if let Some(a) = mine {
            let steps = a.plan.join().unwrap_or_else(|_| {
                Err(TableError::BadBatch("the planning thread panicked".into()))
            })?;
            self.times.plan_wait += t.elapsed();
            self.times.planned_ahead += 1;
            return Ok(steps);
        }
        let planned = Planned::new(&self.layout, self.host.layout(), batch, self.device_plan)?;
        self.times.plan_inline += t.elapsed();
        Ok(planned)
    }

    /// The batch's `batch x width` embeddings on the device, and, in training, what
    /// backward needs. A training lookup takes the arrays [`Self::stage`] left; with
    /// every row on the device it plans them itself when none were staged.
    pub fn lookup(
        &self,
        batch: &KeyedJaggedIds,
        train: bool,
    ) -> Result<(Tensor, Option<FusedSaved>), TableError> {
        let staged = if train {
            lock(&self.staged).take()
        } else {
            None
        };
        let step = match staged {
            Some(Staged::Host(step)) => step,
            Some(Staged::Device(step)) => {
                let out = self.forward_device(&step)?;
                return Ok((out, Some(FusedSaved::Device(step))));
            }
            None if train && self.caches.is_some() => {
                return Err(TableError::BadBatch(
                    "a training lookup through the device cache needs its rows staged first".into(),
                ))
            }
            None => {
                // evaluation through a cache reads rows where they are: planned on the host
                let on_device = self.device_plan && self.caches.is_none();
                match Planned::new(&self.layout, self.host.layout(), batch, on_device)? {
                    Planned::Device(arrays) => {
                        let step = DeviceStep::upload(batch.batch_size(), &arrays, self.device);
                        let out = self.forward_device(&step)?;
                        return Ok((out, train.then_some(FusedSaved::Device(step))));
                    }
                    Planned::Host(steps) if self.caches.is_some() => {
                        let rows = self.cached_or_host_rows(&steps)?;
                        let step = FusedStep::upload(batch.batch_size(), &steps, self.device);
                        return Ok((self.assemble(&step, &rows)?, None));
                    }
                    Planned::Host(steps) => {
                        FusedStep::upload(batch.batch_size(), &steps, self.device)
                    }
                }
            }
        };
        let rows = self
            .groups
            .iter()
            .zip(&step.groups)
            .map(|(t, p)| t.weights.f_index_select(0, &p.unique).map_err(torch))
            .collect::<Result<Vec<_>, _>>()?;
        let out = self.assemble(&step, &rows)?;
        Ok((out, train.then_some(FusedSaved::Host { step, rows })))
    }

    /// The output from each group's distinct rows of the step.
    fn assemble(&self, step: &FusedStep, rows: &[Tensor]) -> Result<Tensor, TableError> {
        let _no_grad = tch::no_grad_guard();
        let mut outs = Vec::with_capacity(self.groups.len());
        for (((t, p), r), group) in self
            .groups
            .iter()
            .zip(&step.groups)
            .zip(rows)
            .zip(&self.layout.groups)
        {
            let columns = (group.slot_columns.len() * group.dim) as i64;
            let out = if p.rows == 0 {
                Tensor::f_zeros([step.batch, columns], (Kind::Float, self.device)).map_err(torch)?
            } else {
                let source = match &p.mul {
                    None => r.shallow_clone(),
                    Some(m) => {
                        let ext = Tensor::cat(&[r, &t.ones], 0);
                        ext.index_select(0, &m.row) * ext.index_select(0, &m.factor)
                    }
                };
                bag_sum(&source, &p.forward)?.view([step.batch, columns])
            };
            outs.push(out);
        }
        self.side_by_side(outs)
    }

    /// The groups' outputs (`batch x columns` each) as the output's columns.
    fn side_by_side(&self, mut outs: Vec<Tensor>) -> Result<Tensor, TableError> {
        let joined = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::f_cat(&outs, 1).map_err(torch)?
        };
        match &self.output_gather {
            Some(ix) => joined.f_index_select(1, ix).map_err(torch),
            None => Ok(joined),
        }
    }

    /// Group `g`'s part of the output gradient `grad`, `batch x slots x dim`.
    fn group_gradient(&self, g: usize, grad: &Tensor) -> Result<Tensor, TableError> {
        let part = if self.groups.len() == 1 && self.output_gather.is_none() {
            grad.f_contiguous()
        } else {
            grad.f_index_select(1, &self.groups[g].columns)
        }
        .map_err(torch)?;
        let group = &self.layout.groups[g];
        part.f_view([-1, group.slot_columns.len() as i64, group.dim as i64])
            .map_err(torch)
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
        let (step_arrays, saved_rows) = match saved {
            FusedSaved::Device(d) => return self.backward_device(&d, &grad, step),
            FusedSaved::Host { step, rows } => (step, rows),
        };
        for (g, (p, rows)) in step_arrays.groups.iter().zip(&saved_rows).enumerate() {
            if p.rows == 0 {
                continue;
            }
            let dim = self.layout.groups[g].dim as i64;
            let slots = self.group_gradient(g, &grad)?.reshape([-1, dim]);
            let t = &self.groups[g];
            let row_grad = match &p.mul {
                None => bag_sum(&slots, &p.backward)?,
                Some(m) => bag_sum(&mul_contributions(&slots, rows, &t.ones, m), &p.backward)?,
            };
            let opt = *self.host.optimizer();
            self.groups[g].apply(&opt, step, &p.unique, rows, &row_grad)?;
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GroupTensors {
    /// One optimizer step on the rows `unique` (their values `rows`, their reduced
    /// gradients `row_grad`).
    fn apply(
        &mut self,
        opt: &SparseOptimizer,
        step: u64,
        unique: &Tensor,
        rows: &Tensor,
        row_grad: &Tensor,
    ) -> Result<(), TableError> {
        let state = self.state.f_index_select(0, unique).map_err(torch)?;
        let (new_w, new_s) = optimizer_step(opt, step, rows, &state, row_grad);
        let _ = self
            .weights
            .f_index_copy_(0, unique, &new_w)
            .map_err(torch)?;
        if self.state.size()[1] > 0 {
            let _ = self.state.f_index_copy_(0, unique, &new_s).map_err(torch)?;
        }
        Ok(())
    }

    /// `slots` rows of zeros (and state) of width `dim` on `device`.
    fn empty(
        slots: i64,
        dim: usize,
        state_width: usize,
        columns: Vec<i64>,
        device: Device,
    ) -> Result<Self, TableError> {
        let opts = (Kind::Float, device);
        Ok(Self {
            weights: Tensor::f_zeros([slots, dim as i64], opts).map_err(torch)?,
            state: Tensor::f_zeros([slots, state_width as i64], opts).map_err(torch)?,
            columns: upload_i64(&columns, device),
            ones: Tensor::f_ones([1, dim as i64], opts).map_err(torch)?,
        })
    }

    /// Copies the rows and state of `group`'s tables here, and makes their shards views
    /// of them.
    fn take_rows(
        &mut self,
        host: &mut LocalEmbeddings,
        group: &shardrec_tables::FusedGroup,
    ) -> Result<(), TableError> {
        for (&t, &first) in group.tables.iter().zip(&group.first_rows) {
            let shard = &mut host.shards_mut()[t][0];
            TensorRows::take_over(shard, &self.weights, &self.state, first as i64)?;
        }
        Ok(())
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

/// Checks that table `t` is one shard of f32 rows holding all of it, in RAM (or, under
/// a device cache, in RAM or the file tier).
fn check_shard(host: &LocalEmbeddings, t: usize, cached: bool) -> Result<(), TableError> {
    let spec = &host.layout().spec().tables[t];
    let shards = &host.shards()[t];
    let whole = shards.len() == 1
        && shards[0].rows == (0..spec.rows)
        && shards[0].cols == (0..spec.dim)
        && (cached || !shards[0].in_file_tier())
        && !shards[0].on_device();
    if !whole {
        return Err(TableError::InvalidTable {
            table: spec.name.clone(),
            reason: "fused tables hold whole tables of f32 rows in one process (in RAM, or in the file tier under a device cache)".into(),
        });
    }
    Ok(())
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

    const KINDS: [OptimizerKind; 4] = [
        OptimizerKind::Sgd,
        OptimizerKind::Adagrad,
        OptimizerKind::RowwiseAdagrad,
        OptimizerKind::Adam,
    ];

    /// Checks that every table of `fused` holds `host`'s rows, state (within 1e-6) and
    /// step count; returns the fused weights and state, table by table.
    fn same_tables(
        host: &LocalEmbeddings,
        fused: &LocalEmbeddings,
        kind: OptimizerKind,
    ) -> Vec<Vec<f32>> {
        let mut out = vec![];
        for (h, f) in host.shards().iter().zip(fused.shards()) {
            let (h, f) = (&h[0], &f[0]);
            let (w, s) = (f.weights().unwrap().to_vec(), f.state().unwrap().to_vec());
            assert!(close(&h.weights().unwrap(), &w), "{kind:?} {}", h.table);
            assert!(close(&h.state().unwrap(), &s), "{kind:?} {}", h.table);
            assert_eq!(h.steps(), f.steps());
            out.extend([w, s]);
        }
        out
    }

    /// After five steps the fused tensors hold the host path's rows and state (within
    /// 1e-6) for every sparse optimizer, and both looked up the same embeddings.
    #[test]
    fn fused_tables_train_like_the_host_tables() {
        for kind in KINDS {
            let mut opt = SparseOptimizer::new(kind, 0.05);
            opt.weight_decay = 0.01;
            let mut host = LocalEmbeddings::single_process(layout(), opt).unwrap();
            let fresh = LocalEmbeddings::single_process(layout(), opt).unwrap();
            let mut fused = FusedEmbeddings::adopt(fresh, Device::Cpu, 0).unwrap();
            let width = layout().width();
            for step in 0..5u64 {
                let ids = batch(step);
                let plan = host.plan(&ids).unwrap();
                let mut want = vec![0.0; 6 * width];
                let gathered = host.forward(&plan, &mut want).unwrap();
                let (got, saved) = fused.lookup(&ids, true).unwrap();
                let saved = saved.unwrap();
                let got = Vec::<f32>::try_from(got.reshape([-1])).unwrap();
                assert!(close(&got, &want), "{kind:?} step {step} lookup");
                let grad: Vec<f32> = (0..want.len())
                    .map(|i| ((i as f32 + step as f32) * 0.37).sin())
                    .collect();
                host.backward(&plan, &gathered, &grad).unwrap();
                let g = Tensor::from_slice(&grad).view([6, width as i64]);
                fused.backward(saved, &g).unwrap();
            }
            assert!(fused.host().shards().iter().all(|f| f[0].on_device()));
            same_tables(&host, fused.host(), kind);
        }
    }

    /// Rows written through a shard (a checkpoint's fill) are what the fused lookup reads.
    #[test]
    fn shards_write_through_to_the_fused_rows() {
        let opt = SparseOptimizer::new(OptimizerKind::Adagrad, 0.1);
        let fresh = LocalEmbeddings::single_process(layout(), opt).unwrap();
        let mut fused = FusedEmbeddings::adopt(fresh, Device::Cpu, 0).unwrap();
        let shard = &mut fused.host_mut().shards_mut()[3][0];
        let rows: Vec<f32> = (0..40).map(|i| i as f32).collect();
        shard.set_weights(&rows).unwrap();
        let ids = batch(0);
        let (out, _) = fused.lookup(&ids, false).unwrap();
        let plan = fused.host().plan(&ids).unwrap();
        // sample 0's second request (m has no id there) is feature h's (table w, width
        // 8), at columns 6..14
        let requests = plan.all_requests();
        assert_eq!(requests[1].table, 3);
        let row = plan.tables[3].unique_rows[requests[1].unique as usize] as i64;
        let got = Vec::<f32>::try_from(out.get(0).narrow(0, 6, 8)).unwrap();
        let want: Vec<f32> = (row * 8..row * 8 + 8).map(|v| v as f32).collect();
        assert_eq!(got, want);
    }

    /// Tables of widths 4, 2 and 8, over rows a step touches a few of at a time.
    fn wide_layout() -> CollectionLayout {
        let table = |name: &str, rows, dim, seed| TableSpec {
            name: name.into(),
            rows,
            dim,
            init: RowInit::Uniform { bound: 0.5, seed },
        };
        let feature = |name: &str, probes: Vec<(&str, RowMap)>, combine| FeatureSpec {
            name: name.into(),
            probes: probes
                .into_iter()
                .map(|(t, map)| Probe {
                    table: t.into(),
                    map,
                })
                .collect(),
            combine,
            pooling: Pooling::Mean,
        };
        let plain = |rows| RowMap::Offset {
            offset: 0,
            id_rows: rows,
        };
        CollectionLayout::new(CollectionSpec {
            tables: vec![
                table("a", 40, 4, 1),
                table("n", 30, 2, 2),
                table("w", 50, 8, 3),
                table("b", 20, 4, 4),
            ],
            features: vec![
                feature("fa", vec![("a", plain(40))], Combine::Concat),
                feature("m", vec![("n", plain(30))], Combine::Concat),
                feature("h", vec![("w", RowMap::Hash { seed: 9 })], Combine::Concat),
                feature("s", vec![("a", plain(40)), ("b", plain(20))], Combine::Sum),
            ],
        })
        .unwrap()
    }

    /// Step `k`'s 6 samples: ids drift with `k`, so rows come and go.
    fn drifting_batch(k: u64) -> KeyedJaggedIds {
        let mut lengths = vec![];
        let mut values = vec![];
        for f in 0..4u64 {
            for b in 0..6u64 {
                let n = if f == 1 { 1 + (b + k) % 2 } else { 1 };
                lengths.push(n as u32);
                for i in 0..n {
                    values.push((k * 3 + b + i * 2 + f) % [40, 30, 1000, 20][f as usize]);
                }
            }
        }
        KeyedJaggedIds::from_lengths(4, 6, &lengths, values).unwrap()
    }

    /// Behind a cache of a third of the rows, training moves rows in and out, evaluation
    /// reads cached and host rows alike, and after a write-back the host holds the rows
    /// and state the host path trained (within 1e-6), for every sparse optimizer. With
    /// every row on the device (no cache, no `mul`), steps are deduplicated on the
    /// device, with the same result.
    #[test]
    fn a_device_cache_and_device_deduplication_train_like_the_host_tables() {
        // and the two fused paths sum in one order: the same rows to the bit
        assert_eq!(
            cached_or_device_planned(true),
            cached_or_device_planned(false)
        );
    }

    /// Every optimizer's trained rows and state, table by table.
    fn cached_or_device_planned(cached: bool) -> Vec<Vec<f32>> {
        let mut trained = vec![];
        for kind in KINDS {
            let opt = SparseOptimizer::new(kind, 0.05);
            let mut host = LocalEmbeddings::single_process(wide_layout(), opt).unwrap();
            let fresh = LocalEmbeddings::single_process(wide_layout(), opt).unwrap();
            let all: usize = [(40 + 20, 4), (30, 2), (50, 8)]
                .iter()
                .map(|&(r, d)| r * 4 * (d + opt.state_width(d)))
                .sum();
            let bytes = if cached { all as u64 / 3 } else { 0 };
            let mut fused = FusedEmbeddings::adopt(fresh, Device::Cpu, bytes).unwrap();
            assert!(fused.device_plan);
            let width = wide_layout().width();
            for k in 0..24u64 {
                let ids = drifting_batch(k);
                let plan = host.plan(&ids).unwrap();
                let mut want = vec![0.0; 6 * width];
                let gathered = host.forward(&plan, &mut want).unwrap();
                // an evaluation lookup first: cached rows from the device, others from the host
                let (seen, _) = fused.lookup(&ids, false).unwrap();
                let seen = Vec::<f32>::try_from(seen.reshape([-1])).unwrap();
                assert!(close(&seen, &want), "{kind:?} step {k} evaluation");
                fused.stage(&ids).unwrap();
                let (got, saved) = fused.lookup(&ids, true).unwrap();
                let got = Vec::<f32>::try_from(got.reshape([-1])).unwrap();
                assert!(close(&got, &want), "{kind:?} step {k} lookup");
                let grad: Vec<f32> = (0..want.len())
                    .map(|i| ((i as f32 + k as f32) * 0.61).cos())
                    .collect();
                host.backward(&plan, &gathered, &grad).unwrap();
                let g = Tensor::from_slice(&grad).view([6, width as i64]);
                fused.backward(saved.unwrap(), &g).unwrap();
            }
            if let Some(caches) = fused.caches() {
                let stats: Vec<_> = caches.iter().map(|c| c.stats()).collect();
                assert!(
                    stats.iter().all(|s| s.hits > 0 && s.misses > 0),
                    "{stats:?}"
                );
                assert!(stats.iter().any(|s| s.write_backs > 0), "{stats:?}");
            }
            fused.write_back().unwrap();
            assert!(fused
                .host()
                .shards()
                .iter()
                .all(|f| f[0].on_device() != cached));
            trained.extend(same_tables(&host, fused.host(), kind));
        }
        trained
    }
}
