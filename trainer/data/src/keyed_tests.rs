//! Keyed features end to end (`data.keyed_features`: config checks, `prepare`, the
//! prepared reader, the loader) and the `data.train = [..]` shorthand.

use std::path::Path;

use crate::config::{DataConfig, Violation};
use crate::loader::gather;
use crate::{key_of, prepare, prepare_with_vocab, DataError, PreparedDataset, SplitName};

/// Raw cells of the test file: (keyed single, keyed multi, vocabulary single,
/// vocabulary multi); multi-valued cells separate values with `|`.
const ROWS: [[&str; 4]; 8] = [
    ["42", "1|2", "a", "p|q"],
    ["0", "", "b", ""],
    ["007", "x||y", "a", "q"],
    ["abc", "00|5", "c", "p|p|r"],
    ["", "7", "a", "r"],
    ["18446744073709551616", "18446744073709551615", "b", "p"],
    ["42", "abc|0", "", "q|"],
    ["-3", "", "a", "p"],
];

const COLUMNS: &str = "columns = [{name = \"y\", role = \"label\"}, {name = \"d\", role = \"dense\"}, \
    {name = \"ks\", role = \"categorical\"}, {name = \"km\", role = \"categorical\", separator = \"|\"}, \
    {name = \"vs\", role = \"categorical\"}, {name = \"vm\", role = \"categorical\", separator = \"|\"}]";

/// Writes the test file into `dir` and returns the config reading it, all rows in the
/// training split, with `extra` lines added to `[data]`.
fn delimited(dir: &Path, extra: &str) -> DataConfig {
    let mut text = String::from("y\td\tks\tkm\tvs\tvm\n");
    for (i, r) in ROWS.iter().enumerate() {
        text.push_str(&format!("{}\t{i}\t{}\n", i % 2, r.join("\t")));
    }
    let file = dir.join("d.tsv");
    std::fs::write(&file, text).unwrap();
    let toml = format!(
        "[data]\nformat = \"delimited\"\nheader = true\ntrain = \"{}\"\ncache_dir = \"{}\"\n\
         split = {{ kind = \"tail\", test = 0.0 }}\n{extra}\n{COLUMNS}\n",
        file.display(),
        dir.join("cache").display()
    );
    DataConfig::from_toml_section(&toml).unwrap()
}

/// The keys a raw cell should give: one per value, none for an empty multi-valued cell.
fn keys_of(cell: &str, multi: bool) -> Vec<u64> {
    match (multi, cell.is_empty()) {
        (true, true) => vec![],
        (true, false) => cell.split('|').map(|v| key_of(v.as_bytes())).collect(),
        (false, _) => vec![key_of(cell.as_bytes())],
    }
}

fn quiet(_: &str) {}

#[test]
fn keyed_features_are_prepared_as_keys_and_batched_as_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = delimited(dir.path(), "keyed_features = [\"ks\", \"km\"]");
    let plain_cfg = delimited(dir.path(), "");
    let ds = prepare(&cfg, &quiet).unwrap();
    let plain = prepare(&plain_cfg, &quiet).unwrap();
    assert_ne!(ds.dir, plain.dir, "keyed_features is part of the cache key");
    assert_eq!(ds.meta.version, 2);
    assert_eq!(ds.meta.keyed, [true, true, false, false]);
    assert_eq!(&ds.meta.vocab_sizes[..2], &[0, 0]);
    assert_eq!(&ds.meta.vocab_sizes[2..], &plain.meta.vocab_sizes[2..]);
    assert!(plain.meta.vocab_sizes.iter().all(|&s| s > 0));
    assert_eq!(plain.meta.keyed, [false; 4]);
    for (file, exists) in [
        ("cat_0.u64", true),
        ("cat_0.u32", false),
        ("cat_1.u64", true),
        ("cat_1.off", true),
        ("cat_2.u32", true),
        ("cat_3.u32", true),
        ("cat_3.off", true),
    ] {
        assert_eq!(ds.dir.join("train").join(file).is_file(), exists, "{file}");
    }
    let split = ds.split(SplitName::Train).unwrap();
    let plain_split = plain.split(SplitName::Train).unwrap();
    let rows: Vec<usize> = (0..ROWS.len()).collect();
    let batch = gather(split, &rows, Some(0));
    let plain_batch = gather(plain_split, &rows, Some(0));
    for (r, cells) in ROWS.iter().enumerate() {
        assert_eq!(batch.sparse.ids(0, r), keys_of(cells[0], false), "row {r}");
        assert_eq!(batch.sparse.ids(1, r), keys_of(cells[1], true), "row {r}");
        for f in [2, 3] {
            assert_eq!(batch.sparse.ids(f, r), plain_batch.sparse.ids(f, r));
        }
        assert_eq!(
            batch.groups.as_ref().unwrap()[r],
            key_of(cells[0].as_bytes())
        );
    }
    // readers of ids refuse keyed features by name; ids of the others read as before
    match split.cat_ids(1, 0) {
        Err(e @ DataError::KeyedFeature { .. }) => assert!(e.to_string().contains("`km`"), "{e}"),
        other => panic!("expected a keyed-feature error, got {other:?}"),
    }
    assert_eq!(
        split.cat_ids(2, 0).unwrap(),
        plain_split.cat_ids(2, 0).unwrap()
    );
}

