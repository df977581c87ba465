//! The run folder: everything a run leaves behind, so it can be inspected and repeated.
//! `config.resolved.toml` (every key, defaults filled in), `metrics.jsonl` (one JSON object
//! per log or evaluation), `summary.json` (the final figures) and `model/`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::ExperimentConfig;

pub struct RunDir {
    pub path: PathBuf,
    /// None on ranks other than 0, which write nothing.
    metrics: Option<BufWriter<File>>,
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

    /// Creates the folder `path` and writes the resolved config; with `write` false (ranks
    /// other than 0) touches nothing. A resumed run (`append`) adds to `metrics.jsonl`
    /// instead of starting it afresh.
    pub fn create(
        cfg: &ExperimentConfig,
        path: PathBuf,
        write: bool,
        append: bool,
    ) -> std::io::Result<Self> {
        if !write {
            return Ok(Self {
                path,
                metrics: None,
            });
        }
        std::fs::create_dir_all(&path)?;
        let resolved = toml::to_string(cfg).map_err(std::io::Error::other)?;
        std::fs::write(path.join("config.resolved.toml"), resolved)?;
        let metrics = Some(BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(path.join("metrics.jsonl"))?,
        ));
        Ok(Self { path, metrics })
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

/// Whether a path looks like a run's model folder.
pub fn is_model_dir(p: &Path) -> bool {
    p.join("manifest.json").is_file()
}
