//! The fixed row mask OptEmbed's supernet leaves behind (Lyu et al. 2022, section 3.2):
//! one bit per vocabulary row of every field, set when the row's L1 norm is above its
//! field's learned threshold. Norms are computed where the rows live — each rank sums
//! `|w|` over the rows and columns of the shards it holds, and one all-reduce adds the
//! pieces (L1 is additive over column slices) — so no rank ever gathers a table.
//!
//! The search and retrain stages read the mask from `row_mask.bin`, and the compact
//! export turns it into the id remapping (kept id -> 1 + its rank among kept ids; pruned
//! ids -> row 0).

use std::io::Write;
use std::path::Path;

use shardrec_tables::{Exchange, KeyedJaggedIds};

use super::OptEmbedError;
use crate::cluster::Cluster;
use crate::embedding::EmbeddingEngine;
use crate::TrainError;

const MAGIC: &[u8; 8] = b"SRROWMSK";
const VERSION: u32 = 1;

/// Kept (1) or pruned (0) per field and vocabulary row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowMask {
    rows: Vec<u64>,
    bits: Vec<Vec<u64>>,
}

impl RowMask {
    /// Rows whose norm is above their field's threshold are kept.
    pub fn from_norms(norms: &[Vec<f32>], thresholds: &[f32]) -> Self {
        let mut rows = Vec::new();
        let mut bits = Vec::new();
        for (n, &t) in norms.iter().zip(thresholds) {
            let mut b = vec![0u64; n.len().div_ceil(64)];
            for (r, &x) in n.iter().enumerate() {
                if x - t > 0.0 {
                    b[r / 64] |= 1 << (r % 64);
                }
            }
            rows.push(n.len() as u64);
            bits.push(b);
        }
        Self { rows, bits }
    }

    pub fn features(&self) -> usize {
        self.rows.len()
    }

    /// Vocabulary rows of field `f`.
    pub fn rows(&self, f: usize) -> u64 {
        self.rows[f]
    }

    #[inline]
    pub fn kept(&self, f: usize, id: u64) -> bool {
        id < self.rows[f] && self.bits[f][(id / 64) as usize] >> (id % 64) & 1 == 1
    }

