//! The file tier (`embedding.storage = { kind = "file" }`): rows in a file behind a cache
//! of about 1% of them train to the RAM result to the last digit, for every sparse
//! optimizer, in one process and under mpirun with every sharding kind; a model moves
//! between tiers through eval and resume; a bad storage section names its key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

/// `shardrec <args>` with each of `sets` as a `--set`, under `mpirun -np 2`; its summary.
fn np2_summary(dir: &Path, args: &[&str], sets: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    for s in sets {
        all.extend(["--set", s]);
    }
    summary(&run_mpi(dir, 2, &all, Duration::from_secs(300)))
}

/// A run of `cfg` in the run folder `dir/name`, with `sets` on top; its summary.
fn train_in(dir: &Path, cfg: &Path, name: &str, sets: &[&str]) -> serde_json::Value {
    let folder = run_dir(dir, name);
    let mut all = vec![folder.as_str()];
    all.extend_from_slice(sets);
    train_summary(dir, cfg, &all)
}

/// `model` on `rows` generated rows (ids over `cardinality` values a field), two epochs
/// with a checkpoint every 10 steps.
fn checkpointing_config(dir: &Path, rows: u64, cardinality: u64, model: &str) -> PathBuf {
    let (data, _) = synth(dir, rows, cardinality);
    let train = "epochs = 2\nlog_every = 1000\ncheckpoint_every = 10\ncheckpoint_keep = 0";
    criteo_config(dir, &data, model, train)
}

/// Test AUC and logloss, which must agree exactly.
fn metrics(s: &serde_json::Value) -> (f64, f64) {
    (s["auc"].as_f64().unwrap(), s["logloss"].as_f64().unwrap())
}

/// `--set` of a file tier under `dir/tier` with a cache of `cache_bytes` per rank.
fn file_storage(dir: &Path, cache_bytes: u64) -> String {
    format!(
        "embedding.storage={{kind=\"file\", dir=\"{}\", cache_bytes={cache_bytes}}}",
        dir.join("tier").display()
    )
}

/// `--set` of the run folder `dir/name` (each run needs its own).
fn run_dir(dir: &Path, name: &str) -> String {
    format!("train.run_dir=\"{}\"", dir.join(name).display())
}

fn optimizer(kind: &str) -> String {
    format!("embedding.optimizer={{kind=\"{kind}\", lr=0.05}}")
}

/// Every figure of the file tier's report sums over tables: (misses, evictions).
fn tier_misses_and_evictions(s: &serde_json::Value) -> (u64, u64) {
    let tiers = s["file_tier"].as_array().expect("a file_tier report");
    let sum = |k: &str| tiers.iter().map(|t| t[k].as_u64().unwrap()).sum();
    (sum("misses"), sum("evictions"))
}

