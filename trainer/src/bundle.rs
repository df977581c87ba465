//! Tables plus dense model: what a batch runs through, in training and in evaluation.
//!
//! A bundle is built from a [`BundleSpec`]. A feature that sits between the tables and
//! the dense model (OptEmbed's masks) plugs in through the [`EmbeddingLayer`] trait and
//! its factory [`EmbeddingLayerSpec`], so the bundle never names it.

use std::any::Any;

use shardrec_models::{
    build_model, BatchStatsSync, CtrModel, ModelConfig, ModelInput, ModelShape, Retrieved,
    SequenceInput,
};
use shardrec_tables::{CollectionLayout, Exchange, KeyMaps, KeyedJaggedIds, SparseOptimizer};
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

use crate::data::Batch;
use crate::embedding::{
    apply_gradient_slices, key_maps, lookup, start_default_rows, start_fresh_rows, Activation,
    DynamicTable, EmbeddingEngine,
};
use crate::sequence::SequenceLookup;
use crate::sharding_plan::CollectionPlans;
use crate::TrainError;

/// The collections, the dense model and its variables, on one device.
pub struct ModelBundle {
    pub tables: EmbeddingEngine,
    pub first_order: Option<EmbeddingEngine>,
    pub vs: VarStore,
    pub model: Box<dyn CtrModel>,
    pub device: Device,
    pub num_dense: usize,
    /// A layer between the tables and the model (OptEmbed's row and dimension masks).
    pub layer: Option<Box<dyn EmbeddingLayer>>,
    /// Sequence models: how a batch's target and history become embedding rows.
    pub sequence: Option<SequenceLookup>,
    /// The features of kind `dynamic`, and this rank's maps of their keys to rows.
    pub dynamic: Vec<DynamicTable>,
    pub keys: Option<KeyMaps>,
}

/// One sample's search result: history slots best first, and whether each holds a
/// behaviour.
pub struct SampleRetrieval {
    pub slots: Vec<i64>,
    pub valid: Vec<bool>,
}

/// One batch's embedding inputs (and what the tables' backward needs).
pub struct Lookups {
    emb: Activation,
    first_order: Option<Activation>,
    sequence: Option<SequenceInput>,
}

impl Lookups {
    /// The model's input: the looked-up embeddings (or `emb` in their place, e.g.
    /// OptEmbed's masked ones) with the batch's dense features.
    /// `stats`: batch norm over the whole job's batch (training under mpirun).
    fn input<'a>(
        &'a self,
        dense: &'a Tensor,
        emb: &'a Tensor,
        stats: Option<&'a BatchStatsSync<'a>>,
    ) -> ModelInput<'a> {
        ModelInput {
            dense,
            emb,
            first_order: self.first_order.as_ref().map(|a| &a.tensor),
            sequence: self.sequence.as_ref(),
            stats,
        }
    }
}

/// A layer between the tables and the dense model: it may look up other ids than the
/// batch's, turns the looked-up embeddings into the model's input, and may own variables
/// it trains itself, with a loss term of its own.
pub trait EmbeddingLayer: Send + std::fmt::Debug {
    /// The ids the tables look up instead of the batch's own (`None`: the batch's).
    fn remap(&self, ids: &KeyedJaggedIds) -> Result<Option<KeyedJaggedIds>, TrainError>;

    /// The model's input from the tables' output for a batch whose ids are `ids`;
    /// `step_slice` is a rank's (or slice's) offset in the step's batch and its rows.
    fn apply(
        &self,
        emb: &Tensor,
        ids: &KeyedJaggedIds,
        step_slice: Option<(usize, usize)>,
        train: bool,
    ) -> Result<Tensor, TrainError>;

    /// Whether a trainable variable is the layer's own, trained by
    /// [`EmbeddingLayer::after_dense_step`] rather than by the dense optimizer.
    fn owns_variable(&self, v: &Tensor) -> bool;

    /// A term of the training loss, divided among the step's `parts` (ranks x slices) so
    /// that their summed gradient has it once.
    fn loss_term(&self, parts: usize) -> Option<Tensor>;

    /// Trains the layer's own variables from their (all-reduced) gradients, after the
    /// dense optimizer's step.
    fn after_dense_step(&mut self);

