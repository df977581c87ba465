//! The host half of fused tables: where each table's rows sit in the one tensor of its
//! width (per-table row offsets: NVIDIA's JointEmbedding, FBGEMM's table-batched
//! embeddings) and, per step, the index arrays with which a device looks a batch up and
//! reduces its gradient in a handful of batched ops. It is planned on the host from the
//! batch's [`LookupPlan`], so it can run a step ahead while the device trains; this
//! module needs no libtorch.
//!
//! Every table of one width belongs to a *group*. A group's part of a sample's output is
//! `slots` vectors of that width at fixed output columns (one per feature and probe; the
//! probes a feature sums share one). Per group a lookup is:
//! - `rows = weights[unique]`: the batch's distinct fused rows, ascending;
//! - `slot[b, s] = sum of weight * rows[term]` over the terms of slot `(b, s)`: one
//!   `embedding_bag` with the terms ordered by slot ([`GroupStep::forward`]).
//!
//! The gradient of the distinct rows is one more `embedding_bag`, over the slots'
//! gradient, with the terms ordered by distinct row and, within a row, slot-major (the
//! order of [`DeviceArrays`]; [`GroupStep::backward`]). That is a sorted reduction: the
//! same order on every device and every run, with no atomics. A group with `mul` features (quotient-remainder's
//! product) first forms each term's product of its two rows ([`MulTerms`]), then reduces
//! both factors' gradients the same way.

use crate::collection::{CollectionLayout, ResolvedProbe};
use crate::lookup_plan::{probe_row, LookupPlan, NO_PARTNER};
use crate::spec::{Combine, Pooling};
use crate::{KeyedJaggedIds, TableError};

/// The tables of one width, fused into one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedGroup {
    pub dim: usize,
    /// The group's tables (indices in the collection), in order.
    pub tables: Vec<usize>,
    /// First fused row of each of `tables`.
    pub first_rows: Vec<u64>,
    /// Rows of all its tables together.
    pub rows: u64,
    /// Output columns where the group's slots start, ascending.
    pub slot_columns: Vec<usize>,
    /// Whether a feature multiplies two of its rows.
    pub has_mul: bool,
}

/// Where every table of a collection sits among the fused groups.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedLayout {
    pub groups: Vec<FusedGroup>,
    /// Per table: its group and first fused row there.
    pub placement: Vec<(usize, u64)>,
    width: usize,
    /// Per group: output column -> slot (`u32::MAX` where no slot of the group starts).
    column_slot: Vec<Vec<u32>>,
}

/// Index arrays of a weighted bag sum: bag `i` is the sum over `j` in
/// `offsets[i]..offsets[i + 1]` of `weight[j] * source[index[j]]` (no weight: 1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bags {
    pub index: Vec<i64>,
    pub weight: Vec<f32>,
    /// One more than the bags (libtorch's `include_last_offset`).
    pub offsets: Vec<i64>,
}

/// The terms of a group with `mul` features, in request order: each term's value is
/// `rows[row] * rows[factor]`, where a factor of `unique.len()` is a row of ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MulTerms {
    pub row: Vec<i64>,
    pub factor: Vec<i64>,
    /// Each term's slot (`b * slots + s`) and pooling weight.
    pub slot: Vec<i64>,
    pub weight: Vec<f32>,
    /// The terms whose factor is a row: its gradient is a second contribution.
    pub with_factor: Vec<i64>,
}

/// One group's index arrays for one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupStep {
    /// The step's distinct fused rows, ascending.
    pub unique: Vec<i64>,
    /// `batch x slots` bags over `rows` (over the terms' values with `mul`).
    pub forward: Bags,
    /// One bag per distinct row: over the slots' gradient (`batch x slots` rows of
    /// `dim`), or with `mul` over the contributions (see [`MulTerms`]), unweighted.
    pub backward: Bags,
    pub mul: Option<MulTerms>,
}

