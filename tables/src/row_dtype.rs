//! The precision of stored rows: f32, or 16-bit floats (IEEE half or bfloat16) that halve
//! the bytes of a table in every tier, as FBGEMM's `SparseType.FP16` weights do.
//!
//! Rows are held as 4-byte *words*: an f32 row keeps one value in each, a 16-bit row two
//! (value `2i` in the low half of word `i`, `2i + 1` in the high half; an odd width leaves
//! the last high half zero). A 16-bit word is only moved or read through `to_bits`, never
//! computed on, so its bits are what was stored. Optimizer state stays f32.
//!
//! Lookups widen rows to f32 and updates run in f32; writing a row back rounds it
//! *stochastically* (Gupta et al. 2015, "Deep learning with limited numerical precision";
//! FBGEMM's `stochastic_rounding` for fp16 weights): up to the next 16-bit value with
//! probability equal to the distance from the one below, so small updates are kept on
//! average instead of rounding away. The random stream is a pure function of (table,
//! update count, global row, global column), so a table trains to the same bits whatever
//! the tier, the sharding or the number of threads.

use serde::{Deserialize, Serialize};

use crate::hashing::mix64;

/// How stored rows are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowDtype {
    #[default]
    F32,
    /// IEEE 754 half precision (5 exponent bits: range about 6e-5 to 65504).
    F16,
    /// bfloat16 (f32's range, 8 significant bits).
    Bf16,
}

/// How values become 16-bit ones.
#[derive(Debug, Clone, Copy)]
pub enum Rounding {
    /// To the nearest (ties to even): loading rows, which are exact when they came from
    /// a table of this precision.
    Nearest,
    /// Stochastic, from the stream of [`RowDtype::rounding_key`] for this row;
    /// `first_col`: the table column of the row's first value.
    Stochastic { key: u64, first_col: usize },
}

impl RowDtype {
    /// Words a row of `width` values takes.
    pub fn words(self, width: usize) -> usize {
        match self {
            Self::F32 => width,
            Self::F16 | Self::Bf16 => width.div_ceil(2),
        }
    }

