//! Generated days of a click stream that drifts, for training without a vocabulary
//! (issue 19): the teacher of [`crate::synth`] with its rows spread over `days`, one
//! Criteo-format file a day, where each day
//!
//! - a fraction `turnover` of each field's popularity ranks lose their id and a newborn
//!   id takes the rank, so new ids appear along the Zipf law and old ones die (Monolith's
//!   and DeepRec's reason for admission and expiry);
//! - the first-order click effects rotate by `effect_drift` radians towards independent
//!   ones, so what was learnt goes stale.
//!
//! Each day's summary has its rows, click rate, the ids it introduced, and its Bayes AUC
//! and logloss (the true probabilities of that day's rows), the ceiling a model
//! evaluated on the day before training on it (progressive validation) can reach.

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::metrics::{auc, logloss};
use crate::synth::{write_rows, SynthError, SynthOptions, Teacher};

/// One generated day.
#[derive(Debug, Clone, Serialize)]
pub struct DaySummary {
    pub day: u64,
    pub data_file: PathBuf,
    pub prob_file: PathBuf,
    pub rows: u64,
    pub click_rate: f64,
    /// Distinct (field, id) pairs seen this day, and how many no earlier day had.
    pub distinct_ids: u64,
    pub new_ids: u64,
    pub bayes_auc: f64,
    pub bayes_logloss: f64,
}

/// Every day, with the options that made them.
#[derive(Debug, Clone, Serialize)]
pub struct DaysSummary {
    pub options: SynthOptions,
    pub bias: f64,
    pub days: Vec<DaySummary>,
}

/// The file of day `day` beside `out`: `<stem>-dayNN.<ext>`.
pub fn day_file(out: &Path, day: u64) -> PathBuf {
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let name = match out.extension() {
        Some(ext) => format!("{stem}-day{day:02}.{}", ext.to_string_lossy()),
        None => format!("{stem}-day{day:02}"),
    };
    out.with_file_name(name)
}

/// Generates `opts.days` day files beside `opts.out` and `<out>.json`, their summary.
pub fn generate_days(
    opts: SynthOptions,
    progress: &dyn Fn(u64),
) -> Result<DaysSummary, SynthError> {
    if opts.days < 2 || opts.rows < opts.days {
        return Err(SynthError::Options(format!(
            "--days {} needs at least 2 days and a row a day ({} rows)",
            opts.days, opts.rows
        )));
    }
    if !(0.0..=1.0).contains(&opts.turnover) || !opts.effect_drift.is_finite() {
        return Err(SynthError::Options(format!(
            "--turnover {} must be in [0, 1] and --effect-drift {} finite",
            opts.turnover, opts.effect_drift
        )));
    }
    // newborn ids are rank + generation x cardinality, printed as 32 bits
    if let Some(c) = opts
        .cardinalities
        .iter()
        .find(|&&c| c * opts.days > 1 << 32)
    {
        return Err(SynthError::Options(format!(
            "cardinality {c} x {} days of newborn ids exceeds 2^32",
            opts.days
        )));
    }
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(SynthError::io(dir))?;
    }
    let teacher = Teacher::new(opts.clone());
    let mut seen: HashSet<(usize, String)> = HashSet::new();
    let mut days = Vec::with_capacity(opts.days as usize);
    let mut day_start = 0;
    for day in 0..opts.days {
        let mut day_end = day_start;
        while day_end < opts.rows && teacher.day_of(day_end) == day {
            day_end += 1;
        }
        let s = write_day(
            &teacher,
            &opts.out,
            day,
            day_start..day_end,
            &mut seen,
            progress,
        )?;
        days.push(s);
        day_start = day_end;
    }
    let summary = DaysSummary {
        bias: teacher.bias(),
        options: opts,
        days,
    };
    let json_path = PathBuf::from(format!("{}.json", summary.options.out.display()));
    let text =
        serde_json::to_string_pretty(&summary).map_err(|e| SynthError::Options(e.to_string()))?;
    std::fs::write(&json_path, text).map_err(SynthError::io(&json_path))?;
    Ok(summary)
}

