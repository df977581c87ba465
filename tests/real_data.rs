//! The bundled real samples (`../shared/data`): every format prepares with the peers'
//! split, and a model trains to a sensible AUC on each.

use crate::common::*;

#[test]
fn criteo_sample_split_matches_the_peers_and_trains() {
    let Some(data) = shared_data("criteo/criteo_sample.tsv") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = criteo_config(dir.path(), &data, "dlrm", "epochs = 2\nsave_model = false");
    let s = train_summary(dir.path(), &cfg, &[]);
    // peers: train=6547 test=1637
    assert_eq!(
        (s["rows_train"].as_u64(), s["rows_test"].as_u64()),
        (Some(6547), Some(1637))
    );
    assert!(s["auc"].as_f64().unwrap() > 0.62, "{s}");
}

#[test]
fn avazu_libfm_and_delimited_formats_prepare_and_train() {
    let (Some(avazu), Some(frappe), Some(ml)) = (
        shared_data("avazu"),
        shared_data("frappe/frappe.test.libfm"),
        shared_data("movielens-100k/ml100k_ctr.tsv"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = "[model]\nkind = \"deepfm\"\nhidden = [32]\n[train]\nthreads = 1\nepochs = 3\nsave_model = false\n";
    let avazu_cfg = write(
        dir.path(),
        "avazu.toml",
        &format!(
            "[data]\nformat = \"avazu\"\ntrain = \"{0}/train.csv\"\nvalid = \"{0}/valid.csv\"\ntest = \"{0}/test.csv\"\ncache_dir = \"cache\"\n{base}",
            avazu.display()
        ),
    );
    let s = train_summary(dir.path(), &avazu_cfg, &[]);
    assert_eq!(
        (
            s["rows_train"].as_u64(),
            s["rows_valid"].as_u64(),
            s["rows_test"].as_u64()
        ),
        (Some(8087), Some(480), Some(432))
    );
    assert!(s["auc"].as_f64().unwrap() > 0.6, "{s}");

    let libfm_cfg = write(
        dir.path(),
        "frappe.toml",
        &format!(
            "[data]\nformat = \"libfm\"\ntrain = \"{}\"\ncache_dir = \"cache\"\nsplit = {{ kind = \"random\", test = 0.2, seed = 42 }}\n{base}",
            frappe.display()
        ),
    );
    let s = train_summary(dir.path(), &libfm_cfg, &[]);
    let (tr, te) = (
        s["rows_train"].as_u64().unwrap(),
        s["rows_test"].as_u64().unwrap(),
    );
    assert_eq!(tr + te, 28_860);
    assert!(
        (te as f64 / 28_860.0 - 0.2).abs() < 0.01,
        "random split of 20%: {te}"
    );
    assert!(s["auc"].as_f64().unwrap() > 0.8, "{s}");

    let cols = [
        "label",
        "user_id",
        "item_id",
        "age",
        "gender",
        "occupation",
        "zip3",
        "genre",
        "year",
    ]
    .iter()
    .enumerate()
    .map(|(i, n)| {
        format!(
            "{{ name = \"{n}\", role = \"{}\" }}",
            if i == 0 { "label" } else { "categorical" }
        )
    })
    .collect::<Vec<_>>()
    .join(", ");
    let ml_cfg = write(
        dir.path(),
        "ml.toml",
        &format!(
            "[data]\nformat = \"delimited\"\ntrain = \"{}\"\ncache_dir = \"cache\"\ncolumns = [{cols}]\n{base}[eval]\ngauc_by = \"user_id\"\n",
            ml.display()
        ),
    );
    let s = train_summary(dir.path(), &ml_cfg, &[]);
    assert_eq!(
        (s["rows_train"].as_u64(), s["rows_test"].as_u64()),
        (Some(80_000), Some(20_000))
    );
    assert!(
        s["auc"].as_f64().unwrap() > 0.65 && s["gauc"].as_f64().unwrap() > 0.6,
        "{s}"
    );
}

#[test]
fn multi_valued_genres_pool_with_mean() {
    let Some(items) = shared_data("movielens-100k/ml-100k.item") else {
        return;
    };
    // item file: item_id, title, year, genres (space-separated); label: a Comedy
    // among the genres? Here a label is derived from the year instead, and genres are a
    // multi-valued feature pooled by mean.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&items).unwrap();
    let mut out = String::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 4 {
            continue;
        }
        let year: u32 = f[2].parse().unwrap_or(0);
        out.push_str(&format!("{}\t{}\t{}\n", u8::from(year >= 1995), f[0], f[3]));
    }
    let data = write(dir.path(), "items.tsv", &out);
    let cfg = write(
        dir.path(),
        "items.toml",
        &format!(
            "[data]\nformat = \"delimited\"\ntrain = \"{}\"\ncache_dir = \"cache\"\nmin_count = 2\n\
             columns = [{{ name = \"y\", role = \"label\" }}, {{ name = \"item\", role = \"skip\" }}, {{ name = \"genres\", role = \"categorical\", separator = \" \" }}]\n\
             split = {{ kind = \"random\", test = 0.25 }}\n[embedding]\npooling = \"mean\"\n[model]\nkind = \"deepfm\"\nhidden = [16]\n[train]\nepochs = 5\nbatch_size = 64\nthreads = 1\nsave_model = false\n",
            data.display()
        ),
    );
    let s = train_summary(dir.path(), &cfg, &[]);
    assert!(
        s["auc"].as_f64().unwrap() > 0.55,
        "genres say something about the era: {s}"
    );
}