    /// Kept rows of field `f`.
    pub fn kept_rows(&self, f: usize) -> u64 {
        self.bits[f].iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// `[batch, features]` sample-major: 1 where the sample's id of the field is kept.
    /// Every field must hold exactly one id per sample.
    pub fn batch_mask(&self, ids: &KeyedJaggedIds) -> Result<Vec<f32>, TrainError> {
        let (n, f) = (ids.batch_size(), ids.num_keys());
        if f != self.features() {
            return Err(OptEmbedError::BatchFeatures {
                batch: f,
                mask: self.features(),
            }
            .into());
        }
        let mut out = vec![0f32; n * f];
        for k in 0..f {
            for b in 0..n {
                let id = single_id(ids, k, b)?;
                out[b * f + k] = f32::from(u8::from(self.kept(k, id)));
            }
        }
        Ok(out)
    }

    /// Field `f`'s id -> row of its compact table: 1 + rank among kept ids, 0 if pruned.
    pub fn compact_index(&self, f: usize) -> Vec<u32> {
        let mut next = 0u32;
        (0..self.rows[f])
            .map(|id| {
                if self.kept(f, id) {
                    next += 1;
                    next
                } else {
                    0
                }
            })
            .collect()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.rows.len() as u32).to_le_bytes());
        for (n, b) in self.rows.iter().zip(&self.bits) {
            out.extend_from_slice(&n.to_le_bytes());
            for w in b {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses [`Self::to_bytes`]; `path` names the file in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, TrainError> {
        let bad = |why: &str| {
            TrainError::from(OptEmbedError::BadRowMask {
                path: path.to_path_buf(),
                why: why.to_string(),
            })
        };
        if bytes.len() < 20 || &bytes[..8] != MAGIC {
            return Err(bad("no row-mask header"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32fast::hash(body) != want {
            return Err(bad("checksum mismatch (corrupt or truncated)"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(body[o..o + 4].try_into().expect("4 bytes"));
        if u32_at(8) != VERSION {
            return Err(bad(&format!(
                "version {} (this build reads {VERSION})",
                u32_at(8)
            )));
        }
        let features = u32_at(12) as usize;
        let mut at = 16;
        let mut rows = Vec::with_capacity(features);
        let mut bits = Vec::with_capacity(features);
        let u64_at = |o: usize| -> Result<u64, TrainError> {
            body.get(o..o + 8)
                .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
                .ok_or_else(|| bad("shorter than its header says"))
        };
        for _ in 0..features {
            let n = u64_at(at)?;
            at += 8;
            let words = (n as usize).div_ceil(64);
            let mut b = Vec::with_capacity(words);
            for _ in 0..words {
                b.push(u64_at(at)?);
                at += 8;
            }
            rows.push(n);
            bits.push(b);
        }
        if at != body.len() {
            return Err(bad("longer than its header says"));
        }
        Ok(Self { rows, bits })
    }

    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let io = |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension("partial");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&self.to_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(path, &bytes)
    }
}

/// The one id of field `k` in sample `b`.
pub fn single_id(ids: &KeyedJaggedIds, k: usize, b: usize) -> Result<u64, TrainError> {
    match ids.ids(k, b) {
        [id] => Ok(*id),
        other => Err(OptEmbedError::MultiValued {
            feature: k,
            ids: other.len(),
        }
        .into()),
    }
}

/// L1 norm of every row of every field's table (`table_of[f]`, `rows[f]` rows), summed
/// over the shards held here and then over the ranks (collective). Replicas of a
/// data-parallel table count once.
pub fn owner_row_norms(
    engine: &EmbeddingEngine,
    table_of: &[usize],
    rows: &[u64],
    cluster: &Cluster,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let mut norms: Vec<Vec<f32>> = rows.iter().map(|&n| vec![0f32; n as usize]).collect();
    for (t, shard) in engine.shards_to_save() {
        let Some(f) = table_of.iter().position(|&x| x == t) else {
            continue;
        };
        let w = shard.weights()?;
        let width = shard.width();
        for (r, row) in w.chunks_exact(width.max(1)).enumerate() {
            norms[f][shard.rows.start as usize + r] += row.iter().map(|x| x.abs()).sum::<f32>();
        }
    }
    if cluster.world_size() > 1 {
        let mut flat: Vec<f32> = norms.iter().flatten().copied().collect();
        cluster.all_reduce_sum(&mut flat);
        let mut at = 0;
        for n in &mut norms {
            let k = n.len();
            n.copy_from_slice(&flat[at..at + k]);
            at += k;
        }
    }
    Ok(norms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_prune_rows_and_compact_ids_follow_the_kept_ones() {
        let m = RowMask::from_norms(&[vec![0.5, 0.1, 0.9, 0.2], vec![1.0; 70]], &[0.3, 0.0]);
        assert_eq!(m.kept_rows(0), 2);
        assert!(m.kept(0, 0) && !m.kept(0, 1) && m.kept(0, 2) && !m.kept(0, 3));
        assert!(!m.kept(0, 4), "an id past the vocabulary is not kept");
        assert_eq!(m.kept_rows(1), 70);
        assert_eq!(m.compact_index(0), vec![1, 0, 2, 0]);
    }

    #[test]
    fn the_file_round_trips_and_a_flipped_bit_is_refused() {
        let m = RowMask::from_norms(&[vec![0.5, 0.1, 0.9], vec![0.2; 130]], &[0.3, 0.1]);
        let p = Path::new("row_mask.bin");
        let mut bytes = m.to_bytes();
        assert_eq!(RowMask::from_bytes(p, &bytes).unwrap(), m);
        bytes[20] ^= 1;
        let e = RowMask::from_bytes(p, &bytes).unwrap_err().to_string();
        assert!(e.contains("row_mask.bin") && e.contains("checksum"), "{e}");
        let e = RowMask::from_bytes(p, &m.to_bytes()[..30])
            .unwrap_err()
            .to_string();
        assert!(e.contains("row_mask.bin"), "{e}");
    }

    #[test]
    fn batch_masks_are_sample_major() {
        let m = RowMask::from_norms(&[vec![0.5, 0.1], vec![0.1, 0.5]], &[0.3, 0.3]);
        // two samples: (0, 1) and (1, 0)
        let ids = KeyedJaggedIds::from_single_valued(2, 2, &[0, 1, 1, 0]).unwrap();
        assert_eq!(m.batch_mask(&ids).unwrap(), vec![1.0, 1.0, 0.0, 0.0]);
    }
}
