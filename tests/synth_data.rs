//! Generated data: files and ceiling, determinism, and a model trained on it getting
//! close to the Bayes AUC; prepared data is cached and reused.

use crate::common::*;

#[test]
fn synth_writes_data_probabilities_and_a_ceiling_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let (data, s) = synth(dir.path(), 20_000, 10_000);
    let text = std::fs::read_to_string(&data).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 20_000);
    assert!(lines.iter().all(|l| l.split('\t').count() == 40));
    let probs = std::fs::read_to_string(format!("{}.prob", data.display())).unwrap();
    assert_eq!(probs.lines().count(), 20_000);
    assert!(probs
        .lines()
        .all(|p| p.parse::<f64>().is_ok_and(|x| (0.0..=1.0).contains(&x))));
    assert_eq!(s["test_rows"], 4000);
    let bayes = s["bayes_auc"].as_f64().unwrap();
    assert!((0.7..0.95).contains(&bayes), "{s}");
    assert!(
        (s["click_rate"].as_f64().unwrap() - 0.25).abs() < 0.03,
        "{s}"
    );
    // same options, same bytes
    let other = dir.path().join("again");
    std::fs::create_dir(&other).unwrap();
    let (data2, _) = synth(&other, 20_000, 10_000);
    assert!(std::fs::read(&data).unwrap() == std::fs::read(&data2).unwrap());
}

#[test]
fn dlrm_on_generated_data_approaches_the_bayes_auc_and_cache_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, s) = synth(dir.path(), 60_000, 200);
    let bayes = s["bayes_auc"].as_f64().unwrap();
    let cfg = criteo_config(dir.path(), &data, "dlrm", "epochs = 2\nsave_model = false");
    let o = run(dir.path(), &["train", cfg.to_str().unwrap()]);
    let t = summary(&o);
    let auc = t["auc"].as_f64().unwrap();
    // 48k rows cannot pin down 26 x 200 values' effects: the model learns part of the
    // signal, never more than the teacher's ceiling
    assert!(
        auc > 0.62 && auc <= bayes + 0.01,
        "AUC {auc} vs Bayes {bayes}"
    );
    assert!(stderr(&o).contains("prepared data written"));
    let o = run(dir.path(), &["prepare", cfg.to_str().unwrap()]);
    assert!(stderr(&o).contains("using prepared data"), "{}", stderr(&o));
    let p = summary(&o);
    assert_eq!(p["rows"]["train"], 48_000);
    // a changed option is a different cache entry
    let o = run(
        dir.path(),
        &[
            "prepare",
            cfg.to_str().unwrap(),
            "--set",
            "data.min_count=100",
        ],
    );
    assert!(stderr(&o).contains("prepared data written"));
    let q = summary(&o);
    assert_ne!(p["prepared"], q["prepared"]);
    assert!(q["vocab_sizes"][0].as_u64() < p["vocab_sizes"][0].as_u64());
}
