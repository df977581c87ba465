//! `shardrec sweep`: one config trained with each table method (hashed, QR, unified, ...)
//! at several memory budgets, plus the collisionless reference, written as a CSV (method,
//! budget bytes, actual bytes, test AUC, logloss) and a PNG of AUC against bytes, one line
//! per method and the collisionless AUC as a horizontal line: the figure of the
//! compression benchmark (Zhang et al., VLDB 2024) and of the Unified Embedding paper
//! (Coleman et al., NeurIPS 2023).

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::json;

use crate::cluster::Cluster;
use crate::config::{ExperimentConfig, TableKindConfig};
use crate::TrainError;

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Fractions of the collisionless bytes (values <= 1) or bytes (values > 1).
    pub budgets: Vec<f64>,
    pub methods: Vec<TableKindConfig>,
    /// Folder for the CSV, the plot and the runs.
    pub out: PathBuf,
    /// Seeds per point (the config's seed, then the next ones); AUC and logloss are
    /// their means.
    pub seeds: usize,
}

/// One trained point.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepPoint {
    pub method: String,
    /// The budget as given (a fraction or bytes).
    pub budget: f64,
    pub budget_bytes: u64,
    pub actual_bytes: u64,
    /// Mean over the seeds.
    pub auc: f64,
    pub logloss: f64,
    /// Standard deviation of the AUC over the seeds.
    pub auc_std: f64,
    pub seeds: usize,
    /// Why a point has no result (a budget the method cannot meet).
    pub note: String,
}

/// A table kind's name as the config spells it.
fn method_name(k: TableKindConfig) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Why a sweep cannot run or plot.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("--methods: `{0}` is not a sized table method (hashed, qr, unified)")]
    UnknownMethod(String),
    #[error("--budgets: every budget must be a positive fraction (<= 1) or a byte count")]
    BadBudget,
    /// plotters' backends report their errors as text
    #[error("{path}: plotting: {message}")]
    Plot { path: PathBuf, message: String },
}

/// A `--methods` entry: a table kind whose size a budget sets (not `plain`).
pub fn parse_method(m: &str) -> Result<TableKindConfig, TrainError> {
    match serde_json::from_value::<TableKindConfig>(json!(m)) {
        Ok(k) if k != TableKindConfig::Plain => Ok(k),
        _ => Err(SweepError::UnknownMethod(m.to_string()).into()),
    }
}

/// Runs the sweep (collective under mpirun); rank 0 writes `sweep.csv` and `sweep.png`.
pub fn sweep(
    cfg: &ExperimentConfig,
    name: &str,
    cluster: &Cluster,
    opts: &SweepOptions,
) -> Result<serde_json::Value, TrainError> {
    if opts.budgets.iter().any(|&b| !(b > 0.0 && b.is_finite())) {
        return Err(SweepError::BadBudget.into());
    }
    let run = |kind: TableKindConfig, budget: Option<f64>| -> Result<SweepPoint, TrainError> {
        let label = budget.map_or("collisionless".to_string(), |b| format!("{b}"));
        let mut c = cfg.clone();
        c.embedding.kind = kind;
        for t in &mut c.embedding.tables {
            t.kind = None;
            t.buckets = None;
        }
        c.budget.bytes = None;
        c.budget.fraction = None;
        c.budget.tables.clear();
        match budget {
            Some(b) if b <= 1.0 => c.budget.fraction = Some(b),
            Some(b) => c.budget.bytes = Some(b as u64),
            None => {}
        }
        c.train.save_model = false;
        c.train.checkpoint_every = 0;
        let mut results = Vec::new();
        for k in 0..opts.seeds.max(1) {
            c.seed = cfg.seed + k as u64;
            let point =
                opts.out
                    .join("runs")
                    .join(format!("{}-{label}-seed{}", method_name(kind), c.seed));
            // the sweep owns its points' folders: a sweep run again replaces them (a run
            // folder holds one run)
            if cluster.is_root() && point.exists() {
                std::fs::remove_dir_all(&point).map_err(|source| TrainError::Io {
                    path: point.clone(),
                    source,
                })?;
            }
            c.train.run_dir = Some(point);
            let s = match crate::run::train(
                &c,
                &format!("{name}-{}", method_name(kind)),
                cluster,
                None,
            ) {
                Ok(s) => s,
                // the same on every rank: the tables are sized before any collective
                Err(TrainError::TableConfig(e)) if e.is_budget() && budget.is_some() => {
                    return Ok(SweepPoint {
                        method: method_name(kind),
                        budget: budget.unwrap_or(1.0),
                        budget_bytes: 0,
                        actual_bytes: 0,
                        auc: f64::NAN,
                        logloss: f64::NAN,
                        auc_std: f64::NAN,
                        seeds: 0,
                        note: e.to_string().replace(',', ";"),
                    })
                }
                Err(e) => return Err(e),
            };
            results.push(s);
        }
        let s = &results[0];
        let mean = |k: &str| {
            results
                .iter()
                .map(|r| r[k].as_f64().unwrap_or(f64::NAN))
                .sum::<f64>()
                / results.len() as f64
        };
        let auc = mean("auc");
        let auc_std = (results
            .iter()
            .map(|r| (r["auc"].as_f64().unwrap_or(f64::NAN) - auc).powi(2))
            .sum::<f64>()
            / results.len() as f64)
            .sqrt();
        Ok(SweepPoint {
            method: if budget.is_some() {
                method_name(kind)
            } else {
                "collisionless".into()
            },
            budget: budget.unwrap_or(1.0),
            budget_bytes: s["budget_bytes"]
                .as_u64()
                .unwrap_or_else(|| s["collisionless_bytes"].as_u64().unwrap_or(0)),
            actual_bytes: s["embedding_bytes_main"].as_u64().unwrap_or(0),
            auc,
            logloss: mean("logloss"),
            auc_std,
            seeds: results.len(),
            note: String::new(),
        })
    };
    let mut points = vec![run(TableKindConfig::Plain, None)?];
    for &m in &opts.methods {
        for &b in &opts.budgets {
            points.push(run(m, Some(b))?);
        }
    }
    if cluster.is_root() {
        std::fs::create_dir_all(&opts.out).map_err(|source| TrainError::Io {
            path: opts.out.clone(),
            source,
        })?;
        write_csv(&opts.out.join("sweep.csv"), &points)?;
        plot(&opts.out.join("sweep.png"), &points, name)?;
    }
    Ok(json!({
        "csv": opts.out.join("sweep.csv").display().to_string(),
        "plot": opts.out.join("sweep.png").display().to_string(),
        "points": points,
    }))
}

