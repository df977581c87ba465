//! The two data movements between fetched rows and the dense model's input.
//!
//! Forward ([`assemble_output`]): each sample's output row is the pooled, combined rows
//! its requests point at. Backward ([`reduce_row_gradients`]): each distinct row's
//! gradient is the weighted sum of the output-gradient slices its requests fed. Both run
//! in parallel over disjoint outputs (samples, then distinct rows) and sum in a fixed
//! order, so results do not depend on the number of threads.

use rayon::prelude::*;

use crate::lookup_plan::{LookupPlan, PlanRequests, Request, NO_PARTNER};
use crate::prefetch::{prefetch, DISTANCE};
use crate::TableError;

fn check_rows(
    plan: &LookupPlan,
    dims: &[usize],
    rows: &[Vec<f32>],
    what: &str,
) -> Result<(), TableError> {
    if dims.len() != plan.tables.len() || rows.len() != plan.tables.len() {
        return Err(TableError::SizeMismatch {
            what: format!("{what} tables"),
            expected: plan.tables.len(),
            got: rows.len().min(dims.len()),
        });
    }
    for (t, (r, &d)) in rows.iter().zip(dims).enumerate() {
        let expected = plan.tables[t].unique_rows.len() * d;
        if r.len() != expected {
            return Err(TableError::SizeMismatch {
                what: format!("{what} of table {t}"),
                expected,
                got: r.len(),
            });
        }
    }
    Ok(())
}

/// Writes the batch's embeddings into `out` (batch x width, overwritten).
///
/// `gathered[t]` holds table `t`'s distinct rows of this batch (in `unique_rows` order),
/// `dims[t]` floats each.
pub fn assemble_output(
    plan: &LookupPlan,
    dims: &[usize],
    gathered: &[Vec<f32>],
    out: &mut [f32],
) -> Result<(), TableError> {
    check_rows(plan, dims, gathered, "gathered rows")?;
    let expected = plan.batch_size * plan.width;
    if out.len() != expected {
        return Err(TableError::SizeMismatch {
            what: "output".into(),
            expected,
            got: out.len(),
        });
    }
    if plan.width == 0 {
        return Ok(());
    }
    let (requests, sample_starts) = match &plan.requests {
        PlanRequests::Listed {
            requests,
            sample_starts,
        } => (requests, sample_starts),
        PlanRequests::OneIdPerSlot => {
            assemble_one_id(plan, dims, gathered, out);
            return Ok(());
        }
    };
    out.par_chunks_mut(plan.width)
        .enumerate()
        .with_min_len(64)
        .for_each(|(b, row_out)| {
            row_out.fill(0.0);
            let base = b * plan.width;
            let (first, end) = (sample_starts[b] as usize, sample_starts[b + 1] as usize);
            for (i, r) in requests[first..end].iter().enumerate() {
                // the rows a big table's requests read lie anywhere in its gathered
                // rows: ask for the one a few requests on while this one is added
                if let Some(ahead) = requests.get(first + i + DISTANCE) {
                    let t = ahead.table as usize;
                    let at = ahead.unique as usize * dims[t];
                    prefetch(gathered[t].as_ptr().wrapping_add(at));
                }
                if r.secondary {
                    continue;
                }
                let d = dims[r.table as usize];
                let src = &gathered[r.table as usize][r.unique as usize * d..][..d];
                let dst = &mut row_out[r.dest as usize - base..][..d];
                if r.partner == NO_PARTNER {
                    for (o, s) in dst.iter_mut().zip(src) {
                        *o += r.weight * s;
                    }
                } else {
                    let p = requests[r.partner as usize];
                    let other = &gathered[p.table as usize][p.unique as usize * d..][..d];
                    for ((o, s), q) in dst.iter_mut().zip(src).zip(other) {
                        *o += r.weight * s * q;
                    }
                }
            }
        });
    Ok(())
}

/// [`assemble_output`] of a one-id plan: each chunk of samples is zeroed, then each
/// table's requests into it add their rows (`0 + s`, the general loop's `0 + 1 * s`, so
/// both give the same bits), table by table from its (distinct row, destination) lists.
fn assemble_one_id(plan: &LookupPlan, dims: &[usize], gathered: &[Vec<f32>], out: &mut [f32]) {
    // about 64 KB of output a chunk: zeroed and written while in the cache
    let samples = (16_384 / plan.width).max(1);
    out.par_chunks_mut(plan.width * samples)
        .enumerate()
        .for_each(|(c, chunk)| {
            chunk.fill(0.0);
            let base = c * samples * plan.width;
            let end = base + chunk.len();
            for ((lists, &d), rows) in plan.tables.iter().zip(dims).zip(gathered) {
                let dests = &lists.dests_in_request_order;
                let from = dests.partition_point(|&x| (x as usize) < base);
                let to = dests.partition_point(|&x| (x as usize) < end);
                let unique = &lists.unique_in_request_order[from..to];
                for (i, (&u, &dest)) in unique.iter().zip(&dests[from..to]).enumerate() {
                    if let Some(&ahead) = unique.get(i + DISTANCE) {
                        prefetch(rows.as_ptr().wrapping_add(ahead as usize * d));
                    }
                    let src = &rows[u as usize * d..][..d];
                    let dst = &mut chunk[dest as usize - base..][..d];
                    for (o, s) in dst.iter_mut().zip(src) {
                        *o += s;
                    }
                }
            }
        });
}

