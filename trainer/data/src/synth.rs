//! Generated Criteo-format data with a known ceiling.
//!
//! A teacher model draws each row: categorical values from a Zipf law over each field's
//! cardinality (some blank), 13 dense counts, and a click with probability
//! `sigmoid(b + sum_f w_f(v_f) + sum_{f<g} <u_f(v_f), u_g(v_g)> + sum_j c_j z_j)`, where
//! the per-value weights `w` and latent vectors `u` are pure functions of (seed, field,
//! value), so no table of 10^8 values is ever held. Rows are produced in parallel chunks
//! and streamed to disk in order; each row's true probability goes to a side file. The
//! Bayes AUC and logloss of the test split (the last `test_fraction` of rows, the split
//! the trainer and the peers use) is the best any model can reach on this data.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;
use shardrec_tables::{hash_id, mix64};

use crate::metrics::{auc, logloss};
use crate::zipf::Zipf;

/// What to generate.
#[derive(Debug, Clone, Serialize)]
pub struct SynthOptions {
    pub rows: u64,
    pub out: PathBuf,
    /// Cardinality of each categorical field.
    pub cardinalities: Vec<u64>,
    pub num_dense: usize,
    pub zipf_exponent: f64,
    pub latent_dim: usize,
    pub seed: u64,
    pub test_fraction: f64,
    /// Probability that a categorical value is blank.
    pub missing_rate: f64,
    /// Target click rate (the bias is calibrated to it).
    pub ctr: f64,
    /// Standard deviations of the first-order, pairwise and dense parts of the logit.
    pub first_order_std: f64,
    pub pairwise_std: f64,
    pub dense_std: f64,
    /// Days the rows are spread over (1: one file, as before); see [`crate::synth_days`].
    pub days: u64,
    /// Each day, the fraction of each field's popularity ranks whose id dies and is
    /// replaced by a newborn id (which takes the rank's popularity and a fresh effect).
    pub turnover: f64,
    /// Radians a day by which the first-order click effects rotate towards independent
    /// ones (their spread is kept): yesterday's effects grow stale.
    pub effect_drift: f64,
}

impl SynthOptions {
    pub fn criteo_like(rows: u64, out: PathBuf, cardinality: u64) -> Self {
        Self {
            rows,
            out,
            cardinalities: vec![cardinality; 26],
            num_dense: 13,
            zipf_exponent: 1.1,
            latent_dim: 8,
            seed: 2024,
            test_fraction: 0.2,
            missing_rate: 0.02,
            ctr: 0.25,
            first_order_std: 0.8,
            pairwise_std: 0.9,
            dense_std: 0.5,
            days: 1,
            turnover: 0.0,
            effect_drift: 0.0,
        }
    }
}

/// What was generated, with the ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct SynthSummary {
    pub options: SynthOptions,
    pub data_file: PathBuf,
    pub prob_file: PathBuf,
    pub train_rows: u64,
    pub test_rows: u64,
    pub click_rate: f64,
    pub bias: f64,
    pub bayes_auc: f64,
    pub bayes_logloss: f64,
}

pub(crate) struct Teacher {
    o: SynthOptions,
    zipf: Vec<Zipf>,
    w_scale: f64,
    u_scale: f64,
    dense_weight: Vec<f64>,
    bias: f64,
}

/// Counter-based uniform in [0, 1).
fn uni(seed: u64, a: u64, b: u64) -> f64 {
    (hash_id(seed ^ mix64(a), b) >> 11) as f64 / (1u64 << 53) as f64
}

