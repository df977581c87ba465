//! Per-feature vocabularies: categorical values seen at least `min_count` times in the
//! training split get ids 1..n in order of decreasing frequency (frequent rows sit
//! together in memory); every other value, including values first seen in validation or
//! test data, maps to the feature's OOV id 0.
//!
//! Keyed features (`data.keyed_features`) have no vocabulary: nothing is counted for
//! them, their values are encoded as [`key_of`] keys, and their size is 0.
//!
//! Saved as `vocab.bin`: magic, feature count, then per feature its entry count and its
//! entries (length-prefixed bytes and training count) in id order, and a CRC32 of
//! everything before it. A keyed feature's entry count is `u64::MAX` and no entries
//! follow (files written before keys existed have no such count, and read as before).
//!
//! Identity features (`torchrec_npy`, whose ids were made contiguous before us, as
//! TorchRec's `num_embeddings_per_feature` assumes) have no entries either: a value is
//! its decimal id modulo the feature's size. Their entry count is `u64::MAX - 1`,
//! followed by the size.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use super::fast_hash::FastHashBuilder;
use super::keys::key_of;
use super::raw_format::ParsedRow;
use super::DataError;

const MAGIC: &[u8; 8] = b"SRVOCAB1";

/// The entry count `vocab.bin` gives a keyed feature.
const KEYED_MARK: u64 = u64::MAX;
/// The entry count `vocab.bin` gives an identity feature (its size follows).
const IDENTITY_MARK: u64 = u64::MAX - 1;

/// A categorical value's bytes; values of up to 23 bytes (hex hashes, numbers, most
/// names) live inline, so counting tens of millions of values allocates almost nothing.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Inline(u8, [u8; 23]),
    Heap(Box<[u8]>),
}

impl Key {
    fn new(v: &[u8]) -> Self {
        if v.len() <= 23 {
            let mut b = [0u8; 23];
            b[..v.len()].copy_from_slice(v);
            Key::Inline(v.len() as u8, b)
        } else {
            Key::Heap(v.into())
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Key::Inline(n, b) => &b[..*n as usize],
            Key::Heap(b) => b,
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.bytes()
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes().hash(state)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.bytes()))
    }
}

/// Counts values while the training split streams past.
#[derive(Debug)]
pub struct VocabBuilder {
    counts: Vec<HashMap<Key, u64, FastHashBuilder>>,
    /// Per feature: keyed, so not counted (its map stays empty).
    keyed: Vec<bool>,
}

impl VocabBuilder {
    pub fn new(features: usize) -> Self {
        Self::with_keyed(vec![false; features])
    }

    /// A builder for `keyed.len()` features, of which the keyed ones are not counted
    /// and get keyed vocabularies ([`FeatureVocab::is_keyed`]).
    pub fn with_keyed(keyed: Vec<bool>) -> Self {
        Self {
            counts: keyed
                .iter()
                .map(|_| HashMap::with_hasher(FastHashBuilder))
                .collect(),
            keyed,
        }
    }

    /// Counts the values of many rows, features in parallel.
    pub fn add_rows(&mut self, rows: &[&ParsedRow]) {
        use rayon::prelude::*;
        let keyed = &self.keyed;
        self.counts.par_iter_mut().enumerate().for_each(|(f, map)| {
            if keyed[f] {
                return;
            }
            for row in rows {
                for v in row.cat(f) {
                    match map.get_mut(v) {
                        Some(c) => *c += 1,
                        None => {
                            map.insert(Key::new(v), 1);
                        }
                    }
                }
            }
        });
    }

    /// Counts values column by column, features in parallel: `values(f, count)` calls
    /// `count(value, n)` to add `n` to each value of feature `f` (keyed features are not
    /// asked).
    pub(crate) fn add_columns(
        &mut self,
        values: impl Fn(usize, &mut dyn FnMut(&[u8], u64)) + Sync,
    ) {
        use rayon::prelude::*;
        let keyed = &self.keyed;
        self.counts.par_iter_mut().enumerate().for_each(|(f, map)| {
            if keyed[f] {
                return;
            }
            values(f, &mut |v: &[u8], n| match map.get_mut(v) {
                Some(c) => *c += n,
                None => {
                    map.insert(Key::new(v), n);
                }
            });
        });
    }

