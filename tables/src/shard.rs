//! The part of one table a rank owns: its rows (a block of global rows, a slice of the
//! columns), the optimizer state of those rows, and the update count. Only the owner
//! holds a shard's rows and state; others reach them through the exchange.

use std::ops::Range;

use crate::init::RowInit;
use crate::optimizer::SparseOptimizer;
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
