//! The run folder: everything a run leaves behind, so it can be inspected and repeated.
//! `config.resolved.toml` (every key, defaults filled in), `metrics.jsonl` (one JSON object
//! per log or evaluation), `summary.json` (the final figures) and `model/`.
//!
//! A folder belongs to one run: a new run (not `--resume`) refuses a folder that holds
//! another run's output, whose checkpoints it would otherwise prune and whose summary it
//! would overwrite; and `.lock` (the writer's pid and host) refuses a second run while
//! the first is writing. A lock whose process is gone is taken over.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::ExperimentConfig;

pub struct RunDir {
    pub path: PathBuf,
    /// None on ranks other than 0, which write nothing.
    metrics: Option<BufWriter<File>>,
    /// Rank 0's `.lock`, removed when the run ends.
    lock: Option<PathBuf>,
}

/// Why a run folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds another run ({found}); continue it with --resume {path}, or give a new train.run_dir")]
    HoldsAnotherRun { path: PathBuf, found: String },
    #[error("{path} is in use by another run (pid {pid} on {host}, see {path}/.lock); wait for it or give a new train.run_dir")]
    InUse {
        path: PathBuf,
        pid: u32,
        host: String,
    },
}

/// What a finished or running run leaves in its folder.
const RUN_OUTPUT: [&str; 5] = [
    "summary.json",
    "checkpoints",
    "model",
    "best",
    "metrics.jsonl",
];

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Takes `<path>/.lock` for this process, or says who holds it. A lock left by a process
/// that no longer runs on this host is stale and taken over.
fn lock(path: &Path) -> Result<PathBuf, RunDirError> {
    let file = path.join(".lock");
    let io = |source| RunDirError::Io {
        path: file.clone(),
        source,
    };
    let mine = format!("{} {}\n", std::process::id(), hostname());
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
        {
            Ok(mut f) => {
                f.write_all(mine.as_bytes()).map_err(io)?;
                return Ok(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                let mut parts = text.split_whitespace();
                let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
                let host = parts.next().unwrap_or_default().to_string();
                let alive = |pid: u32| Path::new("/proc").join(pid.to_string()).exists();
                match pid {
                    Some(pid) if host != hostname() || alive(pid) => {
                        return Err(RunDirError::InUse {
                            path: path.to_path_buf(),
                            pid,
                            host,
                        })
                    }
                    // stale: its process has ended
                    _ => std::fs::remove_file(&file).map_err(io)?,
                }
            }
            Err(e) => return Err(io(e)),
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Some(l) = &self.lock {
            let _ = std::fs::remove_file(l);
        }
    }
}

/// `YYYYmmdd-HHMMSS` in UTC.
pub fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl RunDir {
    /// The folder a run of `name` writes to: `train.run_dir`, or `runs/<name>-<time>-<pid>`.
    pub fn default_path(cfg: &ExperimentConfig, name: &str) -> PathBuf {
        match &cfg.train.run_dir {
            Some(p) => p.clone(),
            None => {
                PathBuf::from("runs").join(format!("{name}-{}-{}", timestamp(), std::process::id()))
            }
        }
    }

    /// Creates the folder `path`, takes its lock and writes the resolved config; with
    /// `write` false (ranks other than 0) touches nothing. A resumed run (`append`) adds
    /// to `metrics.jsonl` instead of starting it afresh; a new run refuses a folder that
    /// holds another run.
    pub fn create(
        cfg: &ExperimentConfig,
        path: PathBuf,
        write: bool,
        append: bool,
    ) -> Result<Self, RunDirError> {
        if !write {
            return Ok(Self {
                path,
                metrics: None,
                lock: None,
            });
        }
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| RunDirError::Io { path: p, source }
        };
        std::fs::create_dir_all(&path).map_err(io(&path))?;
        let lock = lock(&path)?;
        // from here on the lock is released when `run` drops, whatever happens
        let mut run = Self {
            path,
            metrics: None,
            lock: Some(lock),
        };
        let found: Vec<&str> = RUN_OUTPUT
            .into_iter()
            .filter(|f| run.path.join(f).exists())
            .collect();
        if !append && !found.is_empty() {
            return Err(RunDirError::HoldsAnotherRun {
                path: run.path.clone(),
                found: found.join(", "),
            });
        }
        let resolved = toml::to_string(cfg).map_err(|e| RunDirError::Io {
            path: run.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let config_path = run.path.join("config.resolved.toml");
        std::fs::write(&config_path, resolved).map_err(io(&config_path))?;
        let metrics_path = run.path.join("metrics.jsonl");
        run.metrics = Some(BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(&metrics_path)
                .map_err(io(&metrics_path))?,
        ));
        Ok(run)
    }

    pub fn log_metrics(&mut self, v: &serde_json::Value) -> std::io::Result<()> {
        let Some(m) = self.metrics.as_mut() else {
            return Ok(());
        };
        writeln!(m, "{v}")?;
        m.flush()
    }

    pub fn write_summary(&self, v: &serde_json::Value) -> std::io::Result<()> {
        if self.metrics.is_none() {
            return Ok(());
        }
        let text = serde_json::to_string_pretty(v).map_err(std::io::Error::other)?;
        std::fs::write(self.path.join("summary.json"), text)
    }

    pub fn model_dir(&self) -> PathBuf {
        self.path.join("model")
    }
}

/// Peak resident set size of this process, in bytes.
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: rusage is a plain C struct of integers, for which all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc == 0 {
        usage.ru_maxrss as u64 * 1024
    } else {
        0
    }
}

/// Resident set size of this process now, in bytes (0 where /proc is not readable).
pub fn current_rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// Anonymous resident memory of this process (`RssAnon`: the heap and tables, not the
/// mapped data files), in bytes (0 where /proc is not readable).
pub fn anon_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Whether a path looks like a run's model folder.
pub fn is_model_dir(p: &Path) -> bool {
    p.join("manifest.json").is_file()
}
