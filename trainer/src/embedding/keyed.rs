//! The bridge between a bundle's dynamic tables and its engines: each rank's key maps
//! (one per dynamic feature, over the rows of the table that rank holds), and starting
//! afresh the rows a step gave to new keys, in the main and first-order tables alike.

use shardrec_tables::{FeatureKeys, FreshRows, KeyMaps, KeyRows, RowInit, TableError, TableShard};

use super::builder::DynamicTable;
use super::engine::EmbeddingEngine;

/// This rank's key maps of the `dynamic` features, over the rows of their tables it holds
/// in `tables` (every rank holds a block: dynamic tables are sharded row-wise over all).
pub fn key_maps(
    dynamic: &[DynamicTable],
    tables: &EmbeddingEngine,
    rank: usize,
    world: usize,
) -> Result<Option<KeyMaps>, TableError> {
    if dynamic.is_empty() {
        return Ok(None);
    }
    let mut features = Vec::with_capacity(dynamic.len());
    for d in dynamic {
        let refuse = |reason: String| TableError::InvalidTable {
            table: d.table.clone(),
            reason,
        };
        let (base, rows) = tables.held_rows(&d.table, rank).ok_or_else(|| {
            refuse(format!(
                "a dynamic table must be sharded row-wise over all {world} ranks (its keys are spread by hash)"
            ))
        })?;
        if rows == 0 {
            return Err(refuse(format!(
                "its capacity of {} rows leaves rank {rank} none of the {world} ranks' blocks; give it at least {world} rows",
                d.capacity
            )));
        }
        let capacity = u32::try_from(rows).map_err(|_| {
            refuse(format!(
                "{rows} rows on rank {rank}: a rank holds at most {} rows of a dynamic table",
                u32::MAX
            ))
        })?;
        let map = KeyRows::new(capacity, d.admission, d.eviction, d.seed);
        features.push(FeatureKeys {
            feature: d.feature,
            map,
            base,
        });
    }
    Ok(Some(KeyMaps::new(rank, world, features)))
}

/// Sets the rows new keys took this step to their initial values (drawn from each key,
/// so a key starts alike wherever it lands) and fresh optimizer state, in every table of
/// their feature this rank holds (the tables in parallel).
pub fn start_fresh_rows(
    fresh: &[FreshRows],
    dynamic: &[DynamicTable],
    engines: [Option<&mut EmbeddingEngine>; 2],
) -> Result<(), TableError> {
    use rayon::prelude::*;
    for engine in engines.into_iter().flatten() {
        let opt = *engine.optimizer();
        // per table of a feature with fresh rows: its fresh rows and initialiser (looked
        // up before the shards are borrowed to be written)
        let tables = &engine.layout().spec().tables;
        let wanted: Vec<(usize, &FreshRows, RowInit)> = fresh
            .iter()
            .filter(|f| !f.local_rows.is_empty())
            .filter_map(|f| {
                dynamic
                    .iter()
                    .find(|d| d.feature == f.feature)
                    .map(|d| (f, d))
            })
            .flat_map(|(f, d)| d.tables().map(move |name| (f, name)))
            .filter_map(|(f, name)| {
                let t = tables.iter().position(|s| &s.name == name)?;
                Some((t, f, tables[t].init.clone()))
            })
            .collect();
        let jobs: Vec<(&mut TableShard, &FreshRows, RowInit)> = engine
            .shards_mut()
            .into_iter()
            .filter_map(|(t, shard)| {
                let (_, f, init) = wanted.iter().find(|w| w.0 == t)?;
                Some((shard, *f, init.clone()))
            })
            .collect();
        jobs.into_par_iter().try_for_each(|(shard, f, init)| {
            shard.reset_rows(&f.local_rows, &f.keys, &init, &opt)
        })?;
    }
    Ok(())
}
