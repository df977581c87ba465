//! `shardrec train`: train a model as the config describes (OptEmbed's stages, one of
//! them with `--stage`); rank 0 prints the summary as the last stdout line.

use std::path::PathBuf;

use anyhow::Context;
use shardrec::config::{load_config, OptEmbedStage};
use shardrec_tables::Exchange;

use crate::{config_name, on_every_rank};

#[derive(clap::Args)]
pub struct Args {
    config: PathBuf,
    /// Override a config key: --set train.epochs=3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Continue from a checkpoint folder, or from a run folder's newest checkpoint
    /// (any number of ranks may have written it).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// With [optembed]: run one stage only (supernet, search or retrain), in the run
    /// folder `train.run_dir` names, where earlier stages left their output.
    #[arg(long, value_enum)]
    stage: Option<OptEmbedStage>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (cfg, _) = load_config(&a.config, &a.set)?;
    if a.stage.is_some() && !cfg.optembed.as_ref().is_some_and(|o| o.enabled) {
        anyhow::bail!(
            "{}: --stage needs an [optembed] section (with enabled = true)",
            a.config.display()
        );
    }
    let name = cfg.name.clone().unwrap_or_else(|| config_name(&a.config));
    let cluster = shardrec::cluster::Cluster::from_environment()?;
    let resume = a.resume.as_deref();
    let summary = on_every_rank(&cluster, || {
        match a.stage {
            Some(st) => shardrec::optembed::run_stages(&cfg, &name, &cluster, resume, Some(st)),
            None => shardrec::train(&cfg, &name, &cluster, resume),
        }
        .with_context(|| {
            format!(
                "rank {} of {}: training {}",
                cluster.rank(),
                cluster.world_size(),
                a.config.display()
            )
        })
    })?;
    if !cluster.is_root() {
        return Ok(());
    }
    eprintln!(
        "[shardrec] test auc {} logloss {} | {:.0} samples/s | run folder {}",
        summary["auc"],
        summary["logloss"],
        summary["train_samples_per_s"].as_f64().unwrap_or(0.0),
        summary["run_dir"]
    );
    println!("{summary}");
    Ok(())
}
