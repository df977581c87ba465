//! `shardrec prepare`: prepare (or find in the cache) a config's data, or turn a
//! behaviour log into sequence samples by DARE's protocol.

use std::path::{Path, PathBuf};

use anyhow::Context;
use shardrec::config::load_config;
use shardrec::data::behaviour_samples::{
    read_movielens, read_taobao, write_sequence_samples, SampleOptions,
};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BehaviourFormat {
    Taobao,
    Movielens,
}

#[derive(clap::Args)]
pub struct Args {
    /// The experiment config (not with --format).
    config: Option<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Build sequence samples from a behaviour log: taobao (UserBehavior CSV) or
    /// movielens (the folder of RecBole's ml-100k atomic files).
    #[arg(long, value_enum)]
    format: Option<BehaviourFormat>,
    /// The behaviour log (a file, or for movielens its folder).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output folder for train.tsv, valid.tsv, test.tsv and summary.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Behaviours kept as each target's history.
    #[arg(long, default_value_t = 200)]
    history: usize,
    /// Users with fewer page views are dropped (the paper: 210 on Taobao).
    #[arg(long, default_value_t = 210)]
    min_history: usize,
    /// Training targets per user (before the validation and test targets).
    #[arg(long, default_value_t = 5)]
    train_targets: usize,
    /// Negatives per positive, drawn by item frequency among items the user never
    /// touched.
    #[arg(long, default_value_t = 2)]
    negatives: usize,
    #[arg(long, default_value_t = 2025)]
    seed: u64,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.format {
        Some(format) => behaviour_samples(format, &a),
        None => prepare_config(&a),
    }
}

fn behaviour_samples(format: BehaviourFormat, a: &Args) -> anyhow::Result<()> {
    if a.config.is_some() {
        anyhow::bail!("prepare: give either a config or --format, not both");
    }
    let input = a
        .input
        .as_deref()
        .context("prepare --format needs --input")?;
    let out = a.out.as_deref().context("prepare --format needs --out")?;
    let log = match format {
        BehaviourFormat::Taobao => read_taobao(input)?,
        BehaviourFormat::Movielens => read_movielens(input)?,
    };
    let opts = SampleOptions {
        history: a.history,
        min_history: a.min_history,
        train_targets: a.train_targets,
        negatives: a.negatives,
        seed: a.seed,
    };
    let s = write_sequence_samples(&log, &opts, out)?;
    eprintln!(
        "[shardrec] {} users kept, {} dropped (fewer than {} behaviours); {} / {} / {} train / valid / test samples in {}",
        s.users_kept,
        s.users_dropped,
        a.min_history,
        s.rows[0],
        s.rows[1],
        s.rows[2],
        out.display()
    );
    println!("{}", serde_json::to_string(&s)?);
    Ok(())
}

fn prepare_config(a: &Args) -> anyhow::Result<()> {
    let config: &Path = a
        .config
        .as_deref()
        .context("prepare needs a config (or --format with --input and --out)")?;
    let (cfg, _) = load_config(config, &a.set)?;
    let ds = shardrec::data::prepare(&cfg.data, &|m| eprintln!("[shardrec] {m}"))?;
    let rows: serde_json::Map<String, serde_json::Value> = ds
        .splits
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.rows.into()))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "prepared": ds.dir.display().to_string(),
            "rows": rows,
            "vocab_sizes": ds.meta.vocab_sizes,
            "bad_rows_skipped": ds.meta.bad_rows.total(),
            "bad_rows": ds.meta.bad_rows.to_json(),
        })
    );
    Ok(())
}
