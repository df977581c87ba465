//! OptEmbed's masks between the tables and the dense model (Lyu et al. 2022, eq. 4-9).
//!
//! The tables return each sample's `F x D` field embeddings; this layer multiplies them
//! by a row mask (is the row kept?) and a dimension mask (the field's first `w_f`
//! columns), so the dense model always sees `F x D` inputs and any CTR model works
//! unchanged. Gradients flow through both masks back to the rows, and through the
//! surrogate step to the per-field thresholds, which are dense parameters (all-reduced
//! like any other under mpirun) trained by plain SGD with their own learning rate.
//!
//! Row masks come from the thresholds (supernet), from the fixed mask the supernet left
//! (search, retrain), or are already applied by the compact tables, whose ids are
//! remapped before the lookup and whose narrower rows are padded back to `D` here.

use std::any::Any;
use std::sync::Arc;

use shardrec_tables::{CollectionLayout, KeyedJaggedIds};
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use super::compact::CompactIds;
use super::field_tables::FieldTables;
use super::row_mask::RowMask;
use super::surrogate::step_with_surrogate;
use crate::bundle::{EmbeddingLayer, EmbeddingLayerSpec, ModelBundle};
use crate::config::{OptEmbedConfig, PrunedRows};
use crate::TrainError;

/// Where the row mask comes from.
#[derive(Debug, Clone)]
pub enum RowSelection {
    /// `S(||e||_1 - t_f)` from the rows and the learned thresholds (supernet).
    Thresholds,
    /// The supernet's mask, fixed (search and retrain).
    Fixed(Arc<RowMask>),
    /// Compact tables: pruned ids were remapped to each table's row 0 before the lookup.
    Compact(Arc<CompactIds>),
}

/// Which columns of each field the model sees.
#[derive(Debug, Clone, PartialEq)]
pub enum Widths {
    /// All `D`.
    Full,
    /// A width drawn uniformly in `1..=D` per sample and field in training; all `D` in
    /// evaluation (the supernet).
    SampledInTraining,
    /// The field's first `w_f` columns.
    Fixed(Vec<i64>),
}

/// What a bundle needs to build the layer.
#[derive(Debug, Clone)]
pub struct OptEmbedSetup {
    pub cfg: OptEmbedConfig,
    /// `D`: the width every field has before the dimension mask.
    pub dim: usize,
    pub rows: RowSelection,
    pub widths: Widths,
}

#[derive(Debug)]
pub struct OptEmbedLayer {
    /// `alpha` and the thresholds' learning rate (`[optembed]`).
    alpha: f64,
    threshold_lr: f64,
    features: i64,
    dim: i64,
    thresholds: Tensor,
    oov: Option<Tensor>,
    pub rows: RowSelection,
    pub widths: Widths,
    device: Device,
}

/// The prefix of the layer's variables (`optembed.threshold`, `optembed.oov`).
pub const VARIABLES: &str = "optembed";

impl EmbeddingLayerSpec for OptEmbedSetup {
    fn check_tables(&self, main: &CollectionLayout) -> Result<(), TrainError> {
        if !matches!(self.rows, RowSelection::Compact(_)) {
            FieldTables::of(main, self.dim)?;
        }
        Ok(())
    }

    fn feature_width(&self) -> usize {
        self.dim
    }

    fn name(&self) -> &'static str {
        VARIABLES
    }

    fn build(&self, p: &nn::Path, features: usize) -> Box<dyn EmbeddingLayer> {
        Box::new(OptEmbedLayer::new(p, self, features))
    }
}

impl EmbeddingLayer for OptEmbedLayer {
    /// The ids the tables look up: remapped to compact rows in compact mode.
    fn remap(&self, ids: &KeyedJaggedIds) -> Result<Option<KeyedJaggedIds>, TrainError> {
        match &self.rows {
            RowSelection::Compact(c) => c.remap(ids).map(Some),
            _ => Ok(None),
        }
    }

