//! `shardrec`: train, evaluate, sweep, prepare data, generate data, check the exchange.
//! A thin layer over the `shardrec` library, one module per subcommand; every error is
//! printed with its chain and exits non-zero.

mod check_exchange;
mod eval;
mod export;
mod plot;
mod prepare;
mod sweep;
mod synth;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shardrec_tables::Exchange;

#[derive(Parser)]
#[command(
    name = "shardrec",
    version,
    about = "CTR / recommendation trainer with sharded embedding tables"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model as the TOML config describes; the last stdout line is a JSON summary.
    Train(train::Args),
    /// Evaluate a saved model (a run's model/ folder) or a checkpoint on the config's test
    /// data; under mpirun the tables are sharded over the job's ranks.
    Eval(eval::Args),
    /// Train one config with each table method at several memory budgets (plus the
    /// collisionless reference); writes sweep.csv and sweep.png (AUC against bytes).
    Sweep(sweep::Args),
    /// Prepare (or find in the cache) the config's data and print where it is; or, with
    /// `--format taobao|movielens`, turn a behaviour log into sequence samples (train,
    /// valid and test TSV in `--out`) by DARE's protocol.
    Prepare(prepare::Args),
    /// Generate Criteo-format data from a teacher model with a known Bayes ceiling, or
    /// (`--kind sequence`) behaviour sequences whose relevant behaviours are known.
    Synth(synth::Args),
    /// Check the job's sharded embedding exchange: under `mpirun -np N`, every sharding
    /// kind and sparse optimizer must give the embeddings and rows of the one-process table
    /// (within 1e-6). Rank 0 prints a JSON report; exits non-zero on any mismatch.
    CheckExchange(check_exchange::Args),
    /// Write a trained model for serving without shardrec: per feature its keys and rows
    /// (documented binary files), the dense network as safetensors, and a manifest.
    Export(export::Args),
    /// Draw the learning curves of one or more runs (their metrics.jsonl) in one PNG:
    /// training loss and validation AUC against samples seen, a stream's days.
    Plot(plot::Args),
}

/// The run folder's default name: the config file's stem.
fn config_name(path: &std::path::Path) -> String {
    path.file_stem()
        .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned())
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Sweep(a) => sweep::run(a),
        Command::Prepare(a) => prepare::run(a),
        Command::Synth(a) => synth::run(a),
        Command::CheckExchange(a) => check_exchange::run(a),
        Command::Export(a) => export::run(a),
        Command::Plot(a) => plot::run(a),
    }
}

/// Every training step allocates and frees the same few-megabyte buffers (batch
/// tensors, activations, gathered rows, gradients). With glibc's default thresholds such
/// blocks are mmapped and returned to the kernel on free, so every step pays page faults
/// and zero-filling for them again; keeping them in the heap avoids that. This applies to
/// libtorch's allocations too. The threshold cannot go above 32 MiB, and a sequence
/// model's step has larger buffers (DARE at L = 200, batch 512: a 40 MB embedding input
/// and its gradient), so mmap is turned off altogether: blocks of any size come from the
/// heap and stay there for the next step (docs/benchmarks.md section 18: DARE +19%
/// samples/s, DLRM +7%, peak RSS unchanged). One arena for every thread: a worker
/// thread's arena is a heap of its own that glibc unmaps whenever it empties, so the
/// large blocks rayon's and OpenMP's threads take each step were faulted in anew
/// (DARE at L = 1,000: 2.3x samples/s, the same peak RSS).
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator settings; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Runs a job's work on this rank; under mpirun a failure ends the whole job (the other
/// ranks may be waiting for this one in a collective), after giving mpirun a moment to
/// forward the message, which the abort would otherwise cut off.
fn on_every_rank<T>(
    cluster: &shardrec::cluster::Cluster,
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match work() {
        Err(e) if cluster.world_size() > 1 => {
            report(&e);
            std::thread::sleep(std::time::Duration::from_millis(500));
            cluster.abort(1)
        }
        r => r,
    }
}

fn report(e: &anyhow::Error) {
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// libgomp, libtorch's OpenMP, keeps a worker spinning after each parallel region for
/// `GOMP_SPINCOUNT` iterations (300,000 unless set) before it sleeps. Where a spin
/// iteration's pause takes on the order of 100 cycles that is milliseconds, so after every
/// dense op a core spins through the step's Rust phases (key mapping, lookup, sparse
/// update), which run on both cores: `perf` puts 32% of a dynamic-table run's samples in
/// that loop. 10,000 keeps the wake-up between back-to-back GEMMs fast and frees the core
/// within a few hundred microseconds (docs/benchmarks.md section 15: DLRM +6-12%
/// samples/s, the dynamic tables' lookup + update 1.47-1.51x plain's against 1.79-1.95x).
/// libgomp reads the setting when it is loaded, before `main`, so the binary sets it and
/// starts itself again, once, before anything else (MPI included) has started. A
/// `GOMP_SPINCOUNT` or `OMP_WAIT_POLICY` the user set is kept.
fn spin_less_in_openmp() {
    use std::os::unix::process::CommandExt;
    const SPIN: &str = "GOMP_SPINCOUNT";
    if std::env::var_os(SPIN).is_some() || std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut again = std::process::Command::new(exe);
    if let Some(name) = args.next() {
        again.arg0(name);
    }
    // exec returns only if it failed: go on with libgomp's default
    let failed = again.args(args).env(SPIN, "10000").exec();
    eprintln!("warning: could not restart with {SPIN}=10000 ({failed}); OpenMP threads will spin longer between ops");
}

fn main() -> ExitCode {
    spin_less_in_openmp();
    tune_allocator();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}