#[test]
fn a_copy_of_rows_batches_as_the_rows_where_they_lie() {
    let dir = tempfile::tempdir().unwrap();
    let ds = prepare(
        &delimited(dir.path(), "keyed_features = [\"ks\", \"km\"]"),
        &quiet,
    )
    .unwrap();
    let split = ds.split(SplitName::Train).unwrap();
    // shuffled, one row twice, one row left out: every kind of column (dense, keyed and
    // vocabulary, single and multi-valued, empty cells)
    let rows = [5, 0, 7, 3, 3, 1, 6, 2];
    let copy = split.copy_rows(&rows).unwrap();
    assert_eq!(copy.rows, rows.len());
    let all: Vec<usize> = (0..rows.len()).collect();
    for group in [None, Some(1), Some(3)] {
        let want = gather(split, &rows, group);
        let got = gather(&copy, &all, group);
        assert_eq!(got.labels, want.labels);
        assert_eq!(got.dense, want.dense);
        assert_eq!(got.sparse, want.sparse);
        assert_eq!(got.groups, want.groups);
    }
    let third = gather(&copy, &all, None);
    assert_eq!(
        third.sparse.ids(1, 7).len(),
        3,
        "row 2 (copy row 7): x||y, three keys"
    );
    let none = split.copy_rows(&[]).unwrap();
    assert_eq!(gather(&none, &[], None).labels, Vec::<f32>::new());
}

#[test]
fn a_truncated_key_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = delimited(dir.path(), "keyed_features = [\"ks\"]");
    let prepared = prepare(&cfg, &quiet).unwrap().dir;
    let file = prepared.join("train").join("cat_0.u64");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), ROWS.len() * 8, "8 bytes a key");
    // short by one u32: the size an id column of one row less would have
    std::fs::write(&file, &bytes[..bytes.len() - 4]).unwrap();
    let e = PreparedDataset::open(&prepared).unwrap_err();
    assert!(matches!(e, DataError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("cat_0.u64"), "{e}");
    // the damaged cache is prepared again
    assert!(prepare(&cfg, &quiet).is_ok());
}

#[test]
fn a_fixed_vocabulary_and_prepared_data_must_key_the_same_features() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = delimited(dir.path(), "keyed_features = [\"ks\", \"km\"]");
    let ds = prepare(&cfg, &quiet).unwrap();
    let vocab = ds.dir.join("vocab.bin");
    assert_eq!(ds.load_vocab().unwrap().sizes()[..2], [0, 0]);
    let again = prepare_with_vocab(&cfg, &vocab, &quiet).unwrap();
    assert_eq!(again.meta.keyed, ds.meta.keyed);
    let e = prepare_with_vocab(&delimited(dir.path(), ""), &vocab, &quiet)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data.keyed_features") && e.contains("`ks`"),
        "{e}"
    );
    let as_prepared = |keyed: &str| {
        let toml = format!(
            "[data]\nformat = \"prepared\"\ntrain = \"{}\"\n{keyed}\n",
            ds.dir.display()
        );
        prepare(&DataConfig::from_toml_section(&toml).unwrap(), &quiet)
    };
    assert!(as_prepared("keyed_features = [\"km\", \"ks\"]").is_ok());
    assert!(as_prepared("").is_ok(), "no list takes the prepared data's");
    let e = as_prepared("keyed_features = [\"ks\"]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.keyed_features") && e.contains("km"), "{e}");
}

fn violations(cfg: &DataConfig) -> Vec<Violation> {
    let mut v = Vec::new();
    cfg.violations(&mut v);
    v
}

/// The names of `data.keyed_features` against the schema the config gives (what
/// `prepare` checks before reading rows).
fn violations_of_names(cfg: &DataConfig) -> Vec<Violation> {
    let parser = crate::RowParser::new(cfg, &[]).unwrap();
    crate::keyed_flags::keyed_flags(&cfg.keyed_features, parser.schema())
        .err()
        .into_iter()
        .collect()
}

