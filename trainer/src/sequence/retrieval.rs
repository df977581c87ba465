//! How well the search stage finds the behaviours that matter: on generated data the
//! truly relevant history positions of every sample are known
//! (`shardrec synth --kind sequence` writes them), so the model's top `K` slots are
//! scored by NDCG@K against them (binary relevance), the retrieval measure DARE reports
//! (Feng et al. 2025, arXiv 2410.02604).
//!
//! The side file has one line per sample of the test file, in order: the relevant
//! behaviours' distances from the target (1 = most recent), comma-separated, empty when
//! none.

use std::path::{Path, PathBuf};

use crate::bundle::SampleRetrieval;
use crate::cluster::Cluster;
use crate::TrainError;

/// Why `eval.relevant_positions` cannot be scored against; each names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    #[error("eval.relevant_positions: {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: `{token}` is not a distance (an integer >= 1)")]
    NotADistance {
        path: PathBuf,
        line: usize,
        token: String,
    },
    #[error("eval.relevant_positions lists {listed} samples, the test split has {rows} rows (give the test file whose side file it is, with no rows skipped)")]
    OtherRows { listed: usize, rows: usize },
}

/// Every sample's relevant distances.
#[derive(Debug, Clone, PartialEq)]
pub struct RelevantPositions {
    pub samples: Vec<Vec<u32>>,
}

impl RelevantPositions {
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|source| RetrievalError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let mut v = Vec::new();
            for t in line.split(',').filter(|t| !t.is_empty()) {
                let d: u32 = t.trim().parse().ok().filter(|&d| d >= 1).ok_or_else(|| {
                    RetrievalError::NotADistance {
                        path: path.to_path_buf(),
                        line: i + 1,
                        token: t.to_string(),
                    }
                })?;
                v.push(d);
            }
            samples.push(v);
        }
        Ok(Self { samples })
    }
}

/// NDCG@K of one ranking: `retrieved` distances best first, binary relevance; only
/// relevant behaviours within the last `window` can be found, so the ideal counts those.
/// `None` when none is within reach.
pub fn ndcg_at_k(retrieved: &[u32], relevant: &[u32], window: u32) -> Option<f64> {
    let reachable = relevant.iter().filter(|&&d| d <= window).count();
    if reachable == 0 {
        return None;
    }
    let gain = |r: usize| 1.0 / ((r + 2) as f64).log2();
    let dcg: f64 = retrieved
        .iter()
        .enumerate()
        .filter(|(_, d)| relevant.contains(d))
        .map(|(r, _)| gain(r))
        .sum();
    let ideal: f64 = (0..reachable.min(retrieved.len())).map(gain).sum();
    Some(dcg / ideal)
}

/// Mean NDCG@K over the samples with a reachable relevant behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrievalScore {
    pub ndcg: f64,
    pub samples: u64,
    pub k: usize,
}

/// What an evaluation pass scores the search stage against: every test sample's relevant
/// distances, and the model's `k` and history length.
#[derive(Debug, Clone)]
pub struct RetrievalTarget {
    pub relevant: RelevantPositions,
    pub k: usize,
    pub len: usize,
}

impl RetrievalTarget {
    /// Reads the side file at `path` for a split of `rows` rows.
    pub fn read(path: &Path, rows: usize, k: usize, len: usize) -> Result<Self, TrainError> {
        Self::new(RelevantPositions::read(path)?, rows, k, len)
    }

    /// The side file's positions for a split of `rows` rows.
    pub fn new(
        relevant: RelevantPositions,
        rows: usize,
        k: usize,
        len: usize,
    ) -> Result<Self, TrainError> {
        if relevant.samples.len() != rows {
            return Err(RetrievalError::OtherRows {
                listed: relevant.samples.len(),
                rows,
            }
            .into());
        }
        Ok(Self { relevant, k, len })
    }
}

/// NDCG@K summed over the samples of this rank's batches.
#[derive(Debug, Default)]
pub struct RetrievalTally {
    sum: f64,
    count: u64,
}

impl RetrievalTally {
    /// Adds a batch whose first row is row `first_row` of the split.
    pub fn add(&mut self, target: &RetrievalTarget, first_row: usize, found: &[SampleRetrieval]) {
        for (i, r) in found.iter().enumerate() {
            let dist: Vec<u32> = r
                .slots
                .iter()
                .zip(&r.valid)
                .filter(|(_, &v)| v)
                .map(|(&s, _)| (target.len - s as usize) as u32)
                .collect();
            let relevant = &target.relevant.samples[first_row + i];
            if let Some(n) = ndcg_at_k(&dist, relevant, target.len as u32) {
                self.sum += n;
                self.count += 1;
            }
        }
    }

    /// The mean over every rank's samples (collective under mpirun).
    pub fn finish(self, target: &RetrievalTarget, cluster: &Cluster) -> RetrievalScore {
        let mut totals = [self.sum, self.count as f64];
        cluster.all_reduce_sum(&mut totals);
        RetrievalScore {
            ndcg: totals[0] / totals[1].max(1.0),
            samples: totals[1] as u64,
            k: target.k,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndcg_is_one_for_an_ideal_ranking_and_discounts_late_hits() {
        assert_eq!(ndcg_at_k(&[3, 1, 9], &[1, 3], 100), Some(1.0));
        let late = ndcg_at_k(&[9, 8, 3], &[3], 100).unwrap();
        assert!((late - 0.5).abs() < 1e-12, "{late}");
        // relevant only beyond the window: undefined
        assert_eq!(ndcg_at_k(&[1, 2], &[500], 200), None);
        // more relevant than K: the ideal fills all K
        assert_eq!(ndcg_at_k(&[1, 2], &[1, 2, 3], 200), Some(1.0));
        assert_eq!(ndcg_at_k(&[5, 6], &[1, 2, 3], 200), Some(0.0));
    }
}