fn normal(seed: u64, a: u64, b: u64) -> f64 {
    let u1 = uni(seed, a, 2 * b).max(1e-12);
    let u2 = uni(seed, a, 2 * b + 1);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A bijection on 32 bits, so distinct values print as distinct hex strings.
fn permute32(x: u32, key: u32) -> u32 {
    let mut x = x ^ key;
    x = x.wrapping_mul(0x9E37_79B1);
    x ^= x >> 15;
    x = x.wrapping_mul(0x85EB_CA77);
    x ^= x >> 13;
    x
}

/// One chunk of rows: their TSV text, their probability lines, (label, probability).
type Chunk = (String, String, Vec<(bool, f64)>);

pub(crate) struct Row {
    values: Vec<Option<u64>>,
    dense: Vec<Option<u64>>,
    pub(crate) prob: f64,
    pub(crate) label: bool,
}

impl Teacher {
    /// Dense columns of a generated row (they come before the categorical ones).
    pub(crate) fn num_dense(&self) -> usize {
        self.o.num_dense
    }

    pub(crate) fn new(o: SynthOptions) -> Self {
        let f = o.cardinalities.len() as f64;
        let pairs = (f * (f - 1.0) / 2.0).max(1.0);
        let k = o.latent_dim.max(1) as f64;
        let zipf = o
            .cardinalities
            .iter()
            .map(|&c| Zipf::new(c, o.zipf_exponent))
            .collect();
        let dense_weight = (0..o.num_dense)
            .map(|j| {
                normal(o.seed ^ 0xD5, 7, j as u64) * o.dense_std
                    / (o.num_dense.max(1) as f64).sqrt()
            })
            .collect();
        let mut t = Self {
            w_scale: o.first_order_std / f.max(1.0).sqrt(),
            // var of sum over pairs of <u, u> = pairs * k * s^4
            u_scale: (o.pairwise_std / (pairs * k).sqrt()).sqrt(),
            zipf,
            dense_weight,
            bias: 0.0,
            o,
        };
        t.bias = t.calibrate_bias();
        t
    }

    /// The day of row `r` (rows split evenly over the days, in order).
    pub(crate) fn day_of(&self, r: u64) -> u64 {
        let per_day = self.o.rows.div_ceil(self.o.days.max(1)).max(1);
        (r / per_day).min(self.o.days.max(1) - 1)
    }

    /// The id at popularity rank `rank` of field `f` on `day`: the rank's original id
    /// until its first turnover, then a newborn one (`rank + generation x cardinality`,
    /// so ids never collide).
    fn id_on(&self, f: usize, rank: u64, day: u64) -> u64 {
        if self.o.turnover <= 0.0 {
            return rank;
        }
        let s = self.o.seed ^ 0x99;
        let lineage = ((f as u64) << 40) | rank;
        let generation = (1..=day)
            .filter(|&d| uni(s, lineage, d) < self.o.turnover)
            .count() as u64;
        rank + generation * self.o.cardinalities[f]
    }

    /// The first-order effect of `key` on `day`, rotated by `effect_drift` a day towards
    /// an independent effect of the same spread.
    fn first_order(&self, key: u64, day: u64) -> f64 {
        let s = self.o.seed;
        let base = normal(s ^ 0x11, key, 0);
        if self.o.effect_drift == 0.0 {
            return self.w_scale * base;
        }
        let angle = self.o.effect_drift * day as f64;
        self.w_scale * (angle.cos() * base + angle.sin() * normal(s ^ 0x13, key, 0))
    }

    /// Row r's features and logit (without bias).
    fn draw(&self, r: u64) -> (Vec<Option<u64>>, Vec<Option<u64>>, f64) {
        let s = self.o.seed;
        let nf = self.o.cardinalities.len();
        let k = self.o.latent_dim;
        let mut values = Vec::with_capacity(nf);
        let mut logit = 0.0;
        let mut sum_u = vec![0.0; k];
        let mut sum_sq = 0.0;
        let day = self.day_of(r);
        for f in 0..nf {
            let missing = uni(s, r, f as u64) < self.o.missing_rate;
            let mut counter = 0u64;
            let v = if missing {
                None
            } else {
                let rank = self.zipf[f].sample(|| {
                    counter += 1;
                    uni(s ^ 0x21, mix64(r) ^ f as u64, counter)
                }) - 1;
                Some(self.id_on(f, rank, day))
            };
            // the blank value has its own effect, like any value
            let key = v.map_or(u64::MAX, |v| v) ^ ((f as u64) << 56);
            logit += self.first_order(key, day);
            for (j, acc) in sum_u.iter_mut().enumerate() {
                let u = self.u_scale * normal(s ^ 0x33, key, j as u64 + 1);
                *acc += u;
                sum_sq += u * u;
            }
            values.push(v);
        }
        logit += 0.5 * (sum_u.iter().map(|x| x * x).sum::<f64>() - sum_sq);
        let mut dense = Vec::with_capacity(self.o.num_dense);
        for j in 0..self.o.num_dense {
            if uni(s ^ 0x44, r, j as u64) < 0.1 {
                dense.push(None);
                continue;
            }
            // log-normal counts: z ~ N(0, 1), x = floor(exp(mu + sigma z))
            let z = normal(s ^ 0x55, r, j as u64);
            let mu = 0.5 + (j % 5) as f64 * 0.6;
            let x = (mu + 1.2 * z).exp().floor() as u64;
            logit += self.dense_weight[j] * z;
            dense.push(Some(x));
        }
        (values, dense, logit)
    }

    /// The logit's bias, calibrated to the click rate.
    pub(crate) fn bias(&self) -> f64 {
        self.bias
    }

    fn calibrate_bias(&self) -> f64 {
        let logits: Vec<f64> = (0..20_000u64)
            .into_par_iter()
            .map(|r| self.draw(u64::MAX / 2 + r).2)
            .collect();
        let mean_p = |b: f64| {
            logits
                .iter()
                .map(|l| 1.0 / (1.0 + (-(l + b)).exp()))
                .sum::<f64>()
                / logits.len() as f64
        };
        let (mut lo, mut hi) = (-20.0, 20.0);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if mean_p(mid) < self.o.ctr {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    }

    pub(crate) fn row(&self, r: u64) -> Row {
        let (values, dense, logit) = self.draw(r);
        let prob = 1.0 / (1.0 + (-(logit + self.bias)).exp());
        let label = uni(self.o.seed ^ 0x77, r, 0) < prob;
        Row {
            values,
            dense,
            prob,
            label,
        }
    }

    pub(crate) fn format(&self, row: &Row, out: &mut String) {
        use std::fmt::Write as _;
        out.push(if row.label { '1' } else { '0' });
        for d in &row.dense {
            out.push('\t');
            if let Some(x) = d {
                let _ = write!(out, "{x}");
            }
        }
        for (f, v) in row.values.iter().enumerate() {
            out.push('\t');
            if let Some(v) = v {
                let key = mix64(self.o.seed ^ f as u64) as u32;
                let _ = write!(out, "{:08x}", permute32(*v as u32, key));
            }
        }
        out.push('\n');
    }
}

/// Errors of writing generated data.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("synth: {0}")]
    Options(String),
    #[error("synth --kind sequence: {0}")]
    SequenceOptions(String),
}

impl SynthError {
    pub(crate) fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> Self + '_ {
        move |source| SynthError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Draws rows `rows` of `teacher` in parallel chunks and writes them in order to
/// `data` (TSV) and `probs` (one true probability a line), whose paths are `paths`;
/// returns each row's (label, probability). `progress` gets the rows written so far.
pub(crate) fn write_rows(
    teacher: &Teacher,
    rows: std::ops::Range<u64>,
    (data, probs): (&mut impl Write, &mut impl Write),
    (data_path, prob_path): (&Path, &Path),
    progress: &dyn Fn(u64),
) -> Result<Vec<(bool, f64)>, SynthError> {
    let chunk = 1u64 << 16;
    let mut drawn = Vec::with_capacity((rows.end - rows.start) as usize);
    let mut start = rows.start;
    while start < rows.end {
        let end = (start + chunk * 8).min(rows.end);
        let parts: Vec<Chunk> = (start..end)
            .step_by(chunk as usize)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|a| {
                let b = (a + chunk).min(end);
                let mut text = String::with_capacity((b - a) as usize * 180);
                let mut ptext = String::with_capacity((b - a) as usize * 10);
                let mut lp = Vec::with_capacity((b - a) as usize);
                for r in a..b {
                    let row = teacher.row(r);
                    teacher.format(&row, &mut text);
                    use std::fmt::Write as _;
                    let _ = writeln!(ptext, "{:.6}", row.prob);
                    lp.push((row.label, row.prob));
                }
                (text, ptext, lp)
            })
            .collect();
        for (text, ptext, lp) in parts {
            data.write_all(text.as_bytes())
                .map_err(SynthError::io(data_path))?;
            probs
                .write_all(ptext.as_bytes())
                .map_err(SynthError::io(prob_path))?;
            drawn.extend(lp);
        }
        start = end;
        progress(start);
    }
    Ok(drawn)
}

/// Generates the data; `progress` is called with rows written so far.
pub fn generate(opts: SynthOptions, progress: &dyn Fn(u64)) -> Result<SynthSummary, SynthError> {
    if opts.rows == 0 || opts.cardinalities.is_empty() {
        return Err(SynthError::Options(
            "needs at least one row and one categorical field".into(),
        ));
    }
    if let Some(c) = opts.cardinalities.iter().find(|&&c| c == 0 || c > 1 << 32) {
        return Err(SynthError::Options(format!(
            "cardinality {c} outside [1, 2^32]"
        )));
    }
    if !(0.0..1.0).contains(&opts.test_fraction) {
        return Err(SynthError::Options(format!(
            "test fraction {} outside [0, 1)",
            opts.test_fraction
        )));
    }
    let out = opts.out.clone();
    let prob_path = PathBuf::from(format!("{}.prob", out.display()));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| SynthError::Io {
            path: dir.into(),
            source,
        })?;
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io {
            path: path.clone(),
            source,
        }
    };
    let mut data =
        BufWriter::with_capacity(1 << 22, std::fs::File::create(&out).map_err(io(&out))?);
    let mut probs = BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&prob_path).map_err(io(&prob_path))?,
    );
    let teacher = Teacher::new(opts.clone());
    // Same cut as the trainer's and the peers' tail split: round(n * (1 - f)).
    let train_rows = crate::round_half_even(opts.rows as f64 * (1.0 - opts.test_fraction));
    let mut test_labels = Vec::new();
    let mut test_probs = Vec::new();
    let mut clicks = 0u64;
    let paths = (out.as_path(), prob_path.as_path());
    let drawn = write_rows(
        &teacher,
        0..opts.rows,
        (&mut data, &mut probs),
        paths,
        progress,
    )?;
    for (r, (label, p)) in drawn.into_iter().enumerate() {
        clicks += u64::from(label);
        if r as u64 >= train_rows {
            test_labels.push(if label { 1.0f32 } else { 0.0 });
            test_probs.push(p as f32);
        }
    }
    data.flush().map_err(io(&out))?;
    probs.flush().map_err(io(&prob_path))?;
    let summary = SynthSummary {
        data_file: out.clone(),
        prob_file: prob_path,
        train_rows,
        test_rows: opts.rows - train_rows,
        click_rate: clicks as f64 / opts.rows as f64,
        bias: teacher.bias,
        bayes_auc: auc(&test_labels, &test_probs).unwrap_or(f64::NAN),
        bayes_logloss: logloss(&test_labels, &test_probs),
        options: opts,
    };
    let json_path = PathBuf::from(format!("{}.json", out.display()));
    let text =
        serde_json::to_string_pretty(&summary).map_err(|e| SynthError::Options(e.to_string()))?;
    std::fs::write(&json_path, text).map_err(io(&json_path))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute32_is_a_bijection_on_a_sample() {
        let mut seen = std::collections::HashSet::new();
        for x in 0..100_000u32 {
            assert!(seen.insert(permute32(x, 12345)));
        }
    }
}