#[test]
fn keyed_features_must_be_categorical_features() {
    let dir = tempfile::tempdir().unwrap();
    for (listed, named, says) in [
        ("\"d\"", "`d`", "dense column"),
        ("\"y\"", "`y`", "not a categorical feature"),
        ("\"ks\", \"nope\"", "`nope`", "`km`"),
        ("\"ks\", \"ks\"", "`ks`", "twice"),
    ] {
        let cfg = delimited(dir.path(), &format!("keyed_features = [{listed}]"));
        let v = violations_of_names(&cfg);
        assert_eq!(v.len(), 1, "{listed}: {v:?}");
        assert_eq!(v[0].key, "data.keyed_features");
        assert_eq!(v[0].value, named);
        assert!(v[0].range.contains(says), "{listed}: {v:?}");
        // prepare checks the same against the schema it reads
        let e = prepare(&cfg, &quiet).unwrap_err().to_string();
        assert!(
            e.contains("data.keyed_features") && e.contains(named),
            "{e}"
        );
    }
    let section = |extra: &str| {
        DataConfig::from_toml_section(&format!("[data]\ntrain = \"x\"\n{extra}\n")).unwrap()
    };
    assert!(violations_of_names(&section(
        "format = \"criteo\"\nkeyed_features = [\"C1\", \"C26\"]"
    ))
    .is_empty());
    let v = violations_of_names(&section("format = \"criteo\"\nkeyed_features = [\"I1\"]"));
    assert!(v.len() == 1 && v[0].range.contains("dense"), "{v:?}");
    let v = violations_of_names(&section(
        "format = \"criteo\"\ndense_as_categorical = true\nkeyed_features = [\"I1\"]",
    ));
    assert!(v.is_empty(), "{v:?}");
    // a target and its history share one vocabulary: both keyed or neither
    let v = violations_of_names(&section(
        "format = \"sequence\"\nkeyed_features = [\"hist_items\"]",
    ));
    assert!(
        v.len() == 1 && v[0].range.contains("`target_item`"),
        "{v:?}"
    );
    let both = "format = \"sequence\"\nkeyed_features = [\"hist_items\", \"target_item\"]";
    assert!(violations_of_names(&section(both)).is_empty());
}

/// libFM without `libfm_fields` has its schema only in the file: `prepare` checks it.
#[test]
fn prepare_checks_names_the_config_alone_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.libfm");
    std::fs::write(&file, "1 3:1 7:1\n0 4:1 7:1\n").unwrap();
    let toml = |keyed: &str| {
        format!(
            "[data]\nformat = \"libfm\"\ntrain = \"{}\"\ncache_dir = \"{}\"\nkeyed_features = [{keyed}]\n",
            file.display(),
            dir.path().join("cache").display()
        )
    };
    let cfg = DataConfig::from_toml_section(&toml("\"f9\"")).unwrap();
    assert!(violations(&cfg).is_empty());
    match prepare(&cfg, &quiet) {
        Err(e @ DataError::ConfigKey(_)) => {
            let e = e.to_string();
            assert!(
                e.contains("data.keyed_features") && e.contains("`f9`") && e.contains("`f2`"),
                "{e}"
            );
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let ds = prepare(
        &DataConfig::from_toml_section(&toml("\"f2\"")).unwrap(),
        &quiet,
    )
    .unwrap();
    assert_eq!(ds.meta.keyed, [false, true]);
}

#[test]
fn a_list_of_training_files_is_train_then_more_train() {
    let parse = |train: &str, extra: &str| {
        DataConfig::from_toml_section(&format!(
            "[data]\nformat = \"criteo\"\ntrain = {train}\n{extra}\n"
        ))
    };
    let days = parse("[\"day1.tsv\", \"day2.tsv\", \"day3.tsv\"]", "").unwrap();
    assert_eq!(days.train, Path::new("day1.tsv"));
    assert_eq!(
        days.more_train,
        [Path::new("day2.tsv"), Path::new("day3.tsv")]
    );
    let one = parse("[\"day1.tsv\"]", "").unwrap();
    assert_eq!(
        one,
        parse("\"day1.tsv\"", "").unwrap(),
        "a list of one is the file"
    );
    let plain = parse("\"a.tsv\"", "more_train = [\"b.tsv\"]").unwrap();
    assert_eq!(
        plain.more_train,
        [Path::new("b.tsv")],
        "lists elsewhere are left alone"
    );

    let normalize = |text: &str| {
        let mut root: toml::Table = toml::from_str(text).unwrap();
        crate::config::DataConfig::normalize_toml(&mut root).map(|()| root)
    };
    for (text, says) in [
        ("[data]\ntrain = []\n", "empty"),
        (
            "[data]\ntrain = [\"a.tsv\", \"b.tsv\"]\nmore_train = [\"c.tsv\"]\n",
            "more_train",
        ),
        ("[data]\ntrain = [\"a.tsv\", 2]\n", "item 2"),
    ] {
        let e = normalize(text).unwrap_err();
        assert_eq!(e.key, "data.train", "{text}");
        assert!(e.message.contains(says), "{text}: {e}");
        let e = DataConfig::from_toml_section(text).unwrap_err().to_string();
        assert!(e.contains("data.train"), "{e}");
    }
    // no [data], or a mistyped one, is left for deserialising to report
    assert!(normalize("seed = 1\n").is_ok());
    assert!(normalize("data = 3\n").is_ok());
}
