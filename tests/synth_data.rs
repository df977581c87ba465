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

#[test]
fn synth_days_writes_a_file_a_day_with_newborn_ids_and_each_days_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stream.tsv");
    let o = out.to_str().unwrap();
    let args = [
        "synth",
        "--rows",
        "30000",
        "--cardinality",
        "300",
        "--fields",
        "4",
        "--days",
        "3",
        "--turnover",
        "0.2",
        "--out",
        o,
    ];
    let s = summary(&run(dir.path(), &args));
    let days = s["days"].as_array().unwrap();
    assert_eq!(days.len(), 3);
    for (d, day) in days.iter().enumerate() {
        let file = dir.path().join(format!("stream-day{d:02}.tsv"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count() as u64, day["rows"].as_u64().unwrap());
        assert!(text.lines().all(|l| l.split('\t').count() == 18));
        let bayes = day["bayes_auc"].as_f64().unwrap();
        assert!((0.7..0.95).contains(&bayes), "{day}");
        if d > 0 {
            // 10,000 rows a day over 300 ids a field: the new ids are the newborn ones
            let new = day["new_ids"].as_u64().unwrap();
            assert!(
                (100..600).contains(&new),
                "about 0.2 x 300 x 4 = 240: {day}"
            );
        }
    }
    let o2 = dir.path().join("again.tsv");
    let mut again = args;
    again[12] = o2.to_str().unwrap();
    run(dir.path(), &again);
    assert_eq!(
        std::fs::read(dir.path().join("stream-day02.tsv")).unwrap(),
        std::fs::read(dir.path().join("again-day02.tsv")).unwrap()
    );
    let bad = run(
        dir.path(),
        &[
            "synth",
            "--rows",
            "10",
            "--days",
            "2",
            "--turnover",
            "2",
            "--out",
            o,
        ],
    );
    assert!(!bad.status.success() && stderr(&bad).contains("--turnover"));
}
