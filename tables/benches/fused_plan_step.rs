//! The host's share of a fused-table step at GPU batch sizes: the arrays of a step the
//! device deduplicates (`FusedLayout::device_arrays`); or planning the batch on the host
//! (`LookupPlan::build`, distinct rows per table), the fused groups' index arrays
//! (`FusedLayout::step`), and placing the distinct rows in a device cache of 10% of the
//! rows (`RowCache::place`). Prints milliseconds per step of each; the device can only
//! go as fast as the slowest of these allows, since each runs once a step (the plan on
//! its own thread, a step ahead).
//!
//!     cargo bench -p shardrec-tables --bench fused_plan_step -- [batch] [steps]
//!
//! Defaults: batch 65,536, 10 steps; 26 hashed tables of 10^7 (1), 3x10^6 (3), 10^6
//! (6) and 10^5 (16) rows, as `launch/bench_gpu.sh`; ids Zipf-like over 2x10^7.

use std::time::{Duration, Instant};

use shardrec_tables::{
    mix64, CollectionLayout, CollectionSpec, Combine, FeatureSpec, FusedLayout, KeyedJaggedIds,
    LookupPlan, Pooling, Probe, RowCache, RowInit, RowMap, TableSpec,
};

fn table_rows(i: usize) -> u64 {
    match i {
        0 => 10_000_000,
        1..=3 => 3_000_000,
        4..=9 => 1_000_000,
        _ => 100_000,
    }
}

fn layout() -> CollectionLayout {
    let spec = CollectionSpec {
        tables: (0..26)
            .map(|i| TableSpec {
                name: format!("t{i}"),
                rows: table_rows(i),
                dim: 16,
                init: RowInit::Zeros,
            })
            .collect(),
        features: (0..26)
            .map(|i| FeatureSpec {
                name: format!("f{i}"),
                probes: vec![Probe {
                    table: format!("t{i}"),
                    map: RowMap::Hash { seed: i as u64 },
                }],
                combine: Combine::Concat,
                pooling: Pooling::Sum,
            })
            .collect(),
    };
    CollectionLayout::new(spec).expect("a valid layout")
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (batch, steps) = (
        args.first().copied().unwrap_or(65_536),
        args.get(1).copied().unwrap_or(10),
    );
    let layout = layout();
    let fused = FusedLayout::new(&layout);
    let total: u64 = fused.groups.iter().map(|g| g.rows).sum();
    let mut cache = RowCache::new((total / 10) as u32, total);
    let (mut plan_t, mut fused_t, mut place_t) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut device_t = Duration::ZERO;
    let mut distinct = 0;
    for step in 0..steps as u64 {
        let ids: Vec<u64> = (0..(batch * 26) as u64)
            .map(|i| {
                // u^4 over 2x10^7: a heavy head, a long tail
                let u = (mix64(step * 1_000_003 + i) >> 11) as f64 / (1u64 << 53) as f64;
                (20_000_000.0 * u * u * u * u) as u64
            })
            .collect();
        let ids = KeyedJaggedIds::from_single_valued(26, batch, &ids).expect("a batch");
        let t = Instant::now();
        std::hint::black_box(fused.device_arrays(&layout, &ids).expect("arrays"));
        device_t += t.elapsed();
        let t = Instant::now();
        let plan = LookupPlan::build(&layout, &ids).expect("planned");
        plan_t += t.elapsed();
        let t = Instant::now();
        let steps = fused.step(&plan);
        fused_t += t.elapsed();
        let rows: Vec<u64> = steps[0].unique.iter().map(|&r| r as u64).collect();
        distinct += rows.len();
        let t = Instant::now();
        std::hint::black_box(cache.place(&rows, step + 1).expect("placed"));
        place_t += t.elapsed();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / steps as f64;
    let s = cache.stats();
    println!(
        "batch {batch}: arrays for the device's deduplication {:.1} ms; host plan {:.1} ms, fused arrays {:.1} ms, cache placement {:.1} ms a step; {} distinct rows a step; cache of {} rows: hit rate {:.3}",
        ms(device_t),
        ms(plan_t),
        ms(fused_t),
        ms(place_t),
        distinct / steps,
        cache.capacity(),
        s.hits as f64 / (s.hits + s.misses).max(1) as f64
    );
}
