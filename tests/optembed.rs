//! OptEmbed's three stages end to end on generated data: rows pruned by learned
//! thresholds, a repeatable width search, retraining, and a compact export that predicts
//! what the masked model predicts; the same under `mpirun -np 2`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shardrec::optembed::RowMask;

use crate::common::{criteo_config, run, run_mpi, stderr, summary, synth};

/// DeepFM on `data` with a small search; row pruning forced by a threshold above the
/// initial norm of rarely updated rows.
pub(crate) fn optembed_config(dir: &Path, data: &Path) -> PathBuf {
    let cfg = criteo_config(
        dir,
        data,
        "deepfm",
        r#"epochs = 1
[optembed]
threshold_init = 0.15
threshold_lr = 0.01
alpha = 0.01
[optembed.search]
population = 6
parents = 3
mutations = 3
crossovers = 3
generations = 3
random_baseline = true"#,
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        "split = { kind = \"tail\", test = 0.2 }",
        "split = { kind = \"random\", valid = 0.1, test = 0.1, seed = 3 }",
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// All three stages on 20,000 generated rows with [`optembed_config`] and `sets` (each a
/// `--set`) on top, in `dir/oe`; returns the config, that run folder and the summary.
fn optembed_job(dir: &Path, sets: &[&str]) -> (PathBuf, PathBuf, serde_json::Value) {
    let (data, _) = synth(dir, 20_000, 1_000);
    let cfg = optembed_config(dir, &data);
    let run_dir = dir.join("oe");
    let set_run = format!("train.run_dir=\"{}\"", run_dir.display());
    let mut args = vec!["train", cfg.to_str().unwrap(), "--set", &set_run];
    for s in sets {
        args.extend(["--set", s]);
    }
    let s = summary(&run(dir, &args));
    (cfg, run_dir, s)
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn u64s(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn optembed_prunes_rows_searches_widths_and_exports_a_compact_model_that_predicts_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, run_dir, s) = optembed_job(dir.path(), &[]);
    let set_run = format!("train.run_dir=\"{}\"", run_dir.display());
    let stages = &s["optembed_stages"];

    // supernet: some rows of the big fields pruned, not all
    let sup = &stages["supernet"];
    let (kept, rows) = (u64s(&sup["kept_rows"]), u64s(&sup["vocab_rows"]));
    let (k, n): (u64, u64) = (kept.iter().sum(), rows.iter().sum());
    assert!(k < n && k > n / 20, "kept {k} of {n} rows");
    assert!(run_dir.join("supernet/row_mask.bin").is_file());

    // search: generation bests recorded, never worse than before, widths in range
    let search = &stages["search"];
    let best: Vec<f64> = search["best_so_far_valid_auc"]
        .as_array()
        .unwrap()
        .iter()
        .map(f)
        .collect();
    assert_eq!(best.len(), 3);
    assert!(best.windows(2).all(|w| w[1] >= w[0]), "{best:?}");
    assert!(f(&search["random_baseline_best_valid_auc"]) > 0.5);
    let widths = u64s(&search["widths"]);
    assert!(widths.iter().all(|&w| (1..=8).contains(&w)), "{widths:?}");

    // retrain: sparsity from kept rows and widths; compact predictions equal the masked ones
    assert_eq!(u64s(&s["widths"]), widths);
    let params: u64 = kept.iter().zip(&widths).map(|(k, w)| k * w).sum();
    assert_eq!(s["embedding_params"].as_u64().unwrap(), params);
    let sparsity = f(&s["sparsity"]);
    assert!((sparsity - (1.0 - params as f64 / (n * 8) as f64)).abs() < 1e-12);
    assert!(sparsity > 0.0);
    assert!(
        f(&s["compact_max_abs_prediction_diff"]) <= 1e-6,
        "{}",
        s["compact_max_abs_prediction_diff"]
    );
    let ratio = f(&s["compact_main_table_bytes"]) / f(&s["full_main_table_bytes"]);
    assert!(
        ratio <= 1.0 - sparsity + 0.03,
        "compact tables are {ratio:.3} of the full ones at sparsity {sparsity:.3}"
    );
    assert!(f(&s["auc"]) > 0.6, "{s}");

    // `shardrec eval` of the compact model gives the retrained model's test metrics
    let compact = run_dir.join("retrain/model_compact");
    let e = summary(&run(
        dir.path(),
        &[
            "eval",
            cfg.to_str().unwrap(),
            "--model",
            compact.to_str().unwrap(),
        ],
    ));
    assert!((f(&e["auc"]) - f(&s["auc"])).abs() < 1e-6, "{e} vs {s}");
    assert!(
        (f(&e["logloss"]) - f(&s["logloss"])).abs() < 1e-6,
        "{e} vs {s}"
    );

    // the masked model of a stage is refused: it only means something through the masks
    let masked = run_dir.join("retrain/model");
    let o = run(
        dir.path(),
        &[
            "eval",
            cfg.to_str().unwrap(),
            "--model",
            masked.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("model_compact"), "{}", stderr(&o));

    // a stage alone, in the same run folder, repeats the search
    let again = summary(&run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--stage",
            "search",
            "--set",
            &set_run,
        ],
    ));
    assert_eq!(u64s(&again["widths"]), widths);

    // a corrupt row mask is refused, naming the file
    let mask = run_dir.join("supernet/row_mask.bin");
    let mut bytes = std::fs::read(&mask).unwrap();
    bytes[24] ^= 0x40;
    std::fs::write(&mask, bytes).unwrap();
    let o = run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--stage",
            "search",
            "--set",
            &set_run,
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("row_mask.bin") && stderr(&o).contains("checksum"),
        "{}",
        stderr(&o)
    );
}

