//! The sparse half of a batch: for each feature (key) and sample, a variable-length list
//! of ids. Same layout as TorchRec's `KeyedJaggedTensor` (keys x batch lengths, then the
//! values in key-major order), validated the same way on construction.

use crate::TableError;

/// Ids of a batch, key-major: lengths[k * batch + b] ids of key k for sample b.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedJaggedIds {
    num_keys: usize,
    batch_size: usize,
    /// offsets[k * batch + b] .. offsets[k * batch + b + 1] index `values`.
    offsets: Vec<usize>,
    values: Vec<u64>,
}

impl Default for KeyedJaggedIds {
    /// No keys and no samples.
    fn default() -> Self {
        Self {
            num_keys: 0,
            batch_size: 0,
            offsets: vec![0],
            values: Vec::new(),
        }
    }
}

impl KeyedJaggedIds {
    /// Builds from per-(key, sample) lengths; checks `lengths.len() == keys * batch` and
    /// `sum(lengths) == values.len()`.
    pub fn from_lengths(
        num_keys: usize,
        batch_size: usize,
        lengths: &[u32],
        values: Vec<u64>,
    ) -> Result<Self, TableError> {
        if lengths.len() != num_keys * batch_size {
            return Err(TableError::BadBatch(format!(
                "{} lengths for {num_keys} keys x {batch_size} samples",
                lengths.len()
            )));
        }
        let mut offsets = Vec::with_capacity(lengths.len() + 1);
        let mut total = 0usize;
        offsets.push(0);
        for &l in lengths {
            total += l as usize;
            offsets.push(total);
        }
        if total != values.len() {
            return Err(TableError::BadBatch(format!(
                "lengths sum to {total} but there are {} values",
                values.len()
            )));
        }
        Ok(Self {
            num_keys,
            batch_size,
            offsets,
            values,
        })
    }

    /// One id per key and sample, given sample-major (`ids[b * keys + k]`), the layout of
    /// a row-oriented file with single-valued categorical columns.
    pub fn from_single_valued(
        num_keys: usize,
        batch_size: usize,
        ids: &[u64],
    ) -> Result<Self, TableError> {
        if ids.len() != num_keys * batch_size {
            return Err(TableError::BadBatch(format!(
                "{} ids for {num_keys} keys x {batch_size} samples",
                ids.len()
            )));
        }
        let mut values = Vec::with_capacity(ids.len());
        for k in 0..num_keys {
            values.extend((0..batch_size).map(|b| ids[b * num_keys + k]));
        }
        let offsets = (0..=ids.len()).collect();
        Ok(Self {
            num_keys,
            batch_size,
            offsets,
            values,
        })
    }

    pub fn num_keys(&self) -> usize {
        self.num_keys
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The ids of key `k` for sample `b`.
    #[inline]
    pub fn ids(&self, k: usize, b: usize) -> &[u64] {
        let i = k * self.batch_size + b;
        &self.values[self.offsets[i]..self.offsets[i + 1]]
    }

    /// All ids, key-major.
    pub fn values(&self) -> &[u64] {
        &self.values
    }

    /// Where the ids of key `k` lie in `values`.
    fn key_range(&self, k: usize) -> std::ops::Range<usize> {
        let s = k * self.batch_size;
        self.offsets[s]..self.offsets[s + self.batch_size]
    }

    /// Every id of key `k`, sample by sample.
    pub fn key_values(&self, k: usize) -> &[u64] {
        &self.values[self.key_range(k)]
    }

    /// Every id of key `k`, to rewrite in place (the bags keep their lengths).
    pub fn key_values_mut(&mut self, k: usize) -> &mut [u64] {
        let range = self.key_range(k);
        &mut self.values[range]
    }

    /// Total number of ids of key `k` in the batch.
    pub fn key_len(&self, k: usize) -> usize {
        self.key_range(k).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_lengths_against_values() {
        assert!(KeyedJaggedIds::from_lengths(2, 2, &[1, 0, 2], vec![1, 2, 3]).is_err());
        assert!(KeyedJaggedIds::from_lengths(2, 2, &[1, 0, 2, 1], vec![1, 2, 3]).is_err());
        let j = KeyedJaggedIds::from_lengths(2, 2, &[1, 0, 2, 1], vec![1, 2, 3, 4]).unwrap();
        assert_eq!(j.ids(0, 0), &[1]);
        assert!(j.ids(0, 1).is_empty());
        assert_eq!(j.ids(1, 0), &[2, 3]);
        assert_eq!(j.ids(1, 1), &[4]);
        assert_eq!(j.key_len(1), 3);
    }

    #[test]
    fn single_valued_transposes_to_key_major() {
        // two samples, three keys
        let j = KeyedJaggedIds::from_single_valued(3, 2, &[10, 11, 12, 20, 21, 22]).unwrap();
        assert_eq!(j.values(), &[10, 20, 11, 21, 12, 22]);
        assert_eq!(j.ids(2, 1), &[22]);
    }
}
