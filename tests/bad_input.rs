//! Bad rows: every kind, under `on_bad_row = "error"` (the message names file:line:column,
//! the kind and the text) and `"skip"` (the kind is counted in the summary and the row
//! is not trained on). Missing files name the path.

use crate::common::*;

fn criteo_row(label: &str, i1: &str, c1: &str) -> String {
    let mut f = vec![label.to_string(), i1.to_string()];
    f.extend((2..=13).map(|i| i.to_string()));
    f.push(c1.to_string());
    f.extend((2..=26).map(|i| format!("{:08x}", i * 7919)));
    f.join("\t")
}

fn good_rows(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            criteo_row(
                if i % 3 == 0 { "1" } else { "0" },
                &(i % 17).to_string(),
                &format!("{:08x}", i % 13),
            )
        })
        .collect()
}

#[test]
fn each_bad_row_kind_stops_with_its_place_or_is_counted() {
    let cases: Vec<(&str, String, usize)> = vec![
        ("wrong_column_count", "1\t2\t3".to_string(), 4),
        ("unparsable_number", criteo_row("1", "12x", "0000abcd"), 2),
        ("non_hex_category", criteo_row("0", "1", "zzzz"), 15),
        ("missing_label", criteo_row("", "1", "0000abcd"), 1),
        ("bad_label", criteo_row("3", "1", "0000abcd"), 1),
    ];
    for (kind, bad, col) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut rows = good_rows(60);
        rows.insert(41, bad.clone());
        let data = write(dir.path(), "data.tsv", &(rows.join("\n") + "\n"));
        let cfg = criteo_config(dir.path(), &data, "lr", "save_model = false");
        let o = run(dir.path(), &["train", cfg.to_str().unwrap()]);
        assert!(!o.status.success(), "{kind}: a bad row must stop the run");
        let err = stderr(&o);
        let place = format!("{}:42:{col}", data.display());
        assert!(
            err.contains(&place),
            "{kind}: message lacks {place}:\n{err}"
        );
        assert!(err.contains(kind), "{kind}: message lacks the kind:\n{err}");
        assert!(!err.contains("panicked"), "{err}");

        let o = run(
            dir.path(),
            &[
                "train",
                cfg.to_str().unwrap(),
                "--set",
                "data.on_bad_row=skip",
            ],
        );
        let s = summary(&o);
        assert_eq!(s["bad_rows_skipped"], 1, "{kind}: {s}");
        assert_eq!(s["bad_rows"][kind], 1, "{kind}: {s}");
        assert_eq!(
            s["rows_train"].as_u64().unwrap() + s["rows_test"].as_u64().unwrap(),
            60,
            "{kind}"
        );
    }
}

#[test]
fn libfm_bad_pairs_and_missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "{} {}:1 {}:1",
                if i % 2 == 0 { 1 } else { -1 },
                i % 5,
                10 + i % 7
            )
        })
        .collect();
    lines.insert(9, "1 3:1 12:0.5".into());
    let data = write(dir.path(), "d.libfm", &(lines.join("\n") + "\n"));
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            "[data]\nformat = \"libfm\"\ntrain = \"{}\"\ncache_dir = \"cache\"\n[model]\nkind = \"fm\"\n[train]\nthreads = 1\nsave_model = false\n",
            data.display()
        ),
    );
    let o = run(dir.path(), &["train", cfg.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(
        !o.status.success()
            && err.contains(&format!("{}:10:3", data.display()))
            && err.contains("bad_libfm_pair"),
        "{err}"
    );
    let s = train_summary(dir.path(), &cfg, &["data.on_bad_row=skip"]);
    assert_eq!(s["bad_rows"]["bad_libfm_pair"], 1);

    let o = run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--set",
            "data.train=nowhere.tsv",
        ],
    );
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("nowhere.tsv") && !err.contains("panicked"),
        "{err}"
    );
    let o = run(dir.path(), &["train", "missing.toml"]);
    assert!(!o.status.success() && stderr(&o).contains("missing.toml"));
}

#[test]
fn arbitrary_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    let mut x = 12345u64;
    for _ in 0..20_000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let b = (x >> 56) as u8;
        bytes.push(match b % 7 {
            0 => b'\t',
            1 => b'\n',
            _ => b,
        });
    }
    let data = dir.path().join("noise.tsv");
    std::fs::write(&data, &bytes).unwrap();
    let cfg = criteo_config(dir.path(), &data, "lr", "save_model = false");
    for policy in ["error", "skip"] {
        let o = run(
            dir.path(),
            &[
                "train",
                cfg.to_str().unwrap(),
                "--set",
                &format!("data.on_bad_row={policy}"),
            ],
        );
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{policy}: {err}");
        assert!(!o.status.success(), "{policy}: noise has no trainable rows");
    }
}

/// libFM's field count comes from the file's common layout, not from its first line: a
/// malformed first line skipped under `on_bad_row = "skip"` costs one row, not all the
/// others. A skip that would drop most of a file is an error naming the file.
#[test]
fn one_bad_libfm_line_costs_one_row_and_a_mostly_bad_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = |i: usize| {
        format!(
            "{} {}:1 {}:1 {}:1",
            if i.is_multiple_of(2) { 1 } else { -1 },
            i % 5,
            10 + i % 7,
            20 + i % 4
        )
    };
    let mut lines: Vec<String> = (0..400).map(good).collect();
    lines.insert(0, "1 3:1".into());
    let data = write(dir.path(), "d.libfm", &(lines.join("\n") + "\n"));
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            "[data]\nformat = \"libfm\"\ntrain = \"{}\"\ncache_dir = \"cache\"\non_bad_row = \"skip\"\nsplit = {{ kind = \"tail\", test = 0.2 }}\n[model]\nkind = \"fm\"\n[train]\nthreads = 1\nsave_model = false\n",
            data.display()
        ),
    );
    let s = train_summary(dir.path(), &cfg, &[]);
    assert_eq!(s["bad_rows_skipped"], 1, "{s}");
    assert_eq!(
        s["rows_train"].as_u64().unwrap() + s["rows_test"].as_u64().unwrap(),
        400
    );

    // three layouts in one file: the rows of the minority layouts are bad, and there
    // are more of them than the default ceiling (half the file) allows
    let mixed: Vec<String> = (0..300)
        .map(|i| match i % 3 {
            0 => good(i),
            1 => format!("1 {}:1", i % 5),
            _ => format!("-1 {}:1 {}:1", i % 5, 10 + i % 7),
        })
        .collect();
    let mixed_file = write(dir.path(), "mixed.libfm", &(mixed.join("\n") + "\n"));
    let train = format!("data.train=\"{}\"", mixed_file.display());
    let o = run(
        dir.path(),
        &["train", cfg.to_str().unwrap(), "--set", &train],
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "trained on a third of the file");
    assert!(
        err.contains("mixed.libfm")
            && err.contains("200 of its 300 rows are bad")
            && err.contains("data.max_bad_row_fraction"),
        "{err}"
    );
    // a higher ceiling is the user's choice
    let s = train_summary(dir.path(), &cfg, &[&train, "data.max_bad_row_fraction=0.7"]);
    assert_eq!(s["bad_rows_skipped"], 200, "{s}");
}
