//! A batch of sequence data -> the ids of `batch * (L + 1)` embedding rows: per sample,
//! its target, then `L` history slots holding the newest `L` behaviours oldest first,
//! left-padded (a padded slot has no id, so its row is zeros and its mask false). A
//! behaviour's time id is its distance from the target (1 = most recent), the target's
//! 0, as DARE's code numbers them (Feng et al. 2025, arXiv 2410.02604). One lookup serves
//! target and history, so each table's gradient is applied once per step.

use shardrec_tables::{KeyedJaggedIds, TableError};

use crate::data::sequence_format::{HIST_CATEGORIES, HIST_ITEMS, TARGET_CATEGORY, TARGET_ITEM};

/// How a sequence model's lookups are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceLookup {
    /// `L`: history slots per sample.
    pub len: usize,
    /// Two embedding sets (DARE): every id is looked up for both.
    pub decoupled: bool,
}

impl SequenceLookup {
    /// Keys of the lookup: item, category, time (twice when decoupled).
    pub fn keys(&self) -> usize {
        if self.decoupled {
            6
        } else {
            3
        }
    }

    /// The ids of every embedding row, and the `[batch, L]` slot mask (row-major).
    pub fn expand(
        &self,
        sparse: &KeyedJaggedIds,
    ) -> Result<(KeyedJaggedIds, Vec<bool>), TableError> {
        if sparse.num_keys() <= HIST_CATEGORIES {
            return Err(TableError::BadBatch(format!(
                "sequence models read 5 categorical features, the batch has {}",
                sparse.num_keys()
            )));
        }
        let (b, l) = (sparse.batch_size(), self.len);
        let rows = b * (l + 1);
        // per sample: the behaviours kept (the newest `l`), checked once for all keys
        let mut kept = Vec::with_capacity(b);
        let mut mask = Vec::with_capacity(b * l);
        for s in 0..b {
            let items = sparse.ids(HIST_ITEMS, s);
            let cats = sparse.ids(HIST_CATEGORIES, s);
            if items.len() != cats.len() {
                return Err(TableError::BadBatch(format!(
                    "sample {s}: {} history items but {} categories",
                    items.len(),
                    cats.len()
                )));
            }
            let n = items.len().min(l);
            kept.push(n);
            mask.extend((0..l).map(|j| j >= l - n));
        }
        let keys = self.keys();
        let mut lengths = vec![0u32; keys * rows];
        let mut values = Vec::with_capacity(keys * rows);
        // key by key (the jagged layout's order), each sample's target row and then its
        // slots: padding (no id) before the kept behaviours
        // (`max(1)`: a rank's batch may be empty at the end of a pass)
        for (k, lengths) in lengths.chunks_mut(rows.max(1)).enumerate() {
            let role = k % 3;
            for (s, &n) in kept.iter().enumerate() {
                let single = |k: usize| sparse.ids(k, s).first().copied().unwrap_or(0);
                let base = s * (l + 1);
                lengths[base] = 1;
                values.push(match role {
                    0 => single(TARGET_ITEM),
                    1 => single(TARGET_CATEGORY),
                    _ => 0,
                });
                lengths[base + 1 + l - n..base + 1 + l].fill(1);
                let newest = |k: usize| {
                    let ids = sparse.ids(k, s);
                    &ids[ids.len() - n..]
                };
                match role {
                    0 => values.extend_from_slice(newest(HIST_ITEMS)),
                    1 => values.extend_from_slice(newest(HIST_CATEGORIES)),
                    // a behaviour's distance from the target, oldest kept first
                    _ => values.extend((1..=n as u64).rev()),
                }
            }
        }
        Ok((
            KeyedJaggedIds::from_lengths(keys, rows, &lengths, values)?,
            mask,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Sample<'a> = (u64, u64, &'a [u64], &'a [u64]);

    /// Sequence-data ids: user 7, then target item, target category, histories.
    fn batch(samples: &[Sample]) -> KeyedJaggedIds {
        let mut lengths = vec![];
        let mut values = vec![];
        for col in 0..5 {
            for s in samples {
                let v: Vec<u64> = match col {
                    0 => vec![7],
                    1 => vec![s.0],
                    2 => vec![s.1],
                    3 => s.2.to_vec(),
                    _ => s.3.to_vec(),
                };
                lengths.push(v.len() as u32);
                values.extend(v);
            }
        }
        KeyedJaggedIds::from_lengths(5, samples.len(), &lengths, values).unwrap()
    }

    #[test]
    fn newest_behaviours_fill_the_last_slots_with_their_distance_as_time() {
        let lk = SequenceLookup {
            len: 3,
            decoupled: false,
        };
        let b = batch(&[
            (10, 20, &[1, 2, 3, 4], &[5, 6, 7, 8]),
            (11, 21, &[9], &[4]),
            (12, 22, &[], &[]),
        ]);
        let (ids, mask) = lk.expand(&b).unwrap();
        assert_eq!(ids.batch_size(), 12);
        // sample 0 keeps 2, 3, 4 (oldest dropped); times 3, 2, 1
        assert_eq!(ids.ids(0, 0), &[10]);
        assert_eq!(ids.ids(2, 0), &[0]);
        assert_eq!(
            (1..4).map(|r| ids.ids(0, r)[0]).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(
            (1..4).map(|r| ids.ids(1, r)[0]).collect::<Vec<_>>(),
            vec![6, 7, 8]
        );
        assert_eq!(
            (1..4).map(|r| ids.ids(2, r)[0]).collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        // sample 1: two padded slots, then item 9 at time 1
        assert!(ids.ids(0, 5).is_empty() && ids.ids(2, 6).is_empty());
        assert_eq!(ids.ids(0, 7), &[9]);
        assert_eq!(ids.ids(2, 7), &[1]);
        // sample 2: no history, all padding
        assert_eq!(ids.ids(0, 8), &[12]);
        assert!((9..12).all(|r| ids.ids(0, r).is_empty()));
        assert_eq!(
            mask,
            vec![true, true, true, false, false, true, false, false, false]
        );
        let two = SequenceLookup {
            len: 3,
            decoupled: true,
        };
        let (ids2, _) = two.expand(&b).unwrap();
        // a rank's empty batch at the end of a pass
        let (none, mask) = two.expand(&batch(&[])).unwrap();
        assert_eq!((none.batch_size(), none.num_keys(), mask.len()), (0, 6, 0));
        assert_eq!(ids2.num_keys(), 6);
        assert_eq!(ids2.ids(3, 1), ids.ids(0, 1));
        assert_eq!(ids2.ids(5, 2), ids.ids(2, 2));
    }
}
