//! Sparse optimizers: update only the rows a batch touched, in parallel over rows.
//!
//! Formulas follow the references users compare against: SGD; Adagrad as in
//! `torch.optim.Adagrad` (Duchi et al. 2011); row-wise Adagrad as FBGEMM's
//! `EXACT_ROWWISE_ADAGRAD` used by TorchRec (one accumulator per row: the mean of the
//! squared gradient); lazy Adam as TensorFlow's `LazyAdam` / `torch.optim.SparseAdam`
//! (Kingma and Ba 2015; moments of untouched rows are left alone, bias correction uses
//! the global step). Optional L2 weight decay adds `weight_decay * w` to a touched row's
//! gradient.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::prefetch::{prefetch, DISTANCE};
use crate::row_dtype::{Rounding, RowDtype};
use crate::TableError;

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Sgd,
    Adagrad,
    RowwiseAdagrad,
    Adam,
}

/// Layout of one row's optimizer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateLayout {
    /// `planes` values per column (Adagrad's accumulator; Adam's first then second
    /// moment): a row holds plane 0 of every column, then plane 1, and so on.
    PerColumn { planes: usize },
    /// One value per row (row-wise Adagrad).
    PerRow,
}

impl StateLayout {
    /// Planes of a row's state: each is a `rows x cols` rectangle (per column) or a
    /// `rows x 1` one (per row).
    pub fn planes(self) -> usize {
        match self {
            Self::PerColumn { planes } => planes,
            Self::PerRow => 1,
        }
    }
}

/// An update rule with its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SparseOptimizer {
    pub kind: OptimizerKind,
    pub lr: f32,
    pub weight_decay: f32,
    pub eps: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// Starting value of Adagrad accumulators.
    pub initial_accumulator: f32,
}

impl SparseOptimizer {
    pub fn new(kind: OptimizerKind, lr: f32) -> Self {
        Self {
            kind,
            lr,
            weight_decay: 0.0,
            eps: match kind {
                OptimizerKind::Adagrad | OptimizerKind::RowwiseAdagrad => 1e-10,
                _ => 1e-8,
            },
            beta1: 0.9,
            beta2: 0.999,
            initial_accumulator: 0.0,
        }
    }

    /// Optimizer state floats per row of width `dim`.
    pub fn state_width(&self, dim: usize) -> usize {
        match self.kind {
            OptimizerKind::Sgd => 0,
            OptimizerKind::Adagrad => dim,
            OptimizerKind::RowwiseAdagrad => 1,
            OptimizerKind::Adam => 2 * dim,
        }
    }

    /// How a row's state floats are laid out, for checkpoints that must cut state along
    /// the same rows and columns as the weights.
    pub fn state_layout(&self) -> StateLayout {
        match self.kind {
            OptimizerKind::Sgd => StateLayout::PerColumn { planes: 0 },
            OptimizerKind::Adagrad => StateLayout::PerColumn { planes: 1 },
            OptimizerKind::Adam => StateLayout::PerColumn { planes: 2 },
            OptimizerKind::RowwiseAdagrad => StateLayout::PerRow,
        }
    }

    /// Initial value of every state float.
    pub fn initial_state(&self) -> f32 {
        match self.kind {
            OptimizerKind::Adagrad | OptimizerKind::RowwiseAdagrad => self.initial_accumulator,
            _ => 0.0,
        }
    }

    /// Applies gradients `grads` (`rows.len() x dim`) to the given rows of `weights`
    /// (`n x dim`) and `state` (`n x state_width`). `rows` must be strictly increasing and
    /// in range; `step` is the 1-based count of updates so far (Adam's bias correction).
    pub fn apply(
        &self,
        step: u64,
        weights: &mut [f32],
        state: &mut [f32],
        dim: usize,
        rows: &[u64],
        grads: &[f32],
    ) -> Result<(), TableError> {
        let opt = *self;
        let (bc1, bc2) = self.bias_corrections(step);
        self.apply_rows(weights, dim, state, dim, rows, grads, |_, w, s, g, _| {
            opt.update_row(w, s, g, bc1, bc2)
        })
    }

