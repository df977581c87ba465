//! Behaviour-sequence models end to end: generated sequences with known relevant
//! behaviours, DIN / TWIN / DARE trained and scored (AUC, GAUC, category AUC, NDCG of the
//! search), a saved DARE model evaluated again, DARE under `mpirun -np 2` with sharded
//! item tables, the Taobao protocol on the bundled sample, and bad sequence input.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{
    criteo_config, run, run_mpi, shared_data, stderr, summary, synth, train_summary, write,
};

/// Generated sequences in `dir`: (train, test, relevant).
pub(crate) fn sequences(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let out = dir.join("seq");
    let s = summary(&run(
        dir,
        &[
            "synth",
            "--kind",
            "sequence",
            "--users",
            "1200",
            "--history",
            "100",
            "--items",
            "500",
            "--categories",
            "40",
            "--group-size",
            "4",
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(s["train_rows"], 9600);
    assert_eq!(s["test_rows"], 2400);
    let rel = s["mean_relevant_per_sample"].as_f64().unwrap();
    assert!(
        (7.0..13.0).contains(&rel),
        "about 100 * 4 / 40 relevant behaviours: {rel}"
    );
    (
        dir.join("seq-train.tsv"),
        dir.join("seq-test.tsv"),
        dir.join("seq-test.relevant"),
    )
}

pub(crate) fn sequence_config(
    dir: &Path,
    model: &str,
    train: &Path,
    test: &Path,
    relevant: Option<&Path>,
) -> PathBuf {
    let relevant = relevant.map_or(String::new(), |r| {
        format!("relevant_positions = \"{}\"", r.display())
    });
    let text = format!(
        r#"seed = 5
[data]
format = "sequence"
train = "{}"
test = "{}"
cache_dir = "{}"
split = {{ kind = "random", valid = 0.05, test = 0.0 }}
[embedding]
dim = 8
init = {{ kind = "normal", scale = 0.01 }}
optimizer = {{ kind = "adam", lr = 0.01 }}
[model]
kind = "{model}"
hidden = [32, 16]
batch_norm = true
sequence_len = 100
top_k = 10
attention_dim = 8
[optimizer]
kind = "adam"
lr = 0.01
[train]
epochs = 2
batch_size = 256
threads = 1
run_dir = "{}"
[eval]
gauc_by = "user_id"
{relevant}
"#,
        train.display(),
        test.display(),
        dir.join("cache").display(),
        dir.join(format!("run-{model}")).display(),
    );
    write(dir, &format!("{model}.toml"), &text)
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn din_twin_and_dare_learn_generated_sequences_and_dare_retrieves_the_relevant_behaviours() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test, relevant) = sequences(dir.path());
    let mut results = std::collections::BTreeMap::new();
    for model in ["din", "twin", "dare"] {
        let cfg = sequence_config(dir.path(), model, &train, &test, Some(&relevant));
        // TWIN with the official scripts' auxiliary full-sequence loss
        let aux = if model == "twin" {
            "model.aux_loss=true"
        } else {
            "model.aux_loss=false"
        };
        let s = train_summary(dir.path(), &cfg, &[aux]);
        assert_eq!(s["model"], model);
        assert_eq!(s["rows_test"], 2400);
        for key in ["auc", "gauc", "category_auc", "retrieval_ndcg"] {
            let v = f(&s[key]);
            assert!((0.0..=1.0).contains(&v), "{model} {key} = {v}");
        }
        assert!(f(&s["auc"]) > 0.6, "{model} learns: {s}");
        assert_eq!(s["retrieval_k"], 10);
        results.insert(model, s);
    }
    // a random choice of 10 of 100 slots finds about 10% of the relevant behaviours;
    // DARE's attention tables learn the category groups (this seed: DARE 0.295, TWIN
    // 0.270, DIN's all-slot attention 0.105)
    let dare = f(&results["dare"]["retrieval_ndcg"]);
    assert!(dare > 0.25, "DARE's search NDCG@10 {dare}");
    // DARE has the attention tables beside TWIN's
    assert!(
        results["dare"]["embedding_params"].as_u64().unwrap()
            > results["twin"]["embedding_params"].as_u64().unwrap()
    );
    // the saved DARE model evaluates to the same figures
    let cfg = dir.path().join("dare.toml");
    let model_dir = dir.path().join("run-dare/model");
    let e = summary(&run(
        dir.path(),
        &[
            "eval",
            cfg.to_str().unwrap(),
            "--model",
            model_dir.to_str().unwrap(),
        ],
    ));
    for key in ["auc", "gauc", "category_auc", "retrieval_ndcg"] {
        assert!(
            (f(&e[key]) - f(&results["dare"][key])).abs() < 1e-6,
            "{key}: eval {} vs training {}",
            e[key],
            results["dare"][key]
        );
    }

    // the same DARE under mpirun -np 2, every table sharded row-wise
    let cfg = sequence_config(dir.path(), "dare", &train, &test, Some(&relevant));
    let run_dir = format!(
        "train.run_dir=\"{}\"",
        dir.path().join("run-dare-np2").display()
    );
    let o = run_mpi(
        dir.path(),
        2,
        &[
            "train",
            cfg.to_str().unwrap(),
            "--set",
            &run_dir,
            "--set",
            "sharding.strategy=\"row_wise\"",
        ],
        Duration::from_secs(600),
    );
    let s2 = summary(&o);
    assert_eq!(s2["world_size"], 2);
    let d = (f(&s2["auc"]) - f(&results["dare"]["auc"])).abs();
    assert!(
        d < 0.02,
        "np2 AUC {} vs np1 {}",
        s2["auc"],
        results["dare"]["auc"]
    );
    assert!(stderr(&o).contains("6 tables row-wise"), "{}", stderr(&o));
}

#[test]
fn bad_sequence_rows_name_file_and_line_and_models_refuse_other_data() {
    let dir = tempfile::tempdir().unwrap();
    let good = "1\tu1\t5\t2\t1,2,3\t7,7,8\n0\tu2\t6\t3\t\t\n";
    let data = write(
        dir.path(),
        "bad.tsv",
        &format!("{good}1\tu3\t5\t2\t1,2,3\t7,8\n{good}"),
    );
    let cfg = sequence_config(dir.path(), "twin", &data, &data, None);
    let o = run(dir.path(), &["train", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("bad.tsv:3") && err.contains("2 history categories for 3 history items"),
        "{err}"
    );
    let s = train_summary(
        dir.path(),
        &cfg,
        &["data.on_bad_row=\"skip\"", "train.epochs=1"],
    );
    // the bad row is skipped and counted, in the training file and again as the test file
    assert_eq!(s["bad_rows"]["sequence_length_mismatch"], 2, "{s}");
    // a side file of relevant behaviours that is missing is refused before training
    let o = run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--set",
            "data.on_bad_row=\"skip\"",
            "--set",
            "eval.relevant_positions=\"missing.relevant\"",
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("eval.relevant_positions") && err.contains("missing.relevant"),
        "{err}"
    );
    assert!(!err.contains("step 1"), "refused before training: {err}");
    // a malformed side file, or one for another test file, is refused before the first
    // step: the run folder is never made, so nothing trained is lost at the end
    let fresh = dir.path().join("fresh-run");
    for (text, says) in [
        ("1\nx\n\n\n", "bad.relevant:2: `x` is not a distance"),
        ("1\n", "lists 1 samples, the test split has 4 rows"),
    ] {
        write(dir.path(), "bad.relevant", text);
        let o = run(
            dir.path(),
            &[
                "train",
                cfg.to_str().unwrap(),
                "--set",
                "data.on_bad_row=\"skip\"",
                "--set",
                "eval.relevant_positions=\"bad.relevant\"",
                "--set",
                &format!("train.run_dir=\"{}\"", fresh.display()),
            ],
        );
        assert!(!o.status.success());
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
        assert!(!fresh.exists(), "refused before training");
    }

    // a sequence model on Criteo-format data
    let (criteo, _) = synth(dir.path(), 2_000, 100);
    let cfg = criteo_config(dir.path(), &criteo, "dare", "");
    let o = run(dir.path(), &["train", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("data.format = \"sequence\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn taobao_sample_becomes_sequences_by_the_dare_protocol_and_dare_trains_on_it() {
    let Some(csv) = shared_data("taobao/user_behavior_by_user.csv") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("taobao");
    let s = summary(&run(
        dir.path(),
        &[
            "prepare",
            "--format",
            "taobao",
            "--input",
            csv.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--min-history",
            "20",
            "--train-targets",
            "30",
        ],
    ));
    let users = s["users_kept"].as_u64().unwrap();
    assert!(users > 50, "{s}");
    // one validation and one test positive per user, each with two negatives
    assert_eq!(s["rows"][1].as_u64().unwrap(), 3 * users);
    assert_eq!(s["rows"][2].as_u64().unwrap(), 3 * users);
    let test = std::fs::read_to_string(out.join("test.tsv")).unwrap();
    for l in test.lines() {
        let c: Vec<&str> = l.split('\t').collect();
        assert_eq!(c.len(), 6);
        let (items, cats) = (c[4].split(',').count(), c[5].split(',').count());
        assert_eq!(items, cats);
        assert!(items <= 200);
    }
    let cfg = sequence_config(
        dir.path(),
        "dare",
        &out.join("train.tsv"),
        &out.join("test.tsv"),
        None,
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        "split = { kind = \"random\", valid = 0.05, test = 0.0 }",
        &format!("valid = \"{}\"", out.join("valid.tsv").display()),
    );
    std::fs::write(&cfg, text).unwrap();
    let r = train_summary(dir.path(), &cfg, &[]);
    assert!(f(&r["auc"]) > 0.6, "{r}");
    assert!(r["retrieval_ndcg"].is_null());
    assert!(f(&r["gauc"]) > 0.5);
}
