//! One batch's lookups, planned once and used by forward and backward.
//!
//! Every (sample, feature, id, probe) becomes a [`Request`] for one row of one table.
//! Requests are stored sample-major, so the forward pass can fill each sample's output
//! row independently; per table they are also grouped by row (sorted, duplicates merged),
//! so each distinct row is fetched once (and sent once to its owner rank) and its
//! gradient is reduced once, always summing in the same order.

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
    /// Flat index (in the batch x width output) of the first element this request feeds.
    pub dest: usize,
    /// Pooling weight (1, or 1 / ids for mean pooling).
    pub weight: f32,
    /// For `Combine::Mul`: the request of the other factor.
    pub partner: u32,
    /// For `Combine::Mul`: the second factor, which forward skips (the first one writes
    /// the product).
    pub secondary: bool,
}

/// The distinct rows one table serves in a batch and which requests read each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableRequests {
    /// Distinct global rows, ascending.
    pub unique_rows: Vec<u64>,
    /// Requests of distinct row `g` are `order[group_starts[g]..group_starts[g + 1]]`.
    pub group_starts: Vec<u32>,
    pub order: Vec<u32>,
    /// This table's requests in request (sample-major) order.
    pub in_request_order: Vec<u32>,
}

/// All requests of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupPlan {
    pub batch_size: usize,
    /// Output columns per sample.
    pub width: usize,
    pub requests: Vec<Request>,
    /// Requests of sample `b` are `requests[sample_starts[b]..sample_starts[b + 1]]`.
    pub sample_starts: Vec<u32>,
    pub tables: Vec<TableRequests>,
}

impl LookupPlan {
    /// Maps every id of `batch` to its rows; keys of the batch are the layout's features
    /// in order.
    pub fn build(layout: &CollectionLayout, batch: &KeyedJaggedIds) -> Result<Self, TableError> {
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
        let probes_per_id: usize = (0..features.len())
            .map(|k| batch.key_len(k) * features[k].probes.len())
            .sum();
        if probes_per_id > u32::MAX as usize {
            return Err(TableError::BadBatch(format!(
                "{probes_per_id} lookups exceed one batch's limit"
            )));
        }
        let mut requests = Vec::with_capacity(probes_per_id);
        let mut rows = Vec::with_capacity(probes_per_id);
        let mut sample_starts = Vec::with_capacity(bsz + 1);
        sample_starts.push(0u32);
        for b in 0..bsz {
            for (k, f) in features.iter().enumerate() {
                let ids = batch.ids(k, b);
                if ids.is_empty() {
                    continue;
                }
                let weight = match f.pooling {
                    Pooling::Sum => 1.0,
                    Pooling::Mean => 1.0 / ids.len() as f32,
                };
                for &id in ids {
                    let first = requests.len() as u32;
                    for (pi, p) in f.probes.iter().enumerate() {
                        let row = probe_row(layout, f, p, id)?;
                        let (partner, secondary) = match (f.combine, pi) {
                            (Combine::Mul, 0) => (first + 1, false),
                            (Combine::Mul, _) => (first, true),
                            _ => (NO_PARTNER, false),
                        };
                        rows.push(row);
                        requests.push(Request {
                            table: p.table as u32,
                            unique: 0,
                            dest: b * width + f.offset + p.sub_offset,
                            weight,
                            partner,
                            secondary,
                        });
                    }
                }
            }
            sample_starts.push(requests.len() as u32);
        }

        // Group per table: sort (row, request) pairs by row (stable, so requests of one row
        // stay in request order); equal rows become one distinct row.
        let mut counts = vec![0usize; layout.num_tables()];
        for r in &requests {
            counts[r.table as usize] += 1;
        }
        let mut per_table: Vec<Vec<(u64, u32)>> =
            counts.iter().map(|&c| Vec::with_capacity(c)).collect();
        for (i, (r, &row)) in requests.iter().zip(&rows).enumerate() {
            per_table[r.table as usize].push((row, i as u32));
        }
        let tables: Vec<TableRequests> = per_table
            .into_par_iter()
            .enumerate()
            .map(|(t, mut pairs)| {
                let in_request_order = pairs.iter().map(|p| p.1).collect();
                radix_sort_by_row(&mut pairs, layout.table_rows(t));
                let mut t = TableRequests {
                    unique_rows: Vec::new(),
                    group_starts: Vec::new(),
                    order: Vec::with_capacity(pairs.len()),
                    in_request_order,
                };
                for (k, &(row, req)) in pairs.iter().enumerate() {
                    if t.unique_rows.last() != Some(&row) {
                        t.unique_rows.push(row);
                        t.group_starts.push(k as u32);
                    }
                    t.order.push(req);
                }
                t.group_starts.push(pairs.len() as u32);
                t
            })
            .collect();
        for t in &tables {
            for g in 0..t.unique_rows.len() {
                for &req in &t.order[t.group_starts[g] as usize..t.group_starts[g + 1] as usize] {
                    requests[req as usize].unique = g as u32;
                }
            }
        }
        Ok(Self {
            batch_size: bsz,
            width,
            requests,
            sample_starts,
            tables,
        })
    }

    /// Number of distinct rows per table.
    pub fn unique_counts(&self) -> Vec<usize> {
        self.tables.iter().map(|t| t.unique_rows.len()).collect()
    }
}

/// The row of its table that probe `p` of feature `f` reads for `id`.
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
        /// The radix sort orders by row and keeps request order among equal rows.
        #[test]
        fn radix_sort_is_a_stable_sort_by_row(rows in proptest::collection::vec(0u64..5000, 0..400)) {
            let mut pairs: Vec<(u64, u32)> = rows.iter().enumerate().map(|(i, &r)| (r, i as u32)).collect();
            let mut want = pairs.clone();
            want.sort();
            radix_sort_by_row(&mut pairs, 5000);
            prop_assert_eq!(pairs, want);
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
            let plan = LookupPlan::build(&layout, &batch).unwrap();
            prop_assert_eq!(plan.requests.len(), total);
            let t = &plan.tables[0];
            prop_assert!(t.unique_rows.windows(2).all(|w| w[0] < w[1]));
            let mut seen = vec![0u32; plan.requests.len()];
            for g in 0..t.unique_rows.len() {
                for &r in &t.order[t.group_starts[g] as usize..t.group_starts[g + 1] as usize] {
                    seen[r as usize] += 1;
                    prop_assert_eq!(plan.requests[r as usize].unique as usize, g);
                }
            }
            prop_assert!(seen.iter().all(|&c| c == 1));
            // each request's row is the hash of its id
            let mut i = 0;
            for b in 0..5 {
                for k in 0..3 {
                    for &id in batch.ids(k, b) {
                        let r = plan.requests[i];
                        prop_assert_eq!(t.unique_rows[r.unique as usize], hash_id(k as u64, id) % rows);
                        prop_assert_eq!(r.dest, b * 6 + k * 2);
                        prop_assert!((r.weight - 1.0 / batch.ids(k, b).len() as f32).abs() < 1e-7);
                        i += 1;
                    }
                }
            }
        }
    }
}