    /// The concrete layer, for the feature that built it.
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Builds an [`EmbeddingLayer`] for a bundle (the layer's factory).
pub trait EmbeddingLayerSpec {
    /// Refuses tables the layer cannot work on, naming why.
    fn check_tables(&self, main: &CollectionLayout) -> Result<(), TrainError>;
    /// The width of every feature the model sees.
    fn feature_width(&self) -> usize;
    /// The prefix of the layer's variables in the var store (saved models keep it).
    fn name(&self) -> &'static str;
    /// The layer for `features` features, its variables under `p`.
    fn build(&self, p: &nn::Path, features: usize) -> Box<dyn EmbeddingLayer>;
}

/// What a bundle is built from.
pub struct BundleSpec<'a> {
    pub main: CollectionLayout,
    pub first_order: Option<CollectionLayout>,
    pub optimizer: SparseOptimizer,
    pub model: &'a ModelConfig,
    pub num_dense: usize,
    /// The dense model's device.
    pub device: Device,
    /// Where the tables' rows live (a GPU moves them there).
    pub table_device: Device,
    /// One process's tables fused per width on `table_device`
    /// (`ExperimentConfig::fused_tables`).
    pub fused: bool,
    /// How the tables are sharded over the ranks (`None`: one process holds them).
    pub plans: Option<&'a CollectionPlans>,
    pub layer: Option<&'a dyn EmbeddingLayerSpec>,
    /// Where the main tables' rows live (`embedding.storage`; None: RAM). First-order
    /// tables (one float a row) stay in RAM.
    pub storage: Option<&'a crate::config::EmbeddingConfig>,
    /// The features of kind `dynamic` (their keys reach rows through key maps).
    pub dynamic: &'a [DynamicTable],
}

impl BundleSpec<'_> {
    /// Fresh tables (initialised from their specs; sharded over the ranks of `ex` by
    /// `plans` when there are several; their rows moved to `table_device` when it is a
    /// GPU) and a fresh model on `device` (from libtorch's RNG, seeded by the caller).
    /// With a layer, the model sees every feature at the layer's width.
    pub fn init(self, ex: &dyn Exchange) -> Result<ModelBundle, TrainError> {
        if let Some(l) = self.layer {
            l.check_tables(&self.main)?;
        }
        let features = self.main.features().len();
        let feature_widths = match self.layer {
            Some(l) => vec![l.feature_width() as i64; features],
            None => self
                .main
                .feature_widths()
                .into_iter()
                .map(|w| w as i64)
                .collect(),
        };
        let shape = ModelShape {
            num_dense: self.num_dense as i64,
            feature_widths,
        };
        let (optimizer, plans) = (self.optimizer, self.plans);
        // dynamic tables of the default capacity take their memory as rows come into use
        let keyed: Vec<String> = self
            .dynamic
            .iter()
            .filter(|d| !d.reserved)
            .map(|d| d.table.clone())
            .collect();
        let mut tables = EmbeddingEngine::new(
            self.main,
            optimizer,
            ex,
            plans.map(|p| p.main.clone()),
            self.storage,
            &keyed,
        )?;
        let mut first_order = self
            .first_order
            .map(|l| {
                let plan = plans.and_then(|p| p.first_order.clone());
                EmbeddingEngine::new(l, optimizer, ex, plan, None, &[])
            })
            .transpose()?;
        let keys = key_maps(self.dynamic, &tables, ex.rank(), ex.world_size())?;
        start_default_rows(
            self.dynamic,
            ex.rank(),
            [Some(&mut tables), first_order.as_mut()],
        )?;
        let cache_bytes = self.storage.map_or(0, |c| c.gpu_cache_bytes);
        let device = self.fused.then_some(cache_bytes);
        let (tables, first_order) = place_tables(device, self.table_device, tables, first_order)?;
        let vs = VarStore::new(self.device);
        let model = build_model(&vs.root(), self.model, &shape)?;
        // after the model, so its initial weights do not depend on the layer
        let layer = self
            .layer
            .map(|l| l.build(&(vs.root() / l.name()), features));
        let sequence = self.model.kind.is_sequence().then_some(SequenceLookup {
            len: self.model.sequence_len,
            decoupled: self.model.kind.decoupled(),
        });
        Ok(ModelBundle {
            layer,
            sequence,
            tables,
            first_order,
            vs,
            model,
            device: self.device,
            num_dense: self.num_dense,
            dynamic: self.dynamic.to_vec(),
            keys,
        })
    }
}

