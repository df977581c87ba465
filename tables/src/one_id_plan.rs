//! The lookup plan of a batch that has at most one id per feature and sample, each read
//! through one probe: a sequence model's `batch x (L + 1)` rows of item, category and
//! time ids, or single-valued Criteo fields.
//!
//! The general plan lists every request (24 bytes, sample-major) so that pooled,
//! multi-probe and multiplied features sum their rows in request order. With one id per
//! output slot nothing is summed: each slot takes its row. Each table's (distinct row,
//! destination) pairs in request order are then all the forward and backward read, and
//! they are built table by table in parallel with no request list. A DARE step at L = 200
//! has 617,472 lookups; the general plan wrote their list (15 MB) and read it twice more
//! (docs/benchmarks.md section 22).

use rayon::prelude::*;

use crate::collection::CollectionLayout;
use crate::lookup_plan::{distinct_rows, probe_row, LookupPlan, PlanRequests, Request, NO_PARTNER};
use crate::spec::Combine;
use crate::{KeyedJaggedIds, TableError, TableRequests};

/// `batch`'s plan without a request list, or None when some feature has more than one
/// probe or multiplies, some sample has more than one id of a feature, or the batch is
/// too large for 32-bit destinations (the general plan serves, or reports, those).
pub(crate) fn build(
    layout: &CollectionLayout,
    batch: &KeyedJaggedIds,
) -> Result<Option<LookupPlan>, TableError> {
    let features = layout.features();
    let (bsz, width) = (batch.batch_size(), layout.width());
    let one_probe = features
        .iter()
        .all(|f| f.probes.len() == 1 && f.combine != Combine::Mul);
    // more ids than samples: some sample has several (checked per sample below)
    let few_ids = (0..batch.num_keys()).all(|k| batch.key_len(k) <= bsz);
    let fits = (bsz as u64) * (width as u64) <= u32::MAX as u64;
    if batch.num_keys() != features.len() || !one_probe || !few_ids || !fits {
        return Ok(None);
    }
    let readers = readers_per_table(layout);
    let built: Vec<Result<Option<TableRequests>, TableError>> = readers
        .par_iter()
        .enumerate()
        .map(|(t, keys)| table_requests(layout, batch, t, keys))
        .collect();
    let mut tables = Vec::with_capacity(built.len());
    for table in built {
        match table? {
            Some(t) => tables.push(t),
            None => return Ok(None),
        }
    }
    Ok(Some(LookupPlan {
        batch_size: bsz,
        width,
        requests: PlanRequests::OneIdPerSlot,
        tables,
    }))
}

/// Per table, the features that read it, in feature order.
fn readers_per_table(layout: &CollectionLayout) -> Vec<Vec<usize>> {
    let mut readers = vec![Vec::new(); layout.num_tables()];
    for (k, f) in layout.features().iter().enumerate() {
        readers[f.probes[0].table].push(k);
    }
    readers
}

/// Table `t`'s lists in request order (sample, then feature), read by the features
/// `readers`; None when a sample has several ids of one of them.
fn table_requests(
    layout: &CollectionLayout,
    batch: &KeyedJaggedIds,
    t: usize,
    readers: &[usize],
) -> Result<Option<TableRequests>, TableError> {
    let lookups: usize = readers.iter().map(|&k| batch.key_len(k)).sum();
    let width = layout.width();
    // per reader, once: its key, feature, probe and output column
    let readers: Vec<_> = readers
        .iter()
        .map(|&k| {
            let f = &layout.features()[k];
            (k, f, &f.probes[0], f.offset + f.probes[0].sub_offset)
        })
        .collect();
    let mut rows = Vec::with_capacity(lookups);
    let mut dests = Vec::with_capacity(lookups);
    for b in 0..batch.batch_size() {
        for &(k, f, p, column) in &readers {
            match *batch.ids(k, b) {
                [] => {}
                [id] => {
                    rows.push(probe_row(layout, f, p, id)?);
                    dests.push((b * width + column) as u32);
                }
                _ => return Ok(None),
            }
        }
    }
    let (unique_rows, unique) = distinct_rows(&rows, layout.table_rows(t));
    Ok(Some(TableRequests {
        unique_rows,
        in_request_order: Vec::new(),
        unique_in_request_order: unique,
        dests_in_request_order: dests,
        // one id a slot: a mean pools it with weight 1 too
        plain_sums: true,
    }))
}