#[test]
fn a_file_table_trains_to_the_ram_result_for_every_optimizer() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 8000, 2000);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "epochs = 1\nlog_every = 1000");
    // about 1% of the ~40,000 rows of the 26 tables (records of 8 weights + state)
    let storage = file_storage(dir.path(), 40_000);
    for kind in ["sgd", "adagrad", "rowwise_adagrad", "adam"] {
        let opt = optimizer(kind);
        let ram_dir = run_dir(dir.path(), &format!("{kind}-ram"));
        let file_dir = run_dir(dir.path(), &format!("{kind}-file"));
        let ram = train_summary(dir.path(), &cfg, &[&opt, &ram_dir]);
        let file = train_summary(dir.path(), &cfg, &[&opt, &storage, &file_dir]);
        assert_eq!(metrics(&file), metrics(&ram), "{kind}");
        assert!(ram.get("file_tier").is_none());
        let (misses, evictions) = tier_misses_and_evictions(&file);
        assert!(
            misses > 0 && evictions > 0,
            "{kind}: the cache was exercised: {file}"
        );
        // evicted rows were written back: the disk holds part of the sparse files
        let tiers = file["file_tier"].as_array().unwrap();
        let disk: u64 = tiers
            .iter()
            .map(|t| t["disk_bytes"].as_u64().unwrap())
            .sum();
        let logical: u64 = tiers
            .iter()
            .map(|t| t["file_bytes"].as_u64().unwrap())
            .sum();
        assert!(
            disk > 0 && disk <= logical + 4096 * tiers.len() as u64,
            "{file}"
        );
        if kind == "adagrad" {
            // a cache that has room beside a step's rows: the next step's are read ahead
            let big = file_storage(dir.path(), 4_000_000);
            let ahead_dir = run_dir(dir.path(), "adagrad-read-ahead");
            let ahead = train_summary(dir.path(), &cfg, &[&opt, &big, &ahead_dir]);
            assert_eq!(metrics(&ahead), metrics(&ram));
            let read = ahead["file_tier_prefetched_rows"].as_u64().unwrap();
            assert!(read > 1000, "{ahead}");
            assert!(
                ahead["file_tier"][0]["rank_prefetch_wait_s"].is_f64(),
                "{ahead}"
            );
            // an LFU cache keeps other rows, with the same arithmetic (without the
            // read-ahead, whose timing moves the counts, so the two policies compare)
            let policy =
                |p: &str| storage.replace('}', &format!(", prefetch=false, policy=\"{p}\"}}"));
            let (lru, lfu) = (policy("lru"), policy("lfu"));
            let by_time = train_in(dir.path(), &cfg, "adagrad-lru", &[&opt, &lru]);
            let by_use = train_in(dir.path(), &cfg, "adagrad-lfu", &[&opt, &lfu]);
            assert_eq!(metrics(&by_use), metrics(&ram));
            let (lru_misses, _) = tier_misses_and_evictions(&by_time);
            let (lfu_misses, _) = tier_misses_and_evictions(&by_use);
            assert_ne!(lfu_misses, lru_misses, "another policy, other misses");
        }
    }
    // the scratch files go with the run
    let left: Vec<_> = std::fs::read_dir(dir.path().join("tier"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn under_mpirun_every_sharding_kind_trains_to_the_ram_result() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 6000, 1000);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "epochs = 1\nlog_every = 1000");
    let cfg = cfg.to_str().unwrap();
    let storage = file_storage(dir.path(), 20_000);
    let run = |strategy: &str, extra: &[&str]| {
        let strategy = format!("sharding.strategy=\"{strategy}\"");
        np2_summary(dir.path(), &["train", cfg, "--set", &strategy], extra)
    };
    for strategy in ["row_wise", "table_wise", "column_wise", "data_parallel"] {
        let opt = optimizer("adagrad");
        let ram_dir = run_dir(dir.path(), &format!("{strategy}-ram"));
        let file_dir = run_dir(dir.path(), &format!("{strategy}-file"));
        let ram = run(strategy, &[&opt, &ram_dir]);
        let file = run(strategy, &[&opt, &storage, &file_dir]);
        assert_eq!(metrics(&file), metrics(&ram), "{strategy}");
        let ranks: Vec<u64> = file["file_tier"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["rank"].as_u64().unwrap())
            .collect();
        assert!(
            ranks.contains(&0) && ranks.contains(&1),
            "{strategy}: {ranks:?}"
        );
        // with room beside a step's rows, owners read the next step's rows ahead
        let big = file_storage(dir.path(), 2_000_000).replace('}', ", prefetch=true}");
        let ahead_dir = run_dir(dir.path(), &format!("{strategy}-read-ahead"));
        let ahead = run(strategy, &[&opt, &big, &ahead_dir]);
        assert_eq!(metrics(&ahead), metrics(&ram), "{strategy}");
        let read = ahead["file_tier_prefetched_rows"].as_u64().unwrap();
        assert!(read > 500, "{strategy}: {ahead}");
    }
}

