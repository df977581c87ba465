//! Mapping a step's keys to rows (dynamic tables), against planning the same batch's
//! rows (what a plain table's lookup starts with). Prints milliseconds per step.
//!
//!     cargo bench -p shardrec-tables --bench key_maps_step -- [features] [batch] [steps] [capacity] [--zipf]
//!
//! Defaults: 26 features, batch 1024, 300 steps, 80,000 rows a table; keys skewed as
//! `100,000 * u^3` plus a drift of new keys every step (a churning stream: about 30% of
//! a step's keys are new). With `--zipf`, log-uniform ranks over 100,000 ids a feature
//! and no drift, about the mix of `launch/bench_dynamic.py`'s stream (12,500 distinct
//! keys a step, 2,300 of them new, at 900 steps).

use std::time::{Duration, Instant};

use shardrec_tables::{
    mix64, Admission, CollectionLayout, CollectionSpec, Eviction, FeatureKeys, KeyMaps, KeyRows,
    KeyedJaggedIds, LookupPlan, RowInit, SoloExchange,
};

fn main() {
    // as the trainer does (its binary's main): big buffers stay in the heap
    // SAFETY: mallopt only changes allocator thresholds; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let zipf = std::env::args().any(|a| a == "--zipf");
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (features, batch, steps, capacity) =
        (arg(0, 26), arg(1, 1024), arg(2, 300), arg(3, 80_000));
    let maps = (0..features)
        .map(|f| FeatureKeys {
            feature: f,
            map: KeyRows::new(capacity as u32, Admission::Always, Eviction::Lru, f as u64),
            base: 0,
            default_row: None,
        })
        .collect();
    let mut keys = KeyMaps::new(0, 1, maps);
    let names: Vec<String> = (0..features).map(|f| format!("t{f}")).collect();
    let layout = CollectionLayout::new(CollectionSpec::plain(
        &names,
        &vec![capacity as u64; features],
        16,
        RowInit::Zeros,
    ))
    .expect("a valid layout");
    let (mut mapping, mut planning) = (Duration::ZERO, Duration::ZERO);
    for step in 0..steps as u64 {
        let ids: Vec<u64> = (0..(batch * features) as u64)
            .map(|i| {
                let u = (mix64(step * 1_000_003 + i) >> 11) as f64 / (1u64 << 53) as f64;
                if zipf {
                    // log-uniform ranks (Zipf with s = 1) over 100,000 ids a feature
                    let rank = 100_000f64.powf(u) as u64;
                    return mix64(rank * 64 + i % features as u64);
                }
                (100_000.0 * u * u * u) as u64 + step * 50
            })
            .collect();
        let mut pieces = [KeyedJaggedIds::from_single_valued(features, batch, &ids).unwrap()];
        let t = Instant::now();
        keys.map_for_training(&SoloExchange, &mut pieces, step + 1)
            .expect("mapped");
        mapping += t.elapsed();
        let t = Instant::now();
        std::hint::black_box(LookupPlan::build(&layout, &pieces[0]).expect("planned"));
        planning += t.elapsed();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / steps as f64;
    println!(
        "{features} features x {batch} ids, {steps} steps: key mapping {:.3} ms/step, lookup planning {:.3} ms/step",
        ms(mapping),
        ms(planning)
    );
}
