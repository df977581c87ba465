//! One batch's lookups, planned once and used by forward and backward.
//!
//! Every (sample, feature, id, probe) becomes a [`Request`] for one row of one table.
//! Requests are stored sample-major, so the forward pass can fill each sample's output
//! row independently; per table they are also grouped by row (sorted, duplicates merged),
//! so each distinct row is fetched once (and sent once to its owner rank) and its
//! gradient is reduced once, always summing in the same order.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use crate::collection::{CollectionLayout, FeatureLayout, ResolvedProbe};
use crate::hashing::hash_id;
use crate::spec::{Combine, Pooling, RowMap};
use crate::{KeyedJaggedIds, TableError};

/// Marks a request without a partner.
pub const NO_PARTNER: u32 = u32::MAX;

/// One row read for one output slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// Table index in the collection.
    pub table: u32,
    /// Index of the row among the table's distinct rows of this batch.
    pub unique: u32,
    /// Flat index (in the batch x width output) of the first element this request feeds
    /// (32 bits keep a request at 24 bytes: a plan is read three times a step).
    pub dest: u32,
    /// Pooling weight (1, or 1 / ids for mean pooling).
    pub weight: f32,
    /// For `Combine::Mul`: the request of the other factor.
    pub partner: u32,
    /// For `Combine::Mul`: the second factor, which forward skips (the first one writes
    /// the product).
    pub secondary: bool,
}

/// The distinct rows one table serves in a batch and which requests read them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableRequests {
    /// Distinct global rows, ascending.
    pub unique_rows: Vec<u64>,
    /// This table's requests in request (sample-major) order, as indices into the
    /// plan's [`PlanRequests::Listed`] list (empty in a one-id plan, which has none).
    pub in_request_order: Vec<u32>,
    /// For each of `in_request_order`: its index among `unique_rows`, and where in the
    /// output it writes. The backward reads these, 8 bytes a request in order, and not
    /// the requests, which lie a whole cache line apart when several tables interleave.
    pub unique_in_request_order: Vec<u32>,
    pub dests_in_request_order: Vec<u32>,
    /// Every request of this table has weight 1 and no partner (its features sum and
    /// none multiplies), so the backward needs nothing more.
    pub plain_sums: bool,
}

/// How a plan holds its requests.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanRequests {
    /// Every request, sample-major: sample `b`'s are
    /// `requests[sample_starts[b]..sample_starts[b + 1]]`. Pooled, multi-probe and
    /// multiplied features sum their rows in this order.
    Listed {
        requests: Vec<Request>,
        sample_starts: Vec<u32>,
    },
    /// At most one id reaches each output slot, so the tables' lists are the whole plan:
    /// no request list, no `in_request_order`, and every table sums plainly
    /// (`one_id_plan`; [`LookupPlan::all_requests`] rebuilds the list where one is needed).
    OneIdPerSlot,
}

/// All requests of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupPlan {
    pub batch_size: usize,
    /// Output columns per sample.
    pub width: usize,
    pub requests: PlanRequests,
    pub tables: Vec<TableRequests>,
}

impl LookupPlan {
    /// Maps every id of `batch` to its rows; keys of the batch are the layout's features
    /// in order. A batch of at most one id a slot gets a one-id plan.
    pub fn build(layout: &CollectionLayout, batch: &KeyedJaggedIds) -> Result<Self, TableError> {
        if let Some(plan) = crate::one_id_plan::build(layout, batch)? {
            return Ok(plan);
        }
        Self::build_with_requests(layout, batch)
    }

    /// [`LookupPlan::build`], always with the list of requests.
    pub fn build_with_requests(
        layout: &CollectionLayout,
        batch: &KeyedJaggedIds,
    ) -> Result<Self, TableError> {
        Self::build_in_pieces(layout, batch, None)
    }

