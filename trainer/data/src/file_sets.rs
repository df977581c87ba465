//! `data.train`, `data.valid` and `data.test` as a list of files or a glob
//! (`"day_*.parquet"`), turned into one first file and the files after it
//! (`more_train`, `more_valid`, `more_test`) before the config is deserialised, so that
//! every later step (the cache key, the saved config, resuming) sees concrete paths.
//!
//! A glob's matches are in natural order (`day_2` before `day_10`), as a user of a
//! 24-day dataset expects; a pattern that matches nothing is an error naming its key.
//! For `torchrec_npy`, whose day is three files, matches are reduced to one path per day
//! (the day's stem), in the order of their first match.

use std::cmp::Ordering;

/// A file key's value refused: the dotted key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct FileSetError {
    pub key: String,
    pub message: String,
}

/// The three keys that take files, with the key of their further files.
const FILE_KEYS: [(&str, &str); 3] = [
    ("train", "more_train"),
    ("valid", "more_valid"),
    ("test", "more_test"),
];

/// Rewrites each list or glob among `data.train` / `valid` / `test` as described in the
/// module header. `data` is the parsed `[data]` table.
pub(crate) fn normalize_file_keys(data: &mut toml::Table) -> Result<(), FileSetError> {
    let npy_suffix = (data.get("format").and_then(toml::Value::as_str) == Some("torchrec_npy"))
        .then(|| {
            data.get("npy_sparse_suffix")
                .and_then(toml::Value::as_str)
                .unwrap_or("_sparse.npy")
                .to_string()
        });
    for (key, more_key) in FILE_KEYS {
        normalize_one(data, key, more_key, npy_suffix.as_deref())?;
    }
    Ok(())
}

fn normalize_one(
    data: &mut toml::Table,
    key: &str,
    more_key: &str,
    npy_suffix: Option<&str>,
) -> Result<(), FileSetError> {
    let bad = |message: String| FileSetError {
        key: format!("data.{key}"),
        message,
    };
    let (items, is_list) = match data.get(key) {
        Some(toml::Value::String(s)) => (vec![s.clone()], false),
        Some(toml::Value::Array(a)) => (list_items(a).map_err(bad)?, true),
        // missing or of another type: deserialising reports it
        _ => return Ok(()),
    };
    if !is_list && !is_pattern(&items[0]) {
        return Ok(());
    }
    if data.contains_key(more_key) {
        return Err(bad(format!(
            "a list or a glob sets data.{more_key} (its files after the first); give the further files in one of the two, not both"
        )));
    }
    let mut files = Vec::new();
    for item in &items {
        if is_pattern(item) {
            files.extend(expand(item).map_err(bad)?);
        } else {
            files.push(item.clone());
        }
    }
    if let Some(suffix) = npy_suffix {
        files = npy_days(files, suffix);
    }
    let first = files.remove(0);
    data.insert(key.into(), toml::Value::String(first));
    if !files.is_empty() {
        let rest = files.into_iter().map(toml::Value::String).collect();
        data.insert(more_key.into(), toml::Value::Array(rest));
    }
    Ok(())
}

/// A list's items as strings: not empty, each a string.
fn list_items(list: &[toml::Value]) -> Result<Vec<String>, String> {
    if list.is_empty() {
        return Err("an empty list: name at least one file".into());
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().map(str::to_string).ok_or_else(|| {
                format!(
                    "item {} is of type {}; each item must be a file path or a glob (a string)",
                    i + 1,
                    v.type_str()
                )
            })
        })
        .collect()
}

fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The files a glob matches, in natural order; none is an error.
fn expand(pattern: &str) -> Result<Vec<String>, String> {
    let paths = glob::glob(pattern).map_err(|e| format!("glob {pattern:?}: {e}"))?;
    let mut files = Vec::new();
    for p in paths {
        let p = p.map_err(|e| format!("glob {pattern:?}: {e}"))?;
        if p.is_file() {
            files.push(p.display().to_string());
        }
    }
    if files.is_empty() {
        return Err(format!("glob {pattern:?} matches no file"));
    }
    files.sort_by(|a, b| natural_order(a, b));
    Ok(files)
}

/// Compares runs of digits by value and everything else byte by byte, so that
/// `day_2` sorts before `day_10`.
pub(crate) fn natural_order(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let (ea, eb) = (digits_end(a, i), digits_end(b, j));
            let (na, nb) = (trim_zeros(&a[i..ea]), trim_zeros(&b[j..eb]));
            let by_value = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if by_value != Ordering::Equal {
                return by_value;
            }
            (i, j) = (ea, eb);
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            (i, j) = (i + 1, j + 1);
        }
    }
    (a.len() - i).cmp(&(b.len() - j)).then_with(|| a.cmp(b))
}

