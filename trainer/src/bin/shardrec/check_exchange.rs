//! `shardrec check-exchange`: under `mpirun -np N`, every sharding kind and sparse
//! optimizer must give the one-process table's embeddings and rows (the cases and the
//! verdict are the tables' conformance code's; this runs them over MPI and reports).

use anyhow::Context;
use shardrec_tables::{check_against_one_process, conformance_cases, ConformanceVerdict, Exchange};

#[derive(clap::Args)]
pub struct Args {
    /// Training steps per case.
    #[arg(long, default_value_t = 3)]
    steps: usize,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let cluster = shardrec::cluster::Cluster::from_environment()?;
    let n = cluster.world_size();
    let mut report = Vec::new();
    let mut ok = true;
    for (kinds, opt) in conformance_cases(n) {
        let r = check_against_one_process(&cluster, kinds, opt, a.steps)
            .with_context(|| format!("rank {}: case {kinds:?} {:?}", cluster.rank(), opt.kind))?;
        let mut worst = [r.max_embedding_diff, r.max_row_diff, r.max_row_diff_sliced];
        cluster.all_reduce_max(&mut worst);
        let mut missing = [u32::from(!r.every_row_held_once)];
        cluster.all_reduce_sum(&mut missing);
        let verdict = ConformanceVerdict {
            max_embedding_diff: worst[0],
            max_row_diff: worst[1],
            max_row_diff_sliced: worst[2],
            ranks_missing_rows: missing[0],
        };
        let good = verdict.passes();
        ok &= good;
        report.push(serde_json::json!({
            "kinds": r.kinds, "optimizer": r.optimizer, "steps": a.steps,
            "max_embedding_diff": worst[0], "max_row_diff": worst[1],
            "max_row_diff_sliced": worst[2],
            "every_row_held_once": missing[0] == 0, "ok": good,
        }));
    }
    if cluster.is_root() {
        println!(
            "{}",
            serde_json::json!({ "world_size": n, "mpi": cluster.is_mpi(), "ok": ok, "cases": report })
        );
    }
    anyhow::ensure!(
        ok,
        "the sharded exchange differs from the one-process table (see the report)"
    );
    Ok(())
}