/// One group's arrays of a step deduplicated on the device: the terms' fused rows in bag
/// order and the bags' offsets, bags slot-major (bag `s * batch + b` is slot `s` of
/// sample `b`), and the terms' pooling weights (empty: all 1). The device sums each bag
/// straight from the group's rows, and finds the distinct rows itself (a sort).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceArrays {
    pub rows: Vec<i64>,
    pub offsets: Vec<i64>,
    pub weight: Vec<f32>,
}

/// One term: a request that writes its slot.
struct Term {
    unique: u32,
    slot: u32,
    weight: f32,
    request: u32,
    /// With `mul`: the other factor's distinct row and request.
    factor: Option<(u32, u32)>,
}

impl FusedLayout {
    /// Groups the tables of `layout` by width, in table order.
    pub fn new(layout: &CollectionLayout) -> Self {
        let dims = layout.table_dims();
        let mut groups: Vec<FusedGroup> = Vec::new();
        let mut placement = Vec::with_capacity(dims.len());
        for (t, &dim) in dims.iter().enumerate() {
            let g = match groups.iter().position(|g| g.dim == dim) {
                Some(g) => g,
                None => {
                    groups.push(FusedGroup {
                        dim,
                        tables: vec![],
                        first_rows: vec![],
                        rows: 0,
                        slot_columns: vec![],
                        has_mul: false,
                    });
                    groups.len() - 1
                }
            };
            let group = &mut groups[g];
            placement.push((g, group.rows));
            group.tables.push(t);
            group.first_rows.push(group.rows);
            group.rows += layout.table_rows(t);
        }
        let width = layout.width();
        let mut column_slot = vec![vec![u32::MAX; width]; groups.len()];
        for f in layout.features() {
            for p in &f.probes {
                let g = placement[p.table].0;
                column_slot[g][f.offset + p.sub_offset] = 0;
                groups[g].has_mul |= f.combine == Combine::Mul;
            }
        }
        for (group, slots) in groups.iter_mut().zip(&mut column_slot) {
            let mut n = 0;
            for (c, s) in slots.iter_mut().enumerate() {
                if *s == 0 {
                    *s = n;
                    n += 1;
                    group.slot_columns.push(c);
                }
            }
        }
        Self {
            groups,
            placement,
            width,
            column_slot,
        }
    }

    /// Output columns per sample.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Group `g`'s output columns (each slot's `dim` columns), in the order the group
    /// writes them.
    pub fn group_columns(&self, g: usize) -> Vec<i64> {
        let group = &self.groups[g];
        group
            .slot_columns
            .iter()
            .flat_map(|&c| (c..c + group.dim).map(|c| c as i64))
            .collect()
    }

    /// Where each output column is in the groups' outputs side by side (group 0's
    /// columns, then group 1's ...); `None` when that is already the output's order.
    pub fn output_gather(&self) -> Option<Vec<i64>> {
        let mut position = vec![0i64; self.width];
        let mut next = 0i64;
        for g in 0..self.groups.len() {
            for c in self.group_columns(g) {
                position[c as usize] = next;
                next += 1;
            }
        }
        let identity = position.iter().enumerate().all(|(i, &p)| p == i as i64);
        (!identity).then_some(position)
    }

    /// Whether a step can be deduplicated on the device: no group multiplies rows.
    pub fn plans_on_device(&self) -> bool {
        !self.groups.iter().any(|g| g.has_mul)
    }

    /// Every group's [`DeviceArrays`] for `batch` (the layout's features in order), with
    /// no sort and no deduplication on the host: a linear pass over the ids, a feature
    /// and probe at a time in parallel. Groups with `mul` cannot be planned so.
    pub fn device_arrays(
        &self,
        layout: &CollectionLayout,
        batch: &KeyedJaggedIds,
    ) -> Result<Vec<DeviceArrays>, TableError> {
        if batch.num_keys() != layout.features().len() {
            return Err(TableError::BadBatch(format!(
                "batch has {} keys, collection has {} features",
                batch.num_keys(),
                layout.features().len()
            )));
        }
        (0..self.groups.len())
            .map(|g| self.group_device_arrays(g, layout, batch))
            .collect()
    }

