//! `shardrec synth`: Criteo-format rows from a teacher model with a known Bayes ceiling,
//! or behaviour sequences whose relevant behaviours are known.

use std::path::PathBuf;

use shardrec_data::synth::{generate, SynthOptions};
use shardrec_data::synth_days::generate_days;
use shardrec_data::synth_sequence::{generate_sequences, SequenceSynthOptions};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SynthKind {
    Criteo,
    Sequence,
}

#[derive(clap::Args)]
pub struct Args {
    /// criteo: Criteo-format rows; sequence: sequence TSV (`<out>-train.tsv`,
    /// `<out>-test.tsv`, `<out>-test.relevant`).
    #[arg(long, value_enum, default_value = "criteo")]
    kind: SynthKind,
    /// Rows to write (criteo).
    #[arg(long, default_value_t = 0)]
    rows: u64,
    /// sequence: users (each gives --targets-per-user samples).
    #[arg(long, default_value_t = 25_000)]
    users: u64,
    #[arg(long, default_value_t = 10)]
    targets_per_user: u64,
    /// sequence: each user's last targets that form the test split.
    #[arg(long, default_value_t = 2)]
    test_targets: u64,
    /// sequence: history length of every user (or use --min-history/--max-history).
    #[arg(long)]
    history: Option<usize>,
    #[arg(long, default_value_t = 100)]
    min_history: usize,
    #[arg(long, default_value_t = 10_000)]
    max_history: usize,
    #[arg(long, default_value_t = 50_000)]
    items: u64,
    #[arg(long, default_value_t = 200)]
    categories: u64,
    /// sequence: categories per hidden group (a behaviour is relevant when its
    /// category shares the target category's group).
    #[arg(long, default_value_t = 4)]
    group_size: u64,
    /// sequence: weight of the relevant behaviours' mean value in the click logit.
    #[arg(long, default_value_t = 4.0)]
    relevance_weight: f64,
    /// Output TSV; `<out>.prob` gets each row's true probability, `<out>.json` the summary.
    #[arg(long)]
    out: PathBuf,
    /// Cardinality of every categorical field.
    #[arg(long, default_value_t = 100_000)]
    cardinality: u64,
    /// Per-field cardinalities, comma-separated (overrides --cardinality and --fields).
    #[arg(long, value_delimiter = ',')]
    cardinalities: Vec<u64>,
    #[arg(long, default_value_t = 26)]
    fields: usize,
    #[arg(long, default_value_t = 13)]
    dense: usize,
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    #[arg(long, default_value_t = 8)]
    latent_dim: usize,
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    #[arg(long, default_value_t = 0.02)]
    missing_rate: f64,
    #[arg(long, default_value_t = 0.25)]
    ctr: f64,
    /// Spread the rows over this many days, one file a day (`<out stem>-dayNN.tsv`), with
    /// ids born and dying (--turnover) and click effects that drift (--effect-drift).
    #[arg(long, default_value_t = 1)]
    days: u64,
    /// Days only: the fraction of each field's popularity ranks whose id is replaced by
    /// a newborn one each day.
    #[arg(long, default_value_t = 0.05)]
    turnover: f64,
    /// Days only: radians a day by which the first-order click effects rotate.
    #[arg(long, default_value_t = 0.1)]
    effect_drift: f64,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.kind {
        SynthKind::Sequence => sequences(a),
        SynthKind::Criteo => criteo(a),
    }
}

fn sequences(a: Args) -> anyhow::Result<()> {
    let users = a.users;
    let mut o = SequenceSynthOptions::new(a.out, users, a.history.unwrap_or(a.min_history));
    o.max_len = a.history.unwrap_or(a.max_history);
    o.targets_per_user = a.targets_per_user;
    o.test_targets = a.test_targets;
    o.items = a.items;
    o.categories = a.categories;
    o.group_size = a.group_size;
    o.relevance_weight = a.relevance_weight;
    o.seed = a.seed;
    let step = (users / 10).max(1);
    let s = generate_sequences(o, &|done| {
        if done % step < 256 || done == users {
            eprintln!("[synth] {done} / {users} users");
        }
    })?;
    eprintln!(
        "[synth] wrote {} ({} rows) and {} ({} rows, relevant behaviours in {}); click rate {:.4}, {:.1} relevant behaviours per sample, Bayes test AUC {:.5}",
        s.train_file.display(),
        s.train_rows,
        s.test_file.display(),
        s.test_rows,
        s.relevant_file.display(),
        s.click_rate,
        s.mean_relevant_per_sample,
        s.bayes_test_auc
    );
    println!("{}", serde_json::to_string(&s)?);
    Ok(())
}

fn criteo(a: Args) -> anyhow::Result<()> {
    let rows = a.rows;
    if rows == 0 {
        anyhow::bail!("synth: --rows must be at least 1");
    }
    let mut o = SynthOptions::criteo_like(rows, a.out, a.cardinality);
    o.cardinalities = if a.cardinalities.is_empty() {
        vec![a.cardinality; a.fields]
    } else {
        a.cardinalities
    };
    o.num_dense = a.dense;
    o.zipf_exponent = a.zipf;
    o.latent_dim = a.latent_dim;
    o.seed = a.seed;
    o.test_fraction = a.test_fraction;
    o.missing_rate = a.missing_rate;
    o.ctr = a.ctr;
    if a.days > 1 {
        return days(o, a.days, a.turnover, a.effect_drift);
    }
    let step = (rows / 10).max(1);
    let s = generate(o, &|done| {
        if done % step < (1 << 19) || done == rows {
            eprintln!("[synth] {done} / {rows} rows");
        }
    })?;
    eprintln!(
        "[synth] wrote {} ({} train + {} test rows, click rate {:.4}); Bayes test AUC {:.5}, logloss {:.5}",
        s.data_file.display(),
        s.train_rows,
        s.test_rows,
        s.click_rate,
        s.bayes_auc,
        s.bayes_logloss
    );
    println!("{}", serde_json::to_string(&s)?);
    Ok(())
}

/// `--days N`: one file a day with drift, and the Bayes ceiling of each.
fn days(mut o: SynthOptions, days: u64, turnover: f64, effect_drift: f64) -> anyhow::Result<()> {
    (o.days, o.turnover, o.effect_drift) = (days, turnover, effect_drift);
    let s = generate_days(o, &|_| {})?;
    for d in &s.days {
        eprintln!(
            "[synth] day {}: {} ({} rows, {} new ids of {}, click rate {:.4}); Bayes AUC {:.5}",
            d.day,
            d.data_file.display(),
            d.rows,
            d.new_ids,
            d.distinct_ids,
            d.click_rate,
            d.bayes_auc
        );
    }
    println!("{}", serde_json::to_string(&s)?);
    Ok(())
}