    /// Every request in request order: the list, or a one-id plan's rebuilt from its
    /// tables' lists.
    pub fn all_requests(&self) -> Cow<'_, [Request]> {
        match &self.requests {
            PlanRequests::Listed { requests, .. } => Cow::Borrowed(requests),
            PlanRequests::OneIdPerSlot => Cow::Owned(crate::one_id_plan::requests_of(self)),
        }
    }

    /// The plan has at most one id an output slot (no request list).
    #[cfg(test)]
    pub(crate) fn is_one_id_per_slot(&self) -> bool {
        matches!(self.requests, PlanRequests::OneIdPerSlot)
    }

    /// [`LookupPlan::build`], its samples cut into `pieces` built in parallel (None: one
    /// per worker, fewer for a small batch). The plan is the same for every cut.
    fn build_in_pieces(
        layout: &CollectionLayout,
        batch: &KeyedJaggedIds,
        pieces: Option<usize>,
    ) -> Result<Self, TableError> {
        let features = layout.features();
        if batch.num_keys() != features.len() {
            return Err(TableError::BadBatch(format!(
                "batch has {} keys, collection has {} features",
                batch.num_keys(),
                features.len()
            )));
        }
        let bsz = batch.batch_size();
        let width = layout.width();
        // per table: how many lookups it serves; their sum is the batch's requests
        let lookups = table_lookups(layout, batch);
        let probes_per_id: usize = lookups.iter().sum();
        if probes_per_id > u32::MAX as usize {
            return Err(TableError::BadBatch(format!(
                "{probes_per_id} lookups exceed one batch's limit"
            )));
        }
        if (bsz as u64) * (width as u64) > u32::MAX as u64 {
            return Err(TableError::BadBatch(format!(
                "{bsz} samples x {width} embedding columns exceed one batch's limit of {} values",
                u32::MAX
            )));
        }
        let pieces = sample_pieces(bsz, probes_per_id, pieces);
        let counted: Vec<PieceCounts> = pieces
            .par_iter()
            .map(|samples| count_piece(layout, batch, samples.clone()))
            .collect();
        let sample_starts = sample_starts_of(&counted, bsz);
        let starts = PieceStarts::of(&counted, lookups.len());
        let (mut requests, per_table) =
            write_requests((layout, batch), &pieces, (&counted, &starts), &lookups)?;
        let tables = group_by_table(layout, per_table, &mut requests, &starts);
        Ok(Self {
            batch_size: bsz,
            width,
            requests: PlanRequests::Listed {
                requests,
                sample_starts,
            },
            tables,
        })
    }

    /// Number of distinct rows per table.
    pub fn unique_counts(&self) -> Vec<usize> {
        self.tables.iter().map(|t| t.unique_rows.len()).collect()
    }
}

/// Per table, the distinct rows (ascending) its requests read; sets each request's index
/// among them. `per_table[t]`: table `t`'s requests in request order and their rows;
/// `starts`: where the batch's pieces start, so they are passed over in parallel.
fn group_by_table(
    layout: &CollectionLayout,
    per_table: Vec<TableLists>,
    requests: &mut [Request],
    starts: &PieceStarts,
) -> Vec<TableRequests> {
    let plain = plain_sum_tables(layout);
    let mut tables: Vec<TableRequests> = per_table
        .into_par_iter()
        .zip(plain)
        .enumerate()
        .map(|(t, ((in_request_order, rows), plain_sums))| {
            let (unique_rows, unique) = distinct_rows(&rows, layout.table_rows(t));
            TableRequests {
                unique_rows,
                in_request_order,
                unique_in_request_order: unique,
                dests_in_request_order: Vec::new(),
                plain_sums,
            }
        })
        .collect();
    let mut dests: Vec<Vec<u32>> = tables
        .iter()
        .map(|t| vec![0; t.in_request_order.len()])
        .collect();
    // one pass over each piece's requests in their order (a pass per table would read
    // every cache line of them once per table)
    let piece_requests = split_at_starts(requests, &starts.requests);
    let piece_dests = per_piece_slices(dests.iter_mut().map(Vec::as_mut_slice), &starts.tables);
    let read = &tables;
    piece_requests
        .into_par_iter()
        .zip(piece_dests)
        .zip(&starts.tables)
        .for_each(|((requests, mut dests), starts)| {
            let mut next = vec![0usize; read.len()];
            for r in requests.iter_mut() {
                let t = r.table as usize;
                r.unique = read[t].unique_in_request_order[starts[t] + next[t]];
                dests[t][next[t]] = r.dest;
                next[t] += 1;
            }
        });
    for (t, d) in tables.iter_mut().zip(dests) {
        t.dests_in_request_order = d;
    }
    tables
}

/// One table's requests (indices into the plan's requests) and the rows they read, in
/// request order.
type TableLists = (Vec<u32>, Vec<u64>);

