//! `curves.png`: a run's learning curves, drawn from its `metrics.jsonl` when training
//! ends, and `shardrec plot`, which overlays several runs (the legend names each by its
//! folder). Training loss and validation AUC against samples seen, and for a stream
//! (`train.mode = "stream"`) each day's progressive AUC: the pictures a user of
//! TensorBoard would otherwise have to script.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

/// Why curves could not be read or drawn.
#[derive(Debug, thiserror::Error)]
pub enum CurvesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a JSON object: {message}")]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: no training loss, validation AUC or day to plot")]
    Empty { path: PathBuf },
    /// plotters' backends report their errors as text
    #[error("{path}: plotting: {message}")]
    Plot { path: PathBuf, message: String },
}

/// One run's curves, as `metrics.jsonl` holds them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunCurves {
    /// The legend's name: the run folder's name.
    pub name: String,
    /// (samples seen, mean training loss of the window before it).
    pub loss: Vec<(f64, f64)>,
    /// (samples seen, validation AUC).
    pub valid_auc: Vec<(f64, f64)>,
    /// (day, progressive AUC) of a stream.
    pub day_auc: Vec<(f64, f64)>,
    /// Whether x is samples seen; runs written before `samples` was logged have steps.
    pub x_is_samples: bool,
}

impl RunCurves {
    /// The curves of the run folder `run` (or of a `metrics.jsonl` file itself).
    pub fn read(run: &Path) -> Result<Self, CurvesError> {
        let file = if run.is_dir() {
            run.join("metrics.jsonl")
        } else {
            run.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| CurvesError::Io {
            path: file.clone(),
            source,
        })?;
        let folder = if run.is_dir() {
            run
        } else {
            run.parent().unwrap_or(run)
        };
        let name = std::fs::canonicalize(folder)
            .unwrap_or_else(|_| folder.to_path_buf())
            .file_name()
            .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
        let curves = Self::parse(name, &text, &file)?;
        if curves.loss.is_empty() && curves.valid_auc.is_empty() && curves.day_auc.is_empty() {
            return Err(CurvesError::Empty { path: file });
        }
        Ok(curves)
    }

    /// Curves from the lines of a `metrics.jsonl` (`path` names it in errors).
    pub fn parse(name: String, text: &str, path: &Path) -> Result<Self, CurvesError> {
        let mut c = RunCurves {
            name,
            x_is_samples: true,
            ..Default::default()
        };
        let mut lines = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| CurvesError::BadLine {
                    path: path.into(),
                    line: i + 1,
                    message: e.to_string(),
                })?;
            c.x_is_samples &= v.get("step").is_none() || v.get("samples").is_some();
            lines.push(v);
        }
        let x_key = if c.x_is_samples { "samples" } else { "step" };
        let point = |v: &serde_json::Value, x: &str, y: &str| {
            Some((v.get(x)?.as_f64()?, v.get(y)?.as_f64()?)).filter(|p| p.1.is_finite())
        };
        for v in &lines {
            c.loss.extend(point(v, x_key, "loss"));
            c.valid_auc.extend(point(v, x_key, "valid_auc"));
            c.day_auc.extend(point(v, "day", "progressive_auc"));
        }
        Ok(c)
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

/// One panel: a title, axis names and each run's points.
struct Panel<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    /// What the panel says when no run has a point.
    when_empty: &'a str,
    /// x is a count (days): only whole numbers are labelled.
    whole_x: bool,
    series: Vec<(&'a str, &'a [(f64, f64)])>,
}

