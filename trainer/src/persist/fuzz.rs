//! Fuzz targets for the two manifests a user hands back to shardrec: a checkpoint's
//! (`train --resume`, `eval --model <checkpoint>`) and a model folder's (`eval`). A
//! small run writes both; each case replaces the manifest with a mutated one and its
//! CRC file with the matching checksum (else every case would stop at the checksum),
//! then loads it the way resume and eval do. An error is the expected answer; a panic
//! is a bug. See `shardrec_data::fuzzing` and `launch/fuzz.sh`.

use std::path::{Path, PathBuf};

use shardrec_data::fuzzing::Fuzzer;

use super::resume_from;
use crate::bundle::BundleSpec;
use crate::cluster::Cluster;
use crate::config::{load_config_str, ExperimentConfig};
use crate::train::{dense_optimizer, TrainJob};

/// Keys and values of the manifests, for the mutator's dictionary.
const TOKENS: &[&str] = &[
    "\"rows\":",
    "\"cols\":",
    "\"rank\":",
    "\"table\":",
    "\"bytes\":",
    "\"crc32\":",
    "\"path\":",
    "\"weights\":",
    "\"state\":",
    "\"step\":",
    "\"epoch\":",
    "\"world_size\":",
    "\"steps_in_epoch\":",
    "\"version\":",
    "\"num_dense\":",
    "\"dim\":",
    "\"buckets\":",
    "null",
    "[]",
    "{}",
    "[0,0]",
    "[5,2]",
    "\"../../etc/passwd\"",
    "\"/etc/passwd\"",
    "\"tables/main_0.f32\"",
    "\"dense.safetensors\"",
    "\"vocab.bin\"",
    "true",
    ",",
    ":",
];

/// A delimited dataset and a DeepFM config (two collections, Adagrad state) whose run
/// writes checkpoints and a model into `dir/run`.
fn config(dir: &Path) -> ExperimentConfig {
    let mut data = String::from("y\tu\ti\tg\n");
    for r in 0..400u32 {
        let (u, i) = (r * 7 % 23, r * 13 % 31);
        data.push_str(&format!(
            "{}\tu{u}\ti{i}\tg{}|h{}\n",
            u8::from((u + i) % 3 == 0),
            i % 5,
            u % 4
        ));
    }
    std::fs::write(dir.join("d.tsv"), data).unwrap();
    let text = format!(
        r#"seed = 3
[data]
format = "delimited"
header = true
train = "{}"
cache_dir = "{}"
split = {{ kind = "tail", test = 0.25 }}
columns = [{{name = "y", role = "label"}}, {{name = "u", role = "categorical"}}, {{name = "i", role = "categorical"}}, {{name = "g", role = "categorical", separator = "|"}}]
[embedding]
dim = 4
optimizer = {{ kind = "adagrad", lr = 0.05 }}
[model]
kind = "deepfm"
hidden = [8]
[train]
epochs = 1
batch_size = 50
threads = 1
checkpoint_every = 3
run_dir = "{}"
"#,
        dir.join("d.tsv").display(),
        dir.join("cache").display(),
        dir.join("run").display()
    );
    load_config_str(&text, "fuzz.toml", &[]).unwrap().0
}

/// The checkpoint and the model folder a run wrote, with their manifests' text.
struct Written {
    cfg: ExperimentConfig,
    checkpoint: PathBuf,
    model: PathBuf,
}

fn written(dir: &Path) -> Written {
    let cfg = config(dir);
    crate::train(&cfg, "fuzz", &Cluster::solo(), None).unwrap();
    let run = dir.join("run");
    let checkpoint = super::checkpoint::list_checkpoints(&run.join("checkpoints"))
        .unwrap()
        .pop()
        .unwrap();
    Written {
        cfg,
        checkpoint,
        model: run.join("model"),
    }
}

/// Runs `load` on `folder` with its manifest replaced by each fuzzed input (and the CRC
/// file `crc_name` matching it); the manifest is put back after each case.
fn fuzz_manifest(name: &str, folder: &Path, crc_name: &str, load: impl Fn(&Path)) {
    let manifest = folder.join("manifest.json");
    let original = std::fs::read(&manifest).unwrap();
    let original_crc = std::fs::read(folder.join(crc_name)).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    Fuzzer::new(name, &root)
        .seed(original.clone())
        .dictionary(TOKENS)
        .run(|input| {
            std::fs::write(&manifest, input).unwrap();
            let crc = format!("{:08x}\n", crc32fast::hash(input));
            std::fs::write(folder.join(crc_name), crc).unwrap();
            load(folder);
        });
    std::fs::write(&manifest, original).unwrap();
    std::fs::write(folder.join(crc_name), original_crc).unwrap();
}

/// A checkpoint's manifest, mutated: `train --resume` loads it (checks, table pieces
/// and optimizer state, dense parameters) and `eval` reads it as a model.
#[test]
fn fuzz_checkpoint_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let w = written(dir.path());
    let cluster = Cluster::solo();
    let (job, colls) = TrainJob::set_up(&w.cfg, "fuzz", 1, &cluster).unwrap();
    fuzz_manifest(
        "checkpoint_manifest",
        &w.checkpoint,
        super::checkpoint::MANIFEST_CRC,
        |at| {
            let mut bundle = BundleSpec {
                main: colls.main.clone(),
                first_order: colls.first_order.clone(),
                optimizer: w.cfg.embedding.optimizer.init(),
                model: &w.cfg.model,
                num_dense: job.data.meta.schema.dense.len(),
                device: tch::Device::Cpu,
                table_device: tch::Device::Cpu,
                fused: false,
                plans: Some(&job.plans),
                layer: None,
                storage: None,
                dynamic: &colls.dynamic,
            }
            .init(&cluster)
            .unwrap();
            let mut opt = dense_optimizer(&bundle, &w.cfg);
            let _ = resume_from(at, &w.cfg, &job.data, 50, &mut bundle, &mut opt);
            let _ = crate::eval_saved_model(&w.cfg, at, &cluster);
        },
    );
}

/// A model folder's manifest, mutated: `eval` reads it, builds the model it describes
/// and fills its tables.
#[test]
fn fuzz_model_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let w = written(dir.path());
    let cluster = Cluster::solo();
    fuzz_manifest(
        "model_manifest",
        &w.model,
        super::model_io::MANIFEST_CRC,
        |at| {
            let _ = crate::eval_saved_model(&w.cfg, at, &cluster);
        },
    );
}