    /// One update of the given rows of stored rows of `words` floats each (`weights`:
    /// `n x words`, `state`: `n x state_width(dim)`), `f(i, row, state, grad, scratch)`
    /// updating the `i`-th; checks shapes and rows (strictly increasing, in range) and
    /// runs chunks of rows in parallel, each with its own scratch buffer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply_rows(
        &self,
        weights: &mut [f32],
        words: usize,
        state: &mut [f32],
        dim: usize,
        rows: &[u64],
        grads: &[f32],
        f: impl Fn(usize, &mut [f32], &mut [f32], &[f32], &mut Vec<f32>) + Sync,
    ) -> Result<(), TableError> {
        let sw = self.state_width(dim);
        if grads.len() != rows.len() * dim {
            return Err(TableError::SizeMismatch {
                what: "row gradients".into(),
                expected: rows.len() * dim,
                got: grads.len(),
            });
        }
        let n = weights.len() / words.max(1);
        if state.len() != n * sw {
            return Err(TableError::SizeMismatch {
                what: "optimizer state".into(),
                expected: n * sw,
                got: state.len(),
            });
        }
        let mut w_rows = split_rows(weights, words, rows, n)?;
        let mut s_rows: Vec<&mut [f32]> = if sw == 0 {
            (0..rows.len()).map(|_| <&mut [f32]>::default()).collect()
        } else {
            split_rows(state, sw, rows, n)?
        };
        // Chunks of rows in parallel; inside a chunk, rows a few places ahead are
        // prefetched so the random reads of weights and state overlap.
        const CHUNK: usize = 256;
        w_rows
            .par_chunks_mut(CHUNK)
            .zip(s_rows.par_chunks_mut(CHUNK))
            .zip(grads.par_chunks(CHUNK * dim.max(1)))
            .enumerate()
            .for_each(|(c, ((ws, ss), gs))| {
                let mut scratch = Vec::new();
                for j in 0..ws.len() {
                    if let Some(ahead) = ws.get(j + DISTANCE) {
                        prefetch(ahead.as_ptr());
                        if let Some(sa) = ss.get(j + DISTANCE) {
                            prefetch(sa.as_ptr());
                        }
                    }
                    f(
                        c * CHUNK + j,
                        ws[j],
                        ss[j],
                        &gs[j * dim..][..dim],
                        &mut scratch,
                    );
                }
            });
        Ok(())
    }

    /// One update of a stored row (`words` of `dtype`): widened into `scratch`, updated
    /// in f32, and rounded back stochastically under `key` (see [`RowDtype`]); an f32 row
    /// is updated in place.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update_stored_row(
        &self,
        dtype: RowDtype,
        words: &mut [f32],
        s: &mut [f32],
        g: &[f32],
        (bc1, bc2): (f32, f32),
        (key, first_col): (u64, usize),
        scratch: &mut Vec<f32>,
    ) {
        if dtype == RowDtype::F32 {
            return self.update_row(words, s, g, bc1, bc2);
        }
        scratch.resize(g.len(), 0.0);
        dtype.decode(words, scratch);
        self.update_row(scratch, s, g, bc1, bc2);
        dtype.encode(scratch, words, Rounding::Stochastic { key, first_col });
    }

    /// Adam's bias corrections for the `step`-th update (1 for the other kinds).
    pub fn bias_corrections(&self, step: u64) -> (f32, f32) {
        match self.kind {
            OptimizerKind::Adam => {
                let t = step.max(1) as i32;
                (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t))
            }
            _ => (1.0, 1.0),
        }
    }

    /// One row's update. Written as straight loops over zipped slices (no per-element
    /// branches) so they vectorise; `weight_decay = 0` costs one multiply-add.
    #[inline]
    pub(crate) fn update_row(&self, w: &mut [f32], s: &mut [f32], g: &[f32], bc1: f32, bc2: f32) {
        let (wd, lr, eps) = (self.weight_decay, self.lr, self.eps);
        match self.kind {
            OptimizerKind::Sgd => {
                for (wi, &gi) in w.iter_mut().zip(g) {
                    *wi -= lr * (gi + wd * *wi);
                }
            }
            OptimizerKind::Adagrad => {
                for ((wi, si), &gi) in w.iter_mut().zip(s.iter_mut()).zip(g) {
                    let gi = gi + wd * *wi;
                    *si += gi * gi;
                    *wi -= lr * gi / (si.sqrt() + eps);
                }
            }
            OptimizerKind::RowwiseAdagrad => {
                let mut sq = 0.0f32;
                for (wi, &gi) in w.iter().zip(g) {
                    let gi = gi + wd * wi;
                    sq += gi * gi;
                }
                s[0] += sq / w.len() as f32;
                let scale = lr / (s[0].sqrt() + eps);
                for (wi, &gi) in w.iter_mut().zip(g) {
                    *wi -= scale * (gi + wd * *wi);
                }
            }
            OptimizerKind::Adam => {
                let (m, v) = s.split_at_mut(w.len());
                let (b1, b2) = (self.beta1, self.beta2);
                for (((wi, mi), vi), &gi) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g)
                {
                    let gi = gi + wd * *wi;
                    *mi = b1 * *mi + (1.0 - b1) * gi;
                    *vi = b2 * *vi + (1.0 - b2) * gi * gi;
                    *wi -= lr * (*mi / bc1) / ((*vi / bc2).sqrt() + eps);
                }
            }
        }
    }
}

