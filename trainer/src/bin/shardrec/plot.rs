//! `shardrec plot`: several runs' learning curves in one picture, to compare them.

use std::path::PathBuf;

use anyhow::Context;
use shardrec::curves::{draw, RunCurves};

#[derive(clap::Args)]
pub struct Args {
    /// Run folders (each with its `metrics.jsonl`); the legend names them.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The PNG file to write.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let runs = a
        .runs
        .iter()
        .map(|r| RunCurves::read(r).with_context(|| format!("reading the run {}", r.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    draw(&a.out, &runs)?;
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    eprintln!(
        "[shardrec] drew {} run(s) to {}",
        runs.len(),
        a.out.display()
    );
    println!("{}", serde_json::json!({ "plot": a.out, "runs": names }));
    Ok(())
}
