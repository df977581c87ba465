//! Fused tables (`embedding.fused`) end to end on the CPU: the tensor path the GPU runs,
//! trained against the host tables, repeated, evaluated, and refused where it cannot go.

use crate::common::*;

#[test]
fn fused_tables_train_like_host_tables_repeat_and_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 6000, 500);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "epochs = 2");
    let host = train_summary(dir.path(), &cfg, &["train.run_dir=host"]);
    let fused = train_summary(
        dir.path(),
        &cfg,
        &["train.run_dir=fused", "embedding.fused=true"],
    );
    assert_eq!(host["tables"], "host");
    assert_eq!(fused["tables"], "fused");
    let (a, b) = (
        host["auc"].as_f64().unwrap(),
        fused["auc"].as_f64().unwrap(),
    );
    // the same model up to the order of float sums
    assert!((a - b).abs() < 0.002, "host {a} fused {b}");
    let again = train_summary(
        dir.path(),
        &cfg,
        &["train.run_dir=fused2", "embedding.fused=true"],
    );
    assert_eq!(again["auc"], fused["auc"], "a seed repeats bitwise");
    let model = dir.path().join("fused/model");
    for fused_eval in ["true", "false"] {
        let set = format!("embedding.fused={fused_eval}");
        let args = [
            "eval",
            cfg.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--set",
            &set,
        ];
        let e = summary(&run(dir.path(), &args));
        let got = e["auc"].as_f64().unwrap();
        if fused_eval == "true" {
            assert_eq!(e["auc"], fused["auc"], "fused eval of a fused model");
        } else {
            assert!(
                (got - b).abs() < 1e-6,
                "host eval of a fused model: {got} vs {b}"
            );
        }
    }
}

#[test]
fn fused_tables_refuse_what_they_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 500, 50);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "slices = 2");
    let o = run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--set",
            "embedding.fused=true",
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("embedding.fused") && err.contains("train.slices"),
        "{err}"
    );
}

/// A device cache of about a third of the rows, over RAM or over the file tier, trains
/// the model the fused tables hold whole, bit for bit; a run stopped at a checkpoint
/// resumes to the same result (the cache is written back before each checkpoint).
#[test]
fn a_device_cache_over_ram_or_file_rows_trains_the_same_model_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 6000, 500);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "epochs = 2");
    let cache = ["embedding.fused=true", "embedding.gpu_cache_bytes=300000"];
    let whole = train_summary(
        dir.path(),
        &cfg,
        &["train.run_dir=whole", "embedding.fused=true"],
    );
    let ram = train_summary(
        dir.path(),
        &cfg,
        &[&["train.run_dir=ram"], &cache[..]].concat(),
    );
    let tier = dir.path().join("tier");
    let tier_dir = format!("embedding.storage.dir={}", tier.display());
    let file_sets = [
        "train.run_dir=file",
        "embedding.storage.kind=file",
        &tier_dir,
        "embedding.storage.cache_bytes=60000",
    ];
    let file = train_summary(dir.path(), &cfg, &[&file_sets[..], &cache[..]].concat());
    assert_eq!(ram["auc"], whole["auc"], "cache over RAM");
    assert_eq!(file["auc"], whole["auc"], "cache over the file tier");
    let group = &ram["fused_tables"][0]["groups"][0];
    let rate = group["hit_rate"].as_f64().unwrap();
    assert!(rate > 0.2 && rate < 1.0, "{group}");
    assert!(group["write_backs"].as_u64().unwrap() > 0, "{group}");
    assert!(
        group["device_rows"].as_u64() < group["rows"].as_u64(),
        "{group}"
    );
    assert!(file["file_tier"][0]["bytes_written"].as_u64().unwrap() > 0);
    // stop at step 20 with a checkpoint, then resume to the end
    let steps = ram["steps"].as_u64().unwrap();
    assert!(steps > 30, "{steps} steps");
    let stop = [
        "train.run_dir=stopped",
        "train.max_steps=20",
        "train.checkpoint_every=10",
    ];
    train_summary(dir.path(), &cfg, &[&stop[..], &cache[..]].concat());
    let mut args = vec!["train", cfg.to_str().unwrap(), "--resume", "stopped"];
    for s in ["train.run_dir=stopped", "train.checkpoint_every=10"]
        .iter()
        .chain(&cache)
    {
        args.extend(["--set", s]);
    }
    let resumed = summary(&run(dir.path(), &args));
    assert_eq!(resumed["steps"], ram["steps"]);
    assert_eq!(resumed["auc"], ram["auc"], "resumed through the cache");
}

#[test]
fn a_device_cache_without_fused_tables_is_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 500, 50);
    let cfg = criteo_config(dir.path(), &data, "dlrm", "");
    let o = run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--set",
            "embedding.gpu_cache_bytes=100000",
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("embedding.gpu_cache_bytes") && err.contains("embedding.fused"),
        "{err}"
    );
}

/// Under mpirun, each rank's shards fused per width (served and updated in one batch a
/// step) train what the host shards train, and the model they save evaluates in one
/// process to the same AUC.
#[test]
fn two_ranks_with_fused_shards_train_like_host_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 8000, 500);
    let cfg = criteo_config(dir.path(), &data, "deepfm", "epochs = 2");
    let train = |name: &str, fused: &str| {
        let run_dir = format!("train.run_dir={name}");
        let fused = format!("embedding.fused={fused}");
        let args = [
            "train",
            cfg.to_str().unwrap(),
            "--set",
            &run_dir,
            "--set",
            &fused,
        ];
        summary(&run_mpi(
            dir.path(),
            2,
            &args,
            std::time::Duration::from_secs(300),
        ))
    };
    let host = train("host2", "false");
    let fused = train("fused2", "true");
    assert_eq!(host["tables"], "host");
    assert_eq!(fused["tables"], "fused");
    let (a, b) = (
        host["auc"].as_f64().unwrap(),
        fused["auc"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 0.002, "host shards {a}, fused shards {b}");
    let model = dir.path().join("fused2/model");
    let e = summary(&run(
        dir.path(),
        &[
            "eval",
            cfg.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ],
    ));
    let got = e["auc"].as_f64().unwrap();
    assert!((got - b).abs() < 1e-6, "one-process eval {got} vs {b}");
}