    fn group_device_arrays(
        &self,
        g: usize,
        layout: &CollectionLayout,
        batch: &KeyedJaggedIds,
    ) -> Result<DeviceArrays, TableError> {
        use rayon::prelude::*;
        let bsz = batch.batch_size();
        // (feature, its probes here, slot): a concat feature's probes fill slots of their
        // own, a summed feature's fill one; in slot order
        let mut emissions: Vec<(usize, Vec<&ResolvedProbe>, usize)> = Vec::new();
        for (k, f) in layout.features().iter().enumerate() {
            let here: Vec<&ResolvedProbe> = f
                .probes
                .iter()
                .filter(|p| self.placement[p.table].0 == g)
                .collect();
            let slot = |p: &ResolvedProbe| self.column_slot[g][f.offset + p.sub_offset] as usize;
            match f.combine {
                Combine::Concat => {
                    emissions.extend(here.into_iter().map(|p| (k, vec![p], slot(p))))
                }
                _ if !here.is_empty() => emissions.push((k, here.clone(), slot(here[0]))),
                _ => {}
            }
        }
        let mean = emissions
            .iter()
            .any(|(k, _, _)| layout.features()[*k].pooling == Pooling::Mean);
        let slots = self.groups[g].slot_columns.len();
        let mut offsets = vec![0i64; slots * bsz + 1];
        for (k, probes, s) in &emissions {
            for b in 0..bsz {
                offsets[s * bsz + b + 1] = (batch.ids(*k, b).len() * probes.len()) as i64;
            }
        }
        for i in 0..slots * bsz {
            offsets[i + 1] += offsets[i];
        }
        let parts = emissions
            .par_iter()
            .map(|(k, probes, _)| {
                let f = &layout.features()[*k];
                let mut rows = Vec::new();
                let mut weight = Vec::new();
                for b in 0..bsz {
                    let ids = batch.ids(*k, b);
                    let w = match f.pooling {
                        Pooling::Mean => 1.0 / ids.len() as f32,
                        Pooling::Sum => 1.0,
                    };
                    for &id in ids {
                        for p in probes {
                            let first = self.placement[p.table].1;
                            rows.push((first + probe_row(layout, f, p, id)?) as i64);
                            if mean {
                                weight.push(w);
                            }
                        }
                    }
                }
                Ok((rows, weight))
            })
            .collect::<Result<Vec<_>, TableError>>()?;
        let (rows, weight): (Vec<Vec<i64>>, Vec<Vec<f32>>) = parts.into_iter().unzip();
        Ok(DeviceArrays {
            rows: rows.concat(),
            offsets,
            weight: weight.concat(),
        })
    }

    /// Every group's index arrays for the step planned as `plan`.
    pub fn step(&self, plan: &LookupPlan) -> Vec<GroupStep> {
        let requests = plan.all_requests();
        (0..self.groups.len())
            .map(|g| self.group_step(g, plan, &requests))
            .collect()
    }

