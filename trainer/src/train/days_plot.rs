//! `days.png` of a stream (`train.mode = "stream"`): each day's progressive AUC, the
//! figure a user of day-by-day training watches for drift.

use std::path::Path;

use plotters::prelude::*;

/// Plots `(day, progressive AUC)` to `path`; the error says why not (no font, no point).
pub fn plot_days(path: &Path, days: &[(u64, f64)]) -> Result<(), String> {
    let points: Vec<(u64, f64)> = days.iter().copied().filter(|p| p.1.is_finite()).collect();
    if points.is_empty() {
        return Err("no day has a progressive AUC".into());
    }
    crate::sweep::register_sans_font()?;
    let (lo, hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let pad = ((hi - lo) * 0.1).max(0.005);
    let last = points.iter().map(|p| p.0).max().unwrap_or(1);
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    let e = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "progressive validation: each day before training on it",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0u64..last + 1, (lo - pad)..(hi + pad))
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("day")
        .y_desc("AUC")
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            BLUE.stroke_width(2),
        ))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}