/// Where each sample's requests start (and the end), from the pieces' counts.
fn sample_starts_of(counted: &[PieceCounts], batch_size: usize) -> Vec<u32> {
    let mut starts = Vec::with_capacity(batch_size + 1);
    starts.push(0u32);
    for c in counted {
        for &n in &c.per_sample {
            starts.push(starts[starts.len() - 1] + n);
        }
    }
    starts
}

/// The plan's requests and each table's (requests, rows) lists, written by the pieces in
/// parallel (`lookups`: each table's total).
fn write_requests(
    (layout, batch): (&CollectionLayout, &KeyedJaggedIds),
    pieces: &[Range<usize>],
    (counted, starts): (&[PieceCounts], &PieceStarts),
    lookups: &[usize],
) -> Result<(Vec<Request>, Vec<TableLists>), TableError> {
    let total: usize = lookups.iter().sum();
    // the pieces' counts must cover every slot that `set_len` below exposes
    let counted_total: usize = counted
        .iter()
        .flat_map(|c| &c.per_sample)
        .map(|&n| n as usize)
        .sum();
    let tables_agree = (0..lookups.len())
        .all(|t| counted.iter().map(|c| c.per_table[t]).sum::<usize>() == lookups[t]);
    if counted_total != total || !tables_agree {
        return Err(TableError::BadBatch(
            "the lookup plan's pieces counted other requests than the batch holds".into(),
        ));
    }
    let mut requests: Vec<Request> = Vec::with_capacity(total);
    let mut per_table: Vec<TableLists> = lookups
        .iter()
        .map(|&c| (Vec::with_capacity(c), Vec::with_capacity(c)))
        .collect();
    let slots = piece_slots(&mut requests, &mut per_table, starts, lookups);
    pieces
        .par_iter()
        .zip(slots)
        .zip(&starts.requests)
        .try_for_each(|((samples, slots), &first)| {
            fill_piece(layout, batch, samples.clone(), first, slots)
        })?;
    // SAFETY: the pieces' slots partition each vector's first `len` elements (their
    // lengths are the pieces' counts, whose sums were checked above to be these
    // lengths), and `fill_piece` returned Ok only after writing every slot it was given.
    unsafe {
        requests.set_len(total);
        for ((reqs, rows), &n) in per_table.iter_mut().zip(lookups) {
            reqs.set_len(n);
            rows.set_len(n);
        }
    }
    Ok((requests, per_table))
}

/// Requests a piece of a plan should hold at least, so that a piece's work outweighs
/// handing it to a worker.
const MIN_PIECE_REQUESTS: usize = 16_384;

/// The batch's samples cut into `pieces` consecutive pieces (None: one per worker, fewer
/// for a small batch): a plan is built piece by piece in parallel. Requests stay in
/// sample order, so the plan does not depend on the cut.
fn sample_pieces(batch_size: usize, requests: usize, pieces: Option<usize>) -> Vec<Range<usize>> {
    let wanted =
        pieces.unwrap_or_else(|| rayon::current_num_threads().min(requests / MIN_PIECE_REQUESTS));
    let n = wanted.min(batch_size).max(1);
    (0..n)
        .map(|i| batch_size * i / n..batch_size * (i + 1) / n)
        .collect()
}

/// How many requests one piece of samples makes: per sample, and per table.
struct PieceCounts {
    per_sample: Vec<u32>,
    per_table: Vec<usize>,
}

fn count_piece(
    layout: &CollectionLayout,
    batch: &KeyedJaggedIds,
    samples: Range<usize>,
) -> PieceCounts {
    let features = layout.features();
    let mut per_table = vec![0usize; layout.num_tables()];
    let per_sample = samples
        .map(|b| {
            let mut n = 0;
            for (k, f) in features.iter().enumerate() {
                let ids = batch.ids(k, b).len();
                for p in &f.probes {
                    per_table[p.table] += ids;
                }
                n += ids * f.probes.len();
            }
            n as u32
        })
        .collect();
    PieceCounts {
        per_sample,
        per_table,
    }
}

/// Where each piece of a batch starts among the plan's requests and in each table's
/// lists, from the pieces' counts.
struct PieceStarts {
    requests: Vec<usize>,
    /// Per piece, per table.
    tables: Vec<Vec<usize>>,
}