/// Gradient of every distinct row of every table, from the gradient of the output
/// (batch x width). `gathered` (the forward rows) is needed only by `Mul` features.
///
/// Requests are visited in request order (sample-major), so the output gradient is read
/// front to back at a steady stride, and each row sums its contributions in request
/// order. Tables are independent and run in parallel.
pub fn reduce_row_gradients(
    plan: &LookupPlan,
    dims: &[usize],
    gathered: &[Vec<f32>],
    out_grad: &[f32],
) -> Result<Vec<Vec<f32>>, TableError> {
    check_rows(plan, dims, gathered, "gathered rows")?;
    let expected = plan.batch_size * plan.width;
    if out_grad.len() != expected {
        return Err(TableError::SizeMismatch {
            what: "output gradient".into(),
            expected,
            got: out_grad.len(),
        });
    }
    // a one-id plan's tables all sum plainly: only the general loop below reads the list
    let requests: &[Request] = match &plan.requests {
        PlanRequests::Listed { requests, .. } => requests,
        PlanRequests::OneIdPerSlot => &[],
    };
    Ok(plan
        .tables
        .par_iter()
        .zip(dims.par_iter())
        .map(|(reqs, &d)| {
            let mut grads = vec![0.0f32; reqs.unique_rows.len() * d];
            if reqs.plain_sums {
                // weight 1, no partner: `a += s` is the general loop's `a += 1 * s`
                let order = reqs.unique_in_request_order.iter().enumerate();
                for ((k, &u), &dest) in order.zip(&reqs.dests_in_request_order) {
                    if let Some(&ahead) = reqs.unique_in_request_order.get(k + DISTANCE) {
                        prefetch(grads.as_ptr().wrapping_add(ahead as usize * d));
                    }
                    if let Some(&ahead) = reqs.dests_in_request_order.get(k + 2 * DISTANCE) {
                        prefetch(out_grad.as_ptr().wrapping_add(ahead as usize));
                    }
                    let acc = &mut grads[u as usize * d..][..d];
                    let src = &out_grad[dest as usize..][..d];
                    for (a, s) in acc.iter_mut().zip(src) {
                        *a += s;
                    }
                }
                return grads;
            }
            for &ri in &reqs.in_request_order {
                let r = &requests[ri as usize];
                let acc = &mut grads[r.unique as usize * d..][..d];
                let src = &out_grad[r.dest as usize..][..d];
                if r.partner == NO_PARTNER {
                    for (a, s) in acc.iter_mut().zip(src) {
                        *a += r.weight * s;
                    }
                } else {
                    let p = requests[r.partner as usize];
                    let other = &gathered[p.table as usize][p.unique as usize * d..][..d];
                    for ((a, s), q) in acc.iter_mut().zip(src).zip(other) {
                        *a += r.weight * s * q;
                    }
                }
            }
            grads
        })
        .collect())
}

