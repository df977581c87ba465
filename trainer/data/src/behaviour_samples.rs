//! Behaviour logs -> sequence samples ([`super::sequence_format`]) by DARE's protocol
//! (Feng et al. 2025, arXiv 2410.02604; the official `preprocess/taobao_v4.py` is the
//! reference for the rules, not the code): page views only, per user in time order;
//! users with fewer than `min_history` behaviours dropped; the last behaviour is the test
//! target, the second to last the validation target, and `train_targets` before them the
//! training targets; each target's history is the `history` behaviours before it; every
//! positive gets `negatives` negatives, items drawn by their page-view frequency among
//! the items the user never touched, sharing the positive's history.
//!
//! Readers: Taobao UserBehavior CSV (`user,item,category,behavior,timestamp`) and
//! MovieLens-100k in RecBole's atomic files (`ml-100k.inter` ratings as behaviours, the
//! first genre of `ml-100k.item` as the category).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use shardrec_tables::mix64;

use super::DataError;

/// One behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behaviour {
    pub user: String,
    pub item: String,
    pub category: String,
    pub timestamp: i64,
}

/// Page-view behaviours in file order, with what was left out.
#[derive(Debug, Clone, Default)]
pub struct BehaviourLog {
    pub events: Vec<Behaviour>,
    /// Rows of other behaviour types (cart, fav, buy), not used.
    pub other_types: u64,
}

fn bad(path: &Path, line: usize, msg: impl Into<String>) -> DataError {
    DataError::Config(format!("{}:{line}: {}", path.display(), msg.into()))
}

fn open_lines(
    path: &Path,
) -> Result<impl Iterator<Item = (usize, Result<String, DataError>)>, DataError> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let p = path.to_path_buf();
    Ok(BufReader::new(f)
        .lines()
        .enumerate()
        .map(move |(i, l)| (i + 1, l.map_err(|e| DataError::io(&p, e)))))
}

/// The rows of a tab-separated file with a header line (RecBole's atomic files), each
/// `columns` wide: (line number, fields); a row of another width is an error naming it.
fn tab_rows(
    path: &Path,
    columns: usize,
) -> Result<impl Iterator<Item = Result<(usize, Vec<String>), DataError>>, DataError> {
    let p = path.to_path_buf();
    Ok(open_lines(path)?.skip(1).map(move |(n, line)| {
        let line = line?;
        let f: Vec<String> = line
            .trim_end_matches('\r')
            .split('\t')
            .map(str::to_string)
            .collect();
        if f.len() != columns {
            return Err(bad(
                &p,
                n,
                format!("expected {columns} columns, found {}", f.len()),
            ));
        }
        Ok((n, f))
    }))
}

/// Reads a Taobao UserBehavior CSV (no header): `pv` rows become behaviours; a malformed
/// row is an error naming its line.
pub fn read_taobao(path: &Path) -> Result<BehaviourLog, DataError> {
    let mut log = BehaviourLog::default();
    for (n, line) in open_lines(path)? {
        let line = line?;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 5 {
            return Err(bad(path, n, format!("expected 5 columns (user,item,category,behavior,timestamp), found {}: `{line}`", f.len())));
        }
        if f[..3].iter().any(|v| v.is_empty()) {
            return Err(bad(
                path,
                n,
                format!("empty user, item or category: `{line}`"),
            ));
        }
        let timestamp: i64 = f[4]
            .trim()
            .parse()
            .map_err(|_| bad(path, n, format!("timestamp `{}` is not an integer", f[4])))?;
        match f[3] {
            "pv" => log.events.push(Behaviour {
                user: f[0].into(),
                item: f[1].into(),
                category: f[2].into(),
                timestamp,
            }),
            "buy" | "cart" | "fav" => log.other_types += 1,
            other => {
                return Err(bad(
                    path,
                    n,
                    format!("behaviour `{other}` is not pv, buy, cart or fav"),
                ))
            }
        }
    }
    Ok(log)
}

/// Reads MovieLens-100k from RecBole's atomic files in `dir`: every rating is a
/// behaviour, the movie's first genre its category.
pub fn read_movielens(dir: &Path) -> Result<BehaviourLog, DataError> {
    let items_path = dir.join("ml-100k.item");
    let mut genre = HashMap::new();
    for row in tab_rows(&items_path, 4)? {
        let (_, f) = row?;
        let g = f[3]
            .split(' ')
            .next()
            .filter(|g| !g.is_empty())
            .unwrap_or("unknown");
        genre.insert(f[0].clone(), g.to_string());
    }
    let inter = dir.join("ml-100k.inter");
    let mut log = BehaviourLog::default();
    for row in tab_rows(&inter, 4)? {
        let (n, f) = row?;
        let timestamp = f[3]
            .parse::<f64>()
            .map_err(|_| bad(&inter, n, format!("timestamp `{}` is not a number", f[3])))?
            as i64;
        let category = genre.get(&f[1]).ok_or_else(|| {
            bad(
                &inter,
                n,
                format!("item {} is not in {}", f[1], items_path.display()),
            )
        })?;
        log.events.push(Behaviour {
            user: f[0].clone(),
            item: f[1].clone(),
            category: category.clone(),
            timestamp,
        });
    }
    Ok(log)
}