fn write_csv(path: &Path, points: &[SweepPoint]) -> Result<(), TrainError> {
    let mut text = String::from(
        "method,budget,budget_bytes,actual_bytes,test_auc,test_logloss,auc_std,seeds,note\n",
    );
    for p in points {
        text.push_str(&format!(
            "{},{},{},{},{:.6},{:.6},{:.6},{},{}\n",
            p.method,
            p.budget,
            p.budget_bytes,
            p.actual_bytes,
            p.auc,
            p.logloss,
            p.auc_std,
            p.seeds,
            p.note
        ));
    }
    std::fs::write(path, text).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Registers a sans-serif TrueType font ([`find_font`]) as plotters' "sans-serif", once
/// per process; the error says why there is none.
pub(crate) fn register_sans_font() -> Result<(), &'static str> {
    static REGISTERED: std::sync::OnceLock<Result<(), &'static str>> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let font = find_font()
            .ok_or("no TrueType font found (install fonts-dejavu-core or set SHARDREC_FONT)")?;
        // the font registry wants bytes that live for the whole process
        let font: &'static [u8] = Box::leak(font.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, font)
            .map_err(|_| "the font could not be read")
    })
}

/// Where a sans-serif TrueType font usually is (`SHARDREC_FONT` first).
pub(crate) fn find_font() -> Option<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::env::var_os("SHARDREC_FONT")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    paths.extend(
        [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ]
        .map(PathBuf::from),
    );
    paths.iter().find_map(|p| std::fs::read(p).ok())
}

fn plot(path: &Path, points: &[SweepPoint], title: &str) -> Result<(), TrainError> {
    let fail = |message: String| {
        TrainError::from(SweepError::Plot {
            path: path.to_path_buf(),
            message,
        })
    };
    register_sans_font().map_err(|m| fail(m.into()))?;
    let reference = points.iter().find(|p| p.method == "collisionless");
    let swept: Vec<&SweepPoint> = points
        .iter()
        .filter(|p| p.method != "collisionless")
        .collect();
    let finite = |v: f64| v.is_finite();
    let aucs: Vec<f64> = points
        .iter()
        .map(|p| p.auc)
        .filter(|&a| finite(a))
        .collect();
    let (lo_auc, hi_auc) = aucs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    if !lo_auc.is_finite() {
        return Err(fail(
            "no test AUC to plot (set data.test or a split)".into(),
        ));
    }
    let pad = ((hi_auc - lo_auc) * 0.1).max(0.005);
    let bytes: Vec<f64> = points
        .iter()
        .filter(|p| finite(p.auc))
        .map(|p| p.actual_bytes.max(1) as f64)
        .collect();
    let lo_b = bytes.iter().copied().fold(f64::INFINITY, f64::min) / 1.5;
    let hi_b = bytes.iter().copied().fold(0.0, f64::max) * 1.5;
    let root = BitMapBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{title}: test AUC against embedding bytes"),
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((lo_b..hi_b).log_scale(), (lo_auc - pad)..(hi_auc + pad))
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("embedding parameter bytes (log scale)")
        .y_desc("test AUC")
        .x_label_formatter(&|x| {
            if *x >= 1e9 {
                format!("{:.1} GB", x / 1e9)
            } else if *x >= 1e6 {
                format!("{:.1} MB", x / 1e6)
            } else {
                format!("{:.0} kB", x / 1e3)
            }
        })
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(r) = reference {
        chart
            .draw_series(LineSeries::new(
                [(lo_b, r.auc), (hi_b, r.auc)],
                BLACK.stroke_width(2),
            ))
            .map_err(|e| fail(e.to_string()))?
            .label(format!("collisionless ({:.4})", r.auc))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN];
    let mut methods: Vec<&str> = swept.iter().map(|p| p.method.as_str()).collect();
    methods.dedup();
    for (i, m) in methods.iter().enumerate() {
        let color = colors[i % colors.len()];
        let mut series: Vec<(f64, f64)> = swept
            .iter()
            .filter(|p| p.method == *m && finite(p.auc))
            .map(|p| (p.actual_bytes.max(1) as f64, p.auc))
            .collect();
        series.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
            .map_err(|e| fail(e.to_string()))?
            .label(*m)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(series.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| fail(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}
