//! `shardrec`: train, evaluate, prepare data, generate data. A thin layer over the
//! `shardrec` library; every error is printed with its chain and exits non-zero.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shardrec::config::load_config;
use shardrec_data::synth::{generate, SynthOptions};
use shardrec_data::synth_sequence::{generate_sequences, SequenceSynthOptions};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BehaviourFormat {
    Taobao,
    Movielens,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SynthKind {
    Criteo,
    Sequence,
}
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
    Train {
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
        stage: Option<shardrec::config::OptEmbedStage>,
    },
    /// Evaluate a saved model (a run's model/ folder) or a checkpoint on the config's test
    /// data; under mpirun the tables are sharded over the job's ranks.
    Eval {
        config: PathBuf,
        #[arg(long)]
        model: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Train one config with each table method at several memory budgets (plus the
    /// collisionless reference); writes sweep.csv and sweep.png (AUC against bytes).
    Sweep {
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
    },
    /// Prepare (or find in the cache) the config's data and print where it is; or, with
    /// `--format taobao|movielens`, turn a behaviour log into sequence samples (train,
    /// valid and test TSV in `--out`) by DARE's protocol.
    Prepare {
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
    },
    /// Generate Criteo-format data from a teacher model with a known Bayes ceiling, or
    /// (`--kind sequence`) behaviour sequences whose relevant behaviours are known.
    Synth {
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
    },
    /// Time the search stage of TWIN/DARE (score every behaviour, keep the top K) per
    /// 1,000 samples at several history lengths and attention widths; prints a table and
    /// a JSON line. A benchmark: see docs/benchmarks.md.
    BenchSearch {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        lens: Vec<i64>,
        #[arg(long, value_delimiter = ',', default_value = "48,24,12")]
        widths: Vec<i64>,
        #[arg(long, default_value_t = 20)]
        k: i64,
        #[arg(long, default_value_t = 4000)]
        samples: i64,
        #[arg(long, default_value_t = 250)]
        chunk: i64,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Rows of the attention item table the keys are gathered from.
        #[arg(long, default_value_t = 1_000_000)]
        items: i64,
        /// libtorch threads (0: all cores).
        #[arg(long, default_value_t = 0)]
        threads: i32,
    },
    /// Check the job's sharded embedding exchange: under `mpirun -np N`, every sharding
    /// kind and sparse optimizer must give the embeddings and rows of the one-process table
    /// (within 1e-6). Rank 0 prints a JSON report; exits non-zero on any mismatch.
    CheckExchange {
        /// Training steps per case.
        #[arg(long, default_value_t = 3)]
        steps: usize,
    },
}

fn config_name(path: &std::path::Path) -> String {
    path.file_stem()
        .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned())
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Train {
            config,
            set,
            resume,
            stage,
        } => {
            let (cfg, _) = load_config(&config, &set)?;
            if stage.is_some() && !cfg.optembed.as_ref().is_some_and(|o| o.enabled) {
                anyhow::bail!(
                    "{}: --stage needs an [optembed] section (with enabled = true)",
                    config.display()
                );
            }
            let name = cfg.name.clone().unwrap_or_else(|| config_name(&config));
            let cluster = shardrec::cluster::Cluster::from_environment()?;
            let summary = on_every_rank(&cluster, || {
                match stage {
                    Some(st) => shardrec::optembed::run_stages(
                        &cfg,
                        &name,
                        &cluster,
                        resume.as_deref(),
                        Some(st),
                    )
                    .map_err(anyhow::Error::from),
                    None => shardrec::train(&cfg, &name, &cluster, resume.as_deref())
                        .map_err(anyhow::Error::from),
                }
                .with_context(|| {
                    format!(
                        "rank {} of {}: training {}",
                        cluster.rank(),
                        cluster.world_size(),
                        config.display()
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
        }
        Command::Eval { config, model, set } => {
            let (cfg, _) = load_config(&config, &set)?;
            let cluster = shardrec::cluster::Cluster::from_environment()?;
            let summary = on_every_rank(&cluster, || {
                shardrec::eval_saved_model(&cfg, &model, &cluster).with_context(|| {
                    format!(
                        "rank {} of {}: evaluating {}",
                        cluster.rank(),
                        cluster.world_size(),
                        model.display()
                    )
                })
            })?;
            if cluster.is_root() {
                println!("{summary}");
            }
        }
        Command::Sweep {
            config,
            budgets,
            methods,
            out,
            seeds,
            set,
        } => {
            let (cfg, _) = load_config(&config, &set)?;
            let name = cfg.name.clone().unwrap_or_else(|| config_name(&config));
            let methods = methods
                .iter()
                .map(|m| shardrec::sweep::parse_method(m))
                .collect::<Result<Vec<_>, _>>()?;
            let opts = shardrec::sweep::SweepOptions {
                budgets,
                methods,
                out: out.unwrap_or_else(|| PathBuf::from("runs").join(format!("{name}-sweep"))),
                seeds,
            };
            let cluster = shardrec::cluster::Cluster::from_environment()?;
            let summary = on_every_rank(&cluster, || {
                shardrec::sweep::sweep(&cfg, &name, &cluster, &opts)
                    .with_context(|| format!("sweeping {}", config.display()))
            })?;
            if cluster.is_root() {
                println!("{summary}");
            }
        }
        Command::Prepare {
            format: Some(format),
            input,
            out,
            history,
            min_history,
            train_targets,
            negatives,
            seed,
            config,
            ..
        } => {
            use shardrec::data::behaviour_samples::{
                read_movielens, read_taobao, write_sequence_samples, SampleOptions,
            };
            if config.is_some() {
                anyhow::bail!("prepare: give either a config or --format, not both");
            }
            let input = input.context("prepare --format needs --input")?;
            let out = out.context("prepare --format needs --out")?;
            let log = match format {
                BehaviourFormat::Taobao => read_taobao(&input)?,
                BehaviourFormat::Movielens => read_movielens(&input)?,
            };
            let s = write_sequence_samples(
                &log,
                &SampleOptions {
                    history,
                    min_history,
                    train_targets,
                    negatives,
                    seed,
                },
                &out,
            )?;
            eprintln!(
                "[shardrec] {} users kept, {} dropped (fewer than {min_history} behaviours); {} / {} / {} train / valid / test samples in {}",
                s.users_kept,
                s.users_dropped,
                s.rows[0],
                s.rows[1],
                s.rows[2],
                out.display()
            );
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::Prepare { config, set, .. } => {
            let config =
                config.context("prepare needs a config (or --format with --input and --out)")?;
            let (cfg, _) = load_config(&config, &set)?;
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
        }
        Command::BenchSearch {
            lens,
            widths,
            k,
            samples,
            chunk,
            repeats,
            items,
            threads,
        } => {
            if threads > 0 {
                tch::set_num_threads(threads);
            }
            let t = shardrec::search_bench::time_search(
                &lens, &widths, k, samples, chunk, repeats, items,
            );
            println!("| L | attention width | K | search ms / 1k samples | gather + search ms / 1k samples | vs. first width |");
            println!("|---|---|---|---|---|---|");
            for r in &t {
                let base = t
                    .iter()
                    .find(|b| b.len == r.len)
                    .map_or(r.search_ms_per_1k, |b| b.search_ms_per_1k);
                println!(
                    "| {} | {} | {} | {:.2} | {:.2} | {:.2} |",
                    r.len,
                    r.width,
                    r.k,
                    r.search_ms_per_1k,
                    r.gather_search_ms_per_1k,
                    r.search_ms_per_1k / base
                );
            }
            println!("{}", serde_json::to_string(&t)?);
        }
        Command::Synth {
            kind: SynthKind::Sequence,
            out,
            users,
            targets_per_user,
            test_targets,
            history,
            min_history,
            max_history,
            items,
            categories,
            group_size,
            relevance_weight,
            seed,
            ..
        } => {
            let mut o = SequenceSynthOptions::new(out, users, history.unwrap_or(min_history));
            o.max_len = history.unwrap_or(max_history);
            o.targets_per_user = targets_per_user;
            o.test_targets = test_targets;
            o.items = items;
            o.categories = categories;
            o.group_size = group_size;
            o.relevance_weight = relevance_weight;
            o.seed = seed;
            let step = (users / 10).max(1);
            let s = generate_sequences(o, &|done| {
                if done % step < 256 || done == users {
                    eprintln!("[synth] {done} / {users} users");
                }
            })
            .map_err(anyhow::Error::msg)?;
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
        }
        Command::Synth {
            rows,
            out,
            cardinality,
            cardinalities,
            fields,
            dense,
            zipf,
            latent_dim,
            seed,
            test_fraction,
            missing_rate,
            ctr,
            ..
        } => {
            if rows == 0 {
                anyhow::bail!("synth: --rows must be at least 1");
            }
            let mut o = SynthOptions::criteo_like(rows, out, cardinality);
            o.cardinalities = if cardinalities.is_empty() {
                vec![cardinality; fields]
            } else {
                cardinalities
            };
            o.num_dense = dense;
            o.zipf_exponent = zipf;
            o.latent_dim = latent_dim;
            o.seed = seed;
            o.test_fraction = test_fraction;
            o.missing_rate = missing_rate;
            o.ctr = ctr;
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
        }
        Command::CheckExchange { steps } => check_exchange(steps)?,
    }
    Ok(())
}

fn check_exchange(steps: usize) -> anyhow::Result<()> {
    use shardrec_tables::{
        check_against_one_process, OptimizerKind, ShardingKind, SparseOptimizer, CONFORMANCE_TABLES,
    };
    use ShardingKind::*;
    let cluster = shardrec::cluster::Cluster::from_environment()?;
    let n = cluster.world_size();
    let narrowest = CONFORMANCE_TABLES.iter().map(|t| t.2).min().unwrap_or(1);
    let mut cases: Vec<([ShardingKind; 3], SparseOptimizer)> = Vec::new();
    for kind in [TableWise, RowWise, ColumnWise, DataParallel] {
        if kind == ColumnWise && n > narrowest {
            continue; // more column slices than columns
        }
        for opt in [
            SparseOptimizer::new(OptimizerKind::Sgd, 0.1),
            SparseOptimizer::new(OptimizerKind::Adagrad, 0.1),
            SparseOptimizer::new(OptimizerKind::RowwiseAdagrad, 0.1),
            SparseOptimizer::new(OptimizerKind::Adam, 0.01),
        ] {
            if kind == ColumnWise && n > 1 && opt.kind == OptimizerKind::RowwiseAdagrad {
                continue; // refused by design (one accumulator per row)
            }
            cases.push(([kind; 3], opt));
        }
    }
    cases.push((
        [RowWise, DataParallel, TableWise],
        SparseOptimizer::new(OptimizerKind::RowwiseAdagrad, 0.1),
    ));
    let mut report = Vec::new();
    let mut ok = true;
    for (kinds, opt) in cases {
        let r = check_against_one_process(&cluster, kinds, opt, steps)
            .with_context(|| format!("rank {}: case {kinds:?} {:?}", cluster.rank(), opt.kind))?;
        let mut worst = [r.max_embedding_diff, r.max_row_diff, r.max_row_diff_sliced];
        cluster.all_reduce_max(&mut worst);
        let mut missing = [u32::from(!r.every_row_held_once)];
        cluster.all_reduce_sum(&mut missing);
        // one process in as many slices as ranks takes the same steps, bit for bit
        let good = worst[0] <= 1e-6 && worst[1] <= 1e-6 && worst[2] == 0.0 && missing[0] == 0;
        ok &= good;
        report.push(serde_json::json!({
            "kinds": r.kinds, "optimizer": r.optimizer, "steps": steps,
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

/// Every training step allocates and frees the same few-megabyte buffers (batch
/// tensors, activations, gathered rows, gradients). With glibc's default thresholds such
/// blocks are mmapped and returned to the kernel on free, so every step pays page faults
/// and zero-filling for them again; keeping them in the heap avoids that. This applies to
/// libtorch's allocations too.
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator thresholds; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
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

fn main() -> ExitCode {
    tune_allocator();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}