    pub fn add(&mut self, row: &ParsedRow) {
        for (f, map) in self.counts.iter_mut().enumerate() {
            if self.keyed[f] {
                continue;
            }
            for v in row.cat(f) {
                match map.get_mut(v) {
                    Some(c) => *c += 1,
                    None => {
                        map.insert(Key::new(v), 1);
                    }
                }
            }
        }
    }

    /// Like [`Self::finish`], with each group of features counted as one vocabulary that
    /// every member then uses (sequence data: a target item and a behaviour's item are
    /// one id space). A group is keyed as a whole or not at all (`data.keyed_features`
    /// is checked for that), so copying the first member's vocabulary keeps each
    /// member's kind.
    pub fn finish_shared(mut self, min_count: u64, groups: &[[usize; 2]]) -> Vocab {
        for g in groups {
            let (first, rest) = (g[0], &g[1..]);
            for &m in rest {
                let other = std::mem::take(&mut self.counts[m]);
                let into = &mut self.counts[first];
                for (k, c) in other {
                    *into.entry(k).or_insert(0) += c;
                }
            }
        }
        let mut vocab = self.finish(min_count);
        for g in groups {
            for &m in &g[1..] {
                vocab.features[m] = vocab.features[g[0]].clone();
            }
        }
        vocab
    }

    /// Assigns ids: count >= min_count, most frequent first; ties in a fixed order (by a
    /// hash of the value, then the value), so ids never depend on map iteration order.
    pub fn finish(self, min_count: u64) -> Vocab {
        use rayon::prelude::*;
        let features = self
            .counts
            .into_par_iter()
            .zip(self.keyed)
            .map(|(map, keyed)| {
                if keyed {
                    return FeatureVocab::keyed();
                }
                let tie = |k: &Key| FastHashBuilder.hash_one(k.bytes());
                let mut entries: Vec<(u64, u64, Key)> = map
                    .into_iter()
                    .filter(|(_, c)| *c >= min_count)
                    .map(|(k, c)| (c, tie(&k), k))
                    .collect();
                entries.sort_unstable_by(|a, b| {
                    b.0.cmp(&a.0)
                        .then(a.1.cmp(&b.1))
                        .then_with(|| a.2.cmp(&b.2))
                });
                FeatureVocab::from_entries(entries.into_iter().map(|(c, _, k)| (k, c)).collect())
            })
            .collect();
        Vocab { features }
    }
}

/// One feature's value -> id map (empty for a keyed feature).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureVocab {
    ids: HashMap<Key, u32, FastHashBuilder>,
    /// Training count of id i + 1.
    counts: Vec<u64>,
    /// The feature's values are keys ([`key_of`]), not ids of this map.
    keyed: bool,
    /// The feature's values are decimal ids below this size (no map).
    identity: Option<u64>,
}

impl FeatureVocab {
    fn from_entries(entries: Vec<(Key, u64)>) -> Self {
        let mut ids = HashMap::with_capacity_and_hasher(entries.len(), FastHashBuilder);
        let mut counts = Vec::with_capacity(entries.len());
        for (i, (v, c)) in entries.into_iter().enumerate() {
            ids.insert(v, i as u32 + 1);
            counts.push(c);
        }
        Self {
            ids,
            counts,
            keyed: false,
            identity: None,
        }
    }

    /// The vocabulary of a feature whose values are already ids in `[0, size)`: value
    /// `v` (decimal) is id `v mod size`, TorchRec's convention.
    pub fn identity(size: u64) -> Self {
        Self {
            ids: HashMap::with_hasher(FastHashBuilder),
            counts: Vec::new(),
            keyed: false,
            identity: Some(size.max(1)),
        }
    }

    /// The size of an identity feature ([`Self::identity`]).
    pub fn identity_size(&self) -> Option<u64> {
        self.identity
    }

    /// The vocabulary of a keyed feature: no entries, size 0.
    pub fn keyed() -> Self {
        Self {
            ids: HashMap::with_hasher(FastHashBuilder),
            counts: Vec::new(),
            keyed: true,
            identity: None,
        }
    }

