//! Helpers shared by the integration tests: running the binary, temporary configs,
//! locating the bundled real data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardrec"))
}

/// Runs the binary with `args` in `cwd`.
pub fn run(cwd: &Path, args: &[&str]) -> Output {
    bin()
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("running shardrec")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON object on the last stdout line of a successful run.
pub fn summary(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "shardrec failed:\n{}", stderr(o));
    let out = stdout(o);
    let last = out.lines().last().expect("some stdout");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {last}"))
}

/// `shardrec train <cfg>` in `dir` with each of `sets` as a `--set`; the summary of a
/// run that must succeed (its stderr is shown when it does not).
pub fn train_summary(dir: &Path, cfg: &Path, sets: &[&str]) -> serde_json::Value {
    let mut args = vec!["train", cfg.to_str().expect("a UTF-8 config path")];
    for s in sets {
        args.extend(["--set", s]);
    }
    summary(&run(dir, &args))
}

/// `../shared/data/<rel>` if present; None (after saying so) when absent and not required.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(rel);
    if p.exists() {
        return Some(p.canonicalize().unwrap());
    }
    if std::env::var("SHARDREC_REQUIRE_SHARED").is_ok_and(|v| v == "1") {
        panic!(
            "{} is required (SHARDREC_REQUIRE_SHARED=1) but missing",
            p.display()
        );
    }
    eprintln!("SKIPPED: {} not present", p.display());
    None
}

/// Writes a file and returns its path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A small generated Criteo-format file (rows, cardinality) in `dir`, via `shardrec synth`.
pub fn synth(dir: &Path, rows: u64, cardinality: u64) -> (PathBuf, serde_json::Value) {
    let out = dir.join("synth.tsv");
    let o = run(
        dir,
        &[
            "synth",
            "--rows",
            &rows.to_string(),
            "--out",
            out.to_str().unwrap(),
            "--cardinality",
            &cardinality.to_string(),
        ],
    );
    let s = summary(&o);
    (out, s)
}

/// A criteo-format config over `train` with small model sizes for fast tests.
pub fn criteo_config(dir: &Path, train: &Path, model: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"seed = 7
[data]
format = "criteo"
train = "{}"
cache_dir = "{}"
split = {{ kind = "tail", test = 0.2 }}
[embedding]
dim = 8
optimizer = {{ kind = "adagrad", lr = 0.05 }}
[model]
kind = "{model}"
hidden = [32, 16]
bottom = [32, 16]
top = [32, 16]
cross_layers = 2
[train]
batch_size = 256
threads = 1
run_dir = "{}"
{extra}
"#,
        train.display(),
        dir.join("cache").display(),
        dir.join("run").display(),
    );
    write(dir, "config.toml", &text)
}

/// Runs `mpirun -np <ranks> shardrec <args>` in `cwd`, killing the job after `limit`.
/// Output streams go to files, so a chatty job cannot block on a full pipe.
pub fn run_mpi(cwd: &Path, ranks: usize, args: &[&str], limit: std::time::Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new("mpirun")
        .current_dir(cwd)
        .arg("-np")
        .arg(ranks.to_string())
        .arg(env!("CARGO_BIN_EXE_shardrec"))
        .args(args)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("running mpirun (MPICH; launch/setup.sh installs it)");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            child.kill().ok();
            let _ = child.wait();
            panic!(
                "mpirun -np {ranks} {args:?} still running after {limit:?}:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    }
}