    /// Bytes a value takes.
    pub fn value_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// The random stream of one update (`step`) of one row of one table (`salt`).
    pub fn rounding_key(salt: u64, step: u64, global_row: u64) -> u64 {
        mix64(mix64(salt ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ global_row)
    }

    /// A table's salt, from its name: tables updated at the same step draw different
    /// streams.
    pub fn salt(table: &str) -> u64 {
        table
            .bytes()
            .fold(0xCBF2_9CE4_8422_2325, |h, b| mix64(h ^ u64::from(b)))
    }

    /// The values of one row (`out.len()` of them) from its words.
    pub fn decode(self, words: &[f32], out: &mut [f32]) {
        match self {
            Self::F32 => out.copy_from_slice(&words[..out.len()]),
            Self::F16 | Self::Bf16 => {
                for (i, v) in out.iter_mut().enumerate() {
                    *v = self.widen(half_of(words, i));
                }
            }
        }
    }

    /// Appends one row's `width` values, from its words, to `out` (an f32 row is copied
    /// as it is, with no zero-filling first: this is the lookups' path).
    pub fn widen_into(self, words: &[f32], width: usize, out: &mut Vec<f32>) {
        match self {
            Self::F32 => out.extend_from_slice(&words[..width]),
            Self::F16 | Self::Bf16 => out.extend((0..width).map(|i| self.widen(half_of(words, i)))),
        }
    }

    /// One row's `values` into its words.
    pub fn encode(self, values: &[f32], words: &mut [f32], rounding: Rounding) {
        if self == Self::F32 {
            words[..values.len()].copy_from_slice(values);
            return;
        }
        for (i, (w, pair)) in words.iter_mut().zip(values.chunks(2)).enumerate() {
            let lo = self.narrow(pair[0], rounding, 2 * i);
            let hi = pair
                .get(1)
                .map_or(0, |&v| self.narrow(v, rounding, 2 * i + 1));
            *w = f32::from_bits(u32::from(lo) | (u32::from(hi) << 16));
        }
    }

    fn widen(self, bits: u16) -> f32 {
        let b = u32::from(bits);
        match self {
            Self::Bf16 => f32::from_bits(b << 16),
            // a normal half: rebias the exponent (15 -> 127) and widen the mantissa
            _ if (0x0400..0x7C00).contains(&(b & 0x7FFF)) => {
                f32::from_bits(((b & 0x8000) << 16) | (((b & 0x7FFF) + (112 << 10)) << 13))
            }
            _ => half::f16::from_bits(bits).to_f32(),
        }
    }

    fn nearest(self, v: f32) -> u16 {
        match self {
            Self::Bf16 => half::bf16::from_f32(v).to_bits(),
            _ => half::f16::from_f32(v).to_bits(),
        }
    }

    /// `v` as 16 bits: the nearest, or one of the two values around it, the upper with
    /// probability (v - below) / (above - below).
    fn narrow(self, v: f32, rounding: Rounding, index: usize) -> u16 {
        let Rounding::Stochastic { key, first_col } = rounding else {
            return self.nearest(v);
        };
        // 16 random bits a value, four from each draw of the column's stream
        let col = first_col + index;
        let random = (mix64(key ^ (col / 4) as u64) >> (16 * (col % 4))) as u32 & 0xFFFF;
        let (bits, magnitude) = (v.to_bits(), v.to_bits() & 0x7FFF_FFFF);
        match self {
            // adding random bits below the kept ones carries into them with probability
            // equal to the dropped fraction; then truncate (magnitudes round away from
            // zero, as the sign is apart)
            Self::Bf16 if magnitude < 0x7F7F_0000 => (bits.wrapping_add(random) >> 16) as u16,
            // a normal half, below its largest value: 13 dropped mantissa bits
            Self::F16 if (0x3880_0000..0x477F_E000).contains(&magnitude) => {
                let m = (magnitude + (random >> 3)) >> 13;
                ((bits >> 16) & 0x8000) as u16 | (m - (112 << 10)) as u16
            }
            _ => self.narrow_slowly(v, random),
        }
    }

    /// Stochastic rounding of values outside the fast paths (half subnormals, values
    /// near the largest, infinities), from the two 16-bit values around `v`.
    fn narrow_slowly(self, v: f32, random: u32) -> u16 {
        let near = self.nearest(v);
        let got = self.widen(near);
        if got == v || !v.is_finite() {
            return near;
        }
        // 16-bit floats are sign and magnitude: one step of the bits is one value
        // toward (-1) or away from (+1) zero.
        let (below, above) = if got.abs() > v.abs() {
            (near - 1, near)
        } else {
            (near, near + 1)
        };
        let (lo, hi) = (self.widen(below).abs(), self.widen(above).abs());
        let p = (v.abs() - lo) / (hi - lo);
        if (random as f32) * (1.0 / 65536.0) < p {
            above
        } else {
            below
        }
    }
}

/// The `i`-th 16-bit value of a row of words.
fn half_of(words: &[f32], i: usize) -> u16 {
    (words[i / 2].to_bits() >> (16 * (i % 2))) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_the_precision_survive_a_round_trip_bit_for_bit() {
        for dtype in [RowDtype::F32, RowDtype::F16, RowDtype::Bf16] {
            let values = [0.5f32, -1.25, 3.0, 0.0, -0.0, 1024.0, 0.75];
            let mut words = vec![0f32; dtype.words(values.len())];
            assert_eq!(
                words.len() * 4,
                (values.len() * dtype.value_bytes()).next_multiple_of(4)
            );
            dtype.encode(&values, &mut words, Rounding::Nearest);
            let mut back = [9f32; 7];
            dtype.decode(&words, &mut back);
            assert_eq!(
                back.map(f32::to_bits),
                values.map(f32::to_bits),
                "{dtype:?}"
            );
            // stochastic rounding of a representable value is the value itself
            let key = RowDtype::rounding_key(1, 2, 3);
            dtype.encode(
                &values,
                &mut words,
                Rounding::Stochastic { key, first_col: 0 },
            );
            dtype.decode(&words, &mut back);
            assert_eq!(
                back.map(f32::to_bits),
                values.map(f32::to_bits),
                "{dtype:?}"
            );
        }
    }

    /// Stochastic rounding is unbiased: the mean of many roundings of one value is the
    /// value, where rounding to nearest is off by up to half a step.
    #[test]
    fn stochastic_rounding_is_unbiased_and_stays_between_neighbours() {
        for (dtype, v) in [
            (RowDtype::F16, 0.100_03f32),
            (RowDtype::Bf16, -0.012_345_6f32),
        ] {
            let n = 200_000;
            let mut sum = 0f64;
            let mut seen = std::collections::BTreeSet::new();
            for step in 0..n {
                let key = RowDtype::rounding_key(7, step, 11);
                let mut w = [0f32];
                dtype.encode(&[v], &mut w, Rounding::Stochastic { key, first_col: 4 });
                let mut x = [0f32];
                dtype.decode(&w, &mut x);
                sum += f64::from(x[0]);
                seen.insert(x[0].to_bits());
            }
            let neighbours: Vec<f64> = seen.iter().map(|&b| f64::from(f32::from_bits(b))).collect();
            assert_eq!(neighbours.len(), 2, "{dtype:?}: {neighbours:?}");
            let (lo, hi) = (
                neighbours[0].min(neighbours[1]),
                neighbours[0].max(neighbours[1]),
            );
            assert!(
                lo < f64::from(v) && f64::from(v) < hi,
                "{dtype:?}: {neighbours:?}"
            );
            // the standard error of the mean is about 0.001 of a step
            let mean = sum / n as f64;
            assert!(
                (mean - f64::from(v)).abs() < 0.01 * (hi - lo),
                "{dtype:?}: mean {mean} vs {v}, step {}",
                hi - lo
            );
        }
    }

    #[test]
    fn the_stream_depends_on_table_step_row_and_column() {
        let base = RowDtype::rounding_key(RowDtype::salt("a"), 1, 1);
        assert_ne!(base, RowDtype::rounding_key(RowDtype::salt("b"), 1, 1));
        assert_ne!(base, RowDtype::rounding_key(RowDtype::salt("a"), 2, 1));
        assert_ne!(base, RowDtype::rounding_key(RowDtype::salt("a"), 1, 2));
        // a row split by columns rounds as the whole row does
        let v: Vec<f32> = (0..6).map(|i| 0.1 + i as f32 * 0.0137).collect();
        let mut whole = vec![0f32; 3];
        RowDtype::F16.encode(
            &v,
            &mut whole,
            Rounding::Stochastic {
                key: base,
                first_col: 0,
            },
        );
        let mut right = vec![0f32; 2];
        RowDtype::F16.encode(
            &v[2..],
            &mut right,
            Rounding::Stochastic {
                key: base,
                first_col: 2,
            },
        );
        let (mut a, mut b) = (vec![0f32; 6], vec![0f32; 4]);
        RowDtype::F16.decode(&whole, &mut a);
        RowDtype::F16.decode(&right, &mut b);
        assert_eq!(&a[2..], &b[..]);
    }

    #[test]
    fn out_of_range_values_saturate_or_pass_through() {
        let mut w = [0f32];
        let mut x = [0f32];
        let key = RowDtype::rounding_key(0, 1, 0);
        for v in [f32::INFINITY, f32::NEG_INFINITY] {
            RowDtype::F16.encode(&[v], &mut w, Rounding::Stochastic { key, first_col: 0 });
            RowDtype::F16.decode(&w, &mut x);
            assert_eq!(x[0], v);
        }
        RowDtype::F16.encode(&[1e6], &mut w, Rounding::Stochastic { key, first_col: 0 });
        RowDtype::F16.decode(&w, &mut x);
        assert!(x[0] == 65504.0 || x[0].is_infinite(), "{}", x[0]);
    }
}
