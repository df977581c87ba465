//! Timing of the search stage of TWIN and DARE ([`shardrec_models::relevance_scores`]
//! then [`shardrec_models::search_top_k`]) at several history lengths and attention
//! widths: the cost DARE cuts by narrowing its attention tables (Feng et al. 2025, arXiv
//! 2410.02604, section 4: a smaller attention dimension speeds the search up). Two
//! figures per case: the scoring and top-K over attention embeddings already in memory,
//! and the same after gathering those embeddings from an item table by id (what a
//! serving system reads per request). A benchmark, not a test: it prints figures.

use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use shardrec_models::{relevance_scores, search_top_k};

/// One measured case.
#[derive(Debug, Clone, Serialize)]
pub struct SearchTiming {
    pub len: i64,
    pub width: i64,
    pub k: i64,
    /// Milliseconds per 1,000 samples: score + top-K.
    pub search_ms_per_1k: f64,
    /// Milliseconds per 1,000 samples: gather the keys from the table, score, top-K.
    pub gather_search_ms_per_1k: f64,
}

/// Times every (length, width) pair on `samples` samples, in chunks of at most
/// `chunk` samples (memory stays `chunk * L * width` floats); the best of `repeats`.
pub fn time_search(
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
