//! Checkpoints: a job killed mid-training resumes from its last checkpoint to the final
//! test AUC of an uninterrupted run (bitwise: the runs are deterministic); a checkpoint
//! written by 4 ranks evaluates identically under 2 ranks and 1; a corrupt, truncated or
//! incomplete checkpoint is refused naming the file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn set(key: &str, path: &Path) -> String {
    format!("{key}=\"{}\"", path.display())
}

/// Metrics that must agree exactly.
fn metrics(s: &serde_json::Value) -> (f64, f64) {
    (s["auc"].as_f64().unwrap(), s["logloss"].as_f64().unwrap())
}

fn checkpoints(run: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// SIGKILL of one rank mid-training ends the whole job with a non-zero exit within 30 s,
/// and `--resume` of the run folder finishes with the uninterrupted run's test AUC.
#[test]
fn a_killed_job_ends_promptly_and_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 40_000, 500);
    let cfg = criteo_config(
        dir.path(),
        &data,
        "dlrm",
        "epochs = 3\nsave_model = false\nlog_every = 1\ncheckpoint_every = 40\ncheckpoint_keep = 0",
    );
    let cfg = cfg.to_str().unwrap();
    let whole = dir.path().join("whole");
    let o = run_mpi(
        dir.path(),
        2,
        &["train", cfg, "--set", &set("train.run_dir", &whole)],
        Duration::from_secs(300),
    );
    let uninterrupted = summary(&o);
    let steps = uninterrupted["steps"].as_u64().unwrap();
    assert!(steps > 200, "{uninterrupted}");
    assert_eq!(
        uninterrupted["checkpoints_written"].as_u64().unwrap(),
        steps / 40 + 1,
        "every 40 steps and at the end"
    );

    let killed_run = dir.path().join("killed");
    let err_path = dir.path().join("stderr");
    let mut child = std::process::Command::new("mpirun")
        .current_dir(dir.path())
        .args(["-np", "2"])
        .arg(env!("CARGO_BIN_EXE_shardrec"))
        .args(["train", cfg, "--set", &set("train.run_dir", &killed_run)])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("running mpirun");
    // wait until rank 1 has said its pid and the second checkpoint exists
    let started = std::time::Instant::now();
    let pid = loop {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        let pid = err
            .lines()
            .find_map(|l| l.split("rank 1 of 2: pid ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse::<i32>().ok());
        if let (Some(pid), true) = (pid, err.contains("step-00000080 (")) {
            break pid;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the job ended before the kill ({status}):\n{err}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint:\n{err}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: sending a signal to a process id we read from the job's own log.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let killed = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if killed.elapsed() > Duration::from_secs(30) {
            child.kill().ok();
            panic!("the job was still running 30 s after one rank was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "{status}");
    let left = checkpoints(&killed_run);
    assert!(
        !left.is_empty() && left.len() < checkpoints(&whole).len(),
        "killed before the end: {left:?}"
    );

    // resume in place: the run folder's newest complete checkpoint
    let o = run_mpi(
        dir.path(),
        2,
        &[
            "train",
            cfg,
            "--set",
            &set("train.run_dir", &killed_run),
            "--resume",
            killed_run.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    let resumed = summary(&o);
    assert!(
        resumed["resumed_from"]
            .as_str()
            .is_some_and(|p| p.contains("step-0000")),
        "{resumed}"
    );
    assert_eq!(resumed["steps"], uninterrupted["steps"]);
    assert_eq!(resumed["samples_seen"], uninterrupted["samples_seen"]);
    assert_eq!(
        metrics(&resumed),
        metrics(&uninterrupted),
        "resumed vs uninterrupted"
    );
}

/// A model and a checkpoint written by 4 ranks (tables row-wise) evaluate identically
/// under 4, 2 (tables column-wise) and 1 rank, and training resumes from the checkpoint
/// under 2 ranks.
#[test]
fn a_four_rank_checkpoint_evaluates_identically_on_two_ranks_and_one() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 30_000, 400);
    let cfg = criteo_config(
        dir.path(),
        &data,
        "deepfm",
        "epochs = 1\ncheckpoint_every = 30\n[sharding]\nstrategy = \"row_wise\"",
    );
    let cfg = cfg.to_str().unwrap();
    let run4 = dir.path().join("run4");
    let o = run_mpi(
        dir.path(),
        4,
        &["train", cfg, "--set", &set("train.run_dir", &run4)],
        Duration::from_secs(300),
    );
    let trained = summary(&o);
    assert_eq!(trained["model_saved"], true);
    let want = metrics(&trained);
    let model = run4.join("model");
    let newest = checkpoints(&run4).pop().unwrap();
    for folder in [&model, &newest] {
        for (ranks, strategy) in [(4, "row_wise"), (2, "column_wise"), (1, "auto")] {
            let args = [
                "eval",
                cfg,
                "--model",
                folder.to_str().unwrap(),
                "--set",
                &format!("sharding.strategy=\"{strategy}\""),
            ];
            let o = if ranks == 1 {
                run(dir.path(), &args)
            } else {
                run_mpi(dir.path(), ranks, &args, Duration::from_secs(120))
            };
            let s = summary(&o);
            assert_eq!(s["world_size"], ranks);
            assert_eq!(s["saved_by_ranks"], 4);
            assert_eq!(s["rows_test"], trained["rows_test"]);
            assert_eq!(
                metrics(&s),
                want,
                "{} evaluated by {ranks} ranks",
                folder.display()
            );
        }
    }
    // the 4-rank checkpoint of a mid-run step resumes under 2 ranks
    let first = checkpoints(&run4).into_iter().next().unwrap();
    let o = run_mpi(
        dir.path(),
        2,
        &[
            "train",
            cfg,
            "--set",
            &set("train.run_dir", &dir.path().join("run2")),
            "--resume",
            first.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    let s = summary(&o);
    assert_eq!(s["steps"], trained["steps"]);
    assert!((s["auc"].as_f64().unwrap() - want.0).abs() < 0.01, "{s}");
}

/// In one process resuming is bitwise too (with dropout); a flipped bit, a truncated file or a missing
/// manifest is refused naming the file.
#[test]
fn corrupt_truncated_or_incomplete_checkpoints_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 12_000, 300);
    let cfg = criteo_config(
        dir.path(),
        &data,
        "deepfm",
        "epochs = 2\ncheckpoint_every = 25\ncheckpoint_keep = 0\nsave_model = false",
    );
    // lazy Adam on the tables (two planes of state per piece) and dropout (libtorch's
    // random state must be restored too)
    let text = std::fs::read_to_string(&cfg).unwrap();
    let adam = text
        .replace(
            "kind = \"adagrad\", lr = 0.05",
            "kind = \"adam\", lr = 0.01",
        )
        .replace("cross_layers = 2", "cross_layers = 2\ndropout = 0.2");
    assert_ne!(adam, text);
    std::fs::write(&cfg, adam).unwrap();
    let cfg = cfg.to_str().unwrap();
    let run_dir = dir.path().join("run");
    let whole = summary(&run(dir.path(), &["train", cfg]));
    let first = checkpoints(&run_dir).into_iter().next().unwrap();
    let resume = |from: &Path| {
        run(
            dir.path(),
            &[
                "train",
                cfg,
                "--set",
                &set("train.run_dir", &dir.path().join("again")),
                "--resume",
                from.to_str().unwrap(),
            ],
        )
    };
    let resumed = summary(&resume(&first));
    assert_eq!(metrics(&resumed), metrics(&whole));

    let refused = |from: &Path, file: &str, words: &str| {
        let o = resume(from);
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(err.contains(file) && err.contains(words), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::create_dir_all(to.join("tables/main")).unwrap();
        std::fs::create_dir_all(to.join("tables/first_order")).unwrap();
        for sub in ["", "tables/main", "tables/first_order"] {
            for e in std::fs::read_dir(first.join(sub)).unwrap() {
                let p = e.unwrap().path();
                if p.is_file() {
                    std::fs::copy(&p, to.join(sub).join(p.file_name().unwrap())).unwrap();
                }
            }
        }
        to
    };
    // a flipped bit in a table piece
    let flipped = copy("flipped");
    let piece = std::fs::read_dir(flipped.join("tables/main"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".weights.f32"))
        .unwrap();
    let mut bytes = std::fs::read(&piece).unwrap();
    bytes[37] ^= 0x04;
    std::fs::write(&piece, bytes).unwrap();
    let name = piece.file_name().unwrap().to_str().unwrap();
    refused(&flipped, name, "checksum mismatch");
    let o = run(
        dir.path(),
        &["eval", cfg, "--model", flipped.to_str().unwrap()],
    );
    assert!(
        !o.status.success() && stderr(&o).contains(name),
        "{}",
        stderr(&o)
    );
    // a truncated dense optimizer state
    let truncated = copy("truncated");
    let f = truncated.join("dense_optimizer.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    refused(&truncated, "dense_optimizer.safetensors", "truncated");
    // an edited manifest
    let edited = copy("edited");
    let m = edited.join("manifest.json");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replacen("\"step\": 25", "\"step\": 26", 1)).unwrap();
    refused(&edited, "manifest.json", "checksum mismatch");
    // a checkpoint whose writing never finished: no manifest
    let partial = copy("step-00000099.partial");
    std::fs::remove_file(partial.join("manifest.json")).unwrap();
    refused(
        &partial,
        "step-00000099.partial",
        "not a complete checkpoint",
    );
}

#[test]
fn restore_best_tests_and_saves_the_best_validation_model() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 20_000, 500);
    // a large dense learning rate, so validation AUC wanders and the best is not the last
    let cfg = criteo_config(
        dir.path(),
        &data,
        "dlrm",
        "eval_every = 5\nrestore_best = true\n[optimizer]\nkind = \"adam\"\nlr = 0.3",
    );
    let cfg = cfg.to_str().unwrap();
    let valid = "data.split={ kind = \"tail\", valid = 0.1, test = 0.2 }";
    let train_with = |name: &str, restore: bool, more: &[&str]| {
        let run_dir = dir.path().join(name);
        let restore = format!("train.restore_best={restore}");
        let run_at = format!("train.run_dir={}", run_dir.display());
        let mut args = vec![
            "train",
            cfg,
            "--set",
            valid,
            "--set",
            "embedding.optimizer.lr=0.5",
            "--set",
            &restore,
            "--set",
            &run_at,
        ];
        args.extend_from_slice(more);
        let o = run(dir.path(), &args);
        (summary(&o), run_dir)
    };
    let train = |name: &str, restore: bool| train_with(name, restore, &[]);
    let (s, run_dir) = train("best", true);
    let validations = s["validations"].as_array().unwrap();
    let best = validations
        .iter()
        .max_by(|a, b| {
            a["auc"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["auc"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(s["restored_best_step"], best["step"], "{s}");
    assert_eq!(s["best_valid_auc"], best["auc"]);
    let last = validations.last().unwrap()["step"].as_u64().unwrap();
    assert_ne!(
        best["step"].as_u64().unwrap(),
        last,
        "this run's best validation should come before its last: {validations:?}"
    );
    // the test figures are those of the best model, and so is the saved model
    for folder in ["best", "model"] {
        let o = run(
            dir.path(),
            &[
                "eval",
                cfg,
                "--set",
                valid,
                "--model",
                run_dir.join(folder).to_str().unwrap(),
            ],
        );
        let e = summary(&o);
        assert_eq!(e["auc"], s["auc"], "{folder}: {e}");
        assert_eq!(e["logloss"], s["logloss"], "{folder}: {e}");
    }
    // stopped after its best validation and resumed: the best from before the resume
    let stop = format!("train.max_steps={}", best["step"].as_u64().unwrap() + 5);
    let every = ["--set", "train.checkpoint_every=5"];
    let (_, part) = train_with("part", true, &[every[0], every[1], "--set", &stop]);
    let resume = part.to_str().unwrap();
    let (resumed, _) = train_with("part", true, &[every[0], every[1], "--resume", resume]);
    assert_eq!(resumed["restored_best_step"], best["step"], "{resumed}");
    assert_eq!(resumed["auc"], s["auc"]);
    // the same run without restore_best tests the last model: other figures
    let (plain, _) = train("last", false);
    assert!(plain["restored_best_step"].is_null());
    assert_eq!(plain["validations"], s["validations"], "the same training");
    assert_ne!(plain["auc"], s["auc"]);
    // no validation split: refused before training, naming the key
    let o = run(dir.path(), &["train", cfg]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("train.restore_best"), "{}", stderr(&o));
}

/// A one-epoch DLRM run on generated data in `dir/run`, checkpointing every 4 steps: its
/// config and summary.
fn run_with_checkpoints(dir: &Path) -> (PathBuf, serde_json::Value) {
    let (data, _) = synth(dir, 3000, 200);
    let cfg = criteo_config(dir, &data, "dlrm", "epochs = 1\ncheckpoint_every = 4");
    let first = train_summary(dir, &cfg, &[]);
    (cfg, first)
}

/// Resuming with another batch size (the position counts steps), another dense
/// optimizer (its state would be read as another kind's) or other preprocessing (the
/// model would see other inputs) is refused naming both values; so is evaluating a model
/// with other preprocessing. The same settings resume and evaluate.
#[test]
fn resume_and_eval_refuse_another_batch_optimizer_or_preprocessing() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, first) = run_with_checkpoints(dir.path());
    assert!(
        first["checkpoints_written"].as_u64().unwrap() >= 2,
        "{first}"
    );
    let run_dir = dir.path().join("run");
    let checkpoint = checkpoints(&run_dir).remove(0);
    let resume = |sets: &[&str]| {
        let mut args = vec![
            "train",
            cfg.to_str().unwrap(),
            "--resume",
            checkpoint.to_str().unwrap(),
            "--set",
            "train.run_dir=\"resumed\"",
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        run(dir.path(), &args)
    };
    let refused = |o: &std::process::Output, words: &[&str]| {
        assert!(!o.status.success(), "resumed anyway");
        let err = stderr(o);
        for w in words {
            assert!(err.contains(w), "`{w}` not in: {err}");
        }
    };
    refused(
        &resume(&["train.batch_size=128"]),
        &["256 rows", "of 128", "batch"],
    );
    refused(
        &resume(&["optimizer.kind=\"sgd\""]),
        &["Adam", "Sgd", "optimizer.kind"],
    );
    refused(
        &resume(&["data.dense_transform=\"identity\""]),
        &["data.dense_transform = \"identity\"", "\"log1p\""],
    );
    // the same settings resume
    let resumed = summary(&resume(&[]));
    assert_eq!(resumed["steps"], first["steps"]);
    // eval reads the saved preprocessing too
    let model = run_dir.join("model");
    let eval = |sets: &[&str]| {
        let mut args = vec![
            "eval",
            cfg.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        run(dir.path(), &args)
    };
    refused(
        &eval(&["data.dense_transform=\"identity\""]),
        &["data.dense_transform", "trained with \"log1p\""],
    );
    assert_eq!(summary(&eval(&[]))["auc"], first["auc"]);
}

/// A run folder belongs to one run. A new run into a folder that holds another run is
/// refused, naming the folder and `--resume`, and leaves that run's checkpoints and
/// summary as they were; a folder whose lock a live process holds is refused; a lock
/// left by a process that has ended is taken over.
#[test]
fn a_run_folder_holding_another_run_or_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = run_with_checkpoints(dir.path());
    let run_dir = dir.path().join("run");
    let kept = checkpoints(&run_dir);
    let summary_before = std::fs::read(run_dir.join("summary.json")).unwrap();
    let o = run(
        dir.path(),
        &[
            "train",
            cfg.to_str().unwrap(),
            "--set",
            "train.epochs=2",
            "--set",
            "optimizer.lr=0.01",
        ],
    );
    assert!(!o.status.success(), "a second run overwrote the first");
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{} holds another run", run_dir.display()))
            && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(checkpoints(&run_dir), kept);
    assert_eq!(
        std::fs::read(run_dir.join("summary.json")).unwrap(),
        summary_before
    );
    assert!(
        !run_dir.join(".lock").exists(),
        "the refused run left its lock"
    );

    // a lock held by a live process (this test's), then one whose process has ended
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    let lock = locked.join(".lock");
    std::fs::write(&lock, format!("{} {}", std::process::id(), host.trim())).unwrap();
    let into_locked = format!("train.run_dir=\"{}\"", locked.display());
    let o = run(
        dir.path(),
        &["train", cfg.to_str().unwrap(), "--set", &into_locked],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!(
            "is in use by another run (pid {}",
            std::process::id()
        )),
        "{}",
        stderr(&o)
    );
    std::fs::write(&lock, format!("4000000000 {}", host.trim())).unwrap();
    train_summary(dir.path(), &cfg, &[&into_locked]);
    assert!(!lock.exists(), "the run released the lock it took over");
}

/// `--resume` of a missing path fails before the data is prepared; a run folder whose
/// newest checkpoint lost its manifest resumes from the older one and says so; a
/// checkpoint whose vocabulary file was altered is refused naming it. (And a sequence
/// generator asked for no users refuses, as the Criteo one does for no rows.)
#[test]
fn resume_checks_its_inputs_first_and_says_what_it_passes_over() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 3000, 200);
    let cfg = criteo_config(
        dir.path(),
        &data,
        "dlrm",
        "epochs = 1\ncheckpoint_every = 3\ncheckpoint_keep = 0",
    );
    let cfg_arg = cfg.to_str().unwrap();
    let o = run(dir.path(), &["train", cfg_arg, "--resume", "nowhere"]);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("nowhere"), "{err}");
    assert!(
        !err.contains("counting categorical values"),
        "prepared data first: {err}"
    );

    train_summary(dir.path(), &cfg, &[]);
    let run_dir = dir.path().join("run");
    let all = checkpoints(&run_dir);
    assert!(all.len() >= 3, "{all:?}");
    let newest = all.last().unwrap();
    std::fs::remove_file(newest.join("manifest.json")).unwrap();
    let resumed_from = &all[all.len() - 2];
    // resumes `from` into the new run folder `into`
    let resume = |from: &Path, into: &str| {
        let into = format!("train.run_dir=\"{into}\"");
        let from = from.to_str().unwrap();
        run(
            dir.path(),
            &["train", cfg_arg, "--resume", from, "--set", &into],
        )
    };
    let o = resume(&run_dir, "again");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("{}: no manifest.json", newest.display()))
            && err.contains(&format!(
                "resuming from the older {}",
                resumed_from.display()
            )),
        "{err}"
    );

    let vocab = resumed_from.join("vocab.bin");
    let mut bytes = std::fs::read(&vocab).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&vocab, bytes).unwrap();
    let o = resume(resumed_from, "third");
    let err = stderr(&o);
    assert!(!o.status.success(), "an altered vocabulary was accepted");
    assert!(
        err.contains("vocab.bin") && err.contains("checksum"),
        "{err}"
    );

    let o = run(
        dir.path(),
        &[
            "synth", "--kind", "sequence", "--users", "0", "--out", "none",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--users"), "{}", stderr(&o));
}

/// A disk that fills while a checkpoint is written (a file size limit stands in for it:
/// the write fails with EFBIG as it would with ENOSPC): the run fails naming the file
/// and the newest complete checkpoint, the checkpoints written before stay complete and
/// evaluate as before, and `--resume` goes on from them once there is space.
#[test]
fn a_full_disk_fails_the_checkpoint_by_name_and_keeps_the_complete_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = synth(dir.path(), 20_000, 5000);
    let cfg = criteo_config(
        dir.path(),
        &data,
        "dlrm",
        "epochs = 1\ncheckpoint_every = 20\nsave_model = false\nlog_every = 1000",
    );
    let first = train_summary(dir.path(), &cfg, &[]);
    let run_dir = dir.path().join("run");
    let before = checkpoints(&run_dir);
    let newest = before.last().unwrap().to_str().unwrap().to_string();
    let eval_newest = || {
        summary(&run(
            dir.path(),
            &["eval", cfg.to_str().unwrap(), "--model", &newest],
        ))
    };
    assert_eq!(eval_newest()["auc"], first["auc"]);
    // a table file of a checkpoint is about 75 KB; anything larger than 40 KiB fails
    let o = Command::new("bash")
        .current_dir(dir.path())
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 40; exec {} train {} --set train.epochs=2 --resume run",
            env!("CARGO_BIN_EXE_shardrec"),
            cfg.display()
        ))
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("out of disk space")
            && err.contains(".partial/tables/main/")
            && err.contains(&format!("{newest} is the newest complete checkpoint"))
            && err.contains(&format!("--resume {}", run_dir.display())),
        "{err}"
    );
    let complete: Vec<_> = checkpoints(&run_dir)
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".partial"))
        .collect();
    assert_eq!(complete, before, "no complete checkpoint pruned or damaged");
    assert_eq!(eval_newest()["auc"], first["auc"]);
    let cfg = cfg.to_str().unwrap();
    let o = run(
        dir.path(),
        &["train", cfg, "--set", "train.epochs=2", "--resume", "run"],
    );
    let resumed = summary(&o);
    assert_eq!(resumed["steps"], 2 * first["steps"].as_u64().unwrap());
}
