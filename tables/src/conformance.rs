//! Does the sharded engine over a given [`Exchange`] compute what the one-process table
//! computes? Every rank runs a few steps on its slice of fixed global batches, and also
//! the one-process table on the whole batches (deterministic, so every rank gets the same
//! reference), then compares its embeddings and the rows it owns. The unit tests run it
//! over thread ranks; `shardrec check-exchange` runs it over MPI on a real cluster (as
//! `nccl-tests` checks a GPU fabric before a job).

use serde::Serialize;

use crate::collection::CollectionLayout;
use crate::exchange::Exchange;
use crate::local::{LocalEmbeddings, SliceGradient};
use crate::optimizer::SparseOptimizer;
use crate::sharded::ShardedEmbeddings;
use crate::sharding::{ShardingKind, ShardingPlan, TablePlacement};
use crate::spec::{CollectionSpec, Combine, FeatureSpec, Pooling, Probe, RowMap, TableSpec};
use crate::{mix64, KeyedJaggedIds, RowInit, TableError};

/// The check's tables: `a` plain, `b` hashed and shared by two mean-pooled multi-valued
/// features, `c` plain and wider.
pub const CONFORMANCE_TABLES: [(&str, u64, usize); 3] = [("a", 50, 4), ("b", 37, 4), ("c", 20, 6)];

/// One rank's result.
#[derive(Debug, Clone, Serialize)]
pub struct ConformanceReport {
    pub rank: usize,
    pub world_size: usize,
    pub kinds: Vec<ShardingKind>,
    pub optimizer: String,
    pub steps: usize,
    /// Largest |sharded - one-process| over this rank's embedding outputs.
    pub max_embedding_diff: f32,
    /// Largest |sharded - one-process| over the rows this rank owns, after the last step.
    pub max_row_diff: f32,
    /// The same against one process that trained each batch in as many slices as there
    /// are ranks ([`LocalEmbeddings::backward_slices`]): 0, bit for bit, on every kind.
    pub max_row_diff_sliced: f32,
    /// Whether the ranks together hold every row of every sharded (not replicated) table
    /// exactly once.
    pub every_row_held_once: bool,
}

fn layout() -> Result<CollectionLayout, TableError> {
    let probe = |table: &str, map: RowMap| Probe {
        table: table.into(),
        map,
    };
    let feature = |name: &str, p: Probe, pooling: Pooling| FeatureSpec {
        name: name.into(),
        probes: vec![p],
        combine: Combine::Concat,
        pooling,
    };
    CollectionLayout::new(CollectionSpec {
        tables: CONFORMANCE_TABLES
            .iter()
            .map(|&(name, rows, dim)| TableSpec {
                name: name.into(),
                rows,
                dim,
                init: RowInit::Uniform {
                    bound: 0.5,
                    seed: 7,
                },
            })
            .collect(),
        features: vec![
            feature(
                "fa",
                probe(
                    "a",
                    RowMap::Offset {
                        offset: 0,
                        id_rows: 50,
                    },
                ),
                Pooling::Sum,
            ),
            feature("fb1", probe("b", RowMap::Hash { seed: 1 }), Pooling::Mean),
            feature("fb2", probe("b", RowMap::Hash { seed: 2 }), Pooling::Mean),
            feature(
                "fc",
                probe(
                    "c",
                    RowMap::Offset {
                        offset: 0,
                        id_rows: 20,
                    },
                ),
                Pooling::Sum,
            ),
        ],
    })
}

/// `ids[b][k]`: the ids of feature k in sample b (0 to 3 of them, many repeats).
fn samples(batch: usize, seed: u64) -> Vec<Vec<Vec<u64>>> {
    let mut x = seed;
    let mut next = || {
        x = mix64(x.wrapping_add(0x9E37_79B9));
        x
    };
    (0..batch)
        .map(|_| {
            [50u64, 30, 30, 20]
                .iter()
                .map(|&vocab| (0..next() % 4).map(|_| next() % vocab).collect())
                .collect()
        })
        .collect()
}

fn jagged(samples: &[Vec<Vec<u64>>]) -> Result<KeyedJaggedIds, TableError> {
    let keys = 4;
    let mut lengths = Vec::new();
    let mut values = Vec::new();
    for k in 0..keys {
        for s in samples {
            lengths.push(s[k].len() as u32);
            values.extend_from_slice(&s[k]);
        }
    }
    KeyedJaggedIds::from_lengths(keys, samples.len(), &lengths, values)
}