    /// `requests`: the plan's, in request order.
    fn group_step(&self, g: usize, plan: &LookupPlan, requests: &[crate::Request]) -> GroupStep {
        let group = &self.groups[g];
        let mut unique_base = vec![u32::MAX; self.placement.len()];
        let mut unique = Vec::new();
        for (&t, &first) in group.tables.iter().zip(&group.first_rows) {
            unique_base[t] = unique.len() as u32;
            unique.extend(
                plan.tables[t]
                    .unique_rows
                    .iter()
                    .map(|&r| (first + r) as i64),
            );
        }
        let terms = self.terms(g, requests, &unique_base);
        let slots = group.slot_columns.len() * plan.batch_size;
        let by_slot = counting_order(terms.iter().map(|t| t.slot as usize), slots);
        let forward = Bags {
            index: by_slot
                .order
                .iter()
                .map(|&j| {
                    if group.has_mul {
                        j as i64
                    } else {
                        terms[j as usize].unique as i64
                    }
                })
                .collect(),
            weight: by_slot
                .order
                .iter()
                .map(|&j| terms[j as usize].weight)
                .collect(),
            offsets: by_slot.offsets,
        };
        if group.has_mul {
            let (backward, mul) = mul_backward(&terms, unique.len());
            return GroupStep {
                unique,
                forward,
                backward,
                mul: Some(mul),
            };
        }
        // a row's terms in slot-major order (slot, then sample, then request), the order
        // the device-planned path sums them in: both give the same rows to the bit
        let per_sample = group.slot_columns.len().max(1);
        let slot_major = |t: &Term| {
            let (b, s) = (t.slot as usize / per_sample, t.slot as usize % per_sample);
            s * plan.batch_size + b
        };
        let by_position = counting_order(terms.iter().map(slot_major), slots);
        let in_position = |k: &u32| &terms[by_position.order[*k as usize] as usize];
        let by_row = counting_order(
            (0..terms.len() as u32).map(|k| in_position(&k).unique as usize),
            unique.len(),
        );
        let backward = Bags {
            index: by_row
                .order
                .iter()
                .map(|k| in_position(k).slot as i64)
                .collect(),
            weight: by_row.order.iter().map(|k| in_position(k).weight).collect(),
            offsets: by_row.offsets,
        };
        GroupStep {
            unique,
            forward,
            backward,
            mul: None,
        }
    }

    /// Group `g`'s terms in request order (the second factors of `mul` write nothing).
    fn terms(&self, g: usize, requests: &[crate::Request], unique_base: &[u32]) -> Vec<Term> {
        let slots = self.groups[g].slot_columns.len();
        let column_slot = &self.column_slot[g];
        let width = self.width.max(1);
        let distinct = |r: &crate::Request| unique_base[r.table as usize] + r.unique;
        requests
            .iter()
            .enumerate()
            .filter(|(_, r)| self.placement[r.table as usize].0 == g && !r.secondary)
            .map(|(i, r)| {
                let (b, column) = (r.dest as usize / width, r.dest as usize % width);
                Term {
                    unique: distinct(r),
                    slot: (b * slots) as u32 + column_slot[column],
                    weight: r.weight,
                    request: i as u32,
                    factor: (r.partner != NO_PARTNER).then(|| {
                        let p = &requests[r.partner as usize];
                        (distinct(p), r.partner)
                    }),
                }
            })
            .collect()
    }
}

/// With `mul`: the terms' arrays, and the bags that reduce the contributions (first
/// every term's gradient times its factor, then for each term with a factor row that
/// row's gradient times the term's row) per distinct row, in request order.
fn mul_backward(terms: &[Term], unique: usize) -> (Bags, MulTerms) {
    let ones = unique as i64;
    let mut mul = MulTerms::default();
    let mut contributions: Vec<(u32, u32, i64)> = Vec::with_capacity(terms.len() * 2);
    for (j, t) in terms.iter().enumerate() {
        mul.row.push(t.unique as i64);
        mul.slot.push(t.slot as i64);
        mul.weight.push(t.weight);
        mul.factor.push(t.factor.map_or(ones, |(u, _)| u as i64));
        contributions.push((t.unique, t.request, j as i64));
    }
    for (j, t) in terms.iter().enumerate() {
        if let Some((u, request)) = t.factor {
            let c = (terms.len() + mul.with_factor.len()) as i64;
            mul.with_factor.push(j as i64);
            contributions.push((u, request, c));
        }
    }
    contributions.sort_unstable();
    let by_row = counting_order(contributions.iter().map(|c| c.0 as usize), unique);
    let backward = Bags {
        index: by_row
            .order
            .iter()
            .map(|&k| contributions[k as usize].2)
            .collect(),
        weight: vec![],
        offsets: by_row.offsets,
    };
    (backward, mul)
}

