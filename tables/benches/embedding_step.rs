//! The embedding half of a training step, phase by phase, without libtorch: plan the
//! batch, fetch rows, assemble the output, reduce gradients, apply the optimizer.
//! Prints milliseconds per step for each phase.
//!
//!     cargo bench -p shardrec-tables --bench embedding_step -- [tables] [rows] [dim] [batch] [steps]
//!
//! Defaults: 26 tables of 1,000,000 rows, dim 16, batch 2048, 50 steps, ids uniform.

use std::time::{Duration, Instant};

use shardrec_tables::{
    assemble_output, mix64, reduce_row_gradients, CollectionLayout, CollectionSpec, KeyedJaggedIds,
    LocalEmbeddings, OptimizerKind, RowInit, SparseOptimizer,
};

fn main() {
    if std::env::var("BENCH_MALLOPT").is_ok() {
        // SAFETY: mallopt only changes allocator thresholds.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (tables, rows, dim, batch, steps) = (
        arg(0, 26),
        arg(1, 1_000_000),
        arg(2, 16),
        arg(3, 2048),
        arg(4, 50),
    );
    // BENCH_SEQUENCE=L: a DARE step's lookups instead (docs section 18): `batch` samples
    // of a target and L behaviours, each an item (of `rows`), a category (of 200) and a
    // time (of L + 1), looked up in the representation and the attention tables
    let sequence: Option<usize> = std::env::var("BENCH_SEQUENCE")
        .ok()
        .map(|l| l.parse().unwrap());
    let (tables, table_rows) = match sequence {
        Some(l) => (6, [rows, 200, l + 1].repeat(2)),
        None => (tables, vec![rows; tables]),
    };
    let lookups = sequence.map_or(batch, |l| batch * (l + 1));
    let names: Vec<String> = (0..tables).map(|t| format!("t{t}")).collect();
    let layout = CollectionLayout::new(CollectionSpec::plain(
        &names,
        &table_rows.iter().map(|&r| r as u64).collect::<Vec<_>>(),
        dim,
        RowInit::Uniform {
            bound: 0.01,
            seed: 1,
        },
    ))
    .unwrap();
    let kind = if sequence.is_some() {
        OptimizerKind::Adam
    } else {
        OptimizerKind::Adagrad
    };
    let opt = SparseOptimizer::new(kind, 0.01);
    let t0 = Instant::now();
    let mut emb = LocalEmbeddings::single_process(layout, opt).unwrap();
    eprintln!("init {:.1} s", t0.elapsed().as_secs_f64());
    let dims = emb.dims().to_vec();
    let mut out = vec![0f32; lookups * tables * dim];
    let grad: Vec<f32> = (0..out.len()).map(|i| (i % 7) as f32 * 1e-3).collect();
    let mut phase = [Duration::ZERO; 5];
    let mut state = 7u64;
    for _ in 0..steps {
        let ids: Vec<u64> = (0..lookups * tables)
            .map(|i| {
                state = state.wrapping_add(1);
                let (sample, table) = (i / tables, i % tables);
                match sequence {
                    // time: the slot's distance from the target
                    Some(l) if table % 3 == 2 => (sample % (l + 1)) as u64,
                    _ => mix64(state) % table_rows[table] as u64,
                }
            })
            .collect();
        let kjt = KeyedJaggedIds::from_single_valued(tables, lookups, &ids).unwrap();
        if std::env::var("BENCH_FRESH_OUTPUT").is_ok() {
            // as the trainer: a new output buffer every step
            // (zeroed memory fresh from the kernel, untouched until assemble writes it)
            out = vec![0f32; lookups * tables * dim];
        }
        let a = Instant::now();
        let plan = emb.plan(&kjt).unwrap();
        let b = Instant::now();
        let gathered = emb.fetch(&plan).unwrap();
        let c = Instant::now();
        assemble_output(&plan, &dims, &gathered, &mut out).unwrap();
        let d = Instant::now();
        let grads = reduce_row_gradients(&plan, &dims, &gathered, &grad).unwrap();
        let e = Instant::now();
        emb.apply_row_gradients(&plan, &grads).unwrap();
        let f = Instant::now();
        for (p, x) in phase.iter_mut().zip([b - a, c - b, d - c, e - d, f - e]) {
            *p += x;
        }
    }
    if std::env::var("BENCH_REDUCE_ONLY").is_ok() {
        let ids: Vec<u64> = (0..lookups * tables)
            .map(|i| mix64(i as u64) % table_rows[i % tables] as u64)
            .collect();
        let kjt = KeyedJaggedIds::from_single_valued(tables, lookups, &ids).unwrap();
        let plan = emb.plan(&kjt).unwrap();
        let gathered = emb.fetch(&plan).unwrap();
        let a = Instant::now();
        for _ in 0..20 {
            let g = reduce_row_gradients(&plan, &dims, &gathered, &grad).unwrap();
            std::hint::black_box(g);
        }
        eprintln!(
            "reduce alone: {:.2} ms",
            a.elapsed().as_secs_f64() * 1e3 / 20.0
        );
        let a = Instant::now();
        for _ in 0..20 {
            assemble_output(&plan, &dims, &gathered, &mut out).unwrap();
        }
        eprintln!(
            "assemble alone: {:.2} ms",
            a.elapsed().as_secs_f64() * 1e3 / 20.0
        );
        let a = Instant::now();
        for _ in 0..20 {
            std::hint::black_box(emb.plan(&kjt).unwrap());
        }
        eprintln!(
            "plan alone: {:.2} ms",
            a.elapsed().as_secs_f64() * 1e3 / 20.0
        );
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / steps as f64;
    println!(
        "per step (ms): plan {:.2}  fetch {:.2}  assemble {:.2}  reduce {:.2}  apply {:.2}  total {:.2}",
        ms(phase[0]),
        ms(phase[1]),
        ms(phase[2]),
        ms(phase[3]),
        ms(phase[4]),
        phase.iter().map(|&p| ms(p)).sum::<f64>()
    );
}
