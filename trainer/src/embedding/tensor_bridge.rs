//! Embeddings into a tch tensor and its gradient back into the tables.
//!
//! Forward gathers rows straight into the memory of a freshly allocated CPU tensor (no
//! intermediate buffer), then marks it as requiring a gradient; after `backward` the
//! tensor's gradient is read in place and handed to the tables, which merge duplicate
//! rows and apply the sparse optimizer to the touched rows only. With a CUDA model the
//! filled tensor is copied to the device and the gradient copied back.

use shardrec_tables::{
    Exchange, KeyedJaggedIds, LookupPlan, ShardedLookup, SliceGradient, TableError,
};
use tch::{Device, Kind, Tensor};

use super::engine::EmbeddingEngine;

/// What the tables' backward needs from forward.
enum Saved {
    Local {
        plan: LookupPlan,
        gathered: Vec<Vec<f32>>,
    },
    Sharded(ShardedLookup),
    /// None: an evaluation lookup, which has no backward.
    Fused(Option<super::fused::FusedSaved>),
}

/// One batch's embedding input and what backward needs.
pub struct Activation {
    saved: Saved,
    /// `[batch, width]`, on the model's device.
    pub tensor: Tensor,
}

fn not_cpu_f32() -> TableError {
    TableError::BadBatch("embedding buffer must be a contiguous CPU f32 tensor".into())
}

/// A CPU f32 tensor that only this value reaches: allocated here, never shallow-copied,
/// handed out only by [`FreshCpuTensor::into_tensor`]. So a mutable slice over its memory
/// aliases nothing, which is what makes [`FreshCpuTensor::as_mut_slice`] sound.
struct FreshCpuTensor(Tensor);

impl FreshCpuTensor {
    /// `[rows, cols]`, uninitialised: the forward pass writes every element.
    fn uninit(rows: usize, cols: usize) -> Self {
        Self(Tensor::empty(
            [rows as i64, cols as i64],
            (Kind::Float, Device::Cpu),
        ))
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        let n = self.0.numel();
        if n == 0 {
            return &mut [];
        }
        // SAFETY: the tensor was allocated by `uninit` as a contiguous CPU f32 tensor of
        // `n` elements and no other handle to its storage exists (the type's invariant);
        // the exclusive borrow of `self` keeps the slice the only view while it lives.
        unsafe { std::slice::from_raw_parts_mut(self.0.data_ptr() as *mut f32, n) }
    }

    fn into_tensor(self) -> Tensor {
        self.0
    }
}

/// Read-only view of a contiguous CPU f32 tensor's memory (a gradient), checked.
fn cpu_f32(t: &Tensor) -> Result<&[f32], TableError> {
    if t.kind() != Kind::Float || t.device() != Device::Cpu || !t.is_contiguous() {
        return Err(not_cpu_f32());
    }
    let n = t.numel();
    if n == 0 {
        return Ok(&[]);
    }
    // SAFETY: the tensor is contiguous, f32, on the CPU and holds `n` elements. The slice
    // only reads, and the borrow of `t` keeps the storage alive while it lives; libtorch
    // writes to a gradient only inside `backward`, which has returned before the tables'
    // backward reads it (this module runs no libtorch op while the slice lives).
    Ok(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) })
}

/// Looks the batch up; `train` makes the result require a gradient. Collective when the
/// tables are sharded.
pub fn lookup(
    tables: &EmbeddingEngine,
    ex: &dyn Exchange,
    batch: &KeyedJaggedIds,
    device: Device,
    train: bool,
) -> Result<Activation, TableError> {
    if let EmbeddingEngine::Fused(e) = tables {
        let (t, saved) = e.lookup(batch, train)?;
        return Ok(activation(t, Saved::Fused(saved), device, train));
    }
    let width = tables.layout().width();
    // every element is written by the forward pass, so the buffer starts uninitialised
    let mut buffer = FreshCpuTensor::uninit(batch.batch_size(), width);
    let saved = match tables {
        EmbeddingEngine::Local(e) => {
            let plan = e.plan(batch)?;
            let gathered = e.forward(&plan, buffer.as_mut_slice())?;
            Saved::Local { plan, gathered }
        }
        EmbeddingEngine::Sharded(e) => {
            Saved::Sharded(e.forward(ex, batch, buffer.as_mut_slice())?)
        }
        EmbeddingEngine::Fused(_) => unreachable!("fused tables returned above"),
    };
    Ok(activation(buffer.into_tensor(), saved, device, train))
}