impl PieceStarts {
    fn of(counted: &[PieceCounts], tables: usize) -> Self {
        let (mut at, mut at_table) = (0usize, vec![0usize; tables]);
        let (requests, tables) = counted
            .iter()
            .map(|c| {
                let starts = (at, at_table.clone());
                at += c.per_sample.iter().map(|&n| n as usize).sum::<usize>();
                for (a, n) in at_table.iter_mut().zip(&c.per_table) {
                    *a += n;
                }
                starts
            })
            .unzip();
        Self { requests, tables }
    }
}

/// `slice` cut at `starts` (ascending, the first 0): each part runs to the next start, the
/// last to the slice's end.
fn split_at_starts<'a, T>(
    mut slice: &'a mut [T],
    starts: impl IntoIterator<Item = &'a usize>,
) -> Vec<&'a mut [T]> {
    let starts: Vec<usize> = starts.into_iter().copied().collect();
    let ends = starts.iter().skip(1).copied();
    let lens: Vec<usize> = starts
        .iter()
        .zip(ends.chain([slice.len()]))
        .map(|(s, e)| e - s)
        .collect();
    lens.into_iter()
        .map(|n| {
            let (part, rest) = std::mem::take(&mut slice).split_at_mut(n);
            slice = rest;
            part
        })
        .collect()
}

/// Per piece, its part of each of `vectors` (one per table, each exactly that table's
/// lists): piece `i`'s part of table `t` starts at `starts[i][t]`.
fn per_piece_slices<'a, T: 'a>(
    vectors: impl IntoIterator<Item = &'a mut [T]>,
    starts: &'a [Vec<usize>],
) -> Vec<Vec<&'a mut [T]>> {
    let mut per_piece: Vec<Vec<&mut [T]>> = starts.iter().map(|_| Vec::new()).collect();
    for (t, v) in vectors.into_iter().enumerate() {
        let parts = split_at_starts(v, starts.iter().map(|s| &s[t]));
        for (piece, part) in per_piece.iter_mut().zip(parts) {
            piece.push(part);
        }
    }
    per_piece
}

/// One piece's share of a plan being built: its requests, and its part of each table's
/// request and row lists, not yet written.
struct PieceSlots<'a> {
    requests: &'a mut [MaybeUninit<Request>],
    reqs: Vec<&'a mut [MaybeUninit<u32>]>,
    rows: Vec<&'a mut [MaybeUninit<u64>]>,
}

/// Cuts the spare capacity of the plan's vectors, `lookups[t]` slots of table `t`'s
/// lists and their sum of requests, into the pieces' shares.
fn piece_slots<'a>(
    requests: &'a mut Vec<Request>,
    per_table: &'a mut [TableLists],
    starts: &'a PieceStarts,
    lookups: &[usize],
) -> Vec<PieceSlots<'a>> {
    let total = lookups.iter().sum();
    let requests = split_at_starts(
        &mut requests.spare_capacity_mut()[..total],
        &starts.requests,
    );
    let (reqs, rows): (Vec<_>, Vec<_>) = per_table
        .iter_mut()
        .zip(lookups)
        .map(|((r, w), &n)| {
            (
                &mut r.spare_capacity_mut()[..n],
                &mut w.spare_capacity_mut()[..n],
            )
        })
        .unzip();
    let reqs = per_piece_slices(reqs, &starts.tables);
    let rows = per_piece_slices(rows, &starts.tables);
    requests
        .into_iter()
        .zip(reqs)
        .zip(rows)
        .map(|((requests, reqs), rows)| PieceSlots {
            requests,
            reqs,
            rows,
        })
        .collect()
}