fn digits_end(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && s[i].is_ascii_digit() {
        i += 1;
    }
    i
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let k = s.iter().take_while(|&&c| c == b'0').count();
    &s[k.min(s.len().saturating_sub(1))..]
}

/// The day a torchrec_npy path names: its stem without `_dense.npy`, `_labels.npy` or
/// the sparse suffix (a path without any of them is taken to be the stem).
pub(crate) fn npy_day_stem(path: &str, sparse_suffix: &str) -> String {
    [sparse_suffix, "_dense.npy", "_labels.npy"]
        .iter()
        .find_map(|s| path.strip_suffix(s))
        .unwrap_or(path)
        .to_string()
}

fn npy_days(files: Vec<String>, sparse_suffix: &str) -> Vec<String> {
    let mut days: Vec<String> = Vec::new();
    for f in files {
        let stem = npy_day_stem(&f, sparse_suffix);
        if !days.contains(&stem) {
            days.push(stem);
        }
    }
    days
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(text: &str) -> Result<toml::Table, FileSetError> {
        let mut root: toml::Table = toml::from_str(text).unwrap();
        let data = root.get_mut("data").unwrap().as_table_mut().unwrap();
        normalize_file_keys(data)?;
        Ok(root["data"].as_table().unwrap().clone())
    }

    #[test]
    fn natural_order_reads_numbers_as_numbers() {
        let mut v = vec!["day_10.p", "day_2.p", "day_1.p", "day_02.p", "a", "day_0.p"];
        v.sort_by(|a, b| natural_order(a, b));
        // equal numbers fall back to the bytes: "02" before "2"
        assert_eq!(
            v,
            ["a", "day_0.p", "day_1.p", "day_02.p", "day_2.p", "day_10.p"]
        );
    }

    #[test]
    fn globs_expand_in_natural_order_and_lists_split() {
        let dir = tempfile::tempdir().unwrap();
        for d in [0, 1, 2, 10, 11] {
            std::fs::write(dir.path().join(format!("day_{d}.parquet")), b"x").unwrap();
        }
        let p = dir.path().display();
        let t = normalized(&format!(
            "[data]\ntrain = \"{p}/day_*.parquet\"\ntest = [\"{p}/day_1[01].parquet\", \"{p}/day_2.parquet\"]\nvalid = \"{p}/day_0.parquet\"\n"
        ))
        .unwrap();
        assert_eq!(t["train"].as_str().unwrap(), format!("{p}/day_0.parquet"));
        let more: Vec<&str> = t["more_train"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let want: Vec<String> = [1, 2, 10, 11]
            .iter()
            .map(|d| format!("{p}/day_{d}.parquet"))
            .collect();
        assert_eq!(more, want);
        assert_eq!(t["test"].as_str().unwrap(), format!("{p}/day_10.parquet"));
        assert_eq!(t["more_test"].as_array().unwrap().len(), 2);
        assert_eq!(t["valid"].as_str().unwrap(), format!("{p}/day_0.parquet"));
        assert!(!t.contains_key("more_valid"));
    }

    #[test]
    fn a_glob_that_matches_nothing_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let e = normalized(&format!(
            "[data]\ntrain = \"x.tsv\"\nvalid = \"{}/none_*.tsv\"\n",
            dir.path().display()
        ))
        .unwrap_err();
        assert_eq!(e.key, "data.valid");
        assert!(e.message.contains("matches no file"), "{}", e.message);
        let e = normalized("[data]\ntest = []\n").unwrap_err();
        assert_eq!(e.key, "data.test");
        let e = normalized("[data]\ntrain = [\"a\", \"b\"]\nmore_train = [\"c\"]\n").unwrap_err();
        assert_eq!(e.key, "data.train");
    }

    #[test]
    fn npy_days_are_counted_once_by_stem() {
        let dir = tempfile::tempdir().unwrap();
        for d in [0, 1] {
            for part in ["dense", "sparse", "labels"] {
                std::fs::write(dir.path().join(format!("day_{d}_{part}.npy")), b"x").unwrap();
            }
        }
        let p = dir.path().display();
        let t = normalized(&format!(
            "[data]\nformat = \"torchrec_npy\"\ntrain = \"{p}/day_*.npy\"\n"
        ))
        .unwrap();
        assert_eq!(t["train"].as_str().unwrap(), format!("{p}/day_0"));
        assert_eq!(t["more_train"].as_array().unwrap().len(), 1);
        assert_eq!(t["more_train"][0].as_str().unwrap(), format!("{p}/day_1"));
    }
}
