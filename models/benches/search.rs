//! Timing of the search stage of TWIN and DARE ([`shardrec_models::relevance_scores`]
//! then [`shardrec_models::search_top_k`]) at several history lengths and attention
//! widths: the cost DARE cuts by narrowing its attention tables (Feng et al. 2025, arXiv
//! 2410.02604, section 4: a smaller attention dimension speeds the search up). Two
//! figures per case: the scoring and top-K over attention embeddings already in memory,
//! and the same after gathering those embeddings from an item table by id (what a
//! serving system reads per request). A benchmark, not a test: it prints figures.
//!
//! ```sh
//! cargo bench -p shardrec-models --bench search -- --lens 1000,10000 --widths 48,24,12
//! ```
//! Flags (all optional): `--lens`, `--widths` (comma-separated), `--k` (20), `--samples`
//! (4000), `--chunk` (250), `--repeats` (3), `--items` (1,000,000 rows of the table the
//! keys are gathered from), `--threads` (libtorch threads; 0 = all cores). Prints a
//! Markdown table and a JSON line.

use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use shardrec_models::{relevance_scores, search_top_k};

/// One measured case.
#[derive(Debug, Clone, Serialize)]
struct SearchTiming {
    len: i64,
    width: i64,
    k: i64,
    /// Milliseconds per 1,000 samples: score + top-K.
    search_ms_per_1k: f64,
    /// Milliseconds per 1,000 samples: gather the keys from the table, score, top-K.
    gather_search_ms_per_1k: f64,
}

/// Times every (length, width) pair on `samples` samples, in chunks of at most
/// `chunk` samples (memory stays `chunk * L * width` floats); the best of `repeats`.
fn time_search(
    lens: &[i64],
    widths: &[i64],
    k: i64,
    samples: i64,
    chunk: i64,
    repeats: usize,
    items: i64,
) -> Vec<SearchTiming> {
    let _guard = tch::no_grad_guard();
    let mut out = Vec::new();
    tch::manual_seed(7);
    for &len in lens {
        for &width in widths {
            let table = Tensor::randn([items, width], (Kind::Float, Device::Cpu));
            let b = chunk.min(samples);
            let ids = Tensor::randint(items, [b * len], (Kind::Int64, Device::Cpu));
            let keys = table.index_select(0, &ids).view([b, len, width]);
            let query = Tensor::randn([b, width], (Kind::Float, Device::Cpu));
            let mask = Tensor::ones([b, len], (Kind::Bool, Device::Cpu));
            // widths in the proportions of DARE's item, category, time tables (1:1:1)
            let sets = shardrec_models::SearchWidths::thirds(width);
            let chunks = (samples + b - 1) / b;
            let mut best = (f64::INFINITY, f64::INFINITY);
            for _ in 0..repeats {
                let t = Instant::now();
                for _ in 0..chunks {
                    let s = relevance_scores(&query, &keys, &mask, &sets);
                    let (v, _) = search_top_k(&s, k);
                    let _ = v.double_value(&[0, 0]);
                }
                let search = t.elapsed().as_secs_f64();
                let t = Instant::now();
                for _ in 0..chunks {
                    let keys = table.index_select(0, &ids).view([b, len, width]);
                    let s = relevance_scores(&query, &keys, &mask, &sets);
                    let (v, _) = search_top_k(&s, k);
                    let _ = v.double_value(&[0, 0]);
                }
                let both = t.elapsed().as_secs_f64();
                best = (best.0.min(search), best.1.min(both));
            }
            let per_1k = 1000.0 / (chunks * b) as f64 * 1000.0;
            out.push(SearchTiming {
                len,
                width,
                k,
                search_ms_per_1k: best.0 * per_1k,
                gather_search_ms_per_1k: best.1 * per_1k,
            });
        }
    }
    out
}

/// The bench's flags, with the defaults `shardrec bench-search` had.
struct Flags {
    lens: Vec<i64>,
    widths: Vec<i64>,
    k: i64,
    samples: i64,
    chunk: i64,
    repeats: usize,
    items: i64,
    threads: i32,
}

fn list(flag: &str, v: &str) -> Result<Vec<i64>, String> {
    v.split(',')
        .map(|x| x.trim().parse().map_err(|e| format!("{flag} {v}: {e}")))
        .collect()
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| format!("{flag} {v}: {e}"))
}

fn flags() -> Result<Flags, String> {
    let mut f = Flags {
        lens: vec![1000, 10000],
        widths: vec![48, 24, 12],
        k: 20,
        samples: 4000,
        chunk: 250,
        repeats: 3,
        items: 1_000_000,
        threads: 0,
    };
    // cargo bench passes `--bench` to every bench target
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    for pair in args.chunks(2) {
        let [flag, v] = pair else {
            return Err(format!("{}: needs a value", pair[0]));
        };
        let flag = flag.as_str();
        match flag {
            "--lens" => f.lens = list(flag, v)?,
            "--widths" => f.widths = list(flag, v)?,
            "--k" => f.k = number(flag, v)?,
            "--samples" => f.samples = number(flag, v)?,
            "--chunk" => f.chunk = number(flag, v)?,
            "--repeats" => f.repeats = number(flag, v)?,
            "--items" => f.items = number(flag, v)?,
            "--threads" => f.threads = number(flag, v)?,
            _ => return Err(format!("unknown flag {flag} (see the file's header)")),
        }
    }
    Ok(f)
}

fn main() {
    let f = match flags() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if f.threads > 0 {
        tch::set_num_threads(f.threads);
    }
    let t = time_search(
        &f.lens, &f.widths, f.k, f.samples, f.chunk, f.repeats, f.items,
    );
    println!("| L | attention width | K | search ms / 1k samples | gather + search ms / 1k samples | vs. first width |");
    println!("|---|---|---|---|---|---|");
    for r in &t {
        let base = t
            .iter()
            .find(|b| b.len == r.len)
            .map_or(r.search_ms_per_1k, |b| b.search_ms_per_1k);
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            r.len,
            r.width,
            r.k,
            r.search_ms_per_1k,
            r.gather_search_ms_per_1k,
            r.search_ms_per_1k / base
        );
    }
    println!("{}", serde_json::to_string(&t).unwrap_or_default());
}