/// The plan: every table sharded by its kind over all ranks (table-wise tables on ranks
/// 1, 2, 0, ... so that not everything sits on rank 0).
pub fn conformance_plan(n: usize, kinds: [ShardingKind; 3]) -> ShardingPlan {
    ShardingPlan {
        world_size: n,
        tables: CONFORMANCE_TABLES
            .iter()
            .zip(kinds)
            .enumerate()
            .map(|(t, (&(name, _, _), kind))| TablePlacement {
                table: name.into(),
                kind,
                ranks: match kind {
                    ShardingKind::TableWise => vec![(t + 1) % n],
                    _ => (0..n).collect(),
                },
                column_starts: vec![],
                in_file_tier: false,
            })
            .collect(),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `steps` steps (global batch `4 * world + 3` samples, rank r taking a contiguous
/// slice) sharded over `ex` and on the one-process table, and compares. Collective.
pub fn check_against_one_process(
    ex: &dyn Exchange,
    kinds: [ShardingKind; 3],
    opt: SparseOptimizer,
    steps: usize,
) -> Result<ConformanceReport, TableError> {
    let n = ex.world_size();
    let rank = ex.rank();
    let l = layout()?;
    let width = l.width();
    let global = 4 * n + 3;
    let batches: Vec<Vec<Vec<Vec<u64>>>> =
        (0..steps).map(|s| samples(global, 11 + s as u64)).collect();
    let grad = |step: usize, i: usize| ((i * 37 + step * 11) % 23) as f32 * 0.05 - 0.5;
    let (lo, hi) = (rank * global / n, (rank + 1) * global / n);

    let mut reference = LocalEmbeddings::single_process(l.clone(), opt)?;
    let mut sliced = LocalEmbeddings::single_process(l.clone(), opt)?;
    let mut sharded = ShardedEmbeddings::new(l, conformance_plan(n, kinds), opt, rank)?;
    let mut max_embedding_diff = 0f32;
    for (step, b) in batches.iter().enumerate() {
        let p = reference.plan(&jagged(b)?)?;
        let mut want = vec![0.0; global * width];
        let g = reference.forward(&p, &mut want)?;
        let og: Vec<f32> = (0..want.len()).map(|i| grad(step, i)).collect();
        reference.backward(&p, &g, &og)?;

        let mut parts = Vec::with_capacity(n);
        for r in 0..n {
            let (a, z) = (r * global / n, (r + 1) * global / n);
            let p = sliced.plan(&jagged(&b[a..z])?)?;
            let mut out = vec![0.0; (z - a) * width];
            let g = sliced.forward(&p, &mut out)?;
            parts.push((p, g, &og[a * width..z * width]));
        }
        let slices: Vec<SliceGradient> = parts
            .iter()
            .map(|(plan, gathered, out_grad)| SliceGradient {
                plan,
                gathered,
                out_grad,
            })
            .collect();
        sliced.backward_slices(&slices)?;

        let mut out = vec![0.0; (hi - lo) * width];
        let lk = sharded.forward(ex, &jagged(&b[lo..hi])?, &mut out)?;
        max_embedding_diff = max_embedding_diff.max(max_diff(&out, &want[lo * width..hi * width]));
        sharded.backward(ex, lk, &og[lo * width..hi * width])?;
    }
    let mut max_row_diff = 0f32;
    let mut max_row_diff_sliced = 0f32;
    let mut held = vec![0u64; CONFORMANCE_TABLES.len()];
    for (t, &(_, _, dim)) in CONFORMANCE_TABLES.iter().enumerate() {
        let Some(shard) = sharded.shard(t) else {
            continue;
        };
        let w = shard.cols.len();
        let owned = |e: &LocalEmbeddings| -> Result<Vec<f32>, TableError> {
            let full = e.shards()[t][0].weights()?;
            Ok(shard
                .rows
                .clone()
                .flat_map(|row| full[row as usize * dim + shard.cols.start..][..w].to_vec())
                .collect())
        };
        let held_rows = shard.weights()?;
        max_row_diff = max_row_diff.max(max_diff(&held_rows, &owned(&reference)?));
        max_row_diff_sliced = max_row_diff_sliced.max(max_diff(&held_rows, &owned(&sliced)?));
        if kinds[t] != ShardingKind::DataParallel {
            held[t] = held_rows.len() as u64;
        }
    }
    let everyone = ex.all_to_all_u64(vec![held; n])?;
    let every_row_held_once = CONFORMANCE_TABLES
        .iter()
        .enumerate()
        .all(|(t, &(_, rows, dim))| {
            kinds[t] == ShardingKind::DataParallel
                || everyone.iter().map(|h| h[t]).sum::<u64>() == rows * dim as u64
        });
    Ok(ConformanceReport {
        rank,
        world_size: n,
        kinds: kinds.to_vec(),
        optimizer: format!("{:?}", opt.kind).to_lowercase(),
        steps,
        max_embedding_diff,
        max_row_diff,
        max_row_diff_sliced,
        every_row_held_once,
    })
}

/// The cases a job checks under `ranks` ranks: every sharding kind with every sparse
/// optimizer, less what is refused by design (more column slices than the narrowest
/// table's columns; row-wise Adagrad's one accumulator per row over column slices), plus
/// one plan that mixes kinds.
pub fn conformance_cases(ranks: usize) -> Vec<([ShardingKind; 3], SparseOptimizer)> {
    use crate::optimizer::OptimizerKind;
    use ShardingKind::*;
    let narrowest = CONFORMANCE_TABLES.iter().map(|t| t.2).min().unwrap_or(1);
    let mut cases = Vec::new();
    for kind in [TableWise, RowWise, ColumnWise, DataParallel] {
        if kind == ColumnWise && ranks > narrowest {
            continue;
        }
        for opt in [
            SparseOptimizer::new(OptimizerKind::Sgd, 0.1),
            SparseOptimizer::new(OptimizerKind::Adagrad, 0.1),
            SparseOptimizer::new(OptimizerKind::RowwiseAdagrad, 0.1),
            SparseOptimizer::new(OptimizerKind::Adam, 0.01),
        ] {
            if kind == ColumnWise && ranks > 1 && opt.kind == OptimizerKind::RowwiseAdagrad {
                continue;
            }
            cases.push(([kind; 3], opt));
        }
    }
    cases.push((
        [RowWise, DataParallel, TableWise],
        SparseOptimizer::new(OptimizerKind::RowwiseAdagrad, 0.1),
    ));
    cases
}

/// A case's result over the whole job: the worst differences of any rank, and the ranks
/// whose rows were not each held once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ConformanceVerdict {
    pub max_embedding_diff: f32,
    pub max_row_diff: f32,
    pub max_row_diff_sliced: f32,
    pub ranks_missing_rows: u32,
}

impl ConformanceVerdict {
    /// The sharded engine matches the one-process table within 1e-6, and one process in
    /// as many slices as ranks takes the same steps bit for bit.
    pub fn passes(&self) -> bool {
        self.max_embedding_diff <= 1e-6
            && self.max_row_diff <= 1e-6
            && self.max_row_diff_sliced == 0.0
            && self.ranks_missing_rows == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::ThreadExchange;
    use crate::OptimizerKind;

    fn over_threads(
        n: usize,
        kinds: [ShardingKind; 3],
        opt: SparseOptimizer,
    ) -> Vec<ConformanceReport> {
        std::thread::scope(|sc| {
            let handles: Vec<_> = ThreadExchange::world(n)
                .into_iter()
                .map(|ex| sc.spawn(move || check_against_one_process(&ex, kinds, opt, 2).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn every_sharding_kind_matches_the_one_process_table() {
        use ShardingKind::*;
        let mut cases = Vec::new();
        for kind in [TableWise, RowWise, ColumnWise, DataParallel] {
            for opt in [
                SparseOptimizer::new(OptimizerKind::Sgd, 0.1),
                SparseOptimizer::new(OptimizerKind::Adagrad, 0.1),
                SparseOptimizer::new(OptimizerKind::Adam, 0.01),
            ] {
                cases.push(([kind; 3], opt));
            }
        }
        cases.push((
            [RowWise, DataParallel, TableWise],
            SparseOptimizer::new(OptimizerKind::RowwiseAdagrad, 0.1),
        ));
        cases.push((
            [ColumnWise, RowWise, TableWise],
            SparseOptimizer::new(OptimizerKind::Adagrad, 0.1),
        ));
        for n in [1, 2, 3, 4] {
            for &(kinds, opt) in &cases {
                for r in over_threads(n, kinds, opt) {
                    assert!(
                        r.max_embedding_diff <= 1e-6
                            && r.max_row_diff <= 1e-6
                            && r.max_row_diff_sliced == 0.0
                            && r.every_row_held_once,
                        "{r:?}"
                    );
                }
            }
        }
    }

    /// The check can fail: a plan that differs between ranks is caught.
    #[test]
    fn ranks_with_different_plans_are_caught() {
        let l = layout().unwrap();
        let opt = SparseOptimizer::new(OptimizerKind::Sgd, 0.1);
        let errors: Vec<String> = std::thread::scope(|sc| {
            let handles: Vec<_> = ThreadExchange::world(2)
                .into_iter()
                .map(|ex| {
                    let l = l.clone();
                    sc.spawn(move || {
                        // rank 0 believes table `a` is on rank 1, rank 1 that it is on rank 0
                        let mut plan = conformance_plan(2, [ShardingKind::TableWise; 3]);
                        plan.tables[0].ranks = vec![1 - ex.rank()];
                        let e = ShardedEmbeddings::new(l, plan, opt, ex.rank()).unwrap();
                        let batch = jagged(&samples(3, 1)).unwrap();
                        let mut out = vec![0.0; 3 * e.layout().width()];
                        e.forward(&ex, &batch, &mut out)
                            .err()
                            .map(|e| e.to_string())
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        assert!(
            errors
                .iter()
                .any(|e| e.contains("table `a`") && e.contains("does not hold")),
            "{errors:?}"
        );
    }
}