/// Puts the collections' rows on `table_device`: fused per width when `fused` gives
/// the bytes of their device cache (0: none), else each shard there.
fn place_tables(
    fused: Option<u64>,
    table_device: Device,
    mut tables: EmbeddingEngine,
    mut first_order: Option<EmbeddingEngine>,
) -> Result<(EmbeddingEngine, Option<EmbeddingEngine>), TrainError> {
    if let Some(cache_bytes) = fused {
        tables = tables.fuse(table_device, cache_bytes)?;
        if cache_bytes > 0 && !matches!(tables, EmbeddingEngine::Fused(_)) {
            return Err(shardrec_tables::TableError::BadPlan(format!(
                "embedding.gpu_cache_bytes = {cache_bytes}: the device cache serves one process's fused tables; under mpirun each rank's shards are device tensors of their own (drop the key, or run one process)"
            ))
            .into());
        }
        first_order = first_order.map(|f| f.fuse(table_device, 0)).transpose()?;
    }
    if table_device != Device::Cpu {
        tables.move_rows_to(table_device)?;
        if let Some(f) = first_order.as_mut() {
            f.move_rows_to(table_device)?;
        }
    }
    Ok((tables, first_order))
}

impl ModelBundle {
    /// Training, before the step's lookups: turns the dynamic features' keys of the
    /// step's `pieces` into rows (admitting and evicting) and starts the rows new keys
    /// took afresh. `step` counts from 1. Collective when sharded; nothing without
    /// dynamic features.
    pub fn map_keys(
        &mut self,
        pieces: &mut [Batch],
        step: u64,
        ex: &dyn Exchange,
    ) -> Result<(), TrainError> {
        let Some(keys) = self.keys.as_mut() else {
            return Ok(());
        };
        let mut ids: Vec<KeyedJaggedIds> = pieces
            .iter_mut()
            .map(|p| std::mem::take(&mut p.sparse))
            .collect();
        let fresh = keys.map_for_training(ex, &mut ids, step)?;
        for (p, ids) in pieces.iter_mut().zip(ids) {
            p.sparse = ids;
        }
        start_fresh_rows(
            &fresh,
            &self.dynamic,
            [Some(&mut self.tables), self.first_order.as_mut()],
        )?;
        Ok(())
    }

    /// Training, after [`Self::map_keys`]: fused tables stage the step's rows (planned
    /// ahead or now; through a device cache, misses loaded and evicted rows written
    /// back). Nothing for other tables, or for a step in slices (never fused).
    pub fn stage_tables(&mut self, pieces: &[Batch]) -> Result<(), TrainError> {
        let [piece] = pieces else {
            return Ok(());
        };
        if let EmbeddingEngine::Fused(e) = &mut self.tables {
            match &self.sequence {
                Some(seq) => e.stage(&seq.expand(&piece.sparse)?.0)?,
                None => e.stage(&piece.sparse)?,
            }
        }
        if let Some(EmbeddingEngine::Fused(e)) = &mut self.first_order {
            e.stage(&piece.sparse)?;
        }
        Ok(())
    }

    /// Starts planning the fused tables' lookups of `next` on other threads (the step
    /// after the one about to train).
    pub fn plan_ahead(&self, next: &Batch) -> Result<(), TrainError> {
        if let EmbeddingEngine::Fused(e) = &self.tables {
            match &self.sequence {
                Some(seq) => e.plan_ahead(&seq.expand(&next.sparse)?.0),
                None => e.plan_ahead(&next.sparse),
            }
        }
        if let Some(EmbeddingEngine::Fused(e)) = &self.first_order {
            e.plan_ahead(&next.sparse);
        }
        Ok(())
    }

