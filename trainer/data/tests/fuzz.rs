//! Fuzz targets of the data crate: every raw-format row parser, and the prepared-data
//! reader with one file damaged. Any panic is a bug; errors are the expected answer to
//! garbage. See `shardrec_data::fuzzing` for the fuzzer, `fuzz/corpus/` for the
//! recorded corpus, and `launch/fuzz.sh` for the long run.

use std::path::{Path, PathBuf};

use shardrec_data::config::DataConfig;
use shardrec_data::fuzzing::Fuzzer;
use shardrec_data::{prepare, ParsedRow, PreparedDataset, RowParser, SplitName};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
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

/// Every row parser answers any line with a row or a bad field, never a panic, and a row
/// it accepts has the schema's number of categorical features.
#[test]
fn row_parsers() {
    let parsers = parsers();
    Fuzzer::new("row_parsers", &corpus())
        .dictionary(&["\t", ",", ":", "|", " ", "\r", "-", "e", "ffffffff", "\t\t"])
        .run(|line| {
            let mut row = ParsedRow::default();
            for (name, p) in &parsers {
                if p.parse(line, &mut row).is_ok() {
                    assert_eq!(
                        row.num_categorical(),
                        p.schema().categorical.len(),
                        "{name}"
                    );
                }
            }
        });
}

/// A small prepared dataset (delimited, with a multi-valued column whose values are
/// keys) in `dir`.
fn prepared(dir: &Path) -> PreparedDataset {
    let mut text = String::from("y\tc\tm\n");
    for i in 0..60 {
        text.push_str(&format!("{}\tv{}\ta{}|b{}\n", i % 2, i % 7, i % 3, i % 5));
    }
    std::fs::write(dir.join("d.tsv"), text).unwrap();
    let cfg = DataConfig::from_toml_section(&format!(
        "[data]\nformat = \"delimited\"\nheader = true\ntrain = \"{}\"\ncache_dir = \"{}\"\nsplit = {{ kind = \"tail\", test = 0.2 }}\nkeyed_features = [\"m\"]\ncolumns = [{{name = \"y\", role = \"label\"}}, {{name = \"c\", role = \"categorical\"}}, {{name = \"m\", role = \"categorical\", separator = \"|\"}}]\n",
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
                let _ = s.cat_values(f, r).len();
                let _ = s.cat_ids(f, r).map(<[u32]>::len);
                let _ = s.first_value(f, r);
            }
        }
    }
}

/// The files of a folder, by their path inside it, sorted.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            walk(root, &e.path(), out);
        } else {
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    out.sort();
}

/// A prepared folder with one file replaced (input: the file's path inside the folder,
/// a newline, its new bytes) opens with an error naming the damage, or opens and reads
/// without a panic. Seeds: every file of a folder this version prepares.
#[test]
fn prepared_reader() {
    let dir = tempfile::tempdir().unwrap();
    let template = prepared(dir.path()).dir;
    let mut files = Vec::new();
    walk(&template, &template, &mut files);
    let mut fuzzer = Fuzzer::new("prepared_reader", &corpus());
    for f in &files {
        let mut seed = format!("{f}\n").into_bytes();
        seed.extend(std::fs::read(template.join(f)).unwrap());
        fuzzer = fuzzer.seed(seed);
    }
    let originals: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(template.join(f)).unwrap())
        .collect();
    fuzzer
        .dictionary(&[
            "\"rows\":",
            "\"bytes\":",
            "\"version\":",
            "\"schema\":",
            "{}",
            "[]",
            "null",
        ])
        .run(|input| {
            let split = input
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(input.len());
            let named = String::from_utf8_lossy(&input[..split]);
            // only a file of the folder, so a mutated path cannot write elsewhere
            let which = files
                .iter()
                .position(|f| **f == named)
                .unwrap_or(crc32fast::hash(&input[..split]) as usize % files.len());
            let path = template.join(&files[which]);
            std::fs::write(&path, input.get(split + 1..).unwrap_or_default()).unwrap();
            if let Ok(ds) = PreparedDataset::open(&template) {
                read_all(&ds);
            }
            std::fs::write(&path, &originals[which]).unwrap();
        });
}
