//! Copying chosen rows of a mapped split into memory of their own, reading each column
//! once in file order and handing its mapped pages back behind the reading position.
//!
//! Why: a shuffled window's batches take its rows in random order, so reading them where
//! they lie keeps every page of the window mapped until its last row is read (about 160
//! bytes a row for 26 ids and 13 dense values: 160 MiB at the default window of 2^20
//! rows). The loader instead copies the rows of the next few dozen batches at once
//! ([`PreparedSplit::copy_rows`]); each column is then walked from low rows to high and
//! mapped only around the walk, and what stays resident is the copy (the same 160 bytes
//! a row, for the copied rows only). The pages stay in the page cache, so walking the
//! window again for the next batches costs minor faults, not disk reads. TorchRec's and
//! HugeCTR's readers keep a few batches of rows in their own buffers in the same way.

use std::mem::size_of;

use super::prepared::{CatColumn, MappedColumn, Plain, PreparedSplit, MAPPED_REACH};

/// Bytes a walk reads between two hand-backs of the pages behind it.
const RELEASE_STRIDE: usize = 1 << 20;

/// Where each copied row comes from, ascending: (row of the split, row of the copy).
type Order = [(usize, u32)];

impl PreparedSplit {
    /// Rows `rows` of this split as a split of their own: row `i` of the copy is row
    /// `rows[i]` here, every column's values unchanged. Each column is read once in
    /// ascending row order and its pages handed back as the read moves on, so at most a
    /// few MiB of a column are mapped at a time. Errors only when anonymous memory for the
    /// copy cannot be had.
    pub fn copy_rows(&self, rows: &[usize]) -> std::io::Result<PreparedSplit> {
        let mut order: Vec<(usize, u32)> = rows
            .iter()
            .enumerate()
            .map(|(i, &r)| (r, i as u32))
            .collect();
        order.sort_unstable();
        let n = rows.len();
        let dense = self.dense.iter().map(|d| copy_fixed::<f32>(d, &order, n));
        let cats = self.cats.iter().map(|c| copy_cat(c, &order, n));
        Ok(PreparedSplit {
            name: self.name,
            rows: n,
            label: copy_fixed::<f32>(&self.label, &order, n)?,
            dense: dense.collect::<Result<_, _>>()?,
            cats: cats.collect::<Result<_, _>>()?,
        })
    }
}

/// Hands a column's mapped pages back behind an ascending read position.
struct ReleaseBehind<'a> {
    column: &'a MappedColumn,
    /// Everything below this byte is handed back already.
    done: usize,
}

impl<'a> ReleaseBehind<'a> {
    /// A walk that starts reading at byte `first`: pages a read there may have mapped
    /// reach [`MAPPED_REACH`] below it.
    fn new(column: &'a MappedColumn, first: usize) -> Self {
        Self {
            column,
            done: first.saturating_sub(MAPPED_REACH),
        }
    }

    /// The walk reads at byte `at` now; nothing below it is read again.
    #[inline]
    fn reading(&mut self, at: usize) {
        if at >= self.done + RELEASE_STRIDE {
            self.column.release_exact(self.done..at);
            self.done = at;
        }
    }

    /// The walk ended at byte `end`: hands back what its reads may have mapped.
    fn finish(self, end: usize) {
        self.column
            .release_exact(self.done..end.saturating_add(MAPPED_REACH));
    }
}

/// One value a row of `src` (a column of `T`), copied to the rows of the copy.
fn copy_fixed<T: Plain>(
    src: &MappedColumn,
    order: &Order,
    n: usize,
) -> std::io::Result<MappedColumn> {
    let values = src.slice::<T>();
    let width = size_of::<T>();
    MappedColumn::anonymous::<T>(n, |out| {
        let mut behind = ReleaseBehind::new(src, order.first().map_or(0, |o| o.0) * width);
        for &(r, i) in order {
            out[i as usize] = values[r];
            behind.reading(r * width);
        }
        behind.finish(order.last().map_or(0, |o| (o.0 + 1) * width));
    })
}

/// A categorical column's rows copied: one value a row, or the rows' offsets and then
/// their runs of values.
fn copy_cat(c: &CatColumn, order: &Order, n: usize) -> std::io::Result<CatColumn> {
    let (values, offsets) = match &c.offsets {
        None if c.keyed => (copy_fixed::<u64>(&c.values, order, n)?, None),
        None => (copy_fixed::<u32>(&c.values, order, n)?, None),
        Some(src_offsets) => {
            let (offsets, starts) = copy_offsets(src_offsets, order, n)?;
            let runs = Runs {
                order,
                starts: &starts,
                offsets: offsets.slice::<u64>(),
            };
            let values = if c.keyed {
                runs.copy::<u64>(&c.values)?
            } else {
                runs.copy::<u32>(&c.values)?
            };
            (values, Some(offsets))
        }
    };
    Ok(CatColumn {
        name: c.name.clone(),
        values,
        offsets,
        keyed: c.keyed,
    })
}

/// The copy's n + 1 offsets, and per entry of `order` where its run of values starts in
/// the source.
fn copy_offsets(
    src: &MappedColumn,
    order: &Order,
    n: usize,
) -> std::io::Result<(MappedColumn, Vec<u64>)> {
    let o = src.slice::<u64>();
    let mut lengths = vec![0u64; n];
    let mut starts = Vec::with_capacity(order.len());
    let mut behind = ReleaseBehind::new(src, order.first().map_or(0, |e| e.0) * 8);
    for &(r, i) in order {
        starts.push(o[r]);
        lengths[i as usize] = o[r + 1] - o[r];
        behind.reading(r * 8);
    }
    behind.finish(order.last().map_or(0, |e| (e.0 + 2) * 8));
    let offsets = MappedColumn::anonymous::<u64>(n + 1, |out| {
        for (i, len) in lengths.iter().enumerate() {
            out[i + 1] = out[i] + len;
        }
    })?;
    Ok((offsets, starts))
}

/// The runs of values of the rows of `order`: each from its start in the source to its
/// place in the copy (`offsets`).
struct Runs<'a> {
    order: &'a Order,
    starts: &'a [u64],
    offsets: &'a [u64],
}

impl Runs<'_> {
    fn copy<T: Plain>(&self, src: &MappedColumn) -> std::io::Result<MappedColumn> {
        let values = src.slice::<T>();
        let width = size_of::<T>();
        let total = self.offsets.last().copied().unwrap_or(0) as usize;
        let first = self.starts.first().copied().unwrap_or(0) as usize;
        MappedColumn::anonymous::<T>(total, |out| {
            let mut behind = ReleaseBehind::new(src, first * width);
            let mut end = first;
            for (&(_, i), &start) in self.order.iter().zip(self.starts) {
                let (a, b) = (self.offsets[i as usize], self.offsets[i as usize + 1]);
                let (a, b, start) = (a as usize, b as usize, start as usize);
                out[a..b].copy_from_slice(&values[start..start + (b - a)]);
                behind.reading(start * width);
                end = start + (b - a);
            }
            behind.finish(end * width);
        })
    }
}
