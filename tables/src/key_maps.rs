//! The key-to-row maps of a collection's dynamic features on one rank, and the exchange
//! that turns a batch's raw keys into table rows before the lookup.
//!
//! A dynamic feature's table is split row-wise over the ranks in blocks of its
//! per-rank capacity; the rank that owns a key ([`key_owner`], by key hash) holds the
//! key's [`KeyRows`] entry and its row, in its own block. So a batch's keys go to their
//! owners first (one all-to-all of the distinct keys and their counts), the owners admit,
//! evict and answer global rows (a second all-to-all), and the batch then runs through the
//! row-indexed lookup like any other. TorchRec's managed-collision modules remap ids
//! before the sharded lookup in the same way.
//!
//! Keys not admitted read nothing: they are left out of their bag (a zero default row
//! that is never updated; with mean pooling they are also left out of the mean).
//!
//! Determinism: an owner sees the distinct keys of the step's whole batch in the order
//! of their first occurrence (ranks in rank order, a rank's slices in order), with their
//! counts summed, whatever the number of ranks; so a map evolves the same way on every
//! run of the same seed and rank count.

use std::collections::HashMap;

use crate::dynamic::{key_owner, KeyRows};
use crate::exchange::Exchange;
use crate::hashing::KeyHashBuilder;
use crate::jagged::KeyedJaggedIds;
use crate::TableError;
use rayon::prelude::*;

/// Answer for a key that reads the default row.
const NO_ROW: u64 = u64::MAX;

/// One dynamic feature's map on this rank.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureKeys {
    /// The feature's index in the batch.
    pub feature: usize,
    pub map: KeyRows,
    /// The global row of the map's row 0: the start of this rank's block of the table.
    pub base: u64,
}

/// Rows given to new keys in one step, to start afresh before the lookup.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FreshRows {
    /// The feature's index in the batch.
    pub feature: usize,
    /// Rows of this rank's block (local to its shard).
    pub local_rows: Vec<u64>,
    /// The key each row now holds (a fresh row's initial values are drawn from it, so
    /// they do not depend on which row or rank it lands on).
    pub keys: Vec<u64>,
}

/// This rank's maps of every dynamic feature of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyMaps {
    rank: usize,
    world: usize,
    features: Vec<FeatureKeys>,
}

/// One feature's part of an ask: the distinct keys for each owner, and per piece where
/// each value's key went (owner, index there).
type FeatureAsk = (Vec<Distinct>, Vec<Vec<(u32, u32)>>);

/// What a rank asked the owners: per owner and feature, the distinct keys it sent; per
/// piece and feature, where each value's key went (owner, index among those sent there).
struct Asked {
    sent: Vec<Vec<Distinct>>,
    slots: Vec<Vec<Vec<(u32, u32)>>>,
}

/// One feature's keys as their owner sees them: every asker's, merged in rank order
/// (first occurrence, counts summed), and where each asker's keys are among them.
struct Merged {
    keys: Vec<u64>,
    counts: Vec<u64>,
    index: Vec<Vec<usize>>,
}

/// A batch's distinct keys of one feature in order of first occurrence, with counts.
#[derive(Debug, Default)]
struct Distinct {
    keys: Vec<u64>,
    counts: Vec<u64>,
    index: HashMap<u64, usize, KeyHashBuilder>,
}

impl Distinct {
    fn with_capacity(n: usize) -> Self {
        Self {
            keys: Vec::with_capacity(n),
            counts: Vec::with_capacity(n),
            index: HashMap::with_capacity_and_hasher(n, KeyHashBuilder::default()),
        }
    }

    /// Counts `count` sightings of `key`; returns its index among the distinct keys.
    fn add(&mut self, key: u64, count: u64) -> usize {
        match self.index.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => {
                self.counts[*e.get()] += count;
                *e.get()
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(self.keys.len());
                self.keys.push(key);
                self.counts.push(count);
                self.keys.len() - 1
            }
        }
    }
}

impl KeyMaps {
    /// Maps for `features` (ascending feature index), on `rank` of `world`; every map's
    /// capacity is this rank's block of its table.
    pub fn new(rank: usize, world: usize, features: Vec<FeatureKeys>) -> Self {
        Self {
            rank,
            world: world.max(1),
            features,
        }
    }

