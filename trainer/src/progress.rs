//! Progress display: an indicatif bar on a terminal, plain log lines on stderr otherwise
//! (CI logs, `mpirun` output, files). Stdout is kept for the final JSON summary line.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: usize,
    /// False on ranks other than 0, which keep quiet.
    shown: bool,
}

impl Progress {
    /// `total` steps expected (0 if unknown); `log_every` steps between plain lines.
    /// Nothing is shown unless `shown` (rank 0 of a job).
    pub fn new(total: u64, log_every: usize, shown: bool) -> Self {
        let bar = (shown && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        Self {
            bar,
            log_every: log_every.max(1),
            shown,
        }
    }

    /// Reports step `step` with a message built only when it will be shown.
    pub fn step(&self, step: usize, msg: impl FnOnce() -> String) {
        match &self.bar {
            Some(b) => {
                b.set_position(step as u64);
                if step.is_multiple_of(10) {
                    b.set_message(msg());
                }
            }
            None if self.shown && step.is_multiple_of(self.log_every) => {
                eprintln!("[train] step {step} {}", msg())
            }
            None => {}
        }
    }

    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None if self.shown => eprintln!("{line}"),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