#[test]
fn models_and_checkpoints_move_between_ram_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = checkpointing_config(dir.path(), 6000, 1000, "deepfm");
    let c = cfg.to_str().unwrap();
    let storage = file_storage(dir.path(), 20_000);
    // trained in RAM, evaluated from the file tier
    let ram = train_summary(dir.path(), &cfg, &[]);
    let model = dir.path().join("run/model");
    let m = model.to_str().unwrap();
    let eval = summary(&run(
        dir.path(),
        &["eval", c, "--model", m, "--set", &storage],
    ));
    assert_eq!(metrics(&eval), metrics(&ram));
    // trained in the file tier from a RAM checkpoint, to the uninterrupted RAM result
    let first = dir.path().join("run/checkpoints/step-00000020");
    assert!(first.is_dir());
    let resumed_run = format!("train.run_dir=\"{}\"", dir.path().join("resumed").display());
    let args = [
        "train",
        c,
        "--set",
        &resumed_run,
        "--set",
        &storage,
        "--resume",
        first.to_str().unwrap(),
    ];
    let resumed = summary(&run(dir.path(), &args));
    assert_eq!(metrics(&resumed), metrics(&ram));
    // and its model, written from the file, evaluates in RAM
    let model = dir.path().join("resumed/model");
    let eval = summary(&run(
        dir.path(),
        &["eval", c, "--model", model.to_str().unwrap()],
    ));
    assert_eq!(metrics(&eval), metrics(&ram));
}

#[test]
fn a_file_tier_without_its_folder_or_cache_is_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 500, 50);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "");
    let refused = |storage: &str, key: &str| {
        let o = run(
            dir.path(),
            &["train", cfg.to_str().unwrap(), "--set", storage],
        );
        let err = stderr(&o);
        assert!(!o.status.success() && err.contains(key), "{key}: {err}");
    };
    refused(
        "embedding.storage={kind=\"file\", cache_bytes=100000}",
        "embedding.storage.dir",
    );
    refused(
        "embedding.storage={kind=\"file\", dir=\"t\", cache_bytes=10}",
        "embedding.storage.cache_bytes",
    );
}

#[test]
fn qr_unified_and_hashed_tables_train_to_the_ram_result_in_the_file_tier() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 6000, 1000);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "epochs = 1\nlog_every = 1000");
    let storage = file_storage(dir.path(), 40_000);
    for (kind, extra) in [
        ("qr", "embedding.kind=\"qr\""),
        ("unified", "embedding.unified.buckets=20000"),
        ("hashed", "embedding.buckets=3000"),
    ] {
        let kind_set = format!("embedding.kind=\"{kind}\"");
        let ram_dir = run_dir(dir.path(), &format!("{kind}-ram"));
        let file_dir = run_dir(dir.path(), &format!("{kind}-file"));
        let ram = train_summary(dir.path(), &cfg, &[&kind_set, extra, &ram_dir]);
        let file = train_summary(dir.path(), &cfg, &[&kind_set, extra, &storage, &file_dir]);
        assert_eq!(metrics(&file), metrics(&ram), "{kind}");
        let (misses, _) = tier_misses_and_evictions(&file);
        assert!(misses > 0, "{kind}: {file}");
    }
}

/// The earliest checkpoint of a run folder.
fn first_checkpoint(run: &Path) -> std::path::PathBuf {
    let mut all: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    all.sort();
    all.into_iter().next().expect("a checkpoint")
}