    pub fn features(&self) -> &[FeatureKeys] {
        &self.features
    }

    pub fn features_mut(&mut self) -> &mut [FeatureKeys] {
        &mut self.features
    }

    /// The batch features that are dynamic, in map order.
    fn feature_ids(&self) -> Vec<usize> {
        self.features.iter().map(|k| k.feature).collect()
    }

    /// Training: the rows of the step's keys (`pieces`: this rank's slices of the step's
    /// batch, in order), admitting and evicting as each map says. Rewrites the pieces'
    /// dynamic features from keys to global rows and returns the rows given to new keys
    /// here. Collective: every rank calls it once per step. Features are mapped in
    /// parallel (each map is its own).
    pub fn map_for_training(
        &mut self,
        ex: &dyn Exchange,
        pieces: &mut [KeyedJaggedIds],
        step: u64,
    ) -> Result<Vec<FreshRows>, TableError> {
        let route = self.route();
        let (asked, received) = route.ask(ex, pieces)?;
        let merged = route.merge(&received)?;
        let answered: Vec<(Vec<u64>, FreshRows)> = self
            .features
            .par_iter_mut()
            .zip(&merged)
            .map(|(m, mg)| {
                m.map.expire(step);
                let found = m.map.lookup_counted(&mg.keys, &mg.counts, step);
                let fresh = FreshRows {
                    feature: m.feature,
                    local_rows: found.fresh.iter().map(|&r| u64::from(r)).collect(),
                    keys: found
                        .fresh
                        .iter()
                        .map(|&r| m.map.key_at(r).unwrap_or(0))
                        .collect(),
                };
                let rows = found
                    .rows
                    .iter()
                    .map(|r| r.map_or(NO_ROW, |r| m.base + u64::from(r)));
                (rows.collect(), fresh)
            })
            .collect();
        let (rows, fresh): (Vec<Vec<u64>>, Vec<FreshRows>) = answered.into_iter().unzip();
        let rows = route.reply(ex, &asked, &merged, rows)?;
        let mapped: Vec<KeyedJaggedIds> = pieces
            .par_iter()
            .zip(&rows)
            .map(|(piece, rows)| route.rewrite(piece, rows))
            .collect::<Result<_, _>>()?;
        for (piece, m) in pieces.iter_mut().zip(mapped) {
            *piece = m;
        }
        Ok(fresh)
    }

    /// Evaluation: the rows the batch's keys hold now (keys without one read the default
    /// row); changes nothing. Collective: every rank calls it for each batch.
    pub fn map_read_only(
        &self,
        ex: &dyn Exchange,
        batch: &KeyedJaggedIds,
    ) -> Result<KeyedJaggedIds, TableError> {
        let route = self.route();
        let pieces = std::slice::from_ref(batch);
        let (asked, received) = route.ask(ex, pieces)?;
        let merged = route.merge(&received)?;
        let rows: Vec<Vec<u64>> = self
            .features
            .par_iter()
            .zip(&merged)
            .map(|(m, mg)| {
                let row = |k: &u64| m.map.row_of(*k).map_or(NO_ROW, |r| m.base + u64::from(r));
                mg.keys.iter().map(row).collect()
            })
            .collect();
        let rows = route.reply(ex, &asked, &merged, rows)?;
        route.rewrite(batch, &rows[0])
    }

    fn route(&self) -> KeyRoute {
        KeyRoute {
            rank: self.rank,
            world: self.world,
            features: self.feature_ids(),
        }
    }
}

/// Where a rank's dynamic keys go: to their owners among `world` ranks.
struct KeyRoute {
    rank: usize,
    world: usize,
    /// The batch features that are dynamic, in map order.
    features: Vec<usize>,
}

