//! Training under real MPI: `mpirun -np 2` and `-np 4` train on generated data to the test
//! AUC of one rank (within 0.002), every rank seeing its slice of the data and the tables
//! row-wise over all ranks; rank 0 alone prints the summary and writes the run folder.

use std::time::Duration;

use crate::common::*;

#[test]
fn two_and_four_ranks_reach_the_one_rank_test_auc() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 100_000, 500);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "epochs = 2\nsave_model = false");
    let train = |ranks: usize| {
        let run_dir = format!(
            "train.run_dir={}",
            dir.path().join(format!("run{ranks}")).display()
        );
        let o = run_mpi(
            dir.path(),
            ranks,
            &["train", cfg.to_str().unwrap(), "--set", &run_dir],
            Duration::from_secs(300),
        );
        // only rank 0 prints a summary line
        let lines = stdout(&o).lines().filter(|l| l.starts_with('{')).count();
        assert_eq!(lines, 1, "{}", stdout(&o));
        summary(&o)
    };
    let one = train(1);
    assert_eq!(one["world_size"], 1);
    let one_auc = one["auc"].as_f64().unwrap();
    assert!(one_auc > 0.62, "{one}");
    for ranks in [2, 4] {
        let s = train(ranks);
        assert_eq!(s["world_size"], ranks);
        assert_eq!(s["batch_size"], 256);
        assert_eq!(s["batch_size_per_rank"], 256 / ranks);
        assert_eq!(
            s["rows_test"], one["rows_test"],
            "every test row scored once"
        );
        assert_eq!(
            s["samples_seen"], one["samples_seen"],
            "every train row seen once per epoch"
        );
        assert_eq!(
            s["peak_rss_bytes_per_rank"].as_array().unwrap().len(),
            ranks
        );
        let auc = s["auc"].as_f64().unwrap();
        assert!(
            (auc - one_auc).abs() <= 0.002,
            "{ranks} ranks: AUC {auc} vs one rank {one_auc}"
        );
    }
}

#[test]
fn a_batch_that_does_not_divide_among_the_ranks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 2_000, 50);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "");
    let o = run_mpi(
        dir.path(),
        2,
        &[
            "train",
            cfg.to_str().unwrap(),
            "--set",
            "train.batch_size=255",
        ],
        Duration::from_secs(120),
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("train.batch_size = 255") && err.contains("2 ranks"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_written_plan_reloads_to_the_same_run_and_a_tight_memory_limit_names_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 20_000, 300);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "save_model = false");
    let cfg = cfg.to_str().unwrap();
    let set = |k: &str, v: &std::path::Path| format!("{k}={}", v.display());
    let (run_a, run_b) = (dir.path().join("a"), dir.path().join("b"));
    let a = summary(&run_mpi(
        dir.path(),
        2,
        &[
            "train",
            cfg,
            "--set",
            &set("train.run_dir", &run_a),
            "--set",
            "sharding.strategy=\"row_wise\"",
        ],
        Duration::from_secs(120),
    ));
    let plan = run_a.join("sharding_plan.toml");
    let text = std::fs::read_to_string(&plan).unwrap();
    assert!(
        text.contains("kind = \"row_wise\"") && !text.contains("table_wise"),
        "{text}"
    );
    let b = summary(&run_mpi(
        dir.path(),
        2,
        &[
            "train",
            cfg,
            "--set",
            &set("train.run_dir", &run_b),
            "--set",
            &set("sharding.plan_file", &plan),
        ],
        Duration::from_secs(120),
    ));
    assert_eq!(
        std::fs::read_to_string(run_b.join("sharding_plan.toml")).unwrap(),
        text
    );
    assert_eq!(a["auc"], b["auc"], "same plan, same seed: the same run");
    // 26 tables of ~300 rows x (8 + 8 Adagrad) floats: about 500 KB in all
    let o = run_mpi(
        dir.path(),
        2,
        &[
            "train",
            cfg,
            "--set",
            "sharding.memory_limit_per_rank=100000",
        ],
        Duration::from_secs(120),
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("table `C") && err.contains("bytes") && err.contains("100000"),
        "{err}"
    );
    // a plan for 2 ranks does not load into 1
    let o = run_mpi(
        dir.path(),
        1,
        &["train", cfg, "--set", &set("sharding.plan_file", &plan)],
        Duration::from_secs(120),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("plan for 2 ranks, but this job has 1"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn synchronised_batch_norm_trains_the_one_process_model_under_two_ranks() {
    // DLRM with batch norm after every hidden layer; the same global batches each step.
    // Synchronised (the default), two ranks follow one process to float rounding;
    // normalising by each rank's half batch (sync_batch_norm = false) trains a different
    // model. Dense SGD, since Adam's first steps turn rounding noise on the zero gradient
    // of a bias before batch norm into full-size steps (in PyTorch too).
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 20_000, 500);
    let cfg = criteo_config(
        dir.path(),
        &data,
        "dlrm",
        "max_steps = 10\nsave_model = false\nshuffle = false",
    );
    let train = |ranks: usize, sync: bool| {
        let run_dir = format!(
            "train.run_dir={}",
            dir.path().join(format!("run{ranks}{sync}")).display()
        );
        let sync = format!("model.sync_batch_norm={sync}");
        let o = run_mpi(
            dir.path(),
            ranks,
            &[
                "train",
                cfg.to_str().unwrap(),
                "--set",
                &run_dir,
                "--set",
                "model.batch_norm=true",
                "--set",
                "optimizer.kind=\"sgd\"",
                "--set",
                &sync,
            ],
            Duration::from_secs(300),
        );
        let s = summary(&o);
        (s["auc"].as_f64().unwrap(), s["logloss"].as_f64().unwrap())
    };
    let (auc1, loss1) = train(1, true);
    let (auc2, loss2) = train(2, true);
    let (auc_local, loss_local) = train(2, false);
    eprintln!(
        "one {auc1} {loss1}; two synced {auc2} {loss2}; two per-rank {auc_local} {loss_local}"
    );
    assert!(
        (auc2 - auc1).abs() < 1e-5 && (loss2 - loss1).abs() < 1e-5,
        "synchronised: AUC {auc2} logloss {loss2} vs one process {auc1} {loss1}"
    );
    assert!(
        (auc_local - auc1).abs() > 1e-4,
        "per-rank statistics should move the model: AUC {auc_local} vs {auc1}"
    );
}