/// Draws `runs` to `path`: loss and validation AUC panels, and a panel of days when
/// any run is a stream.
pub fn draw(path: &Path, runs: &[RunCurves]) -> Result<(), CurvesError> {
    let fail = |message: String| CurvesError::Plot {
        path: path.into(),
        message,
    };
    crate::sweep::register_sans_font().map_err(|m| fail(m.into()))?;
    let by_samples = runs.iter().all(|r| r.x_is_samples);
    let x_desc = if by_samples { "samples seen" } else { "step" };
    let mut panels = vec![
        Panel {
            title: "training loss",
            x_desc,
            y_desc: "loss",
            when_empty: "no training loss logged",
            whole_x: false,
            series: runs
                .iter()
                .map(|r| (r.name.as_str(), &r.loss[..]))
                .collect(),
        },
        Panel {
            title: "validation AUC",
            x_desc,
            y_desc: "AUC",
            when_empty: "no validation split (set data.valid or data.split.valid)",
            whole_x: false,
            series: runs
                .iter()
                .map(|r| (r.name.as_str(), &r.valid_auc[..]))
                .collect(),
        },
    ];
    if runs.iter().any(|r| !r.day_auc.is_empty()) {
        panels.push(Panel {
            title: "progressive AUC: each day before training on it",
            x_desc: "day",
            y_desc: "AUC",
            when_empty: "",
            whole_x: true,
            series: runs
                .iter()
                .map(|r| (r.name.as_str(), &r.day_auc[..]))
                .collect(),
        });
    }
    let height = 360 * panels.len() as u32;
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let areas = root.split_evenly((panels.len(), 1));
    for (area, panel) in areas.iter().zip(&panels) {
        draw_panel(area, panel).map_err(fail)?;
    }
    root.present().map_err(|e| fail(e.to_string()))
}

fn draw_panel(area: &DrawingArea<BitMapBackend, Shift>, p: &Panel) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let points = p.series.iter().flat_map(|s| s.1.iter());
    let (x_hi, lo, hi) = points.fold((0.0f64, f64::INFINITY, f64::NEG_INFINITY), |a, q| {
        (a.0.max(q.0), a.1.min(q.1), a.2.max(q.1))
    });
    if !lo.is_finite() {
        let style = ("sans-serif", 20).into_font().color(&BLACK);
        area.draw_text(&format!("{}: {}", p.title, p.when_empty), &style, (60, 40))
            .map_err(|x| e(&x))?;
        return Ok(());
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_hi.max(1.0) * 1.02, (lo - pad)..(hi + pad))
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(p.x_desc)
        .y_desc(p.y_desc)
        .x_label_formatter(&|x| match (p.whole_x, x.fract() == 0.0) {
            (true, false) => String::new(),
            _ => short_number(*x),
        })
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (name, pts)) in p.series.iter().enumerate().filter(|(_, s)| !s.1.is_empty()) {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if pts.len() <= 60 {
            let marks = pts.iter().map(|&q| Circle::new(q, 3, color.filled()));
            chart.draw_series(marks).map_err(|x| e(&x))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))
}

/// 1500 -> "1.5k", 2_000_000 -> "2M": axis labels of sample counts.
fn short_number(x: f64) -> String {
    let (v, unit) = match x.abs() {
        a if a >= 1e9 => (x / 1e9, "G"),
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e3 => (x / 1e3, "k"),
        _ => (x, ""),
    };
    let text = format!("{v:.1}");
    format!("{}{unit}", text.strip_suffix(".0").unwrap_or(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines_become_curves_by_samples() {
        let text = r#"{"epoch":1,"loss":0.7,"samples":512,"samples_per_s":9.0,"step":2}
{"epoch":1,"loss":0.6,"samples":1024,"step":4}
{"valid_auc":0.71,"valid_logloss":0.5,"samples":1024,"step":4,"epoch":1}
{"valid_auc":null,"samples":2048,"step":8,"epoch":1}
{"day":1,"progressive_auc":0.66,"samples":900,"step":3}
"#;
        let c = RunCurves::parse("r".into(), text, Path::new("m")).unwrap();
        assert!(c.x_is_samples);
        assert_eq!(c.loss, [(512.0, 0.7), (1024.0, 0.6)]);
        assert_eq!(c.valid_auc, [(1024.0, 0.71)], "a missing AUC is no point");
        assert_eq!(c.day_auc, [(1.0, 0.66)]);
        // an older run without samples is drawn by step
        let old =
            RunCurves::parse("o".into(), "{\"loss\":0.5,\"step\":3}\n", Path::new("m")).unwrap();
        assert!(!old.x_is_samples);
        assert_eq!(old.loss, [(3.0, 0.5)]);
        let e =
            RunCurves::parse("b".into(), "{\"loss\":1}\nnot json\n", Path::new("m")).unwrap_err();
        assert!(e.to_string().starts_with("m:2:"), "{e}");
    }

    #[test]
    fn sample_counts_read_short() {
        assert_eq!(short_number(1500.0), "1.5k");
        assert_eq!(short_number(2_000_000.0), "2M");
        assert_eq!(short_number(12.0), "12");
    }
}