/// Writes the requests of one piece of samples (`first`: the index of its first request
/// in the plan) into its slots; every slot, or an error.
fn fill_piece(
    layout: &CollectionLayout,
    batch: &KeyedJaggedIds,
    samples: Range<usize>,
    first: usize,
    slots: PieceSlots,
) -> Result<(), TableError> {
    let PieceSlots {
        requests,
        mut reqs,
        mut rows,
    } = slots;
    let width = layout.width();
    let mut next = 0usize;
    let mut next_in_table = vec![0usize; reqs.len()];
    for b in samples {
        for (k, f) in layout.features().iter().enumerate() {
            let ids = batch.ids(k, b);
            if ids.is_empty() {
                continue;
            }
            let weight = match f.pooling {
                Pooling::Sum => 1.0,
                Pooling::Mean => 1.0 / ids.len() as f32,
            };
            for &id in ids {
                let first_probe = (first + next) as u32;
                for (pi, p) in f.probes.iter().enumerate() {
                    let row = probe_row(layout, f, p, id)?;
                    let (partner, secondary) = match (f.combine, pi) {
                        (Combine::Mul, 0) => (first_probe + 1, false),
                        (Combine::Mul, _) => (first_probe, true),
                        _ => (NO_PARTNER, false),
                    };
                    let j = next_in_table[p.table];
                    reqs[p.table][j].write((first + next) as u32);
                    rows[p.table][j].write(row);
                    next_in_table[p.table] = j + 1;
                    requests[next].write(Request {
                        table: p.table as u32,
                        unique: 0,
                        dest: (b * width + f.offset + p.sub_offset) as u32,
                        weight,
                        partner,
                        secondary,
                    });
                    next += 1;
                }
            }
        }
    }
    let all_written = next == requests.len()
        && next_in_table
            .iter()
            .zip(&reqs)
            .all(|(&n, slots)| n == slots.len());
    if !all_written {
        return Err(TableError::BadBatch(
            "a piece of the lookup plan made other requests than it counted".into(),
        ));
    }
    Ok(())
}

/// Per table: whether every feature that reads it sums its ids and multiplies nothing.
fn plain_sum_tables(layout: &CollectionLayout) -> Vec<bool> {
    let mut plain = vec![true; layout.num_tables()];
    for f in layout.features() {
        if f.pooling != Pooling::Sum || f.combine == Combine::Mul {
            for p in &f.probes {
                plain[p.table] = false;
            }
        }
    }
    plain
}

/// How many lookups each table of `layout` serves for `batch`.
fn table_lookups(layout: &CollectionLayout, batch: &KeyedJaggedIds) -> Vec<usize> {
    let mut counts = vec![0usize; layout.num_tables()];
    for (k, f) in layout.features().iter().enumerate() {
        for p in &f.probes {
            counts[p.table] += batch.key_len(k);
        }
    }
    counts
}

/// The row of its table that probe `p` of feature `f` reads for `id`.
#[inline]
pub(crate) fn probe_row(
    layout: &CollectionLayout,
    f: &FeatureLayout,
    p: &ResolvedProbe,
    id: u64,
) -> Result<u64, TableError> {
    let table_rows = layout.table_rows(p.table);
    Ok(match p.map {
        RowMap::Offset { offset, id_rows } => {
            if id >= id_rows {
                return Err(out_of_range(layout, &f.name, p.table, id, id_rows));
            }
            offset + id
        }
        RowMap::Hash { seed } => hash_id(seed, id) % table_rows,
        RowMap::Quotient { divisor } => {
            let r = id / divisor;
            if r >= table_rows {
                let rows = table_rows * divisor;
                return Err(out_of_range(layout, &f.name, p.table, id, rows));
            }
            r
        }
        RowMap::Remainder { modulus } => id % modulus,
    })
}

/// The distinct values of `rows` (each below `table_rows`), ascending, and the index of
/// each element's value among them.
///
/// When the table is small next to the batch (a sequence model's time and category
/// tables, or a table every step touches much of) a dense index over the table's rows
/// finds them in three linear passes; otherwise a radix sort of the rows does, whose
/// cost follows the batch and not the table. Both give the same answer.
pub(crate) fn distinct_rows(rows: &[u64], table_rows: u64) -> (Vec<u64>, Vec<u32>) {
    if table_rows <= DENSE_ROWS_PER_LOOKUP * rows.len() as u64 {
        return distinct_rows_dense(rows, table_rows as usize);
    }
    distinct_rows_sorted(rows, table_rows)
}

/// [`distinct_rows`] through a radix sort of the rows.
fn distinct_rows_sorted(rows: &[u64], table_rows: u64) -> (Vec<u64>, Vec<u32>) {
    let mut pairs: Vec<(u64, u32)> = rows
        .iter()
        .enumerate()
        .map(|(i, &r)| (r, i as u32))
        .collect();
    radix_sort_by_row(&mut pairs, table_rows);
    let mut unique_rows: Vec<u64> = Vec::new();
    let mut unique = vec![0u32; rows.len()];
    for &(row, i) in &pairs {
        if unique_rows.last() != Some(&row) {
            unique_rows.push(row);
        }
        unique[i as usize] = unique_rows.len() as u32 - 1;
    }
    (unique_rows, unique)
}

