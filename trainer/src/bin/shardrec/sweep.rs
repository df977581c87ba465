//! `shardrec sweep`: one config trained with each table method at several budgets.

use std::path::PathBuf;

use anyhow::Context;
use shardrec::config::load_config;
use shardrec::sweep::{parse_method, sweep, SweepOptions};

use crate::{config_name, on_every_rank};

#[derive(clap::Args)]
pub struct Args {
    config: PathBuf,
    /// Budgets: fractions of the collisionless bytes (<= 1) or bytes (> 1).
    #[arg(long, value_delimiter = ',', required = true)]
    budgets: Vec<f64>,
    /// Table methods to sweep.
    #[arg(long, value_delimiter = ',', default_value = "hashed,qr,unified")]
    methods: Vec<String>,
    /// Output folder (default runs/<name>-sweep).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seeds per point (AUC and logloss are their means).
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (cfg, _) = load_config(&a.config, &a.set)?;
    let name = cfg.name.clone().unwrap_or_else(|| config_name(&a.config));
    let methods = a
        .methods
        .iter()
        .map(|m| parse_method(m))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = SweepOptions {
        budgets: a.budgets,
        methods,
        out: a
            .out
            .unwrap_or_else(|| PathBuf::from("runs").join(format!("{name}-sweep"))),
        seeds: a.seeds,
    };
    let cluster = shardrec::cluster::Cluster::from_environment()?;
    let summary = on_every_rank(&cluster, || {
        sweep(&cfg, &name, &cluster, &opts)
            .with_context(|| format!("sweeping {}", a.config.display()))
    })?;
    if cluster.is_root() {
        println!("{summary}");
    }
    Ok(())
}
