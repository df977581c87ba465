//! OptEmbed's evolutionary search over per-field embedding widths (Lyu et al. 2022,
//! section 3.3, Algorithm 1), with the row mask fixed and no retraining inside: a
//! candidate is one width in `1..=D` per field, its fitness the supernet's validation AUC
//! with that dimension mask.
//!
//! The first generation is random; each later one is `mutations` children (a parent of
//! the best `parents` so far, copied, each field redrawn with probability
//! `mutation_prob`) plus `crossovers` children (two distinct parents, one crossover
//! point over the field axis). The official code's slips are not repeated: parents are
//! never edited in place, the crossover point is drawn over fields (not up to `D`), and
//! the two parents differ. A candidate already scored is not scored again. Everything is
//! drawn from a counter-based generator seeded by the run's seed, so every rank of a job
//! draws the same candidates and a rerun repeats the search.

use std::collections::HashMap;

use serde::Serialize;
use shardrec_tables::hash_id;

use super::OptEmbedError;
use crate::config::EvolutionConfig;
use crate::TrainError;

/// Deterministic draws: the n-th draw is `hash(seed, n)`.
struct Draws {
    seed: u64,
    n: u64,
}

impl Draws {
    /// The draws of one named stream of `seed` (the search's, the baseline's).
    fn new(seed: u64, stream: u64) -> Self {
        Self {
            seed: hash_id(seed, stream),
            n: 0,
        }
    }

    fn next(&mut self) -> u64 {
        self.n += 1;
        hash_id(self.seed, self.n)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One scored candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    pub widths: Vec<usize>,
    pub auc: f64,
}

/// What a search found.
#[derive(Debug, Clone, Serialize)]
pub struct SearchOutcome {
    pub best: Scored,
    /// Best validation AUC of each generation's own candidates.
    pub generation_best: Vec<f64>,
    /// Best so far after each generation.
    pub best_so_far: Vec<f64>,
    /// Distinct candidates scored.
    pub evaluations: usize,
}

/// Scores candidates once each.
struct Scorer<'a> {
    fitness: &'a mut dyn FnMut(&[usize]) -> Result<f64, TrainError>,
    seen: HashMap<Vec<usize>, f64>,
}

impl<'a> Scorer<'a> {
    fn new(fitness: &'a mut dyn FnMut(&[usize]) -> Result<f64, TrainError>) -> Self {
        Self {
            fitness,
            seen: HashMap::new(),
        }
    }

    fn score(&mut self, w: &[usize]) -> Result<f64, TrainError> {
        if let Some(&a) = self.seen.get(w) {
            return Ok(a);
        }
        let a = (self.fitness)(w)?;
        // a NaN AUC (one class only) ranks last
        let a = if a.is_nan() { f64::NEG_INFINITY } else { a };
        self.seen.insert(w.to_vec(), a);
        Ok(a)
    }
}

fn random_candidate(d: &mut Draws, fields: usize, dim: usize) -> Vec<usize> {
    (0..fields).map(|_| d.range(1, dim)).collect()
}

