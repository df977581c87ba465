//! `shardrec train` / `eval` end to end on generated data: the run folder, the summary
//! line, repeatability, evaluation of a saved model, early stopping, GAUC, hashed tables.

use crate::common::*;

#[test]
fn train_writes_run_folder_and_summary_then_eval_reproduces_auc() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 6000, 500);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "epochs = 3");
    let o = run(dir.path(), &["train", cfg.to_str().unwrap()]);
    let s = summary(&o);
    for key in [
        "auc",
        "logloss",
        "train_samples_per_s",
        "rows_train",
        "rows_test",
        "bad_rows_skipped",
        "peak_rss_bytes",
    ] {
        assert!(!s[key].is_null(), "summary lacks {key}: {s}");
    }
    assert_eq!(s["rows_train"], 4800);
    // no dynamic features: no key mapping inside the lookup's time
    assert_eq!(s["time"]["key_mapping_s"], 0.0, "{s}");
    assert!(s["time"]["lookup_s"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["rows_test"], 1200);
    assert!(s["auc"].as_f64().unwrap() > 0.55, "{s}");
    let run_dir = dir.path().join("run");
    for f in [
        "config.resolved.toml",
        "metrics.jsonl",
        "summary.json",
        "model/manifest.json",
        "model/dense.safetensors",
        "model/vocab.bin",
    ] {
        assert!(run_dir.join(f).is_file(), "run folder lacks {f}");
    }
    // the resolved config is a valid config with every default filled in
    let resolved = std::fs::read_to_string(run_dir.join("config.resolved.toml")).unwrap();
    assert!(resolved.contains("shuffle_window"), "{resolved}");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert!(
        first["loss"].is_number()
            && first["samples_per_s"].is_number()
            && first["step"].is_number()
    );

    let e = run(
        dir.path(),
        &[
            "eval",
            cfg.to_str().unwrap(),
            "--model",
            run_dir.join("model").to_str().unwrap(),
        ],
    );
    let es = summary(&e);
    assert_eq!(
        es["auc"], s["auc"],
        "eval of the saved model must give the training run's test AUC"
    );
    assert_eq!(es["logloss"], s["logloss"]);
}

#[test]
fn same_seed_repeats_bitwise_and_other_seed_differs() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 3000, 300);
    let cfg = criteo_config(dir.path(), &data, "deepfm", "");
    let a = train_summary(dir.path(), &cfg, &["train.run_dir=runA"]);
    let b = train_summary(dir.path(), &cfg, &["train.run_dir=runB"]);
    assert_eq!(a["auc"], b["auc"]);
    assert_eq!(a["logloss"], b["logloss"]);
    for f in [
        "model/tables/main_0.f32",
        "model/tables/first_order_3.f32",
        "model/dense.safetensors",
    ] {
        let x = std::fs::read(dir.path().join("runA").join(f)).unwrap();
        let y = std::fs::read(dir.path().join("runB").join(f)).unwrap();
        assert!(x == y, "{f} differs between two runs with the same seed");
    }
    let c = train_summary(dir.path(), &cfg, &["train.run_dir=runC", "seed=8"]);
    assert_ne!(a["logloss"], c["logloss"]);
    // libgomp's spin count: the binary's 10000 unless one was set; it changes no figure
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        let ours = std::env::var("GOMP_SPINCOUNT").unwrap_or_else(|_| "10000".into());
        assert_eq!(a["openmp_spin_count"], ours.as_str());
    }
    let o = bin()
        .current_dir(dir.path())
        .args([
            "train",
            cfg.to_str().unwrap(),
            "--set",
            "train.run_dir=runD",
        ])
        .env("GOMP_SPINCOUNT", "300000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let d = summary(&o);
    assert_eq!(
        d["openmp_spin_count"], "300000",
        "the user's setting is kept"
    );
    assert_eq!((&d["auc"], &d["logloss"]), (&a["auc"], &a["logloss"]));
}

#[test]
fn early_stopping_stops_on_validation_auc() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 3000, 2000);
    // tiny data, large learning rates, many epochs: validation AUC peaks early
    let cfg = criteo_config(
        dir.path(),
        &data,
        "dlrm",
        "epochs = 60\nearly_stopping_patience = 2\n",
    );
    let o = run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--set",
            "data.split.valid=0.2",
            "--set",
            "optimizer.lr=0.01",
        ],
    );
    let s = summary(&o);
    assert_eq!(s["stopped_early"], true, "{s}");
    assert!(s["epochs"].as_u64().unwrap() < 60);
    assert!(s["best_valid_auc"].as_f64().unwrap() > 0.5);
    let v = s["validations"].as_array().unwrap();
    let best = v
        .iter()
        .map(|x| x["auc"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    let tail: Vec<f64> = v[v.len() - 2..]
        .iter()
        .map(|x| x["auc"].as_f64().unwrap())
        .collect();
    assert!(
        tail.iter().all(|&a| a <= best),
        "the last two validations did not improve: {v:?}"
    );
}

#[test]
fn hashed_tables_gauc_and_every_model_kind_train() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 8000, 200);
    for kind in ["lr", "fm", "deepfm", "dcnv2", "dlrm"] {
        let cfg = criteo_config(
            dir.path(),
            &data,
            kind,
            "epochs = 3\n[eval]\ngauc_by = \"C1\"\n",
        );
        let o = run(
            dir.path(),
            &[
                "train",
                cfg.to_str().unwrap(),
                "--set",
                "embedding.kind=hashed",
                "--set",
                "embedding.buckets=64",
                "--set",
                "train.save_model=false",
                "--set",
                &format!("train.run_dir=\"run-{kind}\""),
            ],
        );
        let s = summary(&o);
        assert!(s["auc"].as_f64().unwrap() > 0.5, "{kind}: {s}");
        assert!(s["gauc"].is_number(), "{kind}: no gauc in {s}");
        // 26 hashed tables of 64 rows x 8 columns (+ first-order tables of width 1; LR has
        // only those)
        let width = match kind {
            "lr" => 1,
            "fm" | "deepfm" => 9,
            _ => 8,
        };
        assert_eq!(s["embedding_params"], 26 * 64 * width, "{kind}");
    }
}

/// A run that learned nothing says so: an asked-for test split with no rows ends
/// non-zero (after writing its summary and model), and a blown-up run whose test AUC is
/// chance warns on stderr and in the summary.
#[test]
fn a_run_that_learned_nothing_fails_or_warns() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 3000, 200);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "");
    let empty = write(dir.path(), "empty.tsv", "");
    let o = run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--set",
            &format!("data.test=\"{}\"", empty.display()),
        ],
    );
    assert!(!o.status.success(), "exited 0 without a test AUC");
    assert!(stderr(&o).contains("no test AUC"), "{}", stderr(&o));
    let run_dir = dir.path().join("run");
    assert!(run_dir.join("summary.json").is_file() && run_dir.join("model").is_dir());

    let s = train_summary(
        dir.path(),
        &cfg,
        &["optimizer.lr=1000", "train.run_dir=\"blown\""],
    );
    let warnings = s["warnings"].as_array().expect("warnings in the summary");
    assert!(
        warnings.iter().any(|w| w.as_str().unwrap().contains("0.5")),
        "{s}"
    );
    // a run that learns has none
    let s = train_summary(dir.path(), &cfg, &["train.run_dir=\"fine\""]);
    assert!(s.get("warnings").is_none(), "{s}");
}