#[test]
fn sixteen_bit_rows_train_alike_in_both_tiers_resume_exactly_and_halve_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = checkpointing_config(dir.path(), 8000, 2000, "dlrm");
    let c = cfg.to_str().unwrap();
    let full = train_summary(dir.path(), &cfg, &[&run_dir(dir.path(), "f32")]);
    let storage = file_storage(dir.path(), 40_000);
    for dtype in ["f16", "bf16"] {
        let set = format!("embedding.row_dtype=\"{dtype}\"");
        let ram_dir = run_dir(dir.path(), &format!("{dtype}-ram"));
        let file_dir = run_dir(dir.path(), &format!("{dtype}-file"));
        let ram = train_summary(dir.path(), &cfg, &[&set, &ram_dir]);
        let file = train_summary(dir.path(), &cfg, &[&set, &storage, &file_dir]);
        // stochastic rounding draws from (table, step, row, column): the tiers agree
        assert_eq!(metrics(&file), metrics(&ram), "{dtype}");
        let (auc, auc32) = (metrics(&ram).0, metrics(&full).0);
        assert!((auc - auc32).abs() < 0.01, "{dtype}: {auc} vs f32 {auc32}");
        assert_ne!(metrics(&ram), metrics(&full), "{dtype} rows are rounded");
        let bytes = |s: &serde_json::Value| s["embedding_bytes_this_rank"].as_u64().unwrap();
        assert_eq!(2 * bytes(&ram), bytes(&full), "{dtype}: half the bytes");
        // a checkpoint resumes to the uninterrupted result, in the same precision only
        let first = first_checkpoint(&dir.path().join(format!("{dtype}-ram")));
        let resumed_dir = run_dir(dir.path(), &format!("{dtype}-resumed"));
        let f = first.to_str().unwrap();
        let args = [
            "train",
            c,
            "--set",
            &set,
            "--set",
            &resumed_dir,
            "--resume",
            f,
        ];
        assert_eq!(metrics(&summary(&run(dir.path(), &args))), metrics(&ram));
        let other_dir = run_dir(dir.path(), &format!("{dtype}-as-f32"));
        let o = run(
            dir.path(),
            &["train", c, "--set", &other_dir, "--resume", f],
        );
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains("embedding.row_dtype"),
            "{err}"
        );
        // split by columns over two ranks, each half of a row rounds as in the whole row
        let np2 = |name: &str, extra: &[&str]| {
            let d = run_dir(dir.path(), &format!("{dtype}-{name}"));
            let sets = [&set, &d, "sharding.strategy=\"column_wise\""];
            np2_summary(dir.path(), &["train", c], &[&sets[..], extra].concat())
        };
        let cols_ram = np2("np2-ram", &[]);
        let cols_file = np2("np2-file", &[&storage]);
        assert_eq!(
            metrics(&cols_file),
            metrics(&cols_ram),
            "{dtype} column_wise"
        );
    }
    let o = run(
        dir.path(),
        &[
            "train",
            c,
            "--set",
            "embedding.row_dtype=\"f16\"",
            "--set",
            "embedding.device=\"cuda\"",
        ],
    );
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("embedding.row_dtype"),
        "{err}"
    );
}

#[test]
fn under_a_memory_limit_auto_moves_the_biggest_tables_to_the_file_tier() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 6000, 2000);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "epochs = 1\nlog_every = 1000");
    let c = cfg.to_str().unwrap();
    let ram = train_summary(dir.path(), &cfg, &[&run_dir(dir.path(), "ram")]);
    let held = |s: &serde_json::Value| {
        s["embedding_bytes_this_rank"].as_u64().unwrap()
            + s["optimizer_state_bytes_this_rank"].as_u64().unwrap()
    };
    let limit = format!("sharding.memory_limit_per_rank={}", held(&ram) / 2);
    let spill_dir = format!(
        "embedding.storage={{kind=\"ram\", dir=\"{}\", cache_bytes=100000}}",
        dir.path().join("tier").display()
    );
    let moved_dir = run_dir(dir.path(), "moved");
    let args = [
        "train", c, "--set", &limit, "--set", &spill_dir, "--set", &moved_dir,
    ];
    let o = run(dir.path(), &args);
    let moved = summary(&o);
    assert_eq!(metrics(&moved), metrics(&ram));
    assert!(held(&moved) <= held(&ram) / 2, "{moved}");
    let err = stderr(&o);
    assert!(err.contains("moved to the file tier"), "{err}");
    let plan = std::fs::read_to_string(dir.path().join("moved/sharding_plan.toml")).unwrap();
    let in_file = plan.matches("in_file_tier = true").count();
    let reported = moved["file_tier"].as_array().unwrap().len();
    assert!(
        in_file > 0 && in_file == reported,
        "{in_file} vs {reported}: {plan}"
    );
    // without a folder to move them to, the limit is an error naming it
    let refused_dir = run_dir(dir.path(), "refused");
    let o = run(
        dir.path(),
        &["train", c, "--set", &limit, "--set", &refused_dir],
    );
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("memory_limit_per_rank"),
        "{err}"
    );
}