/// Fraction of field `f`'s rows kept in each fifth of its ids (ids run from the most to
/// the least frequent value).
fn kept_by_fifth(mask: &RowMask, f: usize) -> Vec<f64> {
    let n = mask.rows(f);
    (0..5)
        .map(|i| {
            let ids = (i * n / 5)..((i + 1) * n / 5);
            let len = ids.end - ids.start;
            ids.filter(|&r| mask.kept(f, r)).count() as f64 / len.max(1) as f64
        })
        .collect()
}

fn init_of_first_table(model: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(model.join("manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    m["collections"][0]["spec"]["tables"][0]["init"].clone()
}

#[test]
fn with_sgd_tables_and_a_small_supernet_init_the_row_mask_keeps_frequent_ids() {
    // SGD moves a row by the sum of its gradients and the small start adds almost
    // nothing, so a row's norm grows with how often it was used and the learned
    // thresholds prune the rare ids first; the retrain starts from `embedding.init`
    let dir = tempfile::tempdir().unwrap();
    let (_, run_dir, s) = optembed_job(
        dir.path(),
        &[
            "embedding.optimizer={kind=\"sgd\", lr=3.0}",
            "optembed.supernet_init={kind=\"normal\", scale=1e-4}",
            "optembed.threshold_init=0.0",
            "optembed.alpha=1e-3",
            "optembed.supernet_epochs=3",
            "optembed.search.random_baseline=false",
        ],
    );
    let mask = RowMask::load(&run_dir.join("supernet/row_mask.bin")).unwrap();
    let (mut first, mut last) = (0.0, 0.0);
    for f in 0..mask.features() {
        let k = kept_by_fifth(&mask, f);
        assert!(k[0] >= k[4], "field {f}: kept by fifth {k:?}");
        first += k[0];
        last += k[4];
    }
    let fields = mask.features() as f64;
    let (first, last) = (first / fields, last / fields);
    assert!(
        first > 0.2 && first > 5.0 * last,
        "kept {first:.3} of the most frequent fifth against {last:.3} of the rarest"
    );
    assert!(f(&s["sparsity"]) > 0.5, "{}", s["sparsity"]);

    let supernet = init_of_first_table(&run_dir.join("supernet/model"));
    assert_eq!(supernet["kind"], "normal", "{supernet}");
    assert!((f(&supernet["std"]) - 1e-4).abs() < 1e-9, "{supernet}");
    let retrain = init_of_first_table(&run_dir.join("retrain/model"));
    assert_eq!(retrain["kind"], "uniform", "{retrain}");
    // three supernet epochs, then `train.epochs` (1) for the retrain
    let stages = &s["optembed_stages"];
    assert_eq!(
        stages["supernet"]["validations"].as_array().unwrap().len(),
        3
    );
    assert_eq!(
        stages["retrain"]["validations"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn an_optembed_stage_without_its_inputs_says_which_stage_to_run_first() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 2_000, 100);
    let cfg = optembed_config(dir.path(), &data);
    let set_run = format!("train.run_dir=\"{}\"", dir.path().join("empty").display());
    let o = run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--stage",
            "retrain",
            "--set",
            &set_run,
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("supernet/row_mask.bin") && err.contains("--stage supernet"),
        "{err}"
    );
    let plain_dir = dir.path().join("plain");
    std::fs::create_dir_all(&plain_dir).unwrap();
    let plain = criteo_config(&plain_dir, &data, "deepfm", "");
    let o = run(
        dir.path(),
        &["train", plain.to_str().unwrap(), "--stage", "search"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("[optembed]"), "{}", stderr(&o));
    // hashed tables cannot be pruned row by row
    let o = run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--set",
            "embedding.kind=\"hashed\"",
            "--set",
            "embedding.buckets=50",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("embedding.kind"), "{}", stderr(&o));
}

#[test]
fn optembed_stages_under_two_ranks_reproduce_one_process_in_two_slices_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 40_000, 1_000);
    let cfg = optembed_config(dir.path(), &data);
    let go = |ranks: usize, slices: usize| {
        let run_dir = dir.path().join(format!("np{ranks}-s{slices}"));
        let o = run_mpi(
            dir.path(),
            ranks,
            &[
                "train",
                cfg.to_str().unwrap(),
                "--set",
                &format!("train.run_dir=\"{}\"", run_dir.display()),
                "--set",
                "sharding.strategy=\"row_wise\"",
                "--set",
                &format!("train.slices={slices}"),
            ],
            Duration::from_secs(600),
        );
        (summary(&o), run_dir)
    };
    let (one, _) = go(1, 2);
    let (two, two_dir) = go(2, 2);
    let (whole, _) = go(1, 1);
    assert_eq!(two["world_size"], 2);
    assert!(f(&two["compact_max_abs_prediction_diff"]) <= 1e-6, "{two}");
    // every stage's steps are bit-identical: the same thresholds, row mask, search path,
    // widths and test predictions
    for key in [
        "auc",
        "logloss",
        "sparsity",
        "kept_rows",
        "widths",
        "embedding_params",
    ] {
        assert_eq!(
            one[key], two[key],
            "{key}: one process {one}, two ranks {two}"
        );
    }
    for (stage, key) in [
        ("supernet", "thresholds"),
        ("supernet", "validations"),
        ("search", "generation_best_valid_auc"),
    ] {
        let (a, b) = (
            &one["optembed_stages"][stage][key],
            &two["optembed_stages"][stage][key],
        );
        assert!(!a.is_null(), "{stage}.{key} missing: {one}");
        assert_eq!(a, b, "{stage}.{key}");
    }
    // the whole batch at once is another rounding of the same steps: near, not equal
    let kept = |s: &serde_json::Value| u64s(&s["kept_rows"]).iter().sum::<u64>() as f64;
    assert!(
        (kept(&whole) - kept(&two)).abs() <= 0.02 * kept(&whole),
        "kept rows: one process {}, two ranks {}",
        kept(&whole),
        kept(&two)
    );
    let (a, b) = (f(&whole["auc"]), f(&two["auc"]));
    assert!((a - b).abs() <= 0.005, "one process {a}, two ranks {b}");
    // the two-rank compact model evaluates in one process to its own test metrics
    let compact = two_dir.join("retrain/model_compact");
    let e = summary(&run(
        dir.path(),
        &[
            "eval",
            cfg.to_str().unwrap(),
            "--model",
            compact.to_str().unwrap(),
        ],
    ));
    assert!((f(&e["auc"]) - b).abs() < 1e-6, "{e} vs {two}");
    // slices must match the ranks under mpirun
    let o = run_mpi(
        dir.path(),
        2,
        &[
            "train",
            cfg.to_str().unwrap(),
            "--set",
            "train.slices=4",
            "--stage",
            "supernet",
        ],
        Duration::from_secs(300),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("train.slices"), "{}", stderr(&o));
}
