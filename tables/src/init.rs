//! Deterministic row initialisation.
//!
//! The value of element (row, col) of a table is a pure function of the table's seed and
//! the element's global coordinates, so a table initialises identically whether one
//! process holds it or it is split by rows or columns across ranks, and a row can be
//! initialised lazily when first touched (needed for memory-mapped tables).

use serde::{Deserialize, Serialize};

use crate::hashing::{hash_id, unit_f32};
use crate::row_dtype::{Rounding, RowDtype};

/// Distribution of initial row values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RowInit {
    /// Uniform in [-bound, bound]. TorchRec's default bound is sqrt(1 / rows).
    Uniform { bound: f32, seed: u64 },
    /// Normal with mean 0 and this standard deviation.
    Normal { std: f32, seed: u64 },
    /// All zeros (linear / first-order weights).
    Zeros,
}

impl RowInit {
    /// Value of element `(row, col)` of a table of width `dim`.
    #[inline]
    pub fn value(&self, row: u64, col: usize, dim: usize) -> f32 {
        match *self {
            RowInit::Zeros => 0.0,
            RowInit::Uniform { bound, seed } => {
                let u = unit_f32(hash_id(seed, row * dim as u64 + col as u64));
                (2.0 * u - 1.0) * bound
            }
            RowInit::Normal { std, seed } => {
                let c = (row * dim as u64 + col as u64) * 2;
                let u1 = unit_f32(hash_id(seed, c)).max(1e-7);
                let u2 = unit_f32(hash_id(seed, c + 1));
                std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            }
        }
    }

    /// Row `row`'s initial values in columns `cols` of a table of width `dim`, stored as
    /// `dtype` into `words` (rounded to nearest; `scratch` holds the values of a 16-bit
    /// row on the way).
    pub fn fill_stored_row(
        &self,
        row: u64,
        cols: std::ops::Range<usize>,
        dim: usize,
        dtype: RowDtype,
        (words, scratch): (&mut [f32], &mut Vec<f32>),
    ) {
        let values = if dtype == RowDtype::F32 {
            &mut words[..cols.len()]
        } else {
            scratch.resize(cols.len(), 0.0);
            &mut scratch[..]
        };
        for (j, v) in values.iter_mut().enumerate() {
            *v = self.value(row, cols.start + j, dim);
        }
        if dtype != RowDtype::F32 {
            dtype.encode(scratch, words, Rounding::Nearest);
        }
    }

    /// Fills `out` (rows x (cols.end - cols.start)) with the values of global rows
    /// `rows` and columns `cols` of a table of width `dim`.
    pub fn fill(
        &self,
        out: &mut [f32],
        rows: std::ops::Range<u64>,
        cols: std::ops::Range<usize>,
        dim: usize,
    ) {
        use rayon::prelude::*;
        let width = cols.len();
        if width == 0 {
            return;
        }
        out.par_chunks_mut(width).enumerate().for_each(|(i, row)| {
            let r = rows.start + i as u64;
            for (j, v) in row.iter_mut().enumerate() {
                *v = self.value(r, cols.start + j, dim);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_respects_bound_and_is_shard_invariant() {
        let init = RowInit::Uniform {
            bound: 0.1,
            seed: 3,
        };
        let mut whole = vec![0.0; 10 * 4];
        init.fill(&mut whole, 0..10, 0..4, 4);
        assert!(whole.iter().all(|v| v.abs() <= 0.1));
        // rows 5..10, columns 2..4 filled separately equal the same block of the whole
        let mut part = vec![0.0; 5 * 2];
        init.fill(&mut part, 5..10, 2..4, 4);
        for i in 0..5 {
            assert_eq!(
                &part[i * 2..i * 2 + 2],
                &whole[(5 + i) * 4 + 2..(5 + i) * 4 + 4]
            );
        }
    }

    #[test]
    fn normal_has_roughly_the_right_spread() {
        let init = RowInit::Normal { std: 0.5, seed: 1 };
        let mut v = vec![0.0; 20000];
        init.fill(&mut v, 0..20000, 0..1, 1);
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.02, "{}", var.sqrt());
    }
}
