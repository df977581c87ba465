//! The bridge between a bundle's dynamic tables and its engines: each rank's key maps
//! (one per dynamic feature, over the rows of the table that rank holds), and starting
//! afresh the rows a step gave to new keys, in the main and first-order tables alike.
//!
//! A learned default row (`embedding.dynamic.default = "learned"`) is the table's global
//! row 0: the rank whose block starts there keeps it out of its map, and every owner
//! answers it for the keys it holds no row for.

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
        let default_row = d.learned_default_row();
        // the block holding the default row keeps it out of its map
        let kept = u64::from(default_row == Some(base));
        if rows <= kept {
            let least = world as u64 + u64::from(default_row.is_some());
            return Err(refuse(format!(
                "its capacity of {} rows leaves rank {rank} no rows for keys over {world} ranks{}; give it at least {least} rows",
                d.capacity,
                if default_row.is_some() { " and the default row" } else { "" }
            )));
        }
        let rows = rows - kept;
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
            base: base + kept,
            default_row,
        });
    }
    Ok(Some(KeyMaps::new(rank, world, features)))
}

/// Starts the learned default rows this rank holds (in every table of their feature) at
/// zeros with fresh optimizer state: until a key without a row trains it, it reads as the
/// zeros default does (with sum pooling), rather than as a random row no key ever moved.
pub fn start_default_rows(
    dynamic: &[DynamicTable],
    rank: usize,
    [tables, first_order]: [Option<&mut EmbeddingEngine>; 2],
) -> Result<(), TableError> {
    let Some(tables) = tables else {
        return Ok(());
    };
    let held: Vec<FreshRows> = dynamic
        .iter()
        .filter_map(|d| {
            let row = d.learned_default_row()?;
            let (base, rows) = tables.held_rows(&d.table, rank)?;
            (base == row && rows > 0).then(|| FreshRows {
                feature: d.feature,
                rows: vec![row],
                keys: vec![0],
            })
        })
        .collect();
    let engines = [Some(tables), first_order];
    reset_feature_rows(&held, dynamic, engines, Some(RowInit::Zeros))
}

/// Sets the rows new keys took this step to their initial values (drawn from each key,
/// so a key starts alike wherever it lands) and fresh optimizer state, in every table of
/// their feature this rank holds (the tables in parallel).
pub fn start_fresh_rows(
    fresh: &[FreshRows],
    dynamic: &[DynamicTable],
    engines: [Option<&mut EmbeddingEngine>; 2],
) -> Result<(), TableError> {
    reset_feature_rows(fresh, dynamic, engines, None)
}

/// Resets the rows `fresh` in every table of their feature this rank holds, to `init`
/// (None: each table's own initialiser, drawn from each row's key).
fn reset_feature_rows(
    fresh: &[FreshRows],
    dynamic: &[DynamicTable],
    engines: [Option<&mut EmbeddingEngine>; 2],
    init: Option<RowInit>,
) -> Result<(), TableError> {
    use rayon::prelude::*;
    for engine in engines.into_iter().flatten() {
        let opt = *engine.optimizer();
        // per table of a feature with fresh rows: its fresh rows and initialiser (looked
        // up before the shards are borrowed to be written)
        let tables = &engine.layout().spec().tables;
        let wanted: Vec<(usize, &FreshRows, RowInit)> = fresh
            .iter()
            .filter(|f| !f.rows.is_empty())
            .filter_map(|f| {
                dynamic
                    .iter()
                    .find(|d| d.feature == f.feature)
                    .map(|d| (f, d))
            })
            .flat_map(|(f, d)| d.tables().map(move |name| (f, name)))
            .filter_map(|(f, name)| {
                let t = tables.iter().position(|s| &s.name == name)?;
                Some((t, f, init.clone().unwrap_or_else(|| tables[t].init.clone())))
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
            let start = shard.rows.start;
            let local: Vec<u64> = f.rows.iter().map(|&r| r - start).collect();
            shard.reset_rows(&local, &f.keys, &init, &opt)
        })?;
    }
    Ok(())
}