/// Writes day `day` (rows `rows`) and sums it up; `seen`: the ids of earlier days.
fn write_day(
    teacher: &Teacher,
    out: &Path,
    day: u64,
    rows: std::ops::Range<u64>,
    seen: &mut HashSet<(usize, String)>,
    progress: &dyn Fn(u64),
) -> Result<DaySummary, SynthError> {
    let data_file = day_file(out, day);
    let prob_file = PathBuf::from(format!("{}.prob", data_file.display()));
    let create = |p: &Path| std::fs::File::create(p).map_err(SynthError::io(p));
    let mut data = BufWriter::with_capacity(1 << 22, create(&data_file)?);
    let mut probs = BufWriter::with_capacity(1 << 20, create(&prob_file)?);
    let paths = (data_file.as_path(), prob_file.as_path());
    let drawn = write_rows(
        teacher,
        rows.clone(),
        (&mut data, &mut probs),
        paths,
        progress,
    )?;
    data.flush().map_err(SynthError::io(&data_file))?;
    probs.flush().map_err(SynthError::io(&prob_file))?;
    let (distinct_ids, new_ids) = count_ids(&data_file, 1 + teacher.num_dense(), seen)?;
    let labels: Vec<f32> = drawn.iter().map(|&(l, _)| f32::from(u8::from(l))).collect();
    let ps: Vec<f32> = drawn.iter().map(|&(_, p)| p as f32).collect();
    Ok(DaySummary {
        day,
        data_file,
        prob_file,
        rows: rows.end - rows.start,
        click_rate: labels.iter().map(|&l| f64::from(l)).sum::<f64>() / labels.len().max(1) as f64,
        distinct_ids,
        new_ids,
        bayes_auc: auc(&labels, &ps).unwrap_or(f64::NAN),
        bayes_logloss: logloss(&labels, &ps),
    })
}

/// Distinct (field, id) pairs of a day file, and how many are not in `seen` (then added).
/// `first`: the column of the first categorical field (after the label and dense ones).
fn count_ids(
    file: &Path,
    first: usize,
    seen: &mut HashSet<(usize, String)>,
) -> Result<(u64, u64), SynthError> {
    let text = std::fs::read_to_string(file).map_err(SynthError::io(file))?;
    let mut today: HashSet<(usize, String)> = HashSet::new();
    for line in text.lines() {
        for (f, v) in line.split('\t').skip(first).enumerate() {
            if !v.is_empty() {
                today.insert((f, v.to_string()));
            }
        }
    }
    let new = today.iter().filter(|k| !seen.contains(*k)).count() as u64;
    let distinct = today.len() as u64;
    seen.extend(today);
    Ok((distinct, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, turnover: f64, drift: f64) -> SynthOptions {
        // 3,000 rows a day over 200 ids a field: a still stream has met most ids by day 1
        let mut o = SynthOptions::criteo_like(12_000, dir.join("s.tsv"), 200);
        o.cardinalities = vec![200; 4];
        o.days = 4;
        o.turnover = turnover;
        o.effect_drift = drift;
        o
    }

    #[test]
    fn days_bring_new_ids_at_the_turnover_and_keep_a_learnable_ceiling() {
        let dir = std::env::temp_dir().join(format!("shardrec-days-{}", std::process::id()));
        let still = generate_days(options(&dir, 0.0, 0.0), &|_| {}).unwrap();
        let moving = generate_days(options(&dir.join("m"), 0.3, 0.3), &|_| {}).unwrap();
        assert_eq!(still.days.len(), 4);
        assert_eq!(still.days.iter().map(|d| d.rows).sum::<u64>(), 12_000);
        assert!(day_file(&dir.join("s.tsv"), 3).ends_with("s-day03.tsv"));
        for (a, b) in still.days.iter().zip(&moving.days).skip(1) {
            // a still stream brings few new ids (the Zipf tail), a moving one many
            assert!(
                b.new_ids > 2 * a.new_ids,
                "day {}: {} vs {}",
                a.day,
                b.new_ids,
                a.new_ids
            );
            assert!(b.bayes_auc > 0.7, "{}", b.bayes_auc);
        }
        assert!(generate_days(options(&dir, 1.5, 0.0), &|_| {}).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