    /// Whether the feature's values are keys rather than ids.
    pub fn is_keyed(&self) -> bool {
        self.keyed
    }

    /// Id of a value; 0 when out of vocabulary (always, for a keyed feature).
    #[inline]
    pub fn id(&self, value: &[u8]) -> u32 {
        match self.identity {
            // the reader wrote the value in decimal; anything else is not an id
            Some(size) => std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |v| (v % size) as u32),
            None => self.ids.get(value).copied().unwrap_or(0),
        }
    }

    /// Number of ids including OOV (the rows a plain table needs); 0 for a keyed
    /// feature, which has no ids.
    pub fn size(&self) -> u64 {
        match (self.keyed, self.identity) {
            (true, _) => 0,
            (false, Some(size)) => size,
            (false, None) => self.counts.len() as u64 + 1,
        }
    }

    /// How one value is written to the prepared data: its key for a keyed feature,
    /// else its id.
    #[inline]
    pub fn encode_value(&self, value: &[u8]) -> u64 {
        if self.keyed {
            key_of(value)
        } else {
            u64::from(self.id(value))
        }
    }

    /// The ids of the values that are integers in canonical decimal (`-12`, not `012`),
    /// keyed by the integer: a typed reader looks them up without formatting text. None
    /// for a keyed or identity feature, which has no counted values to look up.
    pub(crate) fn integer_ids(&self) -> Option<HashMap<i64, u32, FastHashBuilder>> {
        if self.keyed || self.identity.is_some() {
            return None;
        }
        let mut text = itoa::Buffer::new();
        let ids = self
            .entries()
            .filter_map(|(v, id)| {
                let i: i64 = std::str::from_utf8(v).ok()?.parse().ok()?;
                (text.format(i).as_bytes() == v).then_some((i, id))
            })
            .collect();
        Some(ids)
    }

    /// Every value with its id (unordered).
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], u32)> {
        self.ids.iter().map(|(k, &id)| (k.bytes(), id))
    }

    /// Training counts by id (index 0 = id 1).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
}

/// Vocabularies of every categorical feature.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    pub features: Vec<FeatureVocab>,
}

impl Vocab {
    /// A row's categorical values as written, all features in order, one per value
    /// (a multi-valued cell gives one per element, an empty single-valued cell one):
    /// ids (OOV = 0) of vocabulary features, [`key_of`] keys of keyed ones.
    pub fn encode(&self, row: &ParsedRow) -> Vec<u64> {
        let mut values = Vec::with_capacity(self.features.len());
        for (f, fv) in self.features.iter().enumerate() {
            values.extend(row.cat(f).map(|v| fv.encode_value(v)));
        }
        values
    }