#[test]
fn optembed_and_sequence_tables_train_to_the_ram_result_in_the_file_tier() {
    let dir = tempfile::tempdir().unwrap();
    let storage = file_storage(dir.path(), 40_000);
    // OptEmbed's three stages: supernet, search, retrain with the row mask
    let (data, _) = synth(dir.path(), 10_000, 1_000);
    let cfg = crate::optembed::optembed_config(dir.path(), &data);
    let ram = train_in(dir.path(), &cfg, "oe-ram", &[]);
    let file = train_in(dir.path(), &cfg, "oe-file", &[&storage]);
    for key in ["auc", "logloss", "kept_rows", "widths"] {
        assert!(!ram[key].is_null(), "{key}: {ram}");
        assert_eq!(file[key], ram[key], "{key}");
    }
    let (misses, _) = tier_misses_and_evictions(&file);
    assert!(misses > 0, "{file}");
    // DARE: attention and representation tables, sequences of 100 behaviours
    let (train, test, _) = crate::sequence::sequences(dir.path());
    let cfg = crate::sequence::sequence_config(dir.path(), "dare", &train, &test, None);
    let one_epoch = "train.epochs=1";
    let ram = train_in(dir.path(), &cfg, "dare-ram", &[one_epoch]);
    let file = train_in(dir.path(), &cfg, "dare-file", &[one_epoch, &storage]);
    assert_eq!(metrics(&file), metrics(&ram));
    assert_eq!(file["gauc"], ram["gauc"]);
    let (misses, _) = tier_misses_and_evictions(&file);
    assert!(misses > 0, "{file}");
}

#[test]
fn a_two_rank_file_tier_checkpoint_reshards_into_one_process_in_either_tier() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = checkpointing_config(dir.path(), 6000, 1000, "dlrm");
    let c = cfg.to_str().unwrap();
    let storage = file_storage(dir.path(), 20_000);
    let two_dir = run_dir(dir.path(), "np2");
    let sets = ["sharding.strategy=\"row_wise\"", &storage, &two_dir];
    let two = np2_summary(dir.path(), &["train", c], &sets);
    assert_eq!(two["world_size"], 2);
    let ckpt = first_checkpoint(&dir.path().join("np2"));
    let k = ckpt.to_str().unwrap();
    // the checkpoint's two row blocks load into one file table and into one RAM table
    let eval_ram = summary(&run(dir.path(), &["eval", c, "--model", k]));
    let eval_file = summary(&run(
        dir.path(),
        &["eval", c, "--model", k, "--set", &storage],
    ));
    assert_eq!(metrics(&eval_file), metrics(&eval_ram));
    // and training goes on from it in one process, in either tier, to the same result
    let resumed = |name: &str, extra: &[&str]| {
        let d = run_dir(dir.path(), name);
        let mut args = vec!["train", c, "--set", &d, "--resume", k];
        for e in extra {
            args.extend(["--set", e]);
        }
        summary(&run(dir.path(), &args))
    };
    let ram = resumed("np1-ram", &[]);
    let file = resumed("np1-file", &[&storage]);
    assert!(ram["resumed_from"].as_str().is_some(), "{ram}");
    assert_eq!(metrics(&file), metrics(&ram));
    assert_eq!(file["steps"], two["steps"]);
}