/// Adds up the row gradients several sources sent for one table: `sources[i]` is a
/// source's rows and their gradients (`rows.len() x width`). Equal rows are added in
/// source order (a stable sort by row), so an owner summing the ranks' shares and one
/// process summing its slices' shares (`LocalEmbeddings::backward_slices`) round alike.
/// Returns the distinct rows, ascending, and their sums.
pub fn sum_in_source_order(sources: &[(&[u64], &[f32])], width: usize) -> (Vec<u64>, Vec<f32>) {
    let mut arrivals: Vec<(u64, usize, usize)> = sources
        .iter()
        .enumerate()
        .flat_map(|(s, (rows, _))| rows.iter().enumerate().map(move |(i, &r)| (r, s, i)))
        .collect();
    arrivals.sort_by_key(|&(r, _, _)| r);
    let mut rows: Vec<u64> = Vec::with_capacity(arrivals.len());
    let mut sums: Vec<f32> = Vec::with_capacity(arrivals.len() * width);
    for (r, s, i) in arrivals {
        let part = &sources[s].1[i * width..(i + 1) * width];
        if rows.last() == Some(&r) {
            let base = sums.len() - width;
            sums[base..].iter_mut().zip(part).for_each(|(a, v)| *a += v);
        } else {
            rows.push(r);
            sums.extend_from_slice(part);
        }
    }
    (rows, sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{CollectionSpec, Combine, FeatureSpec, Pooling, Probe, RowMap, TableSpec};
    use crate::{CollectionLayout, KeyedJaggedIds, RowInit};

    /// A table whose row r is [r, 10 r].
    fn rows_of(t: &crate::TableRequests) -> Vec<f32> {
        t.unique_rows
            .iter()
            .flat_map(|&r| [r as f32, 10.0 * r as f32])
            .collect()
    }

    fn layout(combine: Combine, pooling: Pooling, probes: Vec<RowMap>) -> CollectionLayout {
        CollectionLayout::new(CollectionSpec {
            tables: vec![
                TableSpec {
                    name: "a".into(),
                    rows: 100,
                    dim: 2,
                    init: RowInit::Zeros,
                },
                TableSpec {
                    name: "b".into(),
                    rows: 100,
                    dim: 2,
                    init: RowInit::Zeros,
                },
            ],
            features: vec![FeatureSpec {
                name: "f".into(),
                probes: probes
                    .into_iter()
                    .zip(["a", "b"])
                    .map(|(map, t)| Probe {
                        table: t.into(),
                        map,
                    })
                    .collect(),
                combine,
                pooling,
            }],
        })
        .unwrap()
    }

    #[test]
    fn mean_pooling_and_its_gradient() {
        let l = layout(
            Combine::Concat,
            Pooling::Mean,
            vec![RowMap::Offset {
                offset: 0,
                id_rows: 100,
            }],
        );
        let batch = KeyedJaggedIds::from_lengths(1, 2, &[2, 1], vec![3, 5, 3]).unwrap();
        let plan = LookupPlan::build(&l, &batch).unwrap();
        let g = vec![rows_of(&plan.tables[0]), vec![]];
        let dims = [2, 2];
        let mut out = vec![0.0; 4];
        assemble_output(&plan, &dims, &g, &mut out).unwrap();
        assert_eq!(out, vec![4.0, 40.0, 3.0, 30.0]);
        let grads = reduce_row_gradients(&plan, &dims, &g, &[1.0, 2.0, 10.0, 20.0]).unwrap();
        // row 3: 0.5 * [1, 2] + [10, 20]; row 5: 0.5 * [1, 2]
        assert_eq!(grads[0], vec![10.5, 21.0, 0.5, 1.0]);
    }

    /// Summed tables take the backward's short path, which adds in the same order as the
    /// general one: the same gradients to the bit.
    #[test]
    fn summed_tables_reduce_as_the_general_path_does() {
        let l = layout(
            Combine::Sum,
            Pooling::Sum,
            vec![RowMap::Hash { seed: 1 }, RowMap::Hash { seed: 2 }],
        );
        let ids: Vec<u64> = (0..34).map(|i| i * 7 % 13).collect();
        let lengths: Vec<u32> = (0..10).map(|i| 1 + i % 7).collect();
        let batch = KeyedJaggedIds::from_lengths(1, 10, &lengths, ids).unwrap();
        let plan = LookupPlan::build(&l, &batch).unwrap();
        assert!(plan.tables.iter().all(|t| t.plain_sums));
        let g = vec![rows_of(&plan.tables[0]), rows_of(&plan.tables[1])];
        let out_grad: Vec<f32> = (0..20).map(|i| (i as f32 * 0.37).sin()).collect();
        let short = reduce_row_gradients(&plan, &[2, 2], &g, &out_grad).unwrap();
        let mut general = plan.clone();
        general.tables.iter_mut().for_each(|t| t.plain_sums = false);
        let long = reduce_row_gradients(&general, &[2, 2], &g, &out_grad).unwrap();
        assert_eq!(short, long);
        assert!(short[0].iter().any(|&x| x != 0.0));
    }

    #[test]
    fn quotient_remainder_product_and_its_gradient() {
        let l = layout(
            Combine::Mul,
            Pooling::Sum,
            vec![
                RowMap::Quotient { divisor: 10 },
                RowMap::Remainder { modulus: 10 },
            ],
        );
        let batch = KeyedJaggedIds::from_single_valued(1, 1, &[23]).unwrap();
        let plan = LookupPlan::build(&l, &batch).unwrap();
        assert_eq!(plan.tables[0].unique_rows, vec![2]);
        assert_eq!(plan.tables[1].unique_rows, vec![3]);
        let g = vec![rows_of(&plan.tables[0]), rows_of(&plan.tables[1])];
        let mut out = vec![0.0; 2];
        assemble_output(&plan, &[2, 2], &g, &mut out).unwrap();
        assert_eq!(out, vec![6.0, 600.0]);
        let grads = reduce_row_gradients(&plan, &[2, 2], &g, &[1.0, 1.0]).unwrap();
        assert_eq!(grads[0], vec![3.0, 30.0]);
        assert_eq!(grads[1], vec![2.0, 20.0]);
    }

    #[test]
    fn wrong_buffer_sizes_are_errors() {
        let l = layout(
            Combine::Concat,
            Pooling::Sum,
            vec![RowMap::Offset {
                offset: 0,
                id_rows: 100,
            }],
        );
        let batch = KeyedJaggedIds::from_single_valued(1, 2, &[1, 2]).unwrap();
        let plan = LookupPlan::build(&l, &batch).unwrap();
        let g = vec![rows_of(&plan.tables[0]), vec![]];
        let mut out = vec![0.0; 3];
        assert!(assemble_output(&plan, &[2, 2], &g, &mut out).is_err());
        assert!(reduce_row_gradients(&plan, &[2, 2], &g, &[0.0; 5]).is_err());
    }
}
