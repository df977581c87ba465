//! Resharding: a checkpoint written under one plan (N ranks, each holding rectangles of
//! rows x columns of a table) is read back under another plan (M ranks, other
//! rectangles). Each new shard is filled from the overlaps of the old pieces with its
//! own rectangle; pieces are row-major `rows x cols` floats, as [`crate::TableShard`]
//! keeps them, whether they sit in memory or in a memory-mapped file.

use crate::sharding::ShardExtent;
use crate::TableError;

/// A saved piece of a table: its rectangle and its values (`rows x cols`, row-major, a
/// given number of floats per column: 1 for weights, the optimizer's state width per
/// column for element-wise state; per-row state is a rectangle of one column).
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    pub extent: &'a ShardExtent,
    pub values: &'a [f32],
}

/// Fills `out` (the `target` rectangle, row-major, `width_of(target)` floats per row)
/// from `pieces`, where a rectangle of `c` columns holds `width_of(c)` floats per row.
/// Every element of the target must be covered by exactly one piece (replicated tables
/// give one replica), so a missing or overlapping piece is an error naming the table.
pub fn fill_from_pieces(
    table: &str,
    target: &ShardExtent,
    pieces: &[Piece<'_>],
    floats_per_col: usize,
    out: &mut [f32],
) -> Result<(), TableError> {
    let tw = target.cols.len() * floats_per_col;
    let rows = (target.rows.end - target.rows.start) as usize;
    if out.len() != rows * tw {
        return Err(TableError::SizeMismatch {
            what: format!("table `{table}`: resharded rows"),
            expected: rows * tw,
            got: out.len(),
        });
    }
    let mut covered = vec![0u32; rows * target.cols.len()];
    for p in pieces {
        let e = p.extent;
        let pw = e.cols.len() * floats_per_col;
        let prow = (e.rows.end - e.rows.start) as usize;
        if p.values.len() != prow * pw {
            return Err(TableError::SizeMismatch {
                what: format!(
                    "table `{table}`: saved piece of rank {} (rows {:?}, columns {:?})",
                    e.rank, e.rows, e.cols
                ),
                expected: prow * pw,
                got: p.values.len(),
            });
        }
        let r0 = e.rows.start.max(target.rows.start);
        let r1 = e.rows.end.min(target.rows.end);
        let c0 = e.cols.start.max(target.cols.start);
        let c1 = e.cols.end.min(target.cols.end);
        if r0 >= r1 || c0 >= c1 {
            continue;
        }
        let n = (c1 - c0) * floats_per_col;
        for r in r0..r1 {
            let src = (r - e.rows.start) as usize * pw + (c0 - e.cols.start) * floats_per_col;
            let dst_row = (r - target.rows.start) as usize;
            let dst = dst_row * tw + (c0 - target.cols.start) * floats_per_col;
            out[dst..dst + n].copy_from_slice(&p.values[src..src + n]);
            for c in c0..c1 {
                covered[dst_row * target.cols.len() + (c - target.cols.start)] += 1;
            }
        }
    }
    if let Some(i) = covered.iter().position(|&k| k != 1) {
        let row = target.rows.start + (i / target.cols.len()) as u64;
        let col = target.cols.start + i % target.cols.len();
        return Err(TableError::InvalidTable {
            table: table.into(),
            reason: format!(
                "the saved pieces cover row {row}, column {col} {} times (exactly once needed)",
                covered[i]
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharding::{test_placement as placement, ShardingKind};
    use proptest::prelude::*;

    fn kind(i: u8) -> ShardingKind {
        [
            ShardingKind::RowWise,
            ShardingKind::ColumnWise,
            ShardingKind::TableWise,
        ][i as usize % 3]
    }

    proptest! {
        /// A table cut into pieces under one plan and put together under another is the
        /// table again, for every pair of row-, column- and table-wise plans.
        #[test]
        fn any_plan_reads_back_under_any_other(
            rows in 1u64..40, dim in 1usize..9, per_col in 1usize..3,
            a in 0u8..3, n in 1usize..5, b in 0u8..3, m in 1usize..5,
        ) {
            let (n, m) = (n.min(dim), m.min(dim));
            let value = |r: u64, c: usize, k: usize| (r * 1000 + c as u64 * 10 + k as u64) as f32;
            let old = placement(kind(a), if kind(a) == ShardingKind::TableWise { 1 } else { n });
            let saved: Vec<(ShardExtent, Vec<f32>)> = old
                .extents(rows, dim)
                .into_iter()
                .map(|e| {
                    let v = e.rows.clone()
                        .flat_map(|r| e.cols.clone().flat_map(move |c| (0..per_col).map(move |k| value(r, c, k))))
                        .collect();
                    (e, v)
                })
                .collect();
            let pieces: Vec<Piece> = saved.iter().map(|(e, v)| Piece { extent: e, values: v }).collect();
            let new = placement(kind(b), if kind(b) == ShardingKind::TableWise { 1 } else { m });
            for t in new.extents(rows, dim) {
                let mut out = vec![0.0; (t.rows.end - t.rows.start) as usize * t.cols.len() * per_col];
                fill_from_pieces("t", &t, &pieces, per_col, &mut out).unwrap();
                let want: Vec<f32> = t.rows.clone()
                    .flat_map(|r| t.cols.clone().flat_map(move |c| (0..per_col).map(move |k| value(r, c, k))))
                    .collect();
                prop_assert_eq!(out, want);
            }
        }
    }

    #[test]
    fn a_missing_or_truncated_piece_is_named() {
        let whole = ShardExtent {
            rank: 0,
            rows: 0..4,
            cols: 0..2,
        };
        let half = ShardExtent {
            rank: 1,
            rows: 0..2,
            cols: 0..2,
        };
        let v = vec![1.0; 4];
        let mut out = vec![0.0; 8];
        let e = fill_from_pieces(
            "emb",
            &whole,
            &[Piece {
                extent: &half,
                values: &v,
            }],
            1,
            &mut out,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`emb`") && e.contains("row 2") && e.contains("0 times"),
            "{e}"
        );
        let short = vec![1.0; 3];
        let e = fill_from_pieces(
            "emb",
            &whole,
            &[Piece {
                extent: &half,
                values: &short,
            }],
            1,
            &mut out,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rank 1") && e.contains("expected 4"), "{e}");
    }
}