/// A table at most this many rows per lookup of the batch is deduplicated densely.
const DENSE_ROWS_PER_LOOKUP: u64 = 4;

/// [`distinct_rows`] through an index of the table's rows: mark the rows used, number
/// them in row order, read each lookup's number.
fn distinct_rows_dense(rows: &[u64], table_rows: usize) -> (Vec<u64>, Vec<u32>) {
    const UNUSED: u32 = u32::MAX;
    let mut index = vec![UNUSED; table_rows];
    for &r in rows {
        index[r as usize] = 0;
    }
    let mut unique_rows = Vec::new();
    for (r, slot) in index.iter_mut().enumerate() {
        if *slot != UNUSED {
            *slot = unique_rows.len() as u32;
            unique_rows.push(r as u64);
        }
    }
    let unique = rows.iter().map(|&r| index[r as usize]).collect();
    (unique_rows, unique)
}

/// Stable LSD radix sort of (row, request) pairs by row, rows below `rows`: a few linear
/// passes of 11 bits instead of a comparison sort (the plan runs every step).
fn radix_sort_by_row(pairs: &mut Vec<(u64, u32)>, rows: u64) {
    const BITS: u32 = 11;
    if pairs.len() <= 64 {
        pairs.sort_unstable();
        return;
    }
    let key_bits = 64 - rows.saturating_sub(1).leading_zeros();
    let mut buf = vec![(0u64, 0u32); pairs.len()];
    let mut counts = vec![0usize; 1 << BITS];
    let mask = (1u64 << BITS) - 1;
    let mut shift = 0;
    while shift < key_bits {
        counts.fill(0);
        for p in pairs.iter() {
            counts[((p.0 >> shift) & mask) as usize] += 1;
        }
        let mut sum = 0;
        for c in counts.iter_mut() {
            let n = *c;
            *c = sum;
            sum += n;
        }
        for p in pairs.iter() {
            let b = ((p.0 >> shift) & mask) as usize;
            buf[counts[b]] = *p;
            counts[b] += 1;
        }
        std::mem::swap(pairs, &mut buf);
        shift += BITS;
    }
}