impl KeyRoute {
    /// Sends the pieces' distinct keys of every dynamic feature to their owners; returns
    /// what was asked (to read the answers by) and what every rank asked this one.
    fn ask(
        &self,
        ex: &dyn Exchange,
        pieces: &[KeyedJaggedIds],
    ) -> Result<(Asked, Vec<Vec<u64>>), TableError> {
        let n = self.world;
        // per feature, in parallel: the distinct keys for each owner, and where each
        // value's key went (owner, index there)
        let per_feature: Vec<FeatureAsk> = self
            .features
            .par_iter()
            .map(|&f| {
                let values: usize = pieces
                    .iter()
                    .filter(|p| f < p.num_keys())
                    .map(|p| p.key_len(f))
                    .sum();
                let mut owners: Vec<Distinct> = (0..n)
                    .map(|_| Distinct::with_capacity(values / n + 1))
                    .collect();
                let mut slots = Vec::with_capacity(pieces.len());
                for piece in pieces {
                    let values = values_of(piece, f)?;
                    let mut at = Vec::with_capacity(values.len());
                    for &key in values {
                        let owner = if n == 1 { 0 } else { key_owner(key, n) };
                        at.push((owner as u32, owners[owner].add(key, 1) as u32));
                    }
                    slots.push(at);
                }
                Ok((owners, slots))
            })
            .collect::<Result<_, TableError>>()?;
        let mut sent: Vec<Vec<Distinct>> = (0..n).map(|_| Vec::new()).collect();
        let mut slots: Vec<Vec<Vec<(u32, u32)>>> = vec![Vec::new(); pieces.len()];
        for (owners, feature_slots) in per_feature {
            for (o, d) in owners.into_iter().enumerate() {
                sent[o].push(d);
            }
            for (p, at) in feature_slots.into_iter().enumerate() {
                slots[p].push(at);
            }
        }
        let send: Vec<Vec<u64>> = sent.iter().map(|per| encode(per)).collect();
        let received = ex.all_to_all_u64(send)?;
        Ok((Asked { sent, slots }, received))
    }

    /// As an owner: what every rank asked, merged per feature in rank order.
    fn merge(&self, received: &[Vec<u64>]) -> Result<Vec<Merged>, TableError> {
        let mut from: Vec<Vec<(&[u64], &[u64])>> = Vec::with_capacity(received.len());
        for (src, msg) in received.iter().enumerate() {
            let parts = decode(msg, self.features.len());
            from.push(parts.ok_or_else(|| self.malformed(src, msg.len()))?);
        }
        Ok((0..self.features.len())
            .into_par_iter()
            .map(|i| {
                if from.len() == 1 {
                    // one asker: its keys are already distinct and in order
                    let (keys, counts) = from[0][i];
                    let index = vec![(0..keys.len()).collect()];
                    return Merged {
                        keys: keys.to_vec(),
                        counts: counts.to_vec(),
                        index,
                    };
                }
                let mut merged = Distinct::default();
                let index = from
                    .iter()
                    .map(|parts| {
                        let (keys, counts) = parts[i];
                        keys.iter()
                            .zip(counts)
                            .map(|(&k, &c)| merged.add(k, c))
                            .collect()
                    })
                    .collect();
                Merged {
                    keys: merged.keys,
                    counts: merged.counts,
                    index,
                }
            })
            .collect())
    }

    /// Sends each rank the rows of the keys it asked (`rows[i]`: of feature `i`'s merged
    /// keys) and returns, per piece and dynamic feature, the row of each of its values.
    fn reply(
        &self,
        ex: &dyn Exchange,
        asked: &Asked,
        merged: &[Merged],
        rows: Vec<Vec<u64>>,
    ) -> Result<Vec<Vec<Vec<u64>>>, TableError> {
        let n = self.world;
        let mut replies: Vec<Vec<u64>> = vec![Vec::new(); n];
        for (mg, rows) in merged.iter().zip(&rows) {
            for (reply, at) in replies.iter_mut().zip(&mg.index) {
                reply.extend(at.iter().map(|&k| rows[k]));
            }
        }
        let answers = ex.all_to_all_u64(replies)?;
        self.check_answers(&asked.sent, &answers)?;
        // where feature i's answers start in each owner's reply
        let starts: Vec<Vec<usize>> = asked
            .sent
            .iter()
            .map(|per| {
                per.iter()
                    .scan(0, |at, d| {
                        let start = *at;
                        *at += d.keys.len();
                        Some(start)
                    })
                    .collect()
            })
            .collect();
        Ok(asked
            .slots
            .iter()
            .map(|per_feature| {
                per_feature
                    .iter()
                    .enumerate()
                    .map(|(i, at)| {
                        at.iter()
                            .map(|&(o, k)| answers[o as usize][starts[o as usize][i] + k as usize])
                            .collect()
                    })
                    .collect()
            })
            .collect())
    }

