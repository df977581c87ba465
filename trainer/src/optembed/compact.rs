//! OptEmbed's compact table (Lyu et al. 2022, section 3.4; as Hetu's implementation
//! stores it): after retraining, each field keeps only its unpruned rows, each cut to the
//! field's searched width, in a plain table of `kept_f + 1` rows by `w_f` columns. Row 0
//! stands for every pruned id (zeros, or the field's OOV vector cut to `w_f`); a kept id
//! becomes `1 + ` its rank among the kept ids. The remapping is stored as the row mask's
//! bitmap (one bit per vocabulary id), not as an id table.
//!
//! Export runs where the rows live: each rank copies the kept rows and columns of the
//! shards it holds into the compact buffers, one all-reduce sums them (every compact
//! entry has exactly one owner), and rank 0 writes the model.

use shardrec_tables::{
    CollectionLayout, CollectionSpec, KeyedJaggedIds, LocalEmbeddings, RowInit, SparseOptimizer,
};

use super::row_mask::{single_id, RowMask};
use super::OptEmbedError;
use crate::cluster::Cluster;
use crate::embedding::EmbeddingEngine;
use crate::TrainError;

/// The id remapping and padding of a compact model.
#[derive(Debug, Clone)]
pub struct CompactIds {
    index: Vec<Vec<u32>>,
    /// Column of the model's `F x D` input that each compact column fills.
    padded: Vec<i64>,
}

impl CompactIds {
    pub fn new(mask: &RowMask, widths: &[usize], dim: usize) -> Self {
        let index = (0..mask.features())
            .map(|f| mask.compact_index(f))
            .collect();
        let padded = widths
            .iter()
            .enumerate()
            .flat_map(|(f, &w)| (0..w).map(move |c| (f * dim + c) as i64))
            .collect();
        Self { index, padded }
    }

    pub fn padded_columns(&self) -> &[i64] {
        &self.padded
    }

    /// The batch with every id replaced by its compact row.
    pub fn remap(&self, ids: &KeyedJaggedIds) -> Result<KeyedJaggedIds, TrainError> {
        let (n, f) = (ids.batch_size(), ids.num_keys());
        if f != self.index.len() {
            return Err(OptEmbedError::CompactBatchFeatures {
                fields: self.index.len(),
                batch: f,
            }
            .into());
        }
        let mut out = vec![0u64; n * f];
        for k in 0..f {
            for b in 0..n {
                let id = single_id(ids, k, b)?;
                out[b * f + k] = u64::from(self.index[k].get(id as usize).copied().unwrap_or(0));
            }
        }
        Ok(KeyedJaggedIds::from_single_valued(f, n, &out)?)
    }

    /// The compact collection: field `f` reads table `names[f]` of `kept_f + 1` rows by
    /// `w_f` columns.
    pub fn spec(mask: &RowMask, widths: &[usize], names: &[String]) -> CollectionSpec {
        let rows: Vec<u64> = (0..mask.features())
            .map(|f| mask.kept_rows(f) + 1)
            .collect();
        CollectionSpec::plain_with_dims(names, &rows, widths, RowInit::Zeros)
    }
}

/// Copies rows of `source` into a one-process collection of layout `target` (collective;
/// the collection is returned on rank 0 only). Target table `t` takes columns
/// `0..dim_t` of source table `from[t]`, source row `r` landing on `row_of(t, r)` (none:
/// not copied).
pub fn gather_rows(
    source: &EmbeddingEngine,
    target: CollectionLayout,
    from: &[usize],
    row_of: &dyn Fn(usize, u64) -> Option<u64>,
    cluster: &Cluster,
) -> Result<Option<LocalEmbeddings>, TrainError> {
    let dims = target.table_dims();
    let sizes: Vec<usize> = (0..target.num_tables())
        .map(|t| target.table_rows(t) as usize * dims[t])
        .collect();
    let starts: Vec<usize> = sizes
        .iter()
        .scan(0, |acc, &s| {
            let at = *acc;
            *acc += s;
            Some(at)
        })
        .collect();
    let mut buf = vec![0f32; sizes.iter().sum()];
    for (st, shard) in source.shards_to_save() {
        let w = shard.weights()?;
        let width = shard.width();
        for (t, _) in from.iter().enumerate().filter(|(_, &s)| s == st) {
            let d = dims[t];
            let cols = shard.cols.start.min(d)..shard.cols.end.min(d);
            if cols.is_empty() {
                continue;
            }
            for (r, row) in w.chunks_exact(width.max(1)).enumerate() {
                let Some(tr) = row_of(t, shard.rows.start + r as u64) else {
                    continue;
                };
                let at = starts[t] + tr as usize * d;
                buf[at + cols.start..at + cols.end].copy_from_slice(&row[..cols.end - cols.start]);
            }
        }
    }
    cluster.all_reduce_sum(&mut buf);
    if !cluster.is_root() {
        return Ok(None);
    }
    let mut out = LocalEmbeddings::single_process(
        target,
        SparseOptimizer::new(shardrec_tables::OptimizerKind::Sgd, 0.0),
    )?;
    for (t, shards) in out.shards_mut().iter_mut().enumerate() {
        for s in shards {
            let d = dims[t];
            let part = &buf[starts[t] + s.rows.start as usize * d..][..s.num_rows() * d];
            s.set_weights(part)?;
        }
    }
    Ok(Some(out))
}

/// The compact main collection of a retrained model (collective; rank 0 gets it). Row 0
/// of field `f` gets `oov[f][..w_f]` when the model has OOV vectors.
#[allow(clippy::too_many_arguments)]
pub fn export_compact(
    engine: &EmbeddingEngine,
    table_of: &[usize],
    mask: &RowMask,
    widths: &[usize],
    names: &[String],
    oov: Option<&[f32]>,
    dim: usize,
    cluster: &Cluster,
) -> Result<Option<LocalEmbeddings>, TrainError> {
    let ids = CompactIds::new(mask, widths, dim);
    let layout = CollectionLayout::new(CompactIds::spec(mask, widths, names))?;
    let row_of = |t: usize, r: u64| match ids.index[t].get(r as usize) {
        Some(&c) if c > 0 => Some(u64::from(c)),
        _ => None,
    };
    let mut out = gather_rows(engine, layout, table_of, &row_of, cluster)?;
    if let (Some(tables), Some(oov)) = (out.as_mut(), oov) {
        for (f, shards) in tables.shards_mut().iter_mut().enumerate() {
            let w = widths[f];
            for s in shards.iter_mut().filter(|s| s.rows.start == 0) {
                let mut rows = s.weights()?.into_owned();
                rows[..w].copy_from_slice(&oov[f * dim..f * dim + w]);
                s.set_weights(&rows)?;
            }
        }
    }
    Ok(out)
}
