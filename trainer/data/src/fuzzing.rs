//! A small mutation fuzzer that runs on stable Rust inside `cargo test`, for the inputs a
//! user hands shardrec: raw rows, prepared-data files, configs, saved manifests.
//!
//! `cargo fuzz` needs a nightly toolchain and a sanitizer build, which CI does not have;
//! this keeps libFuzzer's loop without its coverage feedback: a recorded corpus of
//! seed inputs (`fuzz/corpus/<target>/`, plus seeds a target makes at run time), byte and
//! dictionary mutations of them (libFuzzer's mutators: change, insert, erase, copy a
//! span, splice two inputs, replace a number with an edge value), and a time budget. A
//! panic writes its input into the corpus as `crash-<crc32>` (replayed first on every
//! later run) and fails the test.
//!
//! `SHARDREC_FUZZ_SECONDS` sets each target's budget (default 4: CI's short run);
//! `SHARDREC_FUZZ_SEED` repeats a run's mutations (each run prints its seed).
//! `launch/fuzz.sh` is the longer run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Values that reach edge cases when they replace a number.
const EDGE_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "-0",
    "255",
    "65536",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1e400",
    "-1e400",
    "nan",
    "inf",
    "0.5",
    "1e-320",
];

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct FuzzReport {
    pub executions: u64,
    pub seconds: f64,
    pub seeds: usize,
}

/// One fuzz target's corpus, dictionary and budget.
pub struct Fuzzer {
    name: String,
    corpus_dir: PathBuf,
    seeds: Vec<Vec<u8>>,
    dictionary: Vec<Vec<u8>>,
    budget: Duration,
    rng_seed: u64,
}

impl Fuzzer {
    /// A target whose recorded corpus is `corpus_root/<name>/` (read now; may be absent).
    pub fn new(name: &str, corpus_root: &Path) -> Self {
        let corpus_dir = corpus_root.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus_dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        let seeds = files
            .iter()
            .filter(|p| p.is_file())
            .filter_map(|p| std::fs::read(p).ok())
            .collect();
        let env_f64 = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
        let budget = Duration::from_secs_f64(env_f64("SHARDREC_FUZZ_SECONDS").unwrap_or(4.0));
        let rng_seed = std::env::var("SHARDREC_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        Self {
            name: name.to_string(),
            corpus_dir,
            seeds,
            dictionary: EDGE_NUMBERS.iter().map(|s| s.as_bytes().to_vec()).collect(),
            budget,
            rng_seed,
        }
    }

    /// Adds a seed input made at run time (a file this version writes, for instance).
    pub fn seed(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.seeds.push(input.into());
        self
    }

    /// Adds tokens that mean something to the target (separators, keys, paths).
    pub fn dictionary(mut self, tokens: &[&str]) -> Self {
        self.dictionary
            .extend(tokens.iter().map(|t| t.as_bytes().to_vec()));
        self
    }

    /// Replays every seed, then feeds mutated seeds to `target` until the budget is
    /// spent. A panic records its input and fails the calling test.
    pub fn run(self, target: impl Fn(&[u8])) -> FuzzReport {
        let started = Instant::now();
        let mut executions = 0u64;
        let mut seeds = self.seeds.clone();
        if seeds.is_empty() {
            seeds.push(Vec::new());
        }
        for s in &seeds {
            self.execute(&target, s);
            executions += 1;
        }
        let mut rng = SplitMix64(self.rng_seed);
        while started.elapsed() < self.budget {
            let mut input = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(4) {
                self.mutate(&mut input, &seeds, &mut rng);
            }
            self.execute(&target, &input);
            executions += 1;
        }
        let report = FuzzReport {
            executions,
            seconds: started.elapsed().as_secs_f64(),
            seeds: seeds.len(),
        };
        eprintln!(
            "fuzz {}: {} executions in {:.1} s ({} seeds, SHARDREC_FUZZ_SEED={}), no panic",
            self.name, report.executions, report.seconds, report.seeds, self.rng_seed
        );
        report
    }

    fn execute(&self, target: &impl Fn(&[u8]), input: &[u8]) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(input))) {
            let path = self
                .corpus_dir
                .join(format!("crash-{:08x}", crc32fast::hash(input)));
            let saved = std::fs::create_dir_all(&self.corpus_dir)
                .and_then(|_| std::fs::write(&path, input))
                .map(|_| format!("saved as {}", path.display()))
                .unwrap_or_else(|e| format!("not saved: {e}"));
            eprintln!(
                "fuzz {}: a panic on input {:?} ({saved})",
                self.name,
                String::from_utf8_lossy(input)
            );
            std::panic::resume_unwind(panic);
        }
    }

    /// One of libFuzzer's mutations, applied in place.
    fn mutate(&self, input: &mut Vec<u8>, seeds: &[Vec<u8>], rng: &mut SplitMix64) {
        let at = rng.below(input.len() + 1);
        match rng.below(9) {
            0 if at < input.len() => input[at] ^= 1 << rng.below(8),
            1 if at < input.len() => input[at] = rng.next() as u8,
            2 => {
                let token = &self.dictionary[rng.below(self.dictionary.len())];
                input.splice(at..at, token.iter().copied());
            }
            3 => {
                let end = (at + 1 + rng.below(16)).min(input.len());
                input.drain(at.min(end)..end);
            }
            4 => {
                let end = (at + 1 + rng.below(32)).min(input.len());
                let span = input[at.min(end)..end].to_vec();
                let to = rng.below(input.len() + 1);
                input.splice(to..to, span);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            6 => replace_number(input, at, EDGE_NUMBERS[rng.below(EDGE_NUMBERS.len())]),
            7 => input.truncate(at),
            _ => {
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
        }
    }
}

/// Replaces the run of digits at or after `from` with `with`.
fn replace_number(input: &mut Vec<u8>, from: usize, with: &str) {
    let Some(start) = (from..input.len()).find(|&i| input[i].is_ascii_digit()) else {
        return;
    };
    let end = (start..input.len())
        .find(|&i| !matches!(input[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'-' | b'+'))
        .unwrap_or(input.len());
    input.splice(start..end, with.bytes());
}

/// Sebastiano Vigna's SplitMix64: enough randomness for choosing mutations, and
/// repeatable from one seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_target_fails_and_its_input_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let result = catch_unwind(|| {
            Fuzzer::new("t", dir.path())
                .seed(b"ab1".to_vec())
                .run(|input| assert!(!input.is_empty() && input[0] != b'x', "found it"))
        });
        assert!(result.is_err(), "the target panics on some mutation");
        let saved: Vec<_> = std::fs::read_dir(dir.path().join("t"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(saved.len(), 1);
        let input = std::fs::read(saved[0].path()).unwrap();
        assert!(input.is_empty() || input[0] == b'x', "{input:?}");
        // the recorded crash is replayed first next time
        let seeds = Fuzzer::new("t", dir.path()).seeds;
        assert_eq!(seeds, vec![input]);
    }

    #[test]
    fn numbers_are_replaced_whole() {
        let mut v = b"a=12.5e3,b".to_vec();
        replace_number(&mut v, 0, "nan");
        assert_eq!(v, b"a=nan,b");
    }
}