    pub fn sizes(&self) -> Vec<u64> {
        self.features.iter().map(FeatureVocab::size).collect()
    }

    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let io = |e| DataError::io(path, e);
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(self.features.len() as u64).to_le_bytes());
        for f in &self.features {
            if f.keyed {
                buf.extend_from_slice(&KEYED_MARK.to_le_bytes());
                continue;
            }
            if let Some(size) = f.identity {
                buf.extend_from_slice(&IDENTITY_MARK.to_le_bytes());
                buf.extend_from_slice(&size.to_le_bytes());
                continue;
            }
            let mut entries: Vec<(&[u8], u32)> =
                f.ids.iter().map(|(k, &v)| (k.bytes(), v)).collect();
            entries.sort_unstable_by_key(|e| e.1);
            buf.extend_from_slice(&(entries.len() as u64).to_le_bytes());
            for (value, id) in entries {
                buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
                buf.extend_from_slice(value);
                buf.extend_from_slice(&f.counts[id as usize - 1].to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&buf);
        let mut w = BufWriter::new(std::fs::File::create(path).map_err(io)?);
        w.write_all(&buf).map_err(io)?;
        w.write_all(&crc.to_le_bytes()).map_err(io)?;
        w.flush().map_err(io)
    }

    pub fn load(path: &Path) -> Result<Self, DataError> {
        let mut data = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| DataError::io(path, e))?;
        let corrupt = |m: &str| DataError::Corrupt {
            path: path.into(),
            message: m.into(),
        };
        if data.len() < 20 || &data[..8] != MAGIC {
            return Err(corrupt("not a shardrec vocabulary file"));
        }
        let (body, tail) = data.split_at(data.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != tail {
            return Err(corrupt("checksum mismatch (truncated or modified)"));
        }
        let mut pos = 8;
        let mut take = |n: usize| -> Result<&[u8], DataError> {
            let s = body
                .get(pos..pos + n)
                .ok_or_else(|| corrupt("unexpected end of file"))?;
            pos += n;
            Ok(s)
        };
        let u64_at = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
        let nf = u64_at(take(8)?) as usize;
        let mut features = Vec::with_capacity(nf.min(1 << 16));
        for _ in 0..nf {
            let n = u64_at(take(8)?);
            if n == KEYED_MARK {
                features.push(FeatureVocab::keyed());
                continue;
            }
            if n == IDENTITY_MARK {
                features.push(FeatureVocab::identity(u64_at(take(8)?)));
                continue;
            }
            let n = n as usize;
            let mut entries = Vec::with_capacity(n.min(1 << 24));
            for _ in 0..n {
                let len = u32::from_le_bytes(take(4)?.try_into().unwrap_or([0; 4])) as usize;
                let value = Key::new(take(len)?);
                let count = u64_at(take(8)?);
                entries.push((value, count));
            }
            features.push(FeatureVocab::from_entries(entries));
        }
        Ok(Self { features })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DataConfig;
    use crate::RowParser;

    #[test]
    fn min_count_frequency_order_and_round_trip() {
        let text = "[data]\nformat = \"delimited\"\ntrain = \"x\"\ncolumns = [{name = \"y\", role = \"label\"}, {name = \"c\", role = \"categorical\"}]\n[model]\nkind = \"lr\"\n";
        let cfg = DataConfig::from_toml_section(text).unwrap();
        let p = RowParser::new(&cfg, &[]).unwrap();
        let mut b = VocabBuilder::new(1);
        let mut row = Default::default();
        for line in ["1\ta", "0\tb", "1\tb", "0\tc", "0\tb", "1\ta"] {
            p.parse(line.as_bytes(), &mut row).unwrap();
            b.add(&row);
        }
        let v = b.finish(2);
        let f = &v.features[0];
        assert_eq!(
            (f.id(b"b"), f.id(b"a"), f.id(b"c"), f.id(b"zz")),
            (1, 2, 0, 0)
        );
        assert_eq!(f.size(), 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vocab.bin");
        v.save(&path).unwrap();
        assert_eq!(Vocab::load(&path).unwrap(), v);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = Vocab::load(&path).unwrap_err().to_string();
        assert!(e.contains("vocab.bin") && e.contains("checksum"), "{e}");
    }

    /// Keyed features are not counted, have size 0, encode as keys, and stay keyed
    /// through `vocab.bin`.
    #[test]
    fn keyed_features_have_no_vocabulary() {
        let text = "[data]\nformat = \"delimited\"\ntrain = \"x\"\ncolumns = [{name = \"y\", role = \"label\"}, {name = \"k\", role = \"categorical\"}, {name = \"c\", role = \"categorical\"}]\n";
        let cfg = DataConfig::from_toml_section(text).unwrap();
        let p = RowParser::new(&cfg, &[]).unwrap();
        let mut b = VocabBuilder::with_keyed(vec![true, false]);
        let mut row = Default::default();
        for line in ["1\t42\ta", "0\tzz\tb", "1\t42\ta"] {
            p.parse(line.as_bytes(), &mut row).unwrap();
            b.add(&row);
        }
        let v = b.finish(1);
        assert_eq!(v.sizes(), [0, 3]);
        assert!(v.features[0].is_keyed() && !v.features[1].is_keyed());
        p.parse(b"1\tzz\tb", &mut row).unwrap();
        assert_eq!(v.encode(&row), [key_of(b"zz"), 2]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vocab.bin");
        v.save(&path).unwrap();
        assert_eq!(Vocab::load(&path).unwrap(), v);
    }
}