    fn fused_mut(&mut self) -> impl Iterator<Item = &mut crate::embedding::FusedEmbeddings> {
        [Some(&mut self.tables), self.first_order.as_mut()]
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                EmbeddingEngine::Fused(f) => Some(f.as_mut()),
                _ => None,
            })
    }

    /// Writes the rows a device cache holds back to the host tables, which checkpoints
    /// and saved models read.
    pub fn write_back_tables(&mut self) -> Result<(), TrainError> {
        for f in self.fused_mut() {
            f.write_back()?;
        }
        Ok(())
    }

    /// Drops the rows a device cache holds: the host tables were replaced.
    pub fn forget_cached_rows(&mut self) {
        for f in self.fused_mut() {
            f.forget_cache();
        }
    }

    /// The fused tables' figures (main collection, then first-order), if any.
    pub fn fused_report(&self) -> Option<serde_json::Value> {
        let reports: Vec<serde_json::Value> = [Some(&self.tables), self.first_order.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                EmbeddingEngine::Fused(f) => Some(f.report()),
                _ => None,
            })
            .collect();
        (!reports.is_empty()).then(|| reports.into())
    }

    /// What this rank's key maps hold and did, one entry per dynamic table.
    pub fn dynamic_report(&self) -> Vec<serde_json::Value> {
        let Some(keys) = &self.keys else {
            return Vec::new();
        };
        let rank = self.tables.rank();
        keys.features()
            .iter()
            .zip(&self.dynamic)
            .map(|(k, d)| {
                let s = k.map.stats();
                serde_json::json!({
                    "table": d.table, "rank": rank, "capacity": k.map.capacity(),
                    "live_keys": k.map.len(), "rows_in_use": k.map.rows_in_use(),
                    "admitted": s.admitted, "refused": s.refused, "evicted": s.evicted,
                    "sketch_bytes": k.map.sketch_bytes(),
                })
            })
            .collect()
    }

    /// Looks the batch's ids up in every collection (collective when sharded). In
    /// training the dynamic features' keys must have gone through [`Self::map_keys`];
    /// otherwise they are read as they stand (keys without a row read the default row).
    pub fn lookup(
        &self,
        batch: &Batch,
        train: bool,
        ex: &dyn Exchange,
    ) -> Result<Lookups, TrainError> {
        if let (Some(keys), false) = (&self.keys, train) {
            let rows = keys.map_read_only(ex, &batch.sparse)?;
            return self.lookup_rows(&rows, train, ex);
        }
        self.lookup_rows(&batch.sparse, train, ex)
    }

    /// [`Self::lookup`] of a batch's ids, once they are rows.
    fn lookup_rows(
        &self,
        ids: &KeyedJaggedIds,
        train: bool,
        ex: &dyn Exchange,
    ) -> Result<Lookups, TrainError> {
        if let Some(seq) = &self.sequence {
            let (expanded, mask) = seq.expand(ids)?;
            let emb = lookup(&self.tables, ex, &expanded, self.device, train)?;
            let mask = Tensor::from_slice(&mask)
                .view([ids.batch_size() as i64, seq.len as i64])
                .to_device(self.device);
            return Ok(Lookups {
                emb,
                first_order: None,
                sequence: Some(SequenceInput {
                    len: seq.len as i64,
                    mask,
                }),
            });
        }
        let remapped = match &self.layer {
            Some(l) => l.remap(ids)?,
            None => None,
        };
        let rows = remapped.as_ref().unwrap_or(ids);
        let emb = lookup(&self.tables, ex, rows, self.device, train)?;
        let first_order = match &self.first_order {
            Some(t) => Some(lookup(t, ex, ids, self.device, train)?),
            None => None,
        };
        Ok(Lookups {
            emb,
            first_order,
            sequence: None,
        })
    }

    /// Training logits and, for models with an auxiliary objective, its logits. With
    /// `stats`, batch norm normalises by the whole job's batch (then call
    /// [`BatchStatsSync::cross_rank_term`] before backward).
    pub fn train_logits(
        &self,
        lk: &Lookups,
        batch: &Batch,
        stats: Option<&BatchStatsSync>,
    ) -> Result<(Tensor, Option<Tensor>), TrainError> {
        if self.layer.is_some() {
            return Ok((self.logits_synced(lk, batch, true, stats)?, None));
        }
        let dense = self.dense_input(batch);
        Ok(self
            .model
            .forward_train(&lk.input(&dense, &lk.emb.tensor, stats)))
    }

    /// Sequence models: the `k` history slots the attention ranks highest, per sample,
    /// with whether each holds a behaviour, from the batch's lookups.
    fn retrieve(
        &self,
        lk: &Lookups,
        batch: &Batch,
        k: i64,
    ) -> Result<Vec<SampleRetrieval>, TrainError> {
        let dense = self.dense_input(batch);
        let Some(Retrieved { slots, valid }) = self
            .model
            .retrieve(&lk.input(&dense, &lk.emb.tensor, None), k)
        else {
            return Err(crate::job::JobError::NotASequenceModel.into());
        };
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let k = slots.size()[1];
        let slots = Vec::<i64>::try_from(slots.to_device(Device::Cpu).reshape([-1]))?;
        let valid = Vec::<bool>::try_from(valid.to_device(Device::Cpu).reshape([-1]))?;
        Ok(slots
            .chunks(k as usize)
            .zip(valid.chunks(k as usize))
            .map(|(s, v)| SampleRetrieval {
                slots: s.to_vec(),
                valid: v.to_vec(),
            })
            .collect())
    }

    fn dense_input(&self, batch: &Batch) -> Tensor {
        Tensor::from_slice(&batch.dense)
            .view([batch.len() as i64, self.num_dense as i64])
            .to_device(self.device)
    }

    /// The dense model's logits for a batch whose embeddings were looked up.
    /// # Shapes
    /// `-> [batch]`
    pub fn logits(&self, lk: &Lookups, batch: &Batch, train: bool) -> Result<Tensor, TrainError> {
        self.logits_synced(lk, batch, train, None)
    }

    fn logits_synced(
        &self,
        lk: &Lookups,
        batch: &Batch,
        train: bool,
        stats: Option<&BatchStatsSync>,
    ) -> Result<Tensor, TrainError> {
        let dense = self.dense_input(batch);
        let masked = match &self.layer {
            Some(l) => Some(l.apply(&lk.emb.tensor, &batch.sparse, batch.step_slice, train)?),
            None => None,
        };
        Ok(self.model.forward_t(
            &lk.input(&dense, masked.as_ref().unwrap_or(&lk.emb.tensor), stats),
            train,
        ))
    }

    /// Mean binary cross-entropy of logits against the batch's labels.
    pub fn loss(&self, logits: &Tensor, batch: &Batch) -> Tensor {
        let y = Tensor::from_slice(&batch.labels).to_device(self.device);
        logits.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::Mean)
    }

    /// This rank's share of the global batch's mean loss: its samples' summed binary
    /// cross-entropy over the number of samples in the whole step (all ranks), so that
    /// gradients summed over ranks are those of the global batch's mean.
    pub fn loss_share(&self, logits: &Tensor, batch: &Batch, global_rows: usize) -> Tensor {
        let y = Tensor::from_slice(&batch.labels).to_device(self.device);
        logits.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::Sum)
            / global_rows.max(1) as f64
    }

    /// After `loss.backward()` of every slice of a step (one lookup each; see
    /// `train.slices`): applies the tables' gradients with the sparse optimizer, one step
    /// (collective when sharded).
    pub fn update_tables(
        &mut self,
        lookups: Vec<Lookups>,
        ex: &dyn Exchange,
    ) -> Result<(), TrainError> {
        let mut emb = Vec::with_capacity(lookups.len());
        let mut first = Vec::with_capacity(lookups.len());
        for lk in lookups {
            emb.push(lk.emb);
            first.extend(lk.first_order);
        }
        apply_gradient_slices(&mut self.tables, ex, emb)?;
        if let Some(t) = self.first_order.as_mut() {
            if !first.is_empty() {
                apply_gradient_slices(t, ex, first)?;
            }
        }
        Ok(())
    }

    /// Click probabilities of a batch (no gradients) and, with `k`, the `k` history slots
    /// a sequence model's search ranks highest per sample, from one lookup (collective
    /// when sharded).
    pub fn predict_and_retrieve(
        &self,
        batch: &Batch,
        k: Option<i64>,
        ex: &dyn Exchange,
    ) -> Result<(Vec<f32>, Option<Vec<SampleRetrieval>>), TrainError> {
        let _guard = tch::no_grad_guard();
        let lk = self.lookup(batch, false, ex)?;
        let p = self
            .logits(&lk, batch, false)?
            .sigmoid()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float);
        let found = k.map(|k| self.retrieve(&lk, batch, k)).transpose()?;
        Ok((Vec::<f32>::try_from(&p)?, found))
    }

    /// Time spent in the tables' exchanges so far (all collections).
    pub fn exchange_times(&self) -> shardrec_tables::ExchangeTimes {
        let mut t = self.tables.exchange_times();
        if let Some(f) = &self.first_order {
            let u = f.exchange_times();
            t.ids += u.ids;
            t.values += u.values;
            t.gradients += u.gradients;
        }
        t
    }

    /// Bytes of table parameters and of their optimizer state.
    pub fn table_bytes(&self) -> (usize, usize) {
        let (mut p, mut s) = self.tables.bytes();
        if let Some(f) = &self.first_order {
            let (a, b) = f.bytes();
            p += a;
            s += b;
        }
        (p, s)
    }
}
