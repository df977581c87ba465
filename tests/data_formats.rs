//! The same rows as TSV, as Parquet (written by pyarrow) and as TorchRec's npy arrays
//! (written by numpy) train to the same AUC to the last digit; globs pick files in
//! natural order; bad Parquet and npy input is refused naming the file, row or key.
//! The files are in tests/data/formats, made by launch/make_format_samples.py.

use std::path::{Path, PathBuf};

use crate::common::*;

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/formats")
}

/// The sample's columns; `tags` (multi-valued) read or skipped.
fn columns(with_tags: bool) -> String {
    let mut c = vec![r#"{ name = "label", role = "label" }"#.to_string()];
    c.extend((1..=4).map(|i| format!(r#"{{ name = "I{i}", role = "dense" }}"#)));
    c.extend((1..=6).map(|i| format!(r#"{{ name = "C{i}", role = "categorical" }}"#)));
    c.push(match with_tags {
        true => r#"{ name = "tags", role = "categorical", separator = "|" }"#.into(),
        false => r#"{ name = "tags", role = "skip" }"#.into(),
    });
    format!("columns = [\n  {}\n]\n", c.join(",\n  "))
}

/// A DeepFM experiment on the sample files `train` and `test` in `format`.
fn config(dir: &Path, name: &str, format: &str, files: [&str; 2], data_extra: &str) -> PathBuf {
    let s = samples();
    let text = format!(
        "seed = 7\n[data]\nformat = \"{format}\"\ntrain = \"{}\"\ntest = \"{}\"\ndense_transform = \"log1p\"\ncache_dir = \"{}\"\n{data_extra}\n\
         [embedding]\ndim = 8\noptimizer = {{ kind = \"adagrad\", lr = 0.05 }}\n\
         [model]\nkind = \"deepfm\"\nhidden = [32, 16]\n[optimizer]\nkind = \"adam\"\nlr = 0.002\n\
         [train]\nepochs = 1\nbatch_size = 256\nthreads = 1\nrun_dir = \"{}\"\n",
        s.join(files[0]).display(),
        s.join(files[1]).display(),
        dir.join("prepared").display(),
        dir.join(format!("run-{name}")).display(),
    );
    write(dir, &format!("{name}.toml"), &text)
}

fn auc_of(dir: &Path, cfg: &Path) -> String {
    let s = train_summary(dir, cfg, &[]);
    assert_eq!(
        (s["rows_train"].as_u64(), s["rows_test"].as_u64()),
        (Some(2400), Some(600)),
        "{s}"
    );
    // the number as the summary spells it: equal to the last digit
    s["auc"].to_string()
}

const NPY_SIZES: &str = "num_embeddings_per_feature = [69, 69, 69, 69, 69, 69]";

#[test]
fn tsv_parquet_and_npy_rows_train_to_the_same_auc() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tsv = ["train.tsv", "test.tsv"];
    let pq = ["train.parquet", "test.parquet"];
    // with the multi-valued column: a TSV "a|b" cell and a Parquet list
    let tsv_tags = auc_of(d, &config(d, "tsv-tags", "delimited", tsv, &columns(true)));
    let pq_tags = auc_of(d, &config(d, "pq-tags", "parquet", pq, &columns(true)));
    assert_eq!(tsv_tags, pq_tags);
    // without it, TorchRec's arrays too (named by one file, and by the day's stem)
    let tsv = auc_of(d, &config(d, "tsv", "delimited", tsv, &columns(false)));
    let pq = auc_of(d, &config(d, "pq", "parquet", pq, &columns(false)));
    let npy_files = ["day_0_labels.npy", "day_1"];
    let npy = auc_of(d, &config(d, "npy", "torchrec_npy", npy_files, NPY_SIZES));
    assert_eq!(tsv, pq);
    assert_eq!(tsv, npy);
    assert_ne!(tsv, tsv_tags, "the tags column changes the model");
    let auc: f64 = tsv.parse().unwrap();
    assert!(
        auc > 0.65,
        "the sample's labels depend on its features: {auc}"
    );
    // every run draws its curves; `plot` overlays two runs, named by their folders
    let png = |p: &Path| std::fs::read(p).is_ok_and(|b| b.starts_with(b"\x89PNG"));
    assert!(
        png(&d.join("run-tsv/curves.png")),
        "a run writes curves.png"
    );
    let out = d.join("both.png");
    let (a, b) = (d.join("run-tsv"), d.join("run-npy"));
    let o = run(
        d,
        &[
            "plot",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(
        summary(&o)["runs"],
        serde_json::json!(["run-tsv", "run-npy"])
    );
    assert!(png(&out));
    // an npy model exports every id of each table, saying what ids are taken modulo
    let exported = d.join("export");
    let model = d.join("run-npy/model");
    let o = run(
        d,
        &[
            "export",
            "--model",
            model.to_str().unwrap(),
            "--out",
            exported.to_str().unwrap(),
        ],
    );
    let c1 = &summary(&o)["features"][0];
    assert_eq!(
        (c1["keys"].as_u64(), c1["ids_modulo"].as_u64()),
        (Some(69), Some(69)),
        "{c1}"
    );
    let o = run(
        d,
        &[
            "plot",
            d.join("nowhere").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("nowhere"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_glob_reads_every_match_in_natural_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for part in ["part_2", "part_10"] {
        std::fs::copy(
            samples().join("train.parquet"),
            d.join(format!("{part}.parquet")),
        )
        .unwrap();
    }
    let cfg = config(
        d,
        "glob",
        "parquet",
        ["train.parquet", "test.parquet"],
        &columns(false),
    );
    let glob = format!("data.train=\"{}/part_*.parquet\"", d.display());
    let s = train_summary(d, &cfg, &[&glob]);
    assert_eq!(s["rows_train"], 4800, "{s}");
    let resolved = std::fs::read_to_string(d.join("run-glob/config.resolved.toml")).unwrap();
    let (two, ten) = (
        resolved.find("part_2.parquet"),
        resolved.find("part_10.parquet"),
    );
    assert!(
        two.is_some() && two < ten,
        "part_2 before part_10:\n{resolved}"
    );
    let none = format!("data.test=\"{}/none_*.parquet\"", d.display());
    let o = run(d, &["train", cfg.to_str().unwrap(), "--set", &none]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("data.test") && e.contains("matches no file"),
        "{e}"
    );
}

#[test]
fn bad_parquet_and_npy_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pq = ["train.parquet", "test.parquet"];
    let fails = |cfg: &Path, sets: &[&str], says: &[&str]| {
        let mut args = vec!["train", cfg.to_str().unwrap()];
        for s in sets {
            args.extend(["--set", s]);
        }
        let o = run(d, &args);
        let e = stderr(&o);
        assert!(!o.status.success(), "should fail: {sets:?}");
        for s in says {
            assert!(e.contains(s), "{sets:?}: stderr lacks {s:?}:\n{e}");
        }
    };
    // a column the file does not have
    let wrong = columns(false).replace("\"C3\"", "\"C33\"");
    let cfg = config(d, "missing-column", "parquet", pq, &wrong);
    fails(&cfg, &[], &["train.parquet", "`C33`", "does not have"]);
    // nulls as bad rows: the first one stops preparation, naming the file, row and
    // column (row 2's I1 is the file's first null) ...
    let cfg = config(d, "nulls", "parquet", pq, &columns(false));
    let nulls_are_bad = "data.null_values=\"bad_row\"";
    fails(
        &cfg,
        &[nulls_are_bad],
        &["train.parquet:2:2:", "null_value", "`I1`"],
    );
    // ... or is skipped and counted
    let s = train_summary(d, &cfg, &[nulls_are_bad, "data.on_bad_row=\"skip\""]);
    let skipped = s["bad_rows"]["null_value"].as_u64().unwrap_or(0);
    let kept = s["rows_train"].as_u64().unwrap() + s["rows_test"].as_u64().unwrap();
    assert!(skipped > 0 && kept + skipped == 3000, "{s}");
    // npy: no table sizes; a truncated array
    let cfg = config(d, "npy-no-sizes", "torchrec_npy", ["day_0", "day_1"], "");
    fails(&cfg, &[], &["data.num_embeddings_per_feature"]);
    for part in ["dense", "sparse", "labels"] {
        for day in [0, 1] {
            let name = format!("day_{day}_{part}.npy");
            std::fs::copy(samples().join(&name), d.join(&name)).unwrap();
        }
    }
    let sparse = d.join("day_0_sparse.npy");
    let bytes = std::fs::read(&sparse).unwrap();
    std::fs::write(&sparse, &bytes[..bytes.len() - 100]).unwrap();
    let cfg = config(d, "npy-cut", "torchrec_npy", ["day_0", "day_1"], NPY_SIZES);
    let train = format!("data.train=\"{}/day_0\"", d.display());
    fails(&cfg, &[&train], &["day_0_sparse.npy", "truncated"]);
}

/// With `on_bad_row = "error"` Parquet is prepared column by column (integers hashed as
/// integers); with `"skip"` row by row, as text files are. Both write the same bytes.
#[test]
fn parquet_columnar_and_row_paths_prepare_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = config(
        d,
        "pq",
        "parquet",
        ["train.parquet", "test.parquet"],
        &columns(true),
    );
    let prepared = |policy: &str| -> PathBuf {
        let cache = format!("data.cache_dir=\"{}\"", d.join(policy).display());
        let on_bad = format!("data.on_bad_row=\"{policy}\"");
        let o = run(
            d,
            &[
                "prepare",
                cfg.to_str().unwrap(),
                "--set",
                &cache,
                "--set",
                &on_bad,
            ],
        );
        PathBuf::from(summary(&o)["prepared"].as_str().unwrap())
    };
    let (columnar, rows) = (prepared("error"), prepared("skip"));
    let mut compared = 0;
    for split in ["train", "test"] {
        for entry in std::fs::read_dir(columnar.join(split)).unwrap() {
            let name = entry.unwrap().file_name();
            let a = std::fs::read(columnar.join(split).join(&name)).unwrap();
            let b = std::fs::read(rows.join(split).join(&name)).unwrap();
            assert!(a == b, "{split}/{name:?} differs");
            compared += 1;
        }
    }
    assert!(
        compared >= 2 * 13,
        "label, 4 dense, 7 categorical and an offsets file a split"
    );
    assert_eq!(
        std::fs::read(columnar.join("vocab.bin")).unwrap(),
        std::fs::read(rows.join("vocab.bin")).unwrap()
    );
}
