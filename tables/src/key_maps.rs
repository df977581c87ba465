//! The key-to-row maps of a collection's dynamic features on one rank, and the exchange
//! that turns a batch's raw keys into table rows before the lookup.
//!
//! A dynamic feature's table is split row-wise over the ranks in blocks of its
//! per-rank capacity; the rank that owns a key ([`key_owner`], by key hash) holds the
//! key's [`KeyRows`] entry and its row, in its own block. So a batch's keys go to their
//! owners first (one all-to-all of every key, duplicates included), the owners admit,
//! evict and answer global rows (a second all-to-all), and the batch then runs through the
//! row-indexed lookup like any other. TorchRec's managed-collision modules remap ids
//! before the sharded lookup in the same way.
//!
//! Keys without a row (not admitted yet, or never seen at evaluation) read the feature's
//! default row. By default that row is zeros: they are left out of their bag (with mean
//! pooling also out of the mean), as Monolith and DeepRec's EmbeddingVariable read a
//! constant for features not yet admitted. With a learned default the owners answer one
//! row of the table kept for it ([`FeatureKeys::default_row`]); every such key reads and
//! trains that row, as every out-of-vocabulary id trains a plain table's OOV row.
//!
//! Determinism: an owner sees every key of the step's whole batch in batch order (ranks
//! in rank order, a rank's slices in order), whatever the number of ranks; so a map
//! evolves the same way on every run of the same seed and rank count. Keys are sent as
//! they come, duplicates included, as TorchRec's input distribution sends ids: the
//! owner's map counts them in the same pass that finds their rows, where deduplicating
//! first would cost a second hash map a step on both sides. With one rank every key is
//! its own: the keys are looked up where they lie in the batch and nothing is sent.

use std::borrow::Cow;

use crate::dynamic::{key_owner, KeyRows};
use crate::exchange::Exchange;
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
    /// The global row of the map's row 0: the start of this rank's block of the table
    /// (after the default row, on the rank whose block holds it).
    pub base: u64,
    /// The global row that keys without a row read (a learned default), or `None`: they
    /// are left out of their bags (a zero default).
    pub default_row: Option<u64>,
}

/// Rows given to new keys in one step, to start afresh before the lookup.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FreshRows {
    /// The feature's index in the batch.
    pub feature: usize,
    /// Global rows of this rank's block.
    pub rows: Vec<u64>,
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

/// What a rank sent the owners (more than one rank: one rank asks nobody): per owner,
/// how many keys of each feature; per piece and feature, the owner of each value.
struct Asked {
    sent: Vec<Vec<usize>>,
    owners: Vec<Vec<Vec<u32>>>,
}

/// One feature's keys as their owner sees them: every asker's, in rank order, and how
/// many came from each asker.
struct Gathered {
    keys: Vec<u64>,
    from: Vec<usize>,
}

impl FeatureKeys {
    /// Looks `keys` up at `step` (after expiring idle rows): the global row of each key
    /// (or [`NO_ROW`]) and the rows new keys took.
    fn answer(&mut self, keys: &[u64], step: u64) -> (Vec<u64>, FreshRows) {
        self.map.expire(step);
        let found = self.map.lookup(keys, step);
        let base = self.base;
        let fresh = FreshRows {
            feature: self.feature,
            rows: found.fresh.iter().map(|&r| base + u64::from(r)).collect(),
            keys: found
                .fresh
                .iter()
                .map(|&r| self.map.key_at(r).unwrap_or(0))
                .collect(),
        };
        let rows = found.rows.iter().map(|&r| self.row_read(r));
        (rows.collect(), fresh)
    }

    /// The global row key `key` reads now, without changing the map.
    fn row_held(&self, key: u64) -> u64 {
        self.row_read(self.map.row_of(key))
    }

