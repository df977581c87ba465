//! `shardrec eval`: evaluate a saved model or checkpoint on the config's test data.

use std::path::PathBuf;

use anyhow::Context;
use shardrec::config::load_config;
use shardrec_tables::Exchange;

use crate::on_every_rank;

#[derive(clap::Args)]
pub struct Args {
    config: PathBuf,
    #[arg(long)]
    model: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (cfg, _) = load_config(&a.config, &a.set)?;
    let cluster = shardrec::cluster::Cluster::from_environment()?;
    let summary = on_every_rank(&cluster, || {
        shardrec::eval_saved_model(&cfg, &a.model, &cluster).with_context(|| {
            format!(
                "rank {} of {}: evaluating {}",
                cluster.rank(),
                cluster.world_size(),
                a.model.display()
            )
        })
    })?;
    if cluster.is_root() {
        println!("{summary}");
    }
    Ok(())
}