/// Runs the search; `fitness` gets a width per field and returns the validation AUC.
pub fn evolve(
    cfg: &EvolutionConfig,
    fields: usize,
    dim: usize,
    seed: u64,
    fitness: &mut dyn FnMut(&[usize]) -> Result<f64, TrainError>,
) -> Result<SearchOutcome, TrainError> {
    let mut draws = Draws::new(seed, 0x6f70_7465_6d62);
    let mut scorer = Scorer::new(fitness);
    let mut top: Vec<Scored> = Vec::new();
    let mut population: Vec<Vec<usize>> = (0..cfg.population)
        .map(|_| random_candidate(&mut draws, fields, dim))
        .collect();
    let (mut generation_best, mut best_so_far) = (Vec::new(), Vec::new());
    for generation in 0..cfg.generations {
        let mut best_here = f64::NEG_INFINITY;
        for w in &population {
            let auc = scorer.score(w)?;
            best_here = best_here.max(auc);
            if !top.iter().any(|s| &s.widths == w) {
                top.push(Scored {
                    widths: w.clone(),
                    auc,
                });
            }
        }
        // best first; ties keep the earlier candidate (stable sort)
        top.sort_by(|a, b| b.auc.total_cmp(&a.auc));
        top.truncate(cfg.parents.max(1));
        generation_best.push(best_here);
        best_so_far.push(top[0].auc);
        if generation + 1 == cfg.generations {
            break;
        }
        let mut next = Vec::with_capacity(cfg.mutations + cfg.crossovers);
        for i in 0..cfg.mutations {
            let mut child = top[i % top.len()].widths.clone();
            for w in &mut child {
                if draws.unit() < cfg.mutation_prob {
                    *w = draws.range(1, dim);
                }
            }
            next.push(child);
        }
        for _ in 0..cfg.crossovers {
            if top.len() < 2 || fields < 2 {
                next.push(random_candidate(&mut draws, fields, dim));
                continue;
            }
            let a = draws.range(0, top.len() - 1);
            let mut b = draws.range(0, top.len() - 2);
            if b >= a {
                b += 1;
            }
            let cut = draws.range(1, fields - 1);
            let mut child = top[a].widths[..cut].to_vec();
            child.extend_from_slice(&top[b].widths[cut..]);
            next.push(child);
        }
        population = next;
    }
    let evaluations = scorer.seen.len();
    Ok(SearchOutcome {
        best: top.swap_remove(0),
        generation_best,
        best_so_far,
        evaluations,
    })
}

/// The baseline: `count` uniformly random candidates (drawn apart from the search's),
/// the best of them.
pub fn best_random(
    count: usize,
    fields: usize,
    dim: usize,
    seed: u64,
    fitness: &mut dyn FnMut(&[usize]) -> Result<f64, TrainError>,
) -> Result<Scored, TrainError> {
    let mut draws = Draws::new(seed, 0x7261_6e64);
    let mut scorer = Scorer::new(fitness);
    let mut best: Option<Scored> = None;
    let mut tries = 0;
    // distinct candidates, as the search counts them (bounded in case the space is tiny)
    while scorer.seen.len() < count && tries < count * 20 {
        tries += 1;
        let w = random_candidate(&mut draws, fields, dim);
        let auc = scorer.score(&w)?;
        if best.as_ref().is_none_or(|b| auc > b.auc) {
            best = Some(Scored { widths: w, auc });
        }
    }
    best.ok_or_else(|| OptEmbedError::NoRandomCandidate.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fitness with a known optimum: closeness of each width to a target.
    fn toy(target: &[usize]) -> impl FnMut(&[usize]) -> Result<f64, TrainError> + '_ {
        move |w: &[usize]| {
            Ok(-w
                .iter()
                .zip(target)
                .map(|(&a, &b)| (a as f64 - b as f64).abs())
                .sum::<f64>())
        }
    }

    #[test]
    fn the_search_improves_and_beats_as_many_random_candidates() {
        let target = [3, 60, 17, 1, 44, 64, 9, 30, 52, 12];
        let cfg = EvolutionConfig::default();
        let mut f = toy(&target);
        let out = evolve(&cfg, 10, 64, 7, &mut f).unwrap();
        assert_eq!(out.best_so_far.len(), cfg.generations);
        assert!(out.best_so_far.windows(2).all(|w| w[1] >= w[0]));
        assert!(out.best_so_far[cfg.generations - 1] > out.best_so_far[0]);
        let mut f = toy(&target);
        let random = best_random(out.evaluations, 10, 64, 7, &mut f).unwrap();
        assert!(
            out.best.auc > random.auc,
            "search {} vs random {}",
            out.best.auc,
            random.auc
        );
        assert!(out.best.widths.iter().all(|&w| (1..=64).contains(&w)));
    }

    #[test]
    fn the_same_seed_repeats_the_search() {
        let target = [5, 9, 2, 7];
        let cfg = EvolutionConfig {
            generations: 5,
            ..Default::default()
        };
        let a = evolve(&cfg, 4, 16, 1, &mut toy(&target)).unwrap();
        let b = evolve(&cfg, 4, 16, 1, &mut toy(&target)).unwrap();
        assert_eq!(a.best, b.best);
        assert_eq!(a.best_so_far, b.best_so_far);
        let c = evolve(&cfg, 4, 16, 2, &mut toy(&target)).unwrap();
        assert_ne!(a.generation_best, c.generation_best);
    }
}