    /// The global row of a key that holds map row `row`, or the default row (or
    /// [`NO_ROW`]) for one that holds none.
    fn row_read(&self, row: Option<u32>) -> u64 {
        match row {
            Some(r) => self.base + u64::from(r),
            None => self.default_row.unwrap_or(NO_ROW),
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
        if self.world == 1 {
            let (rows, fresh) = self.answer(&route.local_keys(pieces)?, step);
            route.write_back(pieces, &rows)?;
            return Ok(fresh);
        }
        let (asked, received) = route.ask(ex, pieces)?;
        let gathered = route.gather(&received)?;
        let (rows, fresh) = self.answer(&gathered_keys(&gathered), step);
        let rows = route.reply(ex, &asked, &gathered, &rows)?;
        pieces
            .par_iter_mut()
            .zip(&rows)
            .try_for_each(|(piece, rows)| route.rewrite(piece, rows))?;
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
        let rows = if self.world == 1 {
            self.rows_held(&route.local_keys(pieces)?)
        } else {
            let (asked, received) = route.ask(ex, pieces)?;
            let gathered = route.gather(&received)?;
            let rows = self.rows_held(&gathered_keys(&gathered));
            let mut per_piece = route.reply(ex, &asked, &gathered, &rows)?;
            per_piece.swap_remove(0)
        };
        let mut mapped = batch.clone();
        route.rewrite(&mut mapped, &rows)?;
        Ok(mapped)
    }

    /// Training, as an owner: per feature (in parallel, each map is its own), the global
    /// row each of `keys[i]` reads (or [`NO_ROW`]), and the rows new keys took.
    fn answer<K: AsRef<[u64]> + Sync>(
        &mut self,
        keys: &[K],
        step: u64,
    ) -> (Vec<Vec<u64>>, Vec<FreshRows>) {
        self.features
            .par_iter_mut()
            .zip(keys)
            .map(|(m, keys)| m.answer(keys.as_ref(), step))
            .unzip()
    }

    /// Evaluation, as an owner: per feature, the global row each of `keys[i]` reads now
    /// (or [`NO_ROW`]).
    fn rows_held<K: AsRef<[u64]> + Sync>(&self, keys: &[K]) -> Vec<Vec<u64>> {
        self.features
            .par_iter()
            .zip(keys)
            .map(|(m, keys)| keys.as_ref().iter().map(|&k| m.row_held(k)).collect())
            .collect()
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
    /// One rank owns every key: each feature's keys where they lie in `pieces`, in piece
    /// order (borrowed when there is one piece), with nothing sent.
    fn local_keys<'a>(
        &self,
        pieces: &'a [KeyedJaggedIds],
    ) -> Result<Vec<Cow<'a, [u64]>>, TableError> {
        self.features
            .iter()
            .map(|&f| match pieces {
                [piece] => values_of(piece, f).map(Cow::Borrowed),
                _ => pieces
                    .iter()
                    .map(|p| values_of(p, f))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|parts| parts.concat().into()),
            })
            .collect()
    }

    /// One rank: rewrites each piece with its share of every feature's rows (`rows[i]`:
    /// of [`Self::local_keys`]'s keys of feature `i`).
    fn write_back(
        &self,
        pieces: &mut [KeyedJaggedIds],
        rows: &[Vec<u64>],
    ) -> Result<(), TableError> {
        let mut at = vec![0usize; rows.len()];
        for piece in pieces.iter_mut() {
            let mine: Vec<&[u64]> = self
                .features
                .iter()
                .zip(rows)
                .zip(&mut at)
                .map(|((&f, rows), at)| {
                    let len = piece.key_len(f);
                    *at += len;
                    &rows[*at - len..*at]
                })
                .collect();
            self.rewrite(piece, &mine)?;
        }
        Ok(())
    }

    /// Sends every key of the pieces' dynamic features to its owner; returns what was
    /// sent (to read the answers by) and what every rank sent this one.
    fn ask(
        &self,
        ex: &dyn Exchange,
        pieces: &[KeyedJaggedIds],
    ) -> Result<(Asked, Vec<Vec<u64>>), TableError> {
        let n = self.world;
        // per feature, in parallel: the keys for each owner, and each value's owner
        type FeatureAsk = (Vec<Vec<u64>>, Vec<Vec<u32>>);
        let per_feature: Vec<FeatureAsk> = self
            .features
            .par_iter()
            .map(|&f| {
                let mut to: Vec<Vec<u64>> = vec![Vec::new(); n];
                let mut owners = Vec::with_capacity(pieces.len());
                for piece in pieces {
                    let values = values_of(piece, f)?;
                    let mut of = Vec::with_capacity(values.len());
                    for &key in values {
                        let owner = key_owner(key, n);
                        to[owner].push(key);
                        of.push(owner as u32);
                    }
                    owners.push(of);
                }
                Ok((to, owners))
            })
            .collect::<Result<_, TableError>>()?;
        let mut sent = vec![Vec::with_capacity(self.features.len()); n];
        let mut send: Vec<Vec<u64>> = vec![Vec::new(); n];
        let mut owners = vec![Vec::with_capacity(self.features.len()); pieces.len()];
        for (to, of) in per_feature {
            for (o, keys) in to.into_iter().enumerate() {
                sent[o].push(keys.len());
                send[o].push(keys.len() as u64);
                send[o].extend(keys);
            }
            for (p, of) in of.into_iter().enumerate() {
                owners[p].push(of);
            }
        }
        let received = ex.all_to_all_u64(send)?;
        Ok((Asked { sent, owners }, received))
    }

    /// As an owner: every rank's keys of each feature, in rank order.
    fn gather(&self, received: &[Vec<u64>]) -> Result<Vec<Gathered>, TableError> {
        let mut from: Vec<Vec<&[u64]>> = Vec::with_capacity(received.len());
        for (src, msg) in received.iter().enumerate() {
            let parts = decode(msg, self.features.len());
            from.push(parts.ok_or_else(|| self.malformed(src, msg.len()))?);
        }
        Ok((0..self.features.len())
            .map(|i| Gathered {
                keys: from.iter().flat_map(|parts| parts[i]).copied().collect(),
                from: from.iter().map(|parts| parts[i].len()).collect(),
            })
            .collect())
    }

    /// Sends each rank the rows of the keys it sent (`rows[i]`: of feature `i`'s gathered
    /// keys) and returns, per piece and dynamic feature, the row of each of its values.
    fn reply(
        &self,
        ex: &dyn Exchange,
        asked: &Asked,
        gathered: &[Gathered],
        rows: &[Vec<u64>],
    ) -> Result<Vec<Vec<Vec<u64>>>, TableError> {
        let mut replies: Vec<Vec<u64>> = vec![Vec::new(); self.world];
        for (g, rows) in gathered.iter().zip(rows) {
            let mut at = 0;
            for (reply, &len) in replies.iter_mut().zip(&g.from) {
                reply.extend_from_slice(&rows[at..at + len]);
                at += len;
            }
        }
        let answers = ex.all_to_all_u64(replies)?;
        self.check_answers(&asked.sent, &answers)?;
        // where feature i's answers start in each owner's reply: each owner's cursor
        // then runs through the pieces in order, as their keys were sent
        let mut cursor: Vec<usize> = vec![0; self.world];
        let mut out: Vec<Vec<Vec<u64>>> = vec![Vec::new(); asked.owners.len()];
        for i in 0..self.features.len() {
            for (p, per_feature) in asked.owners.iter().enumerate() {
                let rows = per_feature[i].iter().map(|&o| {
                    cursor[o as usize] += 1;
                    answers[o as usize][cursor[o as usize] - 1]
                });
                out[p].push(rows.collect());
            }
        }
        Ok(out)
    }

    /// Every owner answered one row for each key sent to it.
    fn check_answers(&self, sent: &[Vec<usize>], answers: &[Vec<u64>]) -> Result<(), TableError> {
        for (owner, per) in sent.iter().enumerate() {
            let expected: usize = per.iter().sum();
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

    /// Replaces every dynamic feature's keys in `piece` by their rows (`rows[i]`: one per
    /// value of dynamic feature `i`, in order), leaving out the keys without a row.
    fn rewrite<R: AsRef<[u64]> + Sync>(
        &self,
        piece: &mut KeyedJaggedIds,
        rows: &[R],
    ) -> Result<(), TableError> {
        if rows.iter().all(|r| !r.as_ref().contains(&NO_ROW)) {
            // every key has a row: the bags keep their lengths, the values change in place
            for (&f, rows) in self.features.iter().zip(rows) {
                piece.key_values_mut(f).copy_from_slice(rows.as_ref());
            }
            return Ok(());
        }
        *piece = self.rebuilt(piece, rows)?;
        Ok(())
    }

    /// [`Self::rewrite`] where some bags lose keys: every bag is written again.
    fn rebuilt<R: AsRef<[u64]> + Sync>(
        &self,
        piece: &KeyedJaggedIds,
        rows: &[R],
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
                            let mine = &rows[i].as_ref()[at..at + ids.len()];
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

/// Each feature's gathered keys.
fn gathered_keys(gathered: &[Gathered]) -> Vec<&[u64]> {
    gathered.iter().map(|g| g.keys.as_slice()).collect()
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

/// The keys of each of `nf` features in a message of (count, keys) per feature.
fn decode(msg: &[u64], nf: usize) -> Option<Vec<&[u64]>> {
    let mut out = Vec::with_capacity(nf);
    let mut rest = msg;
    for _ in 0..nf {
        let (&n, tail) = rest.split_first()?;
        let n = usize::try_from(n).ok()?;
        if tail.len() < n {
            return None;
        }
        let (keys, tail) = tail.split_at(n);
        out.push(keys);
        rest = tail;
    }
    rest.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dynamic::{Admission, Eviction};
    use crate::exchange::{SoloExchange, ThreadExchange};

    /// A key gets a row at its second sighting.
    const ADMIT2: Admission = Admission::MinCount {
        min_count: 2,
        sketch_bytes: 1 << 12,
    };

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
                default_row: None,
            }],
        )
    }

    #[test]
    fn keys_become_rows_and_refused_keys_leave_their_bags() {
        let mut m = maps(0, 1, 8, ADMIT2);
        let mut pieces = [batch(&[(5, 100), (6, 200), (7, 100)])];
        let fresh = m.map_for_training(&SoloExchange, &mut pieces, 1).unwrap();
        // key 100 is seen twice in the step: admitted; key 200 once: refused
        assert_eq!(pieces[0].ids(0, 1), &[6], "plain features pass through");
        assert_eq!(pieces[0].ids(1, 0), &[0]);
        assert!(pieces[0].ids(1, 1).is_empty());
        assert_eq!(pieces[0].ids(1, 2), &[0]);
        assert_eq!(fresh[0].rows, vec![0]);
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
    fn with_a_learned_default_keys_without_a_row_read_it_where_they_lie() {
        // the default row is global row 0; the map's rows follow it
        let mut m = maps(0, 1, 7, ADMIT2);
        m.features_mut()[0].base = 1;
        m.features_mut()[0].default_row = Some(0);
        let mut pieces = [batch(&[(5, 100), (6, 200), (7, 100)])];
        let fresh = m.map_for_training(&SoloExchange, &mut pieces, 1).unwrap();
        let ids = |b: &KeyedJaggedIds| (0..3).map(|s| b.ids(1, s).to_vec()).collect::<Vec<_>>();
        assert_eq!(
            ids(&pieces[0]),
            [vec![1], vec![0], vec![1]],
            "200 reads row 0"
        );
        assert_eq!(fresh[0].rows, vec![1], "fresh rows are global");
        let seen = m
            .map_read_only(&SoloExchange, &batch(&[(1, 100), (1, 200), (1, 999)]))
            .unwrap();
        assert_eq!(ids(&seen), [vec![1], vec![0], vec![0]]);
        // two ranks: the owner of a refused key answers the default row, wherever it is
        let ids_of = |rank: usize| -> Vec<(u64, u64)> {
            (0..4).map(|i| (i, 1000 + rank as u64 * 10 + i)).collect()
        };
        let answers: Vec<KeyedJaggedIds> = std::thread::scope(|s| {
            let handles: Vec<_> = ThreadExchange::world(2)
                .into_iter()
                .enumerate()
                .map(|(rank, ex)| {
                    s.spawn(move || {
                        let mut m = maps(rank, 2, 4, ADMIT2);
                        m.features_mut()[0].default_row = Some(3);
                        let mut p = [batch(&ids_of(rank))];
                        m.map_for_training(&ex, &mut p, 1).unwrap();
                        p[0].clone()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for a in &answers {
            assert!(
                (0..4).all(|s| a.ids(1, s) == [3]),
                "every key seen once reads row 3"
            );
        }
    }

    #[test]
    fn one_rank_maps_a_step_in_slices_as_it_maps_it_whole() {
        let samples: Vec<Vec<(u64, u64)>> = (0..3u64)
            .map(|s| (0..6).map(|i| (i, (s * 5 + i * 3) % 7)).collect())
            .collect();
        let (mut whole, mut sliced) = (maps(0, 1, 4, ADMIT2), maps(0, 1, 4, ADMIT2));
        for (s, ids) in samples.iter().enumerate() {
            let step = s as u64 + 1;
            let mut one = [batch(ids)];
            let fresh_whole = whole.map_for_training(&SoloExchange, &mut one, step);
            let mut two = [batch(&ids[..2]), batch(&ids[2..])];
            let fresh_sliced = sliced.map_for_training(&SoloExchange, &mut two, step);
            assert_eq!(fresh_whole.unwrap(), fresh_sliced.unwrap(), "step {step}");
            let bags = |p: &KeyedJaggedIds| -> Vec<Vec<u64>> {
                (0..p.batch_size()).map(|b| p.ids(1, b).to_vec()).collect()
            };
            assert_eq!(bags(&one[0]), [bags(&two[0]), bags(&two[1])].concat());
        }
        assert_eq!(whole, sliced);
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
        assert!(decode(&[1, 9, 5], 1).is_none(), "trailing values");
        assert_eq!(
            decode(&[1, 9, 2, 4, 5], 2).unwrap(),
            vec![&[9u64][..], &[4, 5]]
        );
    }
}
