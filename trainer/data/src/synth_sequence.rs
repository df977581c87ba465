//! Generated behaviour sequences where the label depends on a few behaviours, found by a
//! hidden relation between categories, so a sequence model's search stage can be scored
//! against the truth.
//!
//! DARE's premise (Feng et al., "Long-Sequence Recommendation Models Need Decoupled
//! Embeddings", ICLR 2025, arXiv 2410.02604) is that *which* behaviours matter and *what*
//! they say about the click pull one shared embedding two ways. The generator gives the
//! two roles different hidden properties:
//! - relevance: categories fall into hidden groups of `group_size`; a behaviour is
//!   relevant to a target when its category is in the target category's group (a
//!   relation a dot product of category embeddings can express);
//! - predictiveness: every item has a hidden value `v_i ~ N(0, 1)`, independent of its
//!   category.
//!
//! A user's history is `L_u` items drawn uniformly (`L_u` uniform in `[min_len,
//! max_len]`); each of the user's targets is a uniform item, clicked with probability
//! `sigmoid(b + relevance_weight * mean_{i relevant} v_i + target_weight * v_t)`. The
//! last `test_targets` targets of every user are the test split. Beside the test file go
//! the relevant behaviours of every test sample (distances from the target, 1 = most
//! recent) and each sample's true probability, so the Bayes AUC is known.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;
use shardrec_tables::mix64;

use crate::metrics::auc;
use crate::synth::SynthError;

/// What to generate.
#[derive(Debug, Clone, Serialize)]
pub struct SequenceSynthOptions {
    /// Files are `<out>-train.tsv`, `<out>-test.tsv`, `<out>-test.relevant`,
    /// `<out>-test.prob` and `<out>.json`.
    pub out: PathBuf,
    pub users: u64,
    pub targets_per_user: u64,
    pub test_targets: u64,
    pub min_len: usize,
    pub max_len: usize,
    pub items: u64,
    pub categories: u64,
    pub group_size: u64,
    pub relevance_weight: f64,
    pub target_weight: f64,
    pub bias: f64,
    pub seed: u64,
}

