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
