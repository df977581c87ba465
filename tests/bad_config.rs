//! Bad configs: every kind of mistake is an error naming the file, line and key (and the
//! closest valid key or value for a misspelling), never a panic.

use crate::common::*;

const GOOD: &str = r#"seed = 1
[data]
format = "criteo"
train = "x.tsv"
[model]
kind = "dlrm"
[train]
epochs = 1
"#;

fn check(text: &str, set: &[&str], wants: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "exp.toml", text);
    let mut args = vec!["train", cfg.to_str().unwrap()];
    for s in set {
        args.push("--set");
        args.push(s);
    }
    let o = run(dir.path(), &args);
    let err = stderr(&o);
    assert!(!o.status.success(), "accepted: {text} {set:?}");
    assert!(!err.contains("panicked"), "{err}");
    for w in wants {
        assert!(err.contains(w), "error lacks {w:?}:\n{err}");
    }
}

#[test]
fn unknown_keys_name_line_and_closest_key() {
    check(
        &GOOD.replace("epochs = 1", "epochs = 1\nbatchsize = 64"),
        &[],
        &[
            "exp.toml:9",
            "`train.batchsize`",
            "did you mean `train.batch_size`",
        ],
    );
    check(
        &format!("{GOOD}[embedding]\ndimm = 8\n"),
        &[],
        &["exp.toml:10", "`embedding.dimm`", "`embedding.dim`"],
    );
    check(
        &GOOD.replace("seed = 1", "sed = 1"),
        &[],
        &["exp.toml:1", "`sed`", "did you mean `seed`"],
    );
    check(
        GOOD,
        &["model.hiden=[4]"],
        &["(from --set)", "model.hiden", "`model.hidden`"],
    );
}

#[test]
fn bad_values_name_key_and_range() {
    check(
        &GOOD.replace("\"dlrm\"", "\"dlmr\""),
        &[],
        &["exp.toml:6", "model.kind", "did you mean \"dlrm\""],
    );
    check(
        &GOOD.replace("\"criteo\"", "\"orc\""),
        &[],
        &["exp.toml:3", "data.format", "orc"],
    );
    check(
        &GOOD.replace("epochs = 1", "epochs = 0"),
        &[],
        &["exp.toml:8", "`train.epochs` = 0", "[1, 1000000]"],
    );
    check(GOOD, &["train.batch_size=-5"], &["batch_size"]);
    check(
        GOOD,
        &["embedding.dim=0"],
        &["`embedding.dim` = 0", "(from --set)"],
    );
    check(GOOD, &["data.split.test=1.5"], &["data.split.test"]);
    check(GOOD, &["train.device=tpu"], &["train.device", "cpu"]);
    check(
        GOOD,
        &["embedding.device=\"gpu\""],
        &["embedding.device", "\"cuda:N\""],
    );
    check(GOOD, &["train.checkpoint_every=-1"], &["checkpoint_every"]);
    check(
        GOOD,
        &["model.kind=\"dare\"", "model.sequence_len=0"],
        &["`model.sequence_len` = 0", "(from --set)"],
    );
    check(
        GOOD,
        &["model.kind=\"twin\"", "model.top_k=0"],
        &["`model.top_k` = 0"],
    );
    check(
        GOOD,
        &["sharding.memory_limit_per_rank=0"],
        &["`sharding.memory_limit_per_rank` = 0"],
    );
    check(
        GOOD,
        &["sharding.strategy=\"diagonal\""],
        &["sharding.strategy", "row_wise"],
    );
    check(
        &format!("{GOOD}[sharding]\nplanfile = \"p.toml\"\n"),
        &[],
        &["exp.toml:10", "`sharding.planfile`", "`sharding.plan_file`"],
    );
    check(GOOD, &["embedding.kind=hashed"], &["embedding.buckets"]);
    check(
        GOOD,
        &["train.early_stopping_patience=2"],
        &["early_stopping_patience", "validation"],
    );
    check(
        &GOOD.replace("epochs = 1", "epochs = \"one\""),
        &[],
        &["epochs"],
    );
    check(
        &GOOD.replace("[data]", "[data\n"),
        &[],
        &["exp.toml", "TOML syntax"],
    );
    check(
        GOOD.replace("train = \"x.tsv\"\n", "").as_str(),
        &[],
        &["`train`", "missing"],
    );
    check(GOOD, &["nokey"], &["--set nokey", "key=value"]);
    check(
        GOOD,
        &["train.slices=0"],
        &["`train.slices` = 0", "[1, 4096]"],
    );
    check(
        GOOD,
        &["train.slices=2", "model.batch_norm=true"],
        &["train.slices", "batch_norm"],
    );
    check(
        GOOD,
        &["optembed.supernet_init={kind=\"normal\", scale=0.0}"],
        &["`optembed.supernet_init.scale` = 0"],
    );
    check(
        GOOD,
        &["optembed.supernet_init={kind=\"normal\", std=0.1}"],
        &["`optembed.supernet_init.std`", "kind, scale"],
    );
}

#[test]
fn config_references_to_unknown_features_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 500, 50);
    let cfg = criteo_config(
        dir.path(),
        &data,
        "lr",
        "save_model = false\n[eval]\ngauc_by = \"C99\"\n",
    );
    let o = run(dir.path(), &["train", cfg.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("eval.gauc_by") && err.contains("C99"),
        "{err}"
    );
    let cfg = criteo_config(
        dir.path(),
        &data,
        "lr",
        "save_model = false\n[[embedding.tables]]\nname = \"shared\"\nfeatures = [\"C1\", \"C77\"]\n",
    );
    let o = run(dir.path(), &["train", cfg.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("C77") && err.contains("shared"),
        "{err}"
    );
}

#[test]
fn every_bundled_config_loads_and_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        if let Err(e) = shardrec::config::load_config(&path, &[]) {
            panic!("{}: {e}", path.display());
        }
        seen += 1;
    }
    // criteo, avazu, frappe, movielens100k x {dlrm, deepfm} + synthetic {dlrm, dcnv2, deepfm}
    assert!(seen >= 11, "only {seen} configs in {}", dir.display());
}

/// A label threshold that is not a number (every label would silently be 0) is refused.
#[test]
fn a_non_finite_label_threshold_is_refused() {
    let delimited = GOOD.replace(
        "format = \"criteo\"",
        "format = \"delimited\"\ncolumns = [{name = \"r\", role = \"label\", threshold = nan}, {name = \"c\", role = \"categorical\"}]",
    );
    check(
        &delimited,
        &[],
        &["data.columns.threshold", "NaN on `r`", "finite"],
    );
}

/// Mistakes that used to come without a line: an unknown section, a value of the wrong
/// type; and a bound that used to print as hundreds of digits.
#[test]
fn unknown_sections_and_wrong_types_name_their_line() {
    check(
        &format!("{GOOD}[foo]\nbar = 1\n"),
        &[],
        &["exp.toml:9", "`foo`"],
    );
    check(
        &GOOD.replace("epochs = 1", "epochs = \"three\""),
        &[],
        &["exp.toml:8", "`train.epochs`", "invalid type"],
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "exp.toml", GOOD);
    let o = run(
        dir.path(),
        &["train", cfg.to_str().unwrap(), "--set", "optimizer.lr=nan"],
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("optimizer.lr") && err.contains("e-308") && !err.contains("0.00000000000"),
        "{err}"
    );
}
