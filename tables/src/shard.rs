//! The part of one table a rank owns: its rows (a block of global rows, a slice of the
//! columns), the optimizer state of those rows, and the update count. Only the owner
//! holds a shard's rows and state; others reach them through the exchange.

use std::ops::Range;

use crate::init::RowInit;
use crate::optimizer::{SparseOptimizer, StateLayout};
use crate::sharding::ShardExtent;
use crate::spec::TableSpec;
use crate::storage::{InMemoryRows, RowStorage};
use crate::TableError;

#[derive(Debug)]
pub struct TableShard {
    pub table: String,
    /// Global rows held.
    pub rows: Range<u64>,
    /// Columns held, of a table `dim` wide.
    pub cols: Range<usize>,
    pub dim: usize,
    weights: Box<dyn RowStorage>,
    state: Box<dyn RowStorage>,
    state_width: usize,
    steps: u64,
}

impl TableShard {
    /// A freshly initialised shard in RAM.
    pub fn new(
        table: &str,
        dim: usize,
        extent: &ShardExtent,
        init: &RowInit,
        opt: &SparseOptimizer,
    ) -> Self {
        let width = extent.cols.len();
        let n = (extent.rows.end - extent.rows.start) as usize;
        let mut w = InMemoryRows::zeros(n * width);
        init.fill(
            w.as_mut_slice(),
            extent.rows.clone(),
            extent.cols.clone(),
            dim,
        );
        let sw = opt.state_width(width);
        Self {
            table: table.to_string(),
            rows: extent.rows.clone(),
            cols: extent.cols.clone(),
            dim,
            weights: Box::new(w),
            state: Box::new(InMemoryRows::filled(n * sw, opt.initial_state())),
            state_width: sw,
            steps: 0,
        }
    }

    /// The freshly initialised part `extent` of the table `spec`.
    pub fn of_table(spec: &TableSpec, extent: &ShardExtent, opt: &SparseOptimizer) -> Self {
        Self::new(&spec.name, spec.dim, extent, &spec.init, opt)
    }

    /// Floats per held row.
    pub fn width(&self) -> usize {
        self.cols.len()
    }

    pub fn num_rows(&self) -> usize {
        (self.rows.end - self.rows.start) as usize
    }

    pub fn weights(&self) -> &[f32] {
        self.weights.as_slice()
    }

    pub fn weights_mut(&mut self) -> &mut [f32] {
        self.weights.as_mut_slice()
    }

    pub fn state(&self) -> &[f32] {
        self.state.as_slice()
    }

    pub fn state_mut(&mut self) -> &mut [f32] {
        self.state.as_mut_slice()
    }

    pub fn state_width(&self) -> usize {
        self.state_width
    }

    /// Plane `p` of the optimizer state (see [`StateLayout`]): `rows x width` floats per
    /// column, or `rows` floats per row.
    pub fn state_plane(&self, layout: StateLayout, p: usize) -> Vec<f32> {
        let (n, w, sw) = (self.num_rows(), self.width(), self.state_width);
        let s = self.state.as_slice();
        match layout {
            StateLayout::PerRow => (0..n).map(|r| s[r * sw]).collect(),
            StateLayout::PerColumn { .. } => (0..n)
                .flat_map(|r| s[r * sw + p * w..][..w].iter().copied())
                .collect(),
        }
    }

    /// Overwrites plane `p` of the optimizer state (the inverse of [`Self::state_plane`]).
    pub fn set_state_plane(
        &mut self,
        layout: StateLayout,
        p: usize,
        values: &[f32],
    ) -> Result<(), TableError> {
        let (n, w, sw) = (self.num_rows(), self.width(), self.state_width);
        let per_row = match layout {
            StateLayout::PerRow => 1,
            StateLayout::PerColumn { .. } => w,
        };
        if values.len() != n * per_row || (p + 1) * per_row > sw {
            return Err(TableError::SizeMismatch {
                what: format!("table `{}`: optimizer state plane {p}", self.table),
                expected: n * per_row,
                got: values.len(),
            });
        }
        let s = self.state.as_mut_slice();
        for r in 0..n {
            s[r * sw + p * per_row..][..per_row].copy_from_slice(&values[r * per_row..][..per_row]);
        }
        Ok(())
    }

    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// Bytes of parameters and of optimizer state.
    pub fn bytes(&self) -> (usize, usize) {
        (self.weights.bytes(), self.state.bytes())
    }

    /// Copies of the given local rows (ascending or not), `rows.len() x width`.
    pub fn gather(&self, local_rows: &[u64]) -> Result<Vec<f32>, TableError> {
        let w = self.width();
        let n = self.num_rows() as u64;
        let data = self.weights.as_slice();
        let mut out = Vec::with_capacity(local_rows.len() * w);
        for (i, &r) in local_rows.iter().enumerate() {
            if r >= n {
                return Err(TableError::BadBatch(format!(
                    "table `{}`: local row {r} outside the shard's {n} rows",
                    self.table
                )));
            }
            if let Some(&ahead) = local_rows.get(i + crate::prefetch::DISTANCE) {
                crate::prefetch::prefetch(data.as_ptr().wrapping_add(ahead as usize * w));
            }
            out.extend_from_slice(&data[r as usize * w..][..w]);
        }
        Ok(out)
    }

    /// Applies one optimizer step to the given local rows (strictly ascending).
    pub fn apply(
        &mut self,
        opt: &SparseOptimizer,
        local_rows: &[u64],
        grads: &[f32],
    ) -> Result<(), TableError> {
        self.steps += 1;
        let w = self.width();
        opt.apply(
            self.steps,
            self.weights.as_mut_slice(),
            self.state.as_mut_slice(),
            w,
            local_rows,
            grads,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::OptimizerKind;

    fn shard(kind: OptimizerKind) -> (TableShard, SparseOptimizer) {
        let opt = SparseOptimizer::new(kind, 0.1);
        let extent = ShardExtent {
            rank: 0,
            rows: 2..5,
            cols: 1..3,
        };
        (TableShard::new("t", 4, &extent, &RowInit::Zeros, &opt), opt)
    }

    #[test]
    fn adam_state_planes_are_first_then_second_moments() {
        let (mut s, opt) = shard(OptimizerKind::Adam);
        let layout = opt.state_layout();
        assert_eq!(layout.planes(), 2);
        // row r holds [m(2 columns), v(2 columns)]
        for (i, v) in s.state_mut().iter_mut().enumerate() {
            *v = i as f32;
        }
        assert_eq!(s.state_plane(layout, 0), vec![0., 1., 4., 5., 8., 9.]);
        assert_eq!(s.state_plane(layout, 1), vec![2., 3., 6., 7., 10., 11.]);
        let m: Vec<f32> = (0..6).map(|i| 100.0 + i as f32).collect();
        s.set_state_plane(layout, 0, &m).unwrap();
        assert_eq!(s.state_plane(layout, 0), m);
        assert_eq!(s.state_plane(layout, 1), vec![2., 3., 6., 7., 10., 11.]);
        assert!(s.set_state_plane(layout, 2, &m).is_err());
        assert!(s.set_state_plane(layout, 0, &m[..5]).is_err());
    }

    #[test]
    fn rowwise_adagrad_has_one_plane_of_one_value_per_row() {
        let (mut s, opt) = shard(OptimizerKind::RowwiseAdagrad);
        let layout = opt.state_layout();
        s.set_state_plane(layout, 0, &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.state(), &[1.0, 2.0, 3.0]);
        assert_eq!(s.state_plane(layout, 0), vec![1.0, 2.0, 3.0]);
    }
}
