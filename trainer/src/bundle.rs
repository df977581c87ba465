//! Tables plus dense model: what a batch runs through, in training and in evaluation.

use shardrec_models::{build_model, CtrModel, ModelConfig, ModelInput, ModelShape};
use shardrec_tables::{CollectionLayout, LocalEmbeddings, SparseOptimizer};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::data::Batch;
use crate::embedding::{apply_gradient, lookup, Activation};
use crate::TrainError;

/// The collections, the dense model and its variables, on one device.
pub struct ModelBundle {
    pub tables: LocalEmbeddings,
    pub first_order: Option<LocalEmbeddings>,
    pub vs: VarStore,
    pub model: Box<dyn CtrModel>,
    pub device: Device,
    pub num_dense: usize,
}

/// One batch's embedding inputs (and what the tables' backward needs).
pub struct Lookups {
    emb: Activation,
    first_order: Option<Activation>,
}

impl ModelBundle {
    /// Fresh tables (initialised from their specs) and a fresh model (from libtorch's
    /// RNG, seeded by the caller).
    pub fn new(
        main: CollectionLayout,
        first_order: Option<CollectionLayout>,
        optimizer: SparseOptimizer,
        model_cfg: &ModelConfig,
        num_dense: usize,
        device: Device,
    ) -> Result<Self, TrainError> {
        let shape = ModelShape {
            num_dense: num_dense as i64,
            feature_widths: main
                .feature_widths()
                .into_iter()
                .map(|w| w as i64)
                .collect(),
        };
        let tables = LocalEmbeddings::single_process(main, optimizer)?;
        let first_order = first_order
            .map(|l| LocalEmbeddings::single_process(l, optimizer))
            .transpose()?;
        let vs = VarStore::new(device);
        let model = build_model(&vs.root(), model_cfg, &shape)?;
        Ok(Self {
            tables,
            first_order,
            vs,
            model,
            device,
            num_dense,
        })
    }

    /// Looks the batch's ids up in every collection.
    pub fn lookup(&self, batch: &Batch, train: bool) -> Result<Lookups, TrainError> {
        let emb = lookup(&self.tables, &batch.sparse, self.device, train)?;
        let first_order = match &self.first_order {
            Some(t) => Some(lookup(t, &batch.sparse, self.device, train)?),
            None => None,
        };
        Ok(Lookups { emb, first_order })
    }

    /// The dense model's logits for a batch whose embeddings were looked up.
    /// # Shapes
    /// `-> [batch]`
    pub fn logits(&self, lk: &Lookups, batch: &Batch, train: bool) -> Tensor {
        let dense = Tensor::from_slice(&batch.dense)
            .view([batch.len() as i64, self.num_dense as i64])
            .to_device(self.device);
        self.model.forward_t(
            &ModelInput {
                dense: &dense,
                emb: &lk.emb.tensor,
                first_order: lk.first_order.as_ref().map(|a| &a.tensor),
            },
            train,
        )
    }

    /// Mean binary cross-entropy of logits against the batch's labels.
    pub fn loss(&self, logits: &Tensor, batch: &Batch) -> Tensor {
        let y = Tensor::from_slice(&batch.labels).to_device(self.device);
        logits.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::Mean)
    }

    /// After `loss.backward()`: applies the tables' gradients with the sparse optimizer.
    pub fn update_tables(&mut self, lk: Lookups) -> Result<(), TrainError> {
        apply_gradient(&mut self.tables, lk.emb)?;
        if let (Some(t), Some(a)) = (self.first_order.as_mut(), lk.first_order) {
            apply_gradient(t, a)?;
        }
        Ok(())
    }

    /// Click probabilities of a batch (no gradients).
    pub fn predict(&self, batch: &Batch) -> Result<Vec<f32>, TrainError> {
        let _guard = tch::no_grad_guard();
        let lk = self.lookup(batch, false)?;
        let p = self
            .logits(&lk, batch, false)
            .sigmoid()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float);
        Ok(Vec::<f32>::try_from(&p)?)
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