/// Checks that `rows` are strictly increasing and below `n`.
pub(crate) fn check_rows(rows: &[u64], n: usize) -> Result<(), TableError> {
    let mut next = 0u64;
    for &r in rows {
        if r < next || r >= n as u64 {
            return Err(TableError::BadBatch(format!(
                "row {r} is out of order or outside the shard's {n} rows"
            )));
        }
        next = r + 1;
    }
    Ok(())
}

/// Disjoint mutable views of the given rows of a row-major block; `rows` must be strictly
/// increasing and below `n`.
fn split_rows<'a>(
    mut data: &'a mut [f32],
    width: usize,
    rows: &[u64],
    n: usize,
) -> Result<Vec<&'a mut [f32]>, TableError> {
    let mut out = Vec::with_capacity(rows.len());
    let mut consumed = 0u64;
    for &r in rows {
        if r < consumed || r >= n as u64 {
            return Err(TableError::BadBatch(format!(
                "row {r} is out of order or outside the shard's {n} rows"
            )));
        }
        let skip = ((r - consumed) as usize) * width;
        let rest = std::mem::take(&mut data);
        let (_, rest) = rest.split_at_mut(skip);
        let (row, rest) = rest.split_at_mut(width);
        out.push(row);
        data = rest;
        consumed = r + 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_touches_only_given_rows() {
        let opt = SparseOptimizer::new(OptimizerKind::Sgd, 0.5);
        let mut w = vec![1.0; 8];
        opt.apply(1, &mut w, &mut [], 2, &[1, 3], &[1.0, 2.0, 3.0, 4.0])
            .unwrap();
        assert_eq!(w, vec![1.0, 1.0, 0.5, 0.0, 1.0, 1.0, -0.5, -1.0]);
    }

    #[test]
    fn unsorted_or_out_of_range_rows_are_errors() {
        let opt = SparseOptimizer::new(OptimizerKind::Sgd, 0.5);
        let mut w = vec![1.0; 8];
        assert!(opt
            .apply(1, &mut w, &mut [], 2, &[3, 1], &[0.0; 4])
            .is_err());
        assert!(opt
            .apply(1, &mut w, &mut [], 2, &[1, 1], &[0.0; 4])
            .is_err());
        assert!(opt.apply(1, &mut w, &mut [], 2, &[4], &[0.0; 2]).is_err());
        assert_eq!(w, vec![1.0; 8]);
    }

    #[test]
    fn rowwise_adagrad_uses_mean_square() {
        let opt = SparseOptimizer {
            eps: 0.0,
            ..SparseOptimizer::new(OptimizerKind::RowwiseAdagrad, 1.0)
        };
        let mut w = vec![0.0; 2];
        let mut s = vec![0.0; 1];
        opt.apply(1, &mut w, &mut s, 2, &[0], &[3.0, 4.0]).unwrap();
        assert_eq!(s[0], 12.5);
        let d = 12.5f32.sqrt();
        assert_eq!(w, vec![-3.0 / d, -4.0 / d]);
    }
}