    /// Every owner answered one row for each key sent to it.
    fn check_answers(
        &self,
        sent: &[Vec<Distinct>],
        answers: &[Vec<u64>],
    ) -> Result<(), TableError> {
        for (owner, per) in sent.iter().enumerate() {
            let expected: usize = per.iter().map(|d| d.keys.len()).sum();
            let got = answers.get(owner).map_or(0, Vec::len);
            if got != expected {
                return Err(TableError::Exchange(format!(
                    "rank {}: rank {owner} answered {got} rows for {expected} keys",
                    self.rank
                )));
            }
        }
        Ok(())
    }

    fn malformed(&self, src: usize, len: usize) -> TableError {
        TableError::Exchange(format!(
            "rank {}: malformed key request of {len} values from rank {src}",
            self.rank
        ))
    }

    /// `piece` with every dynamic feature's keys replaced by their rows (`rows[i]`: one
    /// per value of dynamic feature `i`, in order), and the keys without a row left out.
    fn rewrite(
        &self,
        piece: &KeyedJaggedIds,
        rows: &[Vec<u64>],
    ) -> Result<KeyedJaggedIds, TableError> {
        let (nk, b) = (piece.num_keys(), piece.batch_size());
        // per feature, in parallel: its lengths and values
        let parts: Vec<(Vec<u32>, Vec<u64>)> = (0..nk)
            .into_par_iter()
            .map(|f| {
                let dynamic = self.features.iter().position(|&k| k == f);
                let mut lengths = Vec::with_capacity(b);
                let mut values = Vec::with_capacity(piece.key_len(f));
                let mut at = 0;
                for s in 0..b {
                    let ids = piece.ids(f, s);
                    let before = values.len();
                    match dynamic {
                        None => values.extend_from_slice(ids),
                        Some(i) => {
                            let mine = &rows[i][at..at + ids.len()];
                            values.extend(mine.iter().copied().filter(|&r| r != NO_ROW));
                            at += ids.len();
                        }
                    }
                    lengths.push((values.len() - before) as u32);
                }
                (lengths, values)
            })
            .collect();
        let mut lengths = Vec::with_capacity(nk * b);
        let mut values = Vec::with_capacity(piece.values().len());
        for (l, v) in parts {
            lengths.extend(l);
            values.extend(v);
        }
        KeyedJaggedIds::from_lengths(nk, b, &lengths, values)
    }
}

/// Every key of feature `f` in `batch`.
fn values_of(batch: &KeyedJaggedIds, f: usize) -> Result<&[u64], TableError> {
    if f >= batch.num_keys() {
        return Err(TableError::BadBatch(format!(
            "dynamic feature {f} is not in a batch of {} features",
            batch.num_keys()
        )));
    }
    Ok(batch.key_values(f))
}

/// Per feature: count, keys, counts.
fn encode(per: &[Distinct]) -> Vec<u64> {
    let total: usize = per.iter().map(|d| 1 + 2 * d.keys.len()).sum();
    let mut msg = Vec::with_capacity(total);
    for d in per {
        msg.push(d.keys.len() as u64);
        msg.extend_from_slice(&d.keys);
        msg.extend_from_slice(&d.counts);
    }
    msg
}

