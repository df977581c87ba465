//! `shardrec export`: a trained model in a layout a serving system reads without shardrec.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The model folder (a run's `model/`).
    #[arg(long)]
    model: PathBuf,
    /// Where to write the export (created; files in it are replaced).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let manifest = shardrec::export::export_model(&a.model, &a.out)
        .with_context(|| format!("exporting {} to {}", a.model.display(), a.out.display()))?;
    let features = manifest["features"].as_array().map_or(0, Vec::len);
    eprintln!(
        "[shardrec] exported {features} feature table(s) and the dense network to {}",
        a.out.display()
    );
    println!("{manifest}");
    Ok(())
}