impl SequenceSynthOptions {
    pub fn new(out: PathBuf, users: u64, len: usize) -> Self {
        Self {
            out,
            users,
            targets_per_user: 10,
            test_targets: 2,
            min_len: len,
            max_len: len,
            items: 50_000,
            categories: 200,
            group_size: 4,
            relevance_weight: 4.0,
            target_weight: 1.0,
            bias: 0.0,
            seed: 2025,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct SequenceSynthSummary {
    pub train_file: PathBuf,
    pub test_file: PathBuf,
    pub relevant_file: PathBuf,
    pub train_rows: u64,
    pub test_rows: u64,
    pub click_rate: f64,
    pub mean_relevant_per_sample: f64,
    pub bayes_test_auc: f64,
    pub options: SequenceSynthOptions,
}

struct Stream(u64);
impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The hidden world: item categories and values, category groups.
struct World {
    category: Vec<u64>,
    value: Vec<f64>,
    group: Vec<u64>,
}

impl World {
    fn new(o: &SequenceSynthOptions) -> Self {
        let mut r = Stream(mix64(o.seed ^ 0xC0FFEE));
        let category = (0..o.items).map(|_| r.below(o.categories)).collect();
        let value = (0..o.items)
            .map(|_| {
                // Box-Muller
                let (a, b) = (r.unit().max(1e-300), r.unit());
                (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
            })
            .collect();
        // a random permutation of categories cut into groups of group_size
        let mut perm: Vec<u64> = (0..o.categories).collect();
        for i in (1..perm.len()).rev() {
            let j = r.below(i as u64 + 1) as usize;
            perm.swap(i, j);
        }
        let mut group = vec![0; o.categories as usize];
        for (pos, &c) in perm.iter().enumerate() {
            group[c as usize] = pos as u64 / o.group_size.max(1);
        }
        Self {
            category,
            value,
            group,
        }
    }
}

/// One user's lines: (train text, test text, test relevant lines, test probabilities,
/// clicks, samples, relevant count).
struct UserRows {
    train: String,
    test: String,
    relevant: String,
    probs: Vec<f64>,
    labels: Vec<f32>,
    clicks: u64,
    samples: u64,
    relevant_total: u64,
}

fn user_rows(o: &SequenceSynthOptions, w: &World, u: u64) -> UserRows {
    use std::fmt::Write as _;
    let mut r = Stream(mix64(o.seed.wrapping_mul(31) ^ mix64(u + 1)));
    let len = o.min_len + r.below((o.max_len - o.min_len + 1) as u64) as usize;
    let hist: Vec<u64> = (0..len).map(|_| r.below(o.items)).collect();
    let mut items_col = String::with_capacity(len * 7);
    let mut cats_col = String::with_capacity(len * 4);
    for (k, &i) in hist.iter().enumerate() {
        if k > 0 {
            items_col.push(',');
            cats_col.push(',');
        }
        let _ = write!(items_col, "{i}");
        let _ = write!(cats_col, "{}", w.category[i as usize]);
    }
    let mut out = UserRows {
        train: String::new(),
        test: String::new(),
        relevant: String::new(),
        probs: vec![],
        labels: vec![],
        clicks: 0,
        samples: 0,
        relevant_total: 0,
    };
    for t in 0..o.targets_per_user {
        let target = r.below(o.items);
        let tc = w.category[target as usize];
        let g = w.group[tc as usize];
        let mut sum = 0.0;
        let mut relevant = Vec::new();
        for (k, &i) in hist.iter().enumerate() {
            if w.group[w.category[i as usize] as usize] == g {
                sum += w.value[i as usize];
                relevant.push(len - k);
            }
        }
        let signal = if relevant.is_empty() {
            0.0
        } else {
            sum / relevant.len() as f64
        };
        let logit =
            o.bias + o.relevance_weight * signal + o.target_weight * w.value[target as usize];
        let p = 1.0 / (1.0 + (-logit).exp());
        let label = u64::from(r.unit() < p);
        out.clicks += label;
        out.samples += 1;
        out.relevant_total += relevant.len() as u64;
        let test = t + o.test_targets >= o.targets_per_user;
        let dst = if test { &mut out.test } else { &mut out.train };
        let _ = writeln!(
            dst,
            "{label}\tu{u}\t{target}\t{tc}\t{items_col}\t{cats_col}"
        );
        if test {
            relevant.reverse();
            let line: Vec<String> = relevant.iter().map(|d| d.to_string()).collect();
            out.relevant.push_str(&line.join(","));
            out.relevant.push('\n');
            out.probs.push(p);
            out.labels.push(label as f32);
        }
    }
    out
}

fn with_suffix(out: &Path, suffix: &str) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes the files; `progress` gets the users done.
pub fn generate_sequences(
    o: SequenceSynthOptions,
    progress: &dyn Fn(u64),
) -> Result<SequenceSynthSummary, SynthError> {
    if o.min_len > o.max_len || o.items == 0 || o.categories == 0 || o.group_size == 0 {
        return Err(SynthError::SequenceOptions(format!(
            "need min_len <= max_len and items, categories, group size >= 1 (got {}, {}, {}, {}, {})",
            o.min_len, o.max_len, o.items, o.categories, o.group_size
        )));
    }
    if o.users == 0 || o.targets_per_user == 0 {
        return Err(SynthError::SequenceOptions(
            "--users and --targets-per-user must be at least 1".into(),
        ));
    }
    if o.test_targets > o.targets_per_user {
        return Err(SynthError::SequenceOptions(
            "--test-targets exceeds --targets-per-user".into(),
        ));
    }
    let w = World::new(&o);
    let train_file = with_suffix(&o.out, "-train.tsv");
    let test_file = with_suffix(&o.out, "-test.tsv");
    let relevant_file = with_suffix(&o.out, "-test.relevant");
    let prob_file = with_suffix(&o.out, "-test.prob");
    let open = |p: &Path| {
        if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(SynthError::io(d))?;
        }
        std::fs::File::create(p)
            .map(|f| BufWriter::with_capacity(1 << 22, f))
            .map_err(SynthError::io(p))
    };
    let (mut train, mut test, mut rel, mut prob) = (
        open(&train_file)?,
        open(&test_file)?,
        open(&relevant_file)?,
        open(&prob_file)?,
    );
    let (mut labels, mut probs) = (Vec::new(), Vec::new());
    let (mut clicks, mut samples, mut relevant_total, mut train_rows) = (0u64, 0u64, 0u64, 0u64);
    let chunk = 256u64;
    let mut start = 0u64;
    while start < o.users {
        let end = (start + chunk).min(o.users);
        let rows: Vec<UserRows> = (start..end)
            .into_par_iter()
            .map(|u| user_rows(&o, &w, u))
            .collect();
        for r in rows {
            train
                .write_all(r.train.as_bytes())
                .map_err(SynthError::io(&train_file))?;
            test.write_all(r.test.as_bytes())
                .map_err(SynthError::io(&test_file))?;
            rel.write_all(r.relevant.as_bytes())
                .map_err(SynthError::io(&relevant_file))?;
            for p in &r.probs {
                writeln!(prob, "{p:.6}").map_err(SynthError::io(&prob_file))?;
            }
            clicks += r.clicks;
            samples += r.samples;
            relevant_total += r.relevant_total;
            train_rows += r.samples - r.labels.len() as u64;
            labels.extend(r.labels);
            probs.extend(r.probs.iter().map(|&p| p as f32));
        }
        start = end;
        progress(end);
    }
    for (w, p) in [
        (&mut train, &train_file),
        (&mut test, &test_file),
        (&mut rel, &relevant_file),
        (&mut prob, &prob_file),
    ] {
        w.flush().map_err(SynthError::io(p))?;
    }
    let summary = SequenceSynthSummary {
        train_file,
        test_file,
        relevant_file,
        train_rows,
        test_rows: labels.len() as u64,
        click_rate: clicks as f64 / samples.max(1) as f64,
        mean_relevant_per_sample: relevant_total as f64 / samples.max(1) as f64,
        bayes_test_auc: auc(&labels, &probs).unwrap_or(f64::NAN),
        options: o,
    };
    let json_file = with_suffix(&summary.options.out, ".json");
    std::fs::write(
        &json_file,
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )
    .map_err(SynthError::io(&json_file))?;
    Ok(summary)
}
