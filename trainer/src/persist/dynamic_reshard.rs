//! Dynamic tables loaded under another number of ranks than wrote them: every key goes
//! to its new owner ([`KeyRows::reshard`]: the most recently used first, until the
//! owner's block is full), and its row (weights, and the optimizer state when resuming)
//! moves with it, from the saved pieces of its old owner's block.

use std::path::Path;

use shardrec_tables::{KeyRows, TableShard};

use super::checked_file::listed_f32s;
use super::checkpoint::CheckpointManifest;
use super::key_map_files::{read_key_map, SavedKeyMap};
use crate::bundle::ModelBundle;
use crate::TrainError;

/// Rows this rank takes over: (old global row, new global row).
type Moved = Vec<(u64, u64)>;

/// Reshards the bundle's key maps from `m`'s ranks to the bundle's and moves the rows
/// of the keys this rank now owns into its blocks.
pub fn reshard_dynamic(
    dir: &Path,
    m: &CheckpointManifest,
    bundle: &mut ModelBundle,
    with_state: bool,
) -> Result<(), TrainError> {
    let (rank, world) = (bundle.tables.rank(), bundle.tables.world_size());
    let dynamic = bundle.dynamic.clone();
    let Some(keys) = bundle.keys.as_mut() else {
        return Ok(());
    };
    let mut moved: Vec<Moved> = Vec::new();
    for (k, d) in keys.features_mut().iter_mut().zip(&dynamic) {
        let mut old: Vec<&SavedKeyMap> = m
            .key_maps
            .iter()
            .filter(|s| s.feature == d.feature)
            .collect();
        old.sort_by_key(|s| s.rank);
        let maps = old
            .iter()
            .map(|s| read_key_map(dir, &m.files, s))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut new, moves) = KeyRows::reshard(&maps, world, k.map.capacity());
        moved.push(
            moves
                .iter()
                .filter(|mv| mv.to.0 == rank)
                .map(|mv| {
                    (
                        old[mv.from.0].base + u64::from(mv.from.1),
                        k.base + u64::from(mv.to.1),
                    )
                })
                .collect(),
        );
        k.map = new.swap_remove(rank);
    }
    for (d, rows) in dynamic.iter().zip(&moved) {
        let tables = [
            ("main", Some(&d.table), Some(&mut bundle.tables)),
            (
                "first_order",
                d.first_order_table.as_ref(),
                bundle.first_order.as_mut(),
            ),
        ];
        for (collection, table, engine) in tables {
            let (Some(table), Some(engine)) = (table, engine) else {
                continue;
            };
            let layout = engine.optimizer().state_layout();
            let t = engine
                .layout()
                .spec()
                .tables
                .iter()
                .position(|s| &s.name == table);
            if let (Some(t), Some(shard)) = (t, engine.held_shard_mut(table)) {
                let state = with_state.then_some(layout);
                // a learned default row stays the table's row 0, in whichever block
                let mut rows = rows.clone();
                if let Some(row) = d.learned_default_row().filter(|r| shard.rows.contains(r)) {
                    rows.push((row, row));
                }
                move_rows(dir, m, (collection, t), shard, &rows, state)?;
            }
        }
    }
    Ok(())
}

/// Copies the saved rows `rows` (old global, new global) of table `t` of `collection`
/// into `shard`, with their optimizer state under `state`'s layout when given.
fn move_rows(
    dir: &Path,
    m: &CheckpointManifest,
    (collection, t): (&str, usize),
    shard: &mut TableShard,
    rows: &Moved,
    state: Option<shardrec_tables::StateLayout>,
) -> Result<(), TrainError> {
    let width = shard.width();
    for p in m
        .pieces
        .iter()
        .filter(|p| p.collection == collection && p.table == t)
    {
        let n = (p.rows[1] - p.rows[0]) as usize;
        let inside: Vec<&(u64, u64)> = rows
            .iter()
            .filter(|(g, _)| (p.rows[0]..p.rows[1]).contains(g))
            .collect();
        if inside.is_empty() {
            continue;
        }
        let floats = |rel: &str| listed_f32s(dir, &m.files, rel);
        let weights = floats(&p.weights)?;
        let start = shard.rows.start;
        let local = |to: u64| (to - start) as usize;
        for &&(g, to) in &inside {
            let i = (g - p.rows[0]) as usize;
            shard.set_weights_rows(local(to), &weights[i * width..][..width])?;
        }
        let (Some(layout), Some(rel)) = (state, &p.state) else {
            continue;
        };
        let all = floats(rel)?;
        let plane_width = match layout {
            shardrec_tables::StateLayout::PerRow => 1,
            _ => width,
        };
        for plane in 0..layout.planes() {
            let at = plane * n * plane_width;
            for &&(g, to) in &inside {
                let i = (g - p.rows[0]) as usize;
                let values = &all[at + i * plane_width..][..plane_width];
                shard.set_state_plane_rows(layout, plane, local(to), values)?;
            }
        }
    }
    Ok(())
}