    /// The model's `[batch, F * D]` input from the tables' output for a batch whose
    /// original ids are `ids`. A batch that is one rank's share of a job-wide batch
    /// (`step_slice`: its offset and the job-wide rows) takes its sampled widths from the
    /// job-wide draw, as one process would.
    fn apply(
        &self,
        emb: &Tensor,
        ids: &KeyedJaggedIds,
        step_slice: Option<(usize, usize)>,
        train: bool,
    ) -> Result<Tensor, TrainError> {
        let (f, d) = (self.features, self.dim);
        let opts = (Kind::Float, self.device);
        if let RowSelection::Compact(c) = &self.rows {
            let n = emb.size()[0];
            let cols = Tensor::from_slice(c.padded_columns()).to_device(self.device);
            return Ok(Tensor::zeros([n, f * d], opts).index_copy(1, &cols, emb));
        }
        let e = emb.view([-1, f, d]);
        let n = e.size()[0];
        let keep = match &self.rows {
            RowSelection::Thresholds => {
                let norm = e
                    .abs()
                    .sum_dim_intlist([2i64].as_slice(), false, Kind::Float);
                step_with_surrogate(&(norm - self.thresholds.unsqueeze(0)))
            }
            RowSelection::Fixed(mask) => Tensor::from_slice(&mask.batch_mask(ids)?)
                .view([n, f])
                .to_device(self.device),
            RowSelection::Compact(_) => unreachable!("returned above"),
        }
        .unsqueeze(2);
        let mut x = &e * &keep;
        if let Some(oov) = &self.oov {
            x += (keep.ones_like() - &keep) * oov.unsqueeze(0);
        }
        let cols = Tensor::arange(d, (Kind::Int64, self.device)).view([1, 1, d]);
        let dims = match &self.widths {
            Widths::Full => None,
            Widths::SampledInTraining if !train => None,
            Widths::SampledInTraining => {
                // keep the first i + 1 columns, i uniform in [0, D)
                let i =
                    match step_slice {
                        Some((offset, total)) => {
                            Tensor::randint(d, [total as i64, f], (Kind::Int64, self.device))
                                .narrow(0, offset as i64, n)
                        }
                        None => Tensor::randint(d, [n, f], (Kind::Int64, self.device)),
                    };
                Some(cols.le_tensor(&i.unsqueeze(2)))
            }
            Widths::Fixed(w) => {
                let w = Tensor::from_slice(w).to_device(self.device).view([1, f, 1]);
                Some(cols.lt_tensor(&w))
            }
        };
        if let Some(m) = dims {
            x *= m.to_kind(Kind::Float);
        }
        Ok(x.view([-1, f * d]))
    }

    /// The thresholds, trained by their own SGD, not the dense optimizer.
    fn owns_variable(&self, v: &Tensor) -> bool {
        v.data_ptr() == self.thresholds.data_ptr()
    }

    /// The supernet learns thresholds: `alpha * sum_f exp(-t_f)` joins the loss.
    fn loss_term(&self, parts: usize) -> Option<Tensor> {
        matches!(self.rows, RowSelection::Thresholds)
            .then(|| self.thresholds.neg().exp().sum(Kind::Float) * (self.alpha / parts as f64))
    }

    /// The supernet: one plain SGD step of the thresholds from their (all-reduced)
    /// gradient, which it then clears.
    fn after_dense_step(&mut self) {
        if !matches!(self.rows, RowSelection::Thresholds) {
            return;
        }
        let _guard = tch::no_grad_guard();
        let mut g = self.thresholds.grad();
        if g.defined() {
            let _ = self.thresholds.f_sub_(&(&g * self.threshold_lr));
            let _ = g.zero_();
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl OptEmbedLayer {
    /// The OptEmbed layer of a bundle built with one.
    pub fn of(bundle: &ModelBundle) -> Option<&Self> {
        bundle.layer.as_ref()?.as_any().downcast_ref()
    }

    /// As [`OptEmbedLayer::of`], mutable (the search sets the widths it scores).
    pub fn of_mut(bundle: &mut ModelBundle) -> Option<&mut Self> {
        bundle.layer.as_mut()?.as_any_mut().downcast_mut()
    }

    /// Creates the thresholds (and OOV vectors) of `features` fields under `p`.
    pub fn new(p: &nn::Path, setup: &OptEmbedSetup, features: usize) -> Self {
        let (f, d) = (features as i64, setup.dim as i64);
        let thresholds = p.var("threshold", &[f], Init::Const(setup.cfg.threshold_init));
        let oov = (setup.cfg.pruned == PrunedRows::Oov).then(|| {
            p.var(
                "oov",
                &[f, d],
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.01,
                },
            )
        });
        Self {
            alpha: setup.cfg.alpha,
            threshold_lr: setup.cfg.threshold_lr,
            features: f,
            dim: d,
            thresholds,
            oov,
            rows: setup.rows.clone(),
            widths: setup.widths.clone(),
            device: p.device(),
        }
    }

    pub fn thresholds(&self) -> Vec<f32> {
        Vec::<f32>::try_from(&self.thresholds.detach().to_device(Device::Cpu)).unwrap_or_default()
    }

    /// The OOV vectors, `[F * D]` row-major, when pruned rows take them.
    pub fn oov_values(&self) -> Option<Vec<f32>> {
        self.oov.as_ref().map(|t| {
            Vec::<f32>::try_from(&t.detach().to_device(Device::Cpu).reshape([-1]))
                .unwrap_or_default()
        })
    }
}