/// The (keys, counts) of each of `nf` features in a message from [`encode`].
fn decode(msg: &[u64], nf: usize) -> Option<Vec<(&[u64], &[u64])>> {
    let mut out = Vec::with_capacity(nf);
    let mut rest = msg;
    for _ in 0..nf {
        let (&n, tail) = rest.split_first()?;
        let n = usize::try_from(n).ok()?;
        if tail.len() < 2 * n {
            return None;
        }
        let (keys, tail) = tail.split_at(n);
        let (counts, tail) = tail.split_at(n);
        out.push((keys, counts));
        rest = tail;
    }
    rest.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dynamic::{Admission, Eviction};
    use crate::exchange::{SoloExchange, ThreadExchange};

    /// Feature 0 plain (ids pass through), feature 1 dynamic; one id each per sample.
    fn batch(ids: &[(u64, u64)]) -> KeyedJaggedIds {
        let flat: Vec<u64> = ids.iter().flat_map(|&(a, b)| [a, b]).collect();
        KeyedJaggedIds::from_single_valued(2, ids.len(), &flat).unwrap()
    }

    fn maps(rank: usize, world: usize, capacity: u32, admission: Admission) -> KeyMaps {
        let map = KeyRows::new(capacity, admission, Eviction::Lru, 7);
        let base = rank as u64 * u64::from(capacity);
        KeyMaps::new(
            rank,
            world,
            vec![FeatureKeys {
                feature: 1,
                map,
                base,
            }],
        )
    }

    #[test]
    fn keys_become_rows_and_refused_keys_leave_their_bags() {
        let admit2 = Admission::MinCount {
            min_count: 2,
            sketch_bytes: 1 << 12,
        };
        let mut m = maps(0, 1, 8, admit2);
        let mut pieces = [batch(&[(5, 100), (6, 200), (7, 100)])];
        let fresh = m.map_for_training(&SoloExchange, &mut pieces, 1).unwrap();
        // key 100 is seen twice in the step: admitted; key 200 once: refused
        assert_eq!(pieces[0].ids(0, 1), &[6], "plain features pass through");
        assert_eq!(pieces[0].ids(1, 0), &[0]);
        assert!(pieces[0].ids(1, 1).is_empty());
        assert_eq!(pieces[0].ids(1, 2), &[0]);
        assert_eq!(fresh[0].local_rows, vec![0]);
        assert_eq!(fresh[0].keys, vec![100]);
        let seen = m
            .map_read_only(&SoloExchange, &batch(&[(1, 100), (1, 200), (1, 999)]))
            .unwrap();
        assert_eq!(
            seen.key_len(1),
            1,
            "unseen and unadmitted keys read the default row"
        );
        let again = m
            .map_for_training(&SoloExchange, &mut [batch(&[(1, 200)])], 2)
            .unwrap();
        assert_eq!(again[0].keys, vec![200], "the second sighting admits");
    }

    #[test]
    fn owners_hold_their_keys_in_their_blocks_whatever_rank_asks() {
        // room for every key of the 11 a step may bring (eviction is dynamic.rs's test)
        const CAP: u32 = 11;
        let world = 2;
        let steps: Vec<Vec<Vec<(u64, u64)>>> = (0..4u64)
            .map(|s| {
                (0..world as u64)
                    .map(|r| (0..6).map(|i| (i, (s * 3 + r * 5 + i) % 11)).collect())
                    .collect()
            })
            .collect();
        let run = || {
            let exchanges = ThreadExchange::world(world);
            let steps = steps.clone();
            std::thread::scope(|scope| {
                let handles: Vec<_> = exchanges
                    .into_iter()
                    .enumerate()
                    .map(|(rank, ex)| {
                        let steps = &steps;
                        scope.spawn(move || {
                            let mut m = maps(rank, world, CAP, Admission::Always);
                            let mut out = Vec::new();
                            for (s, step) in steps.iter().enumerate() {
                                let mut p = [batch(&step[rank])];
                                m.map_for_training(&ex, &mut p, s as u64 + 1).unwrap();
                                out.push(p[0].key_values(1).to_vec());
                            }
                            (m, out)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        let first = run();
        for (rank, (m, _)) in first.iter().enumerate() {
            for (key, _) in m.features()[0].map.live() {
                assert_eq!(key_owner(key, world), rank);
            }
        }
        // a key reached from both ranks in a step has one row there, in its owner's block
        let last = steps.len() - 1;
        for (rank, (_, rows)) in first.iter().enumerate() {
            for (&(_, key), &row) in steps[last][rank].iter().zip(&rows[last]) {
                let owner = key_owner(key, world);
                let local = first[owner].0.features()[0].map.row_of(key).unwrap();
                assert_eq!(row, owner as u64 * u64::from(CAP) + u64::from(local));
            }
        }
        let second = run();
        let maps_of = |r: &Vec<(KeyMaps, Vec<Vec<u64>>)>| -> Vec<KeyMaps> {
            r.iter().map(|x| x.0.clone()).collect()
        };
        assert_eq!(maps_of(&first), maps_of(&second), "deterministic");
    }

    #[test]
    fn malformed_requests_are_refused_not_read_past() {
        assert!(decode(&[3, 1, 2], 1).is_none());
        assert!(decode(&[1, 9, 1, 5], 1).is_none(), "trailing values");
        assert_eq!(
            decode(&[1, 9, 1], 1).unwrap()[0],
            (&[9u64][..], &[1u64][..])
        );
    }
}
