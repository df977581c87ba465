//! Fuzzing without a nightly toolchain: property tests that feed arbitrary and mutated
//! input to every raw-format row parser and to the prepared-data reader. Any panic is a
//! bug; errors are the expected answer to garbage.
//!
//! CI runs `SHARDREC_FUZZ_CASES` cases per target (default 300, a few seconds in all). A
//! longer run:
//!
//! ```sh
//! SHARDREC_FUZZ_CASES=200000 cargo test --release -p shardrec-data --test fuzz
//! ```

use std::path::Path;

use proptest::prelude::*;
use shardrec_data::config::DataConfig;
use shardrec_data::{prepare, ParsedRow, PreparedDataset, RowParser, SplitName};

fn cases() -> u32 {
    std::env::var("SHARDREC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// Bytes that look like rows often enough to reach deep into the parsers: separators,
/// digits, hex, signs, colons and dots are likelier than other bytes.
fn row_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => prop::sample::select(b"\t,: .-+0123456789abcdefE".to_vec()),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..300)
}

/// A parser of every raw format the trainer reads.
fn parsers() -> Vec<(&'static str, RowParser)> {
    let formats = [
        ("criteo", "format = \"criteo\""),
        ("avazu", "format = \"avazu\""),
        ("libfm", "format = \"libfm\"\nlibfm_fields = 3"),
        (
            "delimited",
            "format = \"delimited\"\ncolumns = [{name = \"y\", role = \"label\", threshold = 2.5}, {name = \"d\", role = \"dense\"}, {name = \"c\", role = \"categorical\", separator = \"|\"}, {name = \"s\", role = \"skip\"}]",
        ),
        ("sequence", "format = \"sequence\""),
    ];
    formats
        .iter()
        .map(|(name, extra)| {
            let cfg = DataConfig::from_toml_section(&format!("[data]\ntrain = \"x\"\n{extra}\n"))
                .unwrap();
            (*name, RowParser::new(&cfg, &[]).unwrap())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Every row parser answers any line with a row or a bad field, never a panic, and a
    /// row it accepts has the schema's number of categorical features.
    #[test]
    fn row_parsers_never_panic(line in row_bytes()) {
        let mut row = ParsedRow::default();
        for (name, p) in parsers() {
            if p.parse(&line, &mut row).is_ok() {
                prop_assert_eq!(row.num_categorical(), p.schema().categorical.len(), "{}", name);
            }
        }
    }
}

/// A small prepared dataset (delimited, with a multi-valued column) in `dir`.
fn prepared(dir: &Path) -> PreparedDataset {
    let mut text = String::from("y\tc\tm\n");
    for i in 0..60 {
        text.push_str(&format!("{}\tv{}\ta{}|b{}\n", i % 2, i % 7, i % 3, i % 5));
    }
    std::fs::write(dir.join("d.tsv"), text).unwrap();
    let cfg = DataConfig::from_toml_section(&format!(
        "[data]\nformat = \"delimited\"\nheader = true\ntrain = \"{}\"\ncache_dir = \"{}\"\nsplit = {{ kind = \"tail\", test = 0.2 }}\ncolumns = [{{name = \"y\", role = \"label\"}}, {{name = \"c\", role = \"categorical\"}}, {{name = \"m\", role = \"categorical\", separator = \"|\"}}]\n",
        dir.join("d.tsv").display(),
        dir.join("cache").display()
    ))
    .unwrap();
    prepare(&cfg, &|_| {}).unwrap()
}

/// Reads every value of every split, as training and evaluation would.
fn read_all(ds: &PreparedDataset) {
    for name in [SplitName::Train, SplitName::Valid, SplitName::Test] {
        let Some(s) = ds.split(name) else { continue };
        let _ = s.labels().len();
        for f in 0..ds.meta.schema.categorical.len() {
            for r in 0..s.rows {
                let _ = s.cat_ids(f, r).len();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases() / 3 + 1, ..ProptestConfig::default() })]

    /// A prepared folder with one file changed (bytes overwritten, truncated or
    /// extended) opens with an error naming the damage, or opens and reads without a
    /// panic.
    #[test]
    fn the_prepared_reader_never_panics(
        which in 0usize..64,
        at in any::<prop::sample::Index>(),
        edit in prop::collection::vec(any::<u8>(), 0..16),
        cut in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ds = prepared(dir.path());
        let mut files: Vec<_> = walk(&ds.dir);
        files.sort();
        let target = &files[which % files.len()];
        let mut bytes = std::fs::read(target).unwrap();
        if cut {
            bytes.truncate(at.index(bytes.len() + 1));
        } else {
            let i = at.index(bytes.len() + 1);
            for (k, b) in edit.iter().enumerate() {
                match bytes.get_mut(i + k) {
                    Some(x) => *x = *b,
                    None => bytes.push(*b),
                }
            }
        }
        std::fs::write(target, bytes).unwrap();
        if let Ok(ds) = PreparedDataset::open(&ds.dir) {
            read_all(&ds);
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