/// The looked-up `t` on the model's `device`, a leaf that requires a gradient in
/// training.
fn activation(t: Tensor, saved: Saved, device: Device, train: bool) -> Activation {
    let t = if t.device() == device {
        t
    } else {
        t.to_device(device)
    };
    let tensor = if train { t.set_requires_grad(true) } else { t };
    Activation { saved, tensor }
}

/// The gradient `backward` left on `t`, as a contiguous CPU f32 tensor; zeros where the
/// model did not use `t` (a sharded collection still takes part in the exchange).
fn cpu_gradient(t: &Tensor) -> Tensor {
    let g = t.grad();
    if g.defined() {
        g.to_device(Device::Cpu).to_kind(Kind::Float).contiguous()
    } else {
        t.zeros_like().to_device(Device::Cpu).to_kind(Kind::Float)
    }
}

/// Applies the gradient that `backward` left on the activation to the tables. Collective
/// when the tables are sharded (every rank calls it, whatever its batch).
pub fn apply_gradient(
    tables: &mut EmbeddingEngine,
    ex: &dyn Exchange,
    act: Activation,
) -> Result<(), TableError> {
    let one_process = matches!(
        tables,
        EmbeddingEngine::Local(_) | EmbeddingEngine::Fused(_)
    );
    if !act.tensor.grad().defined() && one_process {
        // the model did not use this input (e.g. an empty collection): nothing to update
        return Ok(());
    }
    match (tables, act.saved) {
        // the gradient stays on the device
        (EmbeddingEngine::Fused(e), Saved::Fused(Some(saved))) => {
            e.backward(saved, &act.tensor.grad())
        }
        (EmbeddingEngine::Local(e), Saved::Local { plan, gathered }) => {
            let g = cpu_gradient(&act.tensor);
            e.backward(&plan, &gathered, cpu_f32(&g)?)
        }
        (EmbeddingEngine::Sharded(e), Saved::Sharded(lk)) => {
            let g = cpu_gradient(&act.tensor);
            e.backward(ex, lk, cpu_f32(&g)?)
        }
        _ => Err(TableError::BadBatch(
            "an activation went back to a different kind of table".into(),
        )),
    }
}

/// Applies the gradients of a step trained in slices (one process; see
/// `LocalEmbeddings::backward_slices`), one optimizer step for all of them. One
/// activation is [`apply_gradient`].
pub fn apply_gradient_slices(
    tables: &mut EmbeddingEngine,
    ex: &dyn Exchange,
    mut acts: Vec<Activation>,
) -> Result<(), TableError> {
    if acts.len() == 1 {
        return apply_gradient(tables, ex, acts.remove(0));
    }
    let EmbeddingEngine::Local(e) = tables else {
        return Err(TableError::BadBatch(
            "a step in several slices is one process's: its tables are not sharded".into(),
        ));
    };
    let mut parts = Vec::with_capacity(acts.len());
    for act in acts {
        let Saved::Local { plan, gathered } = act.saved else {
            return Err(TableError::BadBatch(
                "an activation went back to a different kind of table".into(),
            ));
        };
        parts.push((plan, gathered, cpu_gradient(&act.tensor)));
    }
    let mut slices = Vec::with_capacity(parts.len());
    for (plan, gathered, g) in &parts {
        slices.push(SliceGradient {
            plan,
            gathered,
            out_grad: cpu_f32(g)?,
        });
    }
    e.backward_slices(&slices)
}