/// How samples are cut from the log.
#[derive(Debug, Clone, Serialize)]
pub struct SampleOptions {
    /// Behaviours before a target kept as its history.
    pub history: usize,
    /// Users with fewer behaviours are dropped (the paper: 210 on Taobao).
    pub min_history: usize,
    /// Training targets per user, at the positions before the validation target.
    pub train_targets: usize,
    /// Negatives per positive.
    pub negatives: usize,
    pub seed: u64,
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct SampleSummary {
    pub train: PathBuf,
    pub valid: PathBuf,
    pub test: PathBuf,
    pub users_kept: usize,
    pub users_dropped: usize,
    pub rows: [u64; 3],
    pub items: usize,
    pub categories: usize,
    pub other_behaviour_rows: u64,
    pub options: SampleOptions,
}

/// Writes `train.tsv`, `valid.tsv`, `test.tsv` and `summary.json` into `out`.
pub fn write_sequence_samples(
    log: &BehaviourLog,
    opts: &SampleOptions,
    out: &Path,
) -> Result<SampleSummary, DataError> {
    if opts.history == 0 {
        return Err(DataError::Config("--history must be at least 1".into()));
    }
    // per user, in time order (file order among equal times)
    let mut users: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut item_count: HashMap<&str, u64> = HashMap::new();
    let mut item_category: HashMap<&str, &str> = HashMap::new();
    for (i, e) in log.events.iter().enumerate() {
        users.entry(&e.user).or_default().push(i);
        *item_count.entry(&e.item).or_insert(0) += 1;
        item_category.entry(&e.item).or_insert(&e.category);
    }
    let mut items: Vec<(&str, u64)> = item_count.iter().map(|(k, v)| (*k, *v)).collect();
    items.sort_unstable();
    let mut cumulative = Vec::with_capacity(items.len());
    let mut total = 0u64;
    for (_, c) in &items {
        total += c;
        cumulative.push(total);
    }
    let mut names: Vec<&str> = users.keys().copied().collect();
    names.sort_unstable();
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let paths = [
        out.join("train.tsv"),
        out.join("valid.tsv"),
        out.join("test.tsv"),
    ];
    let mut files = paths
        .iter()
        .map(|p| {
            std::fs::File::create(p)
                .map(BufWriter::new)
                .map_err(|e| DataError::io(p, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = [0u64; 3];
    let (mut kept, mut dropped) = (0, 0);
    let mut rng = mix64(opts.seed);
    let mut next = move || {
        rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(rng)
    };
    for user in names {
        let mut seq = users[user].clone();
        seq.sort_by_key(|&i| (log.events[i].timestamp, i));
        if seq.len() < opts.min_history.max(3) {
            dropped += 1;
            continue;
        }
        kept += 1;
        let touched: HashSet<&str> = seq.iter().map(|&i| log.events[i].item.as_str()).collect();
        if touched.len() >= items.len() {
            return Err(DataError::Config(format!(
                "user {user} touched every item: no negatives to draw"
            )));
        }
        let n = seq.len();
        // (position of the target, split): test last, valid second to last, then training
        let mut targets = vec![(n - 1, 2usize), (n - 2, 1)];
        for t in 0..opts.train_targets {
            match (n - 2).checked_sub(t + 1) {
                Some(p) if p >= 1 => targets.push((p, 0)),
                _ => break,
            }
        }
        for (pos, split) in targets {
            let from = pos.saturating_sub(opts.history);
            let hist = &seq[from..pos];
            let hist_items: Vec<&str> = hist.iter().map(|&i| log.events[i].item.as_str()).collect();
            let hist_cats: Vec<&str> = hist
                .iter()
                .map(|&i| log.events[i].category.as_str())
                .collect();
            let (hi, hc) = (hist_items.join(","), hist_cats.join(","));
            let target = &log.events[seq[pos]];
            let w = &mut files[split];
            let io = |e| DataError::io(&paths[split], e);
            writeln!(
                w,
                "1\t{user}\t{}\t{}\t{hi}\t{hc}",
                target.item, target.category
            )
            .map_err(io)?;
            rows[split] += 1;
            for _ in 0..opts.negatives {
                let mut tries = 0;
                let item = loop {
                    let r = ((next() as u128 * total as u128) >> 64) as u64;
                    let idx = cumulative.partition_point(|&c| c <= r);
                    let it = items[idx].0;
                    if !touched.contains(it) {
                        break it;
                    }
                    tries += 1;
                    if tries > 10_000 {
                        return Err(DataError::Config(format!(
                            "user {user}: no untouched item found in 10,000 draws"
                        )));
                    }
                };
                writeln!(w, "0\t{user}\t{item}\t{}\t{hi}\t{hc}", item_category[item])
                    .map_err(io)?;
                rows[split] += 1;
            }
        }
    }
    for (w, p) in files.iter_mut().zip(&paths) {
        w.flush().map_err(|e| DataError::io(p, e))?;
    }
    let categories: HashSet<&str> = item_category.values().copied().collect();
    let [train, valid, test] = paths;
    let summary = SampleSummary {
        train,
        valid,
        test,
        users_kept: kept,
        users_dropped: dropped,
        rows,
        items: items.len(),
        categories: categories.len(),
        other_behaviour_rows: log.other_types,
        options: opts.clone(),
    };
    let sp = out.join("summary.json");
    std::fs::write(
        &sp,
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )
    .map_err(|e| DataError::io(&sp, e))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(user: &str, item: &str, cat: &str, t: i64) -> Behaviour {
        Behaviour {
            user: user.into(),
            item: item.into(),
            category: cat.into(),
            timestamp: t,
        }
    }

    #[test]
    fn targets_histories_and_negatives_follow_the_protocol() {
        let mut events = vec![];
        // user a: items a0..a5 in time order, written out of order
        for (k, t) in [(3, 30), (0, 0), (1, 10), (5, 50), (2, 20), (4, 40)] {
            events.push(ev("a", &format!("a{k}"), "c1", t));
        }
        // user b: too short
        events.push(ev("b", "x", "c2", 1));
        for k in 0..20 {
            events.push(ev("z", &format!("n{k}"), "c3", k));
        }
        let log = BehaviourLog {
            events,
            other_types: 0,
        };
        let dir = tempfile::tempdir().unwrap();
        let s = write_sequence_samples(
            &log,
            &SampleOptions {
                history: 2,
                min_history: 5,
                train_targets: 2,
                negatives: 2,
                seed: 1,
            },
            dir.path(),
        )
        .unwrap();
        assert_eq!(s.users_dropped, 1);
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let test = read(&s.test);
        let lines: Vec<Vec<&str>> = test.lines().map(|l| l.split('\t').collect()).collect();
        let a: Vec<&Vec<&str>> = lines.iter().filter(|l| l[1] == "a").collect();
        assert_eq!(a.len(), 3);
        assert_eq!(a[0][..5], ["1", "a", "a5", "c1", "a3,a4"]);
        assert_eq!(a[0][5], "c1,c1");
        for neg in &a[1..] {
            assert_eq!(neg[0], "0");
            assert!(
                neg[2].starts_with('n'),
                "negatives avoid the user's items: {neg:?}"
            );
            assert_eq!(neg[3], "c3");
            assert_eq!(neg[4], "a3,a4");
        }
        let valid = read(&s.valid);
        assert!(valid
            .lines()
            .any(|l| l.starts_with("1\ta\ta4\tc1\ta2,a3\t")));
        let train = read(&s.train);
        let pos: Vec<&str> = train.lines().filter(|l| l.starts_with("1\ta\t")).collect();
        assert_eq!(
            pos,
            vec!["1\ta\ta3\tc1\ta1,a2\tc1,c1", "1\ta\ta2\tc1\ta0,a1\tc1,c1"]
        );
    }

    #[test]
    fn malformed_taobao_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ub.csv");
        std::fs::write(&p, "1,2,3,pv,100\n1,2,3,pv\n").unwrap();
        let e = read_taobao(&p).unwrap_err().to_string();
        assert!(e.contains("ub.csv:2") && e.contains("5 columns"), "{e}");
        std::fs::write(&p, "1,2,3,pv,100\n1,2,3,click,100\n").unwrap();
        let e = read_taobao(&p).unwrap_err().to_string();
        assert!(e.contains("ub.csv:2") && e.contains("click"), "{e}");
        std::fs::write(&p, "1,2,3,pv,100\n1,5,3,buy,101\n").unwrap();
        let log = read_taobao(&p).unwrap();
        assert_eq!((log.events.len(), log.other_types), (1, 1));
    }
}