fn out_of_range(
    layout: &CollectionLayout,
    feature: &str,
    table: usize,
    id: u64,
    rows: u64,
) -> TableError {
    TableError::IdOutOfRange {
        feature: feature.to_string(),
        table: layout.spec().tables[table].name.clone(),
        id,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{CollectionSpec, FeatureSpec, Probe, TableSpec};
    use crate::RowInit;
    use proptest::prelude::*;

    fn hashed_layout(rows: u64) -> CollectionLayout {
        let spec = CollectionSpec {
            tables: vec![TableSpec {
                name: "t".into(),
                rows,
                dim: 2,
                init: RowInit::Zeros,
            }],
            features: (0..3)
                .map(|f| FeatureSpec {
                    name: format!("f{f}"),
                    probes: vec![Probe {
                        table: "t".into(),
                        map: RowMap::Hash { seed: f },
                    }],
                    combine: Combine::Concat,
                    pooling: Pooling::Mean,
                })
                .collect(),
        };
        CollectionLayout::new(spec).unwrap()
    }

    #[test]
    fn out_of_vocabulary_id_is_an_error_naming_the_feature() {
        let l = CollectionLayout::new(CollectionSpec::plain(
            &["c1".into()],
            &[5],
            2,
            RowInit::Zeros,
        ))
        .unwrap();
        let batch = KeyedJaggedIds::from_single_valued(1, 2, &[1, 9]).unwrap();
        let e = LookupPlan::build(&l, &batch).unwrap_err().to_string();
        assert!(e.contains("`c1`") && e.contains("id 9"), "{e}");
    }

    proptest! {
        /// A plan built in pieces in parallel is the plan built in one: every request,
        /// partner, per-table list and distinct row the same.
        #[test]
        fn a_plan_built_in_pieces_is_the_plan_built_whole(
            lens in proptest::collection::vec(0u32..4, 3 * 9),
            raw in proptest::collection::vec(0u64..60, 108),
            pieces in 2usize..7,
        ) {
            // summed, mean-pooled and QR-multiplied features over three tables
            let layout = crate::fused_plan::tests::layout();
            let mut values = Vec::new();
            for (k, ids_below) in [5, 3, 12].into_iter().enumerate() {
                let n: u32 = lens[k * 9..(k + 1) * 9].iter().sum();
                values.extend(raw.iter().cycle().skip(k).take(n as usize).map(|v| v % ids_below));
            }
            let batch = KeyedJaggedIds::from_lengths(3, 9, &lens, values).unwrap();
            let whole = LookupPlan::build_in_pieces(&layout, &batch, Some(1)).unwrap();
            let cut = LookupPlan::build_in_pieces(&layout, &batch, Some(pieces)).unwrap();
            prop_assert_eq!(&cut, &whole);
            prop_assert_eq!(LookupPlan::build(&layout, &batch).unwrap(), whole);
        }

        /// The radix sort orders by row and keeps request order among equal rows.
        #[test]
        fn radix_sort_is_a_stable_sort_by_row(rows in proptest::collection::vec(0u64..5000, 0..400)) {
            let mut pairs: Vec<(u64, u32)> = rows.iter().enumerate().map(|(i, &r)| (r, i as u32)).collect();
            let mut want = pairs.clone();
            want.sort();
            radix_sort_by_row(&mut pairs, 5000);
            prop_assert_eq!(pairs, want);
        }

        /// Both ways of finding the distinct rows agree.
        #[test]
        fn dense_and_sorted_distinct_rows_agree(
            rows in proptest::collection::vec(0u64..3000, 0..500),
            table_rows in 3000u64..5000,
        ) {
            let sorted = distinct_rows_sorted(&rows, table_rows);
            prop_assert_eq!(distinct_rows_dense(&rows, table_rows as usize), sorted.clone());
            let (unique_rows, unique) = sorted;
            prop_assert!(unique_rows.windows(2).all(|w| w[0] < w[1]));
            for (&r, &u) in rows.iter().zip(&unique) {
                prop_assert_eq!(unique_rows[u as usize], r);
            }
        }

        /// Merging duplicates loses nothing: every request appears in exactly one group,
        /// the group's row is the row it asked for, and distinct rows are strictly sorted.
        #[test]
        fn duplicate_merging_keeps_every_request(
            lens in proptest::collection::vec(0u32..4, 3 * 5),
            raw in proptest::collection::vec(0u64..20, 60),
            rows in 1u64..50,
        ) {
            let layout = hashed_layout(rows);
            let total: usize = lens.iter().map(|&l| l as usize).sum();
            let values: Vec<u64> = raw.iter().cycle().take(total).copied().collect();
            let batch = KeyedJaggedIds::from_lengths(3, 5, &lens, values).unwrap();
            let plan = LookupPlan::build_with_requests(&layout, &batch).unwrap();
            let requests = plan.all_requests();
            prop_assert_eq!(requests.len(), total);
            let t = &plan.tables[0];
            prop_assert!(t.unique_rows.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(t.in_request_order.clone(), (0..total as u32).collect::<Vec<_>>());
            // the backward's copies of each request's distinct row and destination
            for (i, &req) in t.in_request_order.iter().enumerate() {
                let r = &requests[req as usize];
                prop_assert_eq!(t.unique_in_request_order[i], r.unique);
                prop_assert_eq!(t.dests_in_request_order[i], r.dest);
            }
            prop_assert!(!t.plain_sums, "mean pooling weighs its ids");
            // every distinct row is read by some request
            let mut read = vec![false; t.unique_rows.len()];
            for r in requests.iter() {
                read[r.unique as usize] = true;
            }
            prop_assert!(read.iter().all(|&x| x));
            // each request's row is the hash of its id
            let mut i = 0;
            for b in 0..5 {
                for k in 0..3 {
                    for &id in batch.ids(k, b) {
                        let r = requests[i];
                        prop_assert_eq!(t.unique_rows[r.unique as usize], hash_id(k as u64, id) % rows);
                        prop_assert_eq!(r.dest as usize, b * 6 + k * 2);
                        prop_assert!((r.weight - 1.0 / batch.ids(k, b).len() as f32).abs() < 1e-7);
                        i += 1;
                    }
                }
            }
        }
    }
}