/// A stable counting sort of items by key (keys below `keys`).
struct CountingOrder {
    /// Item indices, by key, in their order within a key.
    order: Vec<u32>,
    /// Items of key `k` are `order[offsets[k]..offsets[k + 1]]`.
    offsets: Vec<i64>,
}

fn counting_order(keys: impl Iterator<Item = usize> + Clone, n: usize) -> CountingOrder {
    let mut offsets = vec![0i64; n + 1];
    let mut items = 0;
    for k in keys.clone() {
        offsets[k + 1] += 1;
        items += 1;
    }
    for k in 0..n {
        offsets[k + 1] += offsets[k];
    }
    let mut next: Vec<i64> = offsets[..n].to_vec();
    let mut order = vec![0u32; items];
    for (i, k) in keys.enumerate() {
        order[next[k] as usize] = i as u32;
        next[k] += 1;
    }
    CountingOrder { order, offsets }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::{CollectionSpec, FeatureSpec, Probe, RowMap, TableSpec};
    use crate::RowInit;

    /// A table of `rows` zero rows `dim` wide.
    fn table(name: &str, rows: u64, dim: usize) -> TableSpec {
        TableSpec {
            name: name.into(),
            rows,
            dim,
            init: RowInit::Zeros,
        }
    }

    /// Two width-4 tables and a width-2 one; feature `q` multiplies two width-4 rows,
    /// feature `m` is mean-pooled. Ids below 5 (`fa`), 3 (`m`) and 12 (`q`).
    pub(crate) fn layout() -> CollectionLayout {
        let probe = |t: &str, map| Probe {
            table: t.into(),
            map,
        };
        let feature = |name: &str, probes, combine, pooling| FeatureSpec {
            name: name.into(),
            probes,
            combine,
            pooling,
        };
        let plain = |rows| RowMap::Offset {
            offset: 0,
            id_rows: rows,
        };
        let spec = CollectionSpec {
            tables: vec![table("a", 5, 4), table("n", 3, 2), table("b", 6, 4)],
            features: vec![
                feature(
                    "fa",
                    vec![probe("a", plain(5))],
                    Combine::Concat,
                    Pooling::Sum,
                ),
                feature(
                    "m",
                    vec![probe("n", plain(3))],
                    Combine::Concat,
                    Pooling::Mean,
                ),
                feature(
                    "q",
                    vec![
                        probe("b", RowMap::Quotient { divisor: 2 }),
                        probe("a", RowMap::Remainder { modulus: 2 }),
                    ],
                    Combine::Mul,
                    Pooling::Sum,
                ),
            ],
        };
        CollectionLayout::new(spec).unwrap()
    }

    #[test]
    fn tables_of_a_width_share_a_group_with_row_offsets() {
        let f = FusedLayout::new(&layout());
        assert_eq!(f.groups.len(), 2);
        assert_eq!(f.groups[0].tables, vec![0, 2]);
        assert_eq!(f.groups[0].first_rows, vec![0, 5]);
        assert_eq!(f.groups[0].rows, 11);
        assert_eq!(f.placement, vec![(0, 0), (1, 0), (0, 5)]);
        // output: fa 0..4, m 4..6, q 6..10
        assert_eq!(f.groups[0].slot_columns, vec![0, 6]);
        assert_eq!(f.groups[1].slot_columns, vec![4]);
        assert!(f.groups[0].has_mul && !f.groups[1].has_mul);
        assert_eq!(f.group_columns(1), vec![4, 5]);
        // side by side: group 0's 8 columns (0..4, 6..10), then group 1's (4, 5)
        assert_eq!(
            f.output_gather().unwrap(),
            vec![0, 1, 2, 3, 8, 9, 4, 5, 6, 7]
        );
    }

    #[test]
    fn a_step_sums_each_slot_and_reduces_each_row_in_request_order() {
        let l = layout();
        let f = FusedLayout::new(&l);
        // two samples; m has two ids in sample 0, none in sample 1
        let batch = KeyedJaggedIds::from_lengths(3, 2, &[1, 1, 2, 0, 1, 1], vec![4, 4, 0, 2, 7, 3])
            .unwrap();
        let plan = LookupPlan::build(&l, &batch).unwrap();
        let steps = f.step(&plan);
        // group 1 (table n): rows 0 and 2, mean-pooled in sample 0's slot
        let n = &steps[1];
        assert_eq!(n.unique, vec![0, 2]);
        assert_eq!(n.forward.index, vec![0, 1]);
        assert_eq!(n.forward.weight, vec![0.5, 0.5]);
        assert_eq!(n.forward.offsets, vec![0, 2, 2]);
        assert_eq!(n.backward.index, vec![0, 0]);
        assert_eq!(n.backward.offsets, vec![0, 1, 2]);
        // group 0: a's rows 4 (fa twice), 1 and 1 (7 % 2, 3 % 2); b's rows 3 (7 / 2), 1
        let g = &steps[0];
        assert_eq!(g.unique, vec![1, 4, 5 + 1, 5 + 3]);
        let mul = g.mul.as_ref().unwrap();
        // terms in request order: fa(b0), q(b0) = b3 * a1, fa(b1), q(b1) = b1 * a1
        assert_eq!(mul.row, vec![1, 3, 1, 2]);
        assert_eq!(mul.factor, vec![4, 0, 4, 0]);
        assert_eq!(mul.slot, vec![0, 1, 2, 3]);
        assert_eq!(mul.with_factor, vec![1, 3]);
        assert_eq!(g.forward.offsets, vec![0, 1, 2, 3, 4]);
        // row a1 gets the factor contributions 4 and 5; a4 terms 0 and 2; b1 term 3; b3 term 1
        assert_eq!(g.backward.index, vec![4, 5, 0, 2, 3, 1]);
        assert_eq!(g.backward.offsets, vec![0, 2, 4, 5, 6]);
    }

    /// Device arrays: bags slot-major, a summed feature's probes in one bag, terms in
    /// bag order, mean pooling's weights.
    #[test]
    fn device_arrays_put_each_bag_s_terms_together_in_slot_major_order() {
        let plain = |t: &str, rows| Probe {
            table: t.into(),
            map: RowMap::Offset {
                offset: 0,
                id_rows: rows,
            },
        };
        let l = CollectionLayout::new(CollectionSpec {
            tables: vec![table("a", 5, 4), table("n", 3, 2), table("b", 6, 4)],
            features: vec![
                FeatureSpec {
                    name: "fa".into(),
                    probes: vec![plain("a", 5)],
                    combine: Combine::Concat,
                    pooling: Pooling::Sum,
                },
                FeatureSpec {
                    name: "m".into(),
                    probes: vec![plain("n", 3)],
                    combine: Combine::Concat,
                    pooling: Pooling::Mean,
                },
                FeatureSpec {
                    name: "s".into(),
                    probes: vec![plain("a", 5), plain("b", 5)],
                    combine: Combine::Sum,
                    pooling: Pooling::Sum,
                },
            ],
        })
        .unwrap();
        let f = FusedLayout::new(&l);
        assert!(f.plans_on_device());
        let batch = KeyedJaggedIds::from_lengths(3, 2, &[1, 1, 2, 0, 1, 1], vec![4, 3, 0, 2, 1, 2])
            .unwrap();
        let d = f.device_arrays(&l, &batch).unwrap();
        // group 0 (a then b, b's rows from 5): slot 0 is fa, slot 1 is s (a's row + b's)
        assert_eq!(d[0].rows, vec![4, 3, 1, 5 + 1, 2, 5 + 2]);
        assert_eq!(d[0].offsets, vec![0, 1, 2, 4, 6]);
        assert!(d[0].weight.is_empty());
        // group 1: m's two ids in sample 0, mean-pooled; none in sample 1
        assert_eq!(d[1].rows, vec![0, 2]);
        assert_eq!(d[1].offsets, vec![0, 2, 2]);
        assert_eq!(d[1].weight, vec![0.5, 0.5]);
    }
}
