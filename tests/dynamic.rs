//! Dynamic tables (`embedding.kind = "dynamic"`: raw keys, no vocabulary, admission and
//! eviction) trained as a stream of days (`train.mode = "stream"`): progressive
//! validation, a resume mid-day that ends bitwise where the uninterrupted run does, eval
//! of the saved model with keys it never saw, the export's keys and rows, and the
//! refusals that name their key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

/// `days` generated day files of `rows` rows each (ids over `cardinality` values a
/// field, a tenth of them replaced each day).
fn day_files(dir: &Path, days: u64, rows: u64, cardinality: u64) -> Vec<PathBuf> {
    let out = dir.join("s.tsv");
    let o = run(
        dir,
        &[
            "synth",
            "--rows",
            &(days * rows).to_string(),
            "--days",
            &days.to_string(),
            "--turnover",
            "0.1",
            "--cardinality",
            &cardinality.to_string(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    (0..days)
        .map(|d| dir.join(format!("s-day{d:02}.tsv")))
        .collect()
}

/// A stream over `train` days tested on `test`, with dynamic tables and `extra` TOML.
fn stream_config(dir: &Path, train: &[PathBuf], test: &Path, extra: &str) -> PathBuf {
    let name = format!("stream{}.toml", train.len());
    let days: Vec<String> = train
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    let text = format!(
        r#"seed = 5
[data]
format = "criteo"
train = [{}]
test = "{}"
cache_dir = "{}"
[embedding]
dim = 8
kind = "dynamic"
optimizer = {{ kind = "adagrad", lr = 0.05 }}
{extra}
[model]
kind = "deepfm"
hidden = [32, 16]
[train]
mode = "stream"
batch_size = 256
threads = 1
log_every = 1000
run_dir = "{}"
"#,
        days.join(", "),
        test.display(),
        dir.join("cache").display(),
        dir.join("run").display(),
    );
    write(dir, &name, &text)
}

/// `shardrec <args>`, which must succeed; its summary.
fn succeed(dir: &Path, args: &[&str]) -> serde_json::Value {
    let o = run(dir, args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    summary(&o)
}

/// Small tables that fill up (eviction) and a `min_count = 2` admission.
const SMALL_TABLES: &str = "[embedding.dynamic]\ncapacity = 400\nadmit = { min_count = 2, sketch_bytes = 4096 }\nevict = \"lru\"";

/// [`SMALL_TABLES`] whose keys without a row read a learned default row.
fn small_tables_learned() -> String {
    format!("{SMALL_TABLES}\ndefault = \"learned\"")
}

fn run_dir(dir: &Path, name: &str) -> String {
    format!("train.run_dir=\"{}\"", dir.join(name).display())
}

fn metrics(s: &serde_json::Value) -> (f64, f64) {
    (s["auc"].as_f64().unwrap(), s["logloss"].as_f64().unwrap())
}

/// Sums one figure of the summary's `dynamic_tables` over tables and ranks.
fn dynamic_sum(s: &serde_json::Value, key: &str) -> u64 {
    s["dynamic_tables"]
        .as_array()
        .expect("a dynamic_tables report")
        .iter()
        .map(|t| t[key].as_u64().unwrap())
        .sum()
}

#[test]
fn a_stream_of_days_validates_progressively_resumes_bitwise_and_exports_its_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let days = day_files(dir, 4, 3000, 2000);
    let cfg = stream_config(dir, &days[..3], &days[3], &small_tables_learned());
    let every = "train.checkpoint_every=5";
    let full = train_summary(dir, &cfg, &[&run_dir(dir, "full"), every]);
    // days 1 and 2 were scored before training on them (on 3,000 rows a day and 400-row
    // tables the model learns little: the AUCs sit near 0.5, on either side)
    let scored = full["days"].as_array().unwrap();
    assert_eq!(scored.len(), 2, "{scored:?}");
    for d in scored {
        let auc = d["progressive_auc"].as_f64().unwrap();
        assert!(auc > 0.4 && auc < 1.0, "{d}");
        assert_eq!(d["rows"], 3000, "{d}");
    }
    let jsonl = std::fs::read_to_string(dir.join("full/metrics.jsonl")).unwrap();
    assert_eq!(jsonl.matches("progressive_auc").count(), 2, "{jsonl}");
    assert!(dir.join("full/days.png").is_file());
    // the tables filled up, evicted, and admission kept keys seen once out
    let live = dynamic_sum(&full, "live_keys");
    assert!(live <= 26 * 400, "{live}");
    assert!(dynamic_sum(&full, "evicted") > 0);
    assert!(dynamic_sum(&full, "refused") > 0);
    assert_eq!(dynamic_sum(&full, "sketch_bytes"), 26 * 4096);
    // mapping keys to rows is timed as part of the lookup
    let time = |key: &str| full["time"][key].as_f64().unwrap();
    assert!(time("key_mapping_s") > 0.0 && time("key_mapping_s") < time("lookup_s"));

    // killed mid-day 1 (12 steps a day), resumed from its last checkpoint: the same end
    let part = run_dir(dir, "part");
    let stopped = train_summary(dir, &cfg, &[&part, every, "train.max_steps=17"]);
    assert_eq!(stopped["steps"], 17);
    let ckpt = dir.join("part/checkpoints/step-00000015");
    let (c, at) = (cfg.to_str().unwrap(), ckpt.to_str().unwrap());
    // its default rows as they were at step 15 (compared with the end's below)
    let earlier = dir.join("export15");
    succeed(
        dir,
        &["export", "--model", at, "--out", earlier.to_str().unwrap()],
    );
    // the checkpoint's default rows are rows of its tables: resuming as zeros is refused
    let other = run_dir(dir, "other");
    let zeros = "embedding.dynamic.default=\"zeros\"";
    let o = run(
        dir,
        &["train", c, "--resume", at, "--set", &other, "--set", zeros],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("embedding.dynamic.default"),
        "{}",
        stderr(&o)
    );
    let resumed = succeed(
        dir,
        &["train", c, "--resume", at, "--set", &part, "--set", every],
    );
    assert_eq!(metrics(&resumed), metrics(&full));
    let scores = |s: &serde_json::Value| -> Vec<(f64, f64)> {
        let days = s["days"].as_array().unwrap();
        days.iter()
            .map(|d| {
                (
                    d["progressive_auc"].as_f64().unwrap(),
                    d["progressive_logloss"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(scores(&resumed), scores(&full));

    // two days trained, then a third file given on resume: it goes on to the same end
    let two = stream_config(dir, &days[..2], &days[3], &small_tables_learned());
    let more = run_dir(dir, "more");
    train_summary(dir, &two, &[&more, every]);
    let run_folder = dir.join("more");
    let (r, m) = (run_folder.to_str().unwrap(), more.as_str());
    let extended = succeed(
        dir,
        &["train", c, "--resume", r, "--set", m, "--set", every],
    );
    assert_eq!(metrics(&extended), metrics(&full));

    // the saved model scores the test day (its unseen keys read the default row) as the
    // run did, and exports every live key with its row
    let model = dir.join("full/model");
    let evaluated = succeed(dir, &["eval", c, "--model", model.to_str().unwrap()]);
    assert_eq!(metrics(&evaluated), metrics(&full));
    let out = check_export(dir, &model, &full, "export");
    // a serving system's view: the exported keys, rows (the default rows for keys not
    // listed) and dense network alone score the test day as the trained model did
    let served = auc_from_export(dir, &out, &days[3]);
    let trained = full["auc"].as_f64().unwrap();
    assert!((served - trained).abs() < 1e-6, "{served} vs {trained}");
    // the default rows trained: the refused keys of the steps after 15 moved them
    let default_of =
        |out: &Path, f: usize| std::fs::read(out.join(format!("tables/C{f}.default.f32"))).unwrap();
    let moved = (1..=26)
        .filter(|&f| default_of(&out, f) != default_of(&earlier, f))
        .count();
    assert!(moved >= 13, "{moved} of 26 default rows changed");
}

/// The test AUC of `test` scored from the export in `out` alone: rows looked up by key
/// (unknown keys read the default row), the dense network loaded from its safetensors.
fn auc_from_export(dir: &Path, out: &Path, test: &Path) -> f64 {
    use shardrec::data::config::DataConfig;
    use shardrec::data::{gather, prepare, SplitName};
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let names: Vec<String> = (1..=26).map(|i| format!("\"C{i}\"")).collect();
    let section = format!(
        "[data]\nformat = \"criteo\"\ntrain = \"{}\"\ncache_dir = \"{}\"\ndense_transform = \"log1p\"\nsplit = {{ kind = \"tail\", test = 0.0 }}\nkeyed_features = [{}]\n",
        test.display(),
        dir.join("cache").display(),
        names.join(", ")
    );
    let cfg = DataConfig::from_toml_section(&section).unwrap();
    let data = prepare(&cfg, &|_| {}).unwrap();
    let split = data.split(SplitName::Train).unwrap();
    let batch = gather(split, &(0..split.rows).collect::<Vec<_>>(), None);
    let (emb, linear) = exported_inputs(out, &manifest, &batch.sparse);
    let rows = split.rows as i64;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model_cfg: shardrec_models::ModelConfig =
        serde_json::from_value(manifest["model"].clone()).unwrap();
    let shape = shardrec_models::ModelShape {
        num_dense: 13,
        feature_widths: vec![8; 26],
    };
    let model = shardrec_models::build_model(&vs.root(), &model_cfg, &shape).unwrap();
    let mut vs = vs;
    vs.load(out.join("dense.safetensors")).unwrap();
    let dense = tch::Tensor::from_slice(&batch.dense).view([rows, 13]);
    let emb = tch::Tensor::from_slice(&emb).view([rows, 26 * 8]);
    let linear = tch::Tensor::from_slice(&linear).view([rows, 26]);
    let input = shardrec_models::ModelInput {
        dense: &dense,
        emb: &emb,
        first_order: Some(&linear),
        sequence: None,
        stats: None,
    };
    let scores = tch::no_grad(|| model.forward_t(&input, false).sigmoid());
    let scores: Vec<f32> = Vec::try_from(scores.view([-1])).unwrap();
    shardrec::data::metrics::auc(&batch.labels, &scores).unwrap()
}

/// Each sample's embedding input (26 x 8) and first-order weights (26) from the exported
/// tables: a key's row, or the default row for a key the export does not list (summed,
/// as the model's bags are).
fn exported_inputs(
    out: &Path,
    manifest: &serde_json::Value,
    ids: &shardrec_tables::KeyedJaggedIds,
) -> (Vec<f32>, Vec<f32>) {
    let read = |rel: &serde_json::Value| std::fs::read(out.join(rel.as_str().unwrap())).unwrap();
    let floats = |b: Vec<u8>| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let b = ids.batch_size();
    let (mut emb, mut linear) = (vec![0f32; b * 26 * 8], vec![0f32; b * 26]);
    for (f, feature) in manifest["features"].as_array().unwrap().iter().enumerate() {
        let keys: Vec<u64> = read(&feature["keys_file"])
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let rows = floats(read(&feature["rows_file"]));
        let weights = floats(read(&feature["linear_file"]));
        let (default, default_linear) = match feature["default_row"].as_str() {
            Some("zeros") => (vec![0.0; 8], vec![0.0]),
            _ => (
                floats(read(&feature["default_row"])),
                floats(read(&feature["default_linear"])),
            ),
        };
        for s in 0..b {
            for &key in ids.ids(f, s) {
                let (row, w) = match keys.binary_search(&key) {
                    Ok(i) => (&rows[i * 8..][..8], weights[i]),
                    Err(_) => (&default[..], default_linear[0]),
                };
                for (e, x) in emb[(s * 26 + f) * 8..][..8].iter_mut().zip(row) {
                    *e += x;
                }
                linear[s * 26 + f] += w;
            }
        }
    }
    (emb, linear)
}

/// `shardrec export` of `model` into `dir/name`: per feature, sorted distinct keys, as
/// many as the run's live keys, with a row of `dim` floats each and a first-order weight
/// (DeepFM), and the learned default row with its weight.
fn check_export(dir: &Path, model: &Path, s: &serde_json::Value, name: &str) -> PathBuf {
    let out = dir.join(name);
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    succeed(dir, &["export", "--model", m, "--out", o]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let features = manifest["features"].as_array().unwrap();
    assert_eq!(features.len(), 26);
    let mut keys_total = 0;
    for f in features {
        let keys = std::fs::read(out.join(f["keys_file"].as_str().unwrap())).unwrap();
        let rows = std::fs::read(out.join(f["rows_file"].as_str().unwrap())).unwrap();
        let linear = std::fs::read(out.join(f["linear_file"].as_str().unwrap())).unwrap();
        let n = f["keys"].as_u64().unwrap() as usize;
        assert_eq!(keys.len(), 8 * n);
        assert_eq!(rows.len(), 4 * 8 * n, "{f}");
        assert_eq!(linear.len(), 4 * n);
        let k: Vec<u64> = keys
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(
            k.windows(2).all(|w| w[0] < w[1]),
            "keys sorted and distinct"
        );
        let default = std::fs::read(out.join(f["default_row"].as_str().unwrap())).unwrap();
        let default_linear =
            std::fs::read(out.join(f["default_linear"].as_str().unwrap())).unwrap();
        assert_eq!((default.len(), default_linear.len()), (4 * 8, 4), "{f}");
        keys_total += n as u64;
    }
    assert_eq!(keys_total, dynamic_sum(s, "live_keys"));
    assert!(out.join("dense.safetensors").is_file());
    out
}

#[test]
fn two_ranks_map_keys_on_their_owners_and_their_model_reshards_to_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let days = day_files(dir, 3, 2000, 1500);
    let cfg = stream_config(dir, &days[..2], &days[2], &small_tables_learned());
    let c = cfg.to_str().unwrap();
    let folder = run_dir(dir, "np2");
    let args = [
        "train",
        c,
        "--set",
        &folder,
        "--set",
        "train.checkpoint_every=4",
    ];
    let s = summary(&run_mpi(dir, 2, &args, Duration::from_secs(300)));
    // each rank holds its blocks: 26 tables x 2 ranks, each within its 200 rows (rank 0's
    // first is the learned default row)
    let tables = s["dynamic_tables"].as_array().unwrap();
    assert_eq!(tables.len(), 52);
    assert!(tables
        .iter()
        .all(|t| t["live_keys"].as_u64().unwrap() <= 200));
    let capacity = |rank: u64| -> Vec<u64> {
        let of_rank = tables.iter().filter(|t| t["rank"] == rank);
        of_rank.map(|t| t["capacity"].as_u64().unwrap()).collect()
    };
    assert_eq!((capacity(0), capacity(1)), (vec![199; 26], vec![200; 26]));
    // one process takes every key (399 rows hold both ranks' 199 and 200) and the default
    // row: the same model
    let model = dir.join("np2/model");
    let evaluated = succeed(dir, &["eval", c, "--model", model.to_str().unwrap()]);
    assert_eq!(metrics(&evaluated), metrics(&s));
    // and training goes on in one process from the two ranks' checkpoint
    let np2 = dir.join("np2");
    let np1 = run_dir(dir, "np1");
    let resumed = succeed(
        dir,
        &["train", c, "--resume", np2.to_str().unwrap(), "--set", &np1],
    );
    assert_eq!(
        dynamic_sum(&resumed, "live_keys"),
        dynamic_sum(&s, "live_keys")
    );
    assert!(resumed["auc"].as_f64().unwrap() > 0.5);
}

#[test]
fn dynamic_settings_the_trainer_cannot_honour_are_refused_by_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let days = day_files(dir, 2, 500, 300);
    let cfg = stream_config(dir, &days[..1], &days[1], "");
    let refused = |set: &str, says: &str| {
        let o = run(dir, &["train", cfg.to_str().unwrap(), "--set", set]);
        assert!(!o.status.success(), "{set}");
        let e = stderr(&o);
        assert!(e.contains(says), "{set}: {e}");
    };
    refused(
        "embedding.dynamic.admit={probability=1.5}",
        "embedding.dynamic.admit.probability",
    );
    refused("embedding.dynamic.capacity=0", "embedding.dynamic.capacity");
    refused(
        "embedding.dynamic.default=\"mean\"",
        "embedding.dynamic.default",
    );
    refused("embedding.device=\"cuda\"", "embedding.device");
    refused("train.epochs=2", "train.epochs");
    refused("data.keyed_features=[\"C1\"]", "data.keyed_features");
}