/// A one-id plan's requests, rebuilt from its tables' lists in request order (sample,
/// then feature: the features' columns follow their order, so the destination's order).
pub(crate) fn requests_of(plan: &LookupPlan) -> Vec<Request> {
    let mut requests: Vec<Request> = plan
        .tables
        .iter()
        .enumerate()
        .flat_map(|(t, lists)| {
            let pairs = lists.unique_in_request_order.iter();
            pairs
                .zip(&lists.dests_in_request_order)
                .map(move |(&unique, &dest)| Request {
                    table: t as u32,
                    unique,
                    dest,
                    weight: 1.0,
                    partner: NO_PARTNER,
                    secondary: false,
                })
        })
        .collect();
    requests.sort_unstable_by_key(|r| r.dest);
    requests
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{CollectionSpec, FeatureSpec, Pooling, Probe, RowMap, TableSpec};
    use crate::{assemble_output, reduce_row_gradients, RowInit};
    use proptest::prelude::*;

    /// Four single-probe features: two share a plain table (offset ids), one is hashed,
    /// one mean-pools; widths 2 and 3.
    fn layout() -> CollectionLayout {
        layout_of_widths(2, 3)
    }

    /// [`layout`] with the shared table `shared` wide and the hashed one `hashed`.
    fn layout_of_widths(shared: usize, hashed: usize) -> CollectionLayout {
        let table = |name: &str, rows, dim| TableSpec {
            name: name.into(),
            rows,
            dim,
            init: RowInit::Zeros,
        };
        let feature = |name: &str, table: &str, map, pooling| FeatureSpec {
            name: name.into(),
            probes: vec![Probe {
                table: table.into(),
                map,
            }],
            combine: Combine::Concat,
            pooling,
        };
        let offset = |offset, id_rows| RowMap::Offset { offset, id_rows };
        CollectionLayout::new(CollectionSpec {
            tables: vec![table("shared", 20, shared), table("hashed", 7, hashed)],
            features: vec![
                feature("a", "shared", offset(0, 10), Pooling::Sum),
                feature("h", "hashed", RowMap::Hash { seed: 3 }, Pooling::Sum),
                feature("b", "shared", offset(10, 10), Pooling::Sum),
                feature("m", "hashed", RowMap::Hash { seed: 5 }, Pooling::Mean),
            ],
        })
        .unwrap()
    }

    /// Row r of table t holds r + 100 t + the column / 8.
    fn gathered(plan: &LookupPlan, dims: &[usize]) -> Vec<Vec<f32>> {
        plan.tables
            .iter()
            .zip(dims)
            .enumerate()
            .map(|(t, (lists, &d))| {
                let rows = lists.unique_rows.iter();
                rows.flat_map(|&r| {
                    (0..d).map(move |c| (r + 100 * t as u64) as f32 + c as f32 / 8.0)
                })
                .collect()
            })
            .collect()
    }

    /// The assembled bits of both plans for `batch`, which must read row 0 of table 0
    /// (rows from [`gathered`], with that row's first value -0).
    fn assembled_bits(l: &CollectionLayout, batch: &KeyedJaggedIds) -> [Vec<u32>; 2] {
        let fast = LookupPlan::build(l, batch).unwrap();
        let general = LookupPlan::build_with_requests(l, batch).unwrap();
        assert!(fast.is_one_id_per_slot());
        let dims = l.table_dims();
        let mut rows = gathered(&general, &dims);
        assert_eq!(general.tables[0].unique_rows.first(), Some(&0));
        rows[0][0] = -0.0;
        [fast, general].map(|plan| {
            let mut out = vec![7.0; batch.batch_size() * l.width()];
            assemble_output(&plan, &dims, &rows, &mut out).unwrap();
            out.iter().map(|x| x.to_bits()).collect()
        })
    }

    #[test]
    fn a_batch_without_gaps_assembles_the_general_plans_bits() {
        // every slot has its id; `0 + s`, as the general plan adds (-0 becomes +0)
        for (shared, hashed) in [(4, 8), (2, 3)] {
            let l = layout_of_widths(shared, hashed);
            let ids: Vec<u64> = (0..4 * 50).map(|i| (i as u64 * 7) % 10).collect();
            let batch = KeyedJaggedIds::from_single_valued(4, 50, &ids).unwrap();
            let [fast, general] = assembled_bits(&l, &batch);
            assert_eq!(fast, general, "widths {shared}, {hashed}");
            assert!(!fast.contains(&7.0f32.to_bits()));
            assert!(!fast.contains(&(-0.0f32).to_bits()));
        }
    }

    #[test]
    fn a_large_batch_with_gaps_reduces_to_the_general_plans_bits() {
        // 1,000 samples x 24 columns, every seventh slot empty: each row sums its many
        // lookups in request order, as the general plan does
        let (l, n) = (layout_of_widths(4, 8), 1000);
        let kept = |i: &usize| i % 7 != 3;
        let lengths: Vec<u32> = (0..4 * n).map(|i| kept(&i) as u32).collect();
        let values = (0..4 * n)
            .filter(kept)
            .map(|i| (i as u64 * 13) % 10)
            .collect();
        let batch = KeyedJaggedIds::from_lengths(4, n, &lengths, values).unwrap();
        let fast = LookupPlan::build(&l, &batch).unwrap();
        let general = LookupPlan::build_with_requests(&l, &batch).unwrap();
        assert!(fast.is_one_id_per_slot());
        let dims = l.table_dims();
        let rows = gathered(&general, &dims);
        let grad: Vec<f32> = (0..n * l.width())
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 7.0)
            .collect();
        let bits = |plan: &LookupPlan| -> Vec<Vec<u32>> {
            let sums = reduce_row_gradients(plan, &dims, &rows, &grad).unwrap();
            sums.iter()
                .map(|g| g.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(&fast), bits(&general));
    }

    #[test]
    fn several_ids_in_a_slot_or_a_second_probe_take_the_general_plan() {
        let l = layout();
        let several = KeyedJaggedIds::from_lengths(4, 2, &[1, 1, 2, 0, 1, 1, 0, 0], vec![1; 6]);
        let plan = LookupPlan::build(&l, &several.unwrap()).unwrap();
        assert!(!plan.is_one_id_per_slot());
        assert_eq!(plan.all_requests().len(), 6);
        let qr = crate::fused_plan::tests::layout();
        let single = KeyedJaggedIds::from_single_valued(3, 2, &[1, 1, 1, 2, 2, 2]).unwrap();
        assert!(!LookupPlan::build(&qr, &single)
            .unwrap()
            .is_one_id_per_slot());
    }

    #[test]
    fn an_id_out_of_range_is_an_error_naming_the_feature() {
        let batch = KeyedJaggedIds::from_single_valued(4, 2, &[1, 2, 3, 4, 5, 6, 12, 8]);
        let e = LookupPlan::build(&layout(), &batch.unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("`b`") && e.to_string().contains("id 12"),
            "{e}"
        );
    }

    proptest! {
        /// A batch of at most one id a slot: the one-id plan's tables, forward and
        /// backward equal the general plan's to the bit, and its rebuilt requests are the
        /// general plan's list.
        #[test]
        fn the_one_id_plan_is_the_general_plan_without_its_list(
            present in proptest::collection::vec(any::<bool>(), 4 * 9),
            raw in proptest::collection::vec(0u64..10, 36),
            grad in proptest::collection::vec(-2f32..2.0, 9 * 10),
        ) {
            let l = layout();
            let lengths: Vec<u32> = present.iter().map(|&p| p as u32).collect();
            let values = raw.iter().zip(&present).filter(|(_, &p)| p).map(|(&v, _)| v).collect();
            let batch = KeyedJaggedIds::from_lengths(4, 9, &lengths, values).unwrap();
            let fast = LookupPlan::build(&l, &batch).unwrap();
            let general = LookupPlan::build_with_requests(&l, &batch).unwrap();
            prop_assert!(fast.is_one_id_per_slot() && !general.is_one_id_per_slot());
            for (f, g) in fast.tables.iter().zip(&general.tables) {
                prop_assert_eq!(&f.unique_rows, &g.unique_rows);
                prop_assert_eq!(&f.unique_in_request_order, &g.unique_in_request_order);
                prop_assert_eq!(&f.dests_in_request_order, &g.dests_in_request_order);
            }
            prop_assert_eq!(fast.all_requests().into_owned(), general.all_requests().into_owned());
            let dims = l.table_dims();
            let rows = gathered(&general, &dims);
            let (mut out_fast, mut out_general) = (vec![7.0; 90], vec![7.0; 90]);
            assemble_output(&fast, &dims, &rows, &mut out_fast).unwrap();
            assemble_output(&general, &dims, &rows, &mut out_general).unwrap();
            prop_assert_eq!(out_fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                out_general.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            prop_assert_eq!(
                reduce_row_gradients(&fast, &dims, &rows, &grad).unwrap(),
                reduce_row_gradients(&general, &dims, &rows, &grad).unwrap()
            );
        }
    }
}
