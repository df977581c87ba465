//! Reading an experiment file: TOML syntax, `--set key=value` overrides, strict
//! deserialisation, with errors that name the file, the line, the key and (for a
//! misspelling) the closest valid key.

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::schema::ExperimentConfig;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: TOML syntax: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}{line}: unknown key `{key}`{hint}")]
    UnknownKey {
        file: String,
        line: String,
        key: String,
        hint: String,
    },
    #[error("{file}{line}: `{key}`: {message}")]
    BadValue {
        file: String,
        line: String,
        key: String,
        message: String,
    },
    #[error("--set {arg}: {message}")]
    BadOverride { arg: String, message: String },
    #[error("{file}{line}: `{key}` = {value} is out of range: {range}")]
    OutOfRange {
        file: String,
        line: String,
        key: String,
        value: String,
        range: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

/// Reads `path`, applies overrides (`a.b.c=value`), deserialises strictly.
pub fn load_config(
    path: &Path,
    overrides: &[String],
) -> Result<(ExperimentConfig, toml::Table), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    load_config_str(&text, &path.display().to_string(), overrides)
}

/// As [`load_config`], from text; `file` names it in errors.
pub fn load_config_str(
    text: &str,
    file: &str,
    overrides: &[String],
) -> Result<(ExperimentConfig, toml::Table), ConfigError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.into(),
        message: one_line(&e.to_string()),
    })?;
    let mut overridden = Vec::new();
    for arg in overrides {
        let key = apply_override(&mut table, arg)?;
        overridden.push(key);
    }
    super::DataConfig::normalize_toml(&mut table).map_err(|e| ConfigError::BadValue {
        file: file.into(),
        line: where_is(text, &e.key, &overridden),
        key: e.key,
        message: e.message,
    })?;
    // the path of the value that failed, for errors (a type) that do not name their key
    let mut cfg: ExperimentConfig = serde_path_to_error::deserialize(toml::Value::Table(
        table.clone(),
    ))
    .map_err(|e: serde_path_to_error::Error<toml::de::Error>| {
        let path = e.path().to_string();
        explain(e.inner(), &path, &table, text, file, &overridden)
    })?;
    fill_keyed_features(&mut cfg).map_err(|message| ConfigError::BadValue {
        file: file.into(),
        line: where_is(text, "data.keyed_features", &overridden),
        key: "data.keyed_features".into(),
        message,
    })?;
    if let Some(v) = super::validate(&cfg).into_iter().next() {
        return Err(ConfigError::OutOfRange {
            file: file.into(),
            line: where_is(text, &v.key, &overridden),
            key: v.key,
            value: v.value,
            range: v.range,
        });
    }
    Ok((cfg, table))
}

/// Fills `data.keyed_features` with the categorical features whose table is of kind
/// `dynamic` (they are prepared as raw keys, without a vocabulary); a list the config
/// gives must be exactly those.
fn fill_keyed_features(cfg: &mut ExperimentConfig) -> Result<(), String> {
    let e = &cfg.embedding;
    let kind_of = |name: &str| {
        e.tables
            .iter()
            .find(|t| t.features.iter().any(|f| f == name))
            .map_or(e.kind, |t| t.kind.unwrap_or(e.kind))
    };
    let uses_dynamic = e.kind == super::TableKindConfig::Dynamic
        || e.tables
            .iter()
            .any(|t| t.kind == Some(super::TableKindConfig::Dynamic));
    if !uses_dynamic || cfg.data.format == super::DataFormat::Prepared {
        return Ok(());
    }
    let mut data_errors = Vec::new();
    cfg.data.violations(&mut data_errors);
    if !data_errors.is_empty() {
        return Ok(()); // validation names them; the parser below could not be built
    }
    let parser = shardrec_data::RowParser::new(&cfg.data, &[]).map_err(|err| {
        format!("tables of kind dynamic need the categorical features' names before the data is read: {err}")
    })?;
    let keyed: Vec<String> = parser
        .schema()
        .categorical
        .iter()
        .map(|c| c.name.clone())
        .filter(|n| kind_of(n) == super::TableKindConfig::Dynamic)
        .collect();
    if !cfg.data.keyed_features.is_empty() && cfg.data.keyed_features != keyed {
        return Err(format!(
            "lists {:?}, but the features of kind dynamic are {keyed:?} (leave it unset: it is filled in from [embedding])",
            cfg.data.keyed_features
        ));
    }
    cfg.data.keyed_features = keyed;
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets `a.b.c = value` in the table; the value is read as a TOML literal, or as a string
/// when it is not one (so paths need no quotes).
fn apply_override(table: &mut toml::Table, arg: &str) -> Result<String, ConfigError> {
    let bad = |message: &str| ConfigError::BadOverride {
        arg: arg.into(),
        message: message.into(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected key=value"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|p| p.trim().is_empty()) {
        return Err(bad("empty key"));
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    };
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| bad(&format!("`{p}` is a value, not a section")))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(key.to_string())
}

/// Turns serde's message into one naming the key path, line and closest valid key;
/// `at` is the dotted path of the value that failed.
fn explain(
    e: &toml::de::Error,
    at: &str,
    table: &toml::Table,
    text: &str,
    file: &str,
    overridden: &[String],
) -> ConfigError {
    let msg = one_line(e.message());
    let ticks: Vec<&str> = msg.split('`').skip(1).step_by(2).collect();
    if msg.starts_with("unknown field") && !ticks.is_empty() {
        let bad = ticks[0];
        let expected: Vec<&str> = ticks[1..].to_vec();
        let path = find_key_path(table, bad).unwrap_or_else(|| bad.to_string());
        let hint = closest(bad, &expected)
            .map(|c| {
                let prefix = path
                    .rsplit_once('.')
                    .map(|(p, _)| format!("{p}."))
                    .unwrap_or_default();
                format!("; did you mean `{prefix}{c}`?")
            })
            .unwrap_or_else(|| format!("; valid keys here: {}", expected.join(", ")));
        return ConfigError::UnknownKey {
            file: file.into(),
            line: where_is(text, &path, overridden),
            key: path,
            hint,
        };
    }
    if msg.starts_with("unknown variant") && !ticks.is_empty() {
        let bad = ticks[0];
        let expected: Vec<&str> = ticks[1..].to_vec();
        let path = find_value_path(table, bad).unwrap_or_default();
        let hint = closest(bad, &expected)
            .map(|c| format!("; did you mean \"{c}\"?"))
            .unwrap_or_default();
        return ConfigError::BadValue {
            file: file.into(),
            line: where_is(text, &path, overridden),
            key: path,
            message: format!("\"{bad}\" is not one of {}{hint}", expected.join(", ")),
        };
    }
    if msg.starts_with("missing field") && !ticks.is_empty() {
        return ConfigError::BadValue {
            file: file.into(),
            line: String::new(),
            key: ticks[0].into(),
            message: "is required but missing".into(),
        };
    }
    // type errors ("invalid type: string \"three\", expected usize"): the path says where
    let key = at.trim_matches('.').to_string();
    ConfigError::BadValue {
        file: file.into(),
        line: where_is(text, &key, overridden),
        key,
        message: msg,
    }
}

/// Dotted path of the (first) table entry named `key`, searching depth-first.
fn find_key_path(table: &toml::Table, key: &str) -> Option<String> {
    fn walk(v: &toml::Value, key: &str, prefix: &str) -> Option<String> {
        match v {
            toml::Value::Table(t) => {
                for (k, child) in t {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    if k == key {
                        return Some(p);
                    }
                    if let Some(found) = walk(child, key, &p) {
                        return Some(found);
                    }
                }
                None
            }
            toml::Value::Array(a) => a.iter().find_map(|c| walk(c, key, prefix)),
            _ => None,
        }
    }
    walk(&toml::Value::Table(table.clone()), key, "")
}

/// Dotted path of the (first) string value equal to `value`.
fn find_value_path(table: &toml::Table, value: &str) -> Option<String> {
    fn walk(v: &toml::Value, value: &str, prefix: &str) -> Option<String> {
        match v {
            toml::Value::Table(t) => t.iter().find_map(|(k, c)| {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(c, value, &p)
            }),
            toml::Value::Array(a) => a.iter().find_map(|c| walk(c, value, prefix)),
            toml::Value::String(s) if s == value => Some(prefix.to_string()),
            _ => None,
        }
    }
    walk(&toml::Value::Table(table.clone()), value, "")
}

/// ":LINE" where `path` is set in the file, " (from --set)" for overrides, else "".
pub(crate) fn where_is(text: &str, path: &str, overridden: &[String]) -> String {
    if overridden.iter().any(|o| o == path) {
        return " (from --set)".into();
    }
    let mut section = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let header = line
            .strip_prefix("[[")
            .and_then(|l| l.strip_suffix("]]"))
            .or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')));
        if let Some(h) = header {
            section = h.trim().to_string();
            // a whole section that is wrong (an unknown table) is named by its header
            if section == path {
                return format!(":{}", i + 1);
            }
            continue;
        }
        if let Some((k, _)) = line.split_once('=') {
            let k = k.trim().trim_matches('"');
            let full = if section.is_empty() {
                k.to_string()
            } else {
                format!("{section}.{k}")
            };
            if full == path || (path.starts_with(&format!("{full}.")) && line.contains('{')) {
                return format!(":{}", i + 1);
            }
        }
    }
    String::new()
}

/// The candidate with the smallest edit distance, if it is close enough to be a typo.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .min()
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 2).max(2))
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "seed = 1\n[data]\nformat = \"criteo\"\ntrain = \"x.tsv\"\n[model]\nkind = \"dlrm\"\n";

    #[test]
    fn unknown_key_names_path_line_and_suggestion() {
        let text = format!("{BASE}[train]\nepochs = 2\nbatch_sise = 8\n");
        let e = load_config_str(&text, "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml:9"), "{e}");
        assert!(
            e.contains("`train.batch_sise`") && e.contains("did you mean `train.batch_size`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_variant_suggests_the_closest() {
        let text = BASE.replace("dlrm", "dlrn");
        let e = load_config_str(&text, "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml:6")
                && e.contains("model.kind")
                && e.contains("did you mean \"dlrm\""),
            "{e}"
        );
    }

    #[test]
    fn out_of_range_values_name_key_line_and_range() {
        let text = format!("{BASE}[train]\nbatch_size = 0\n");
        let e = load_config_str(&text, "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml:8")
                && e.contains("`train.batch_size` = 0")
                && e.contains("[1, 16777216]"),
            "{e}"
        );
        let e = load_config_str(BASE, "c.toml", &["model.dropout=1.5".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.dropout") && e.contains("(from --set)"),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        let text = format!("{BASE}[train]\nepochs = \"two\"\n");
        let e = load_config_str(&text, "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("epochs"), "{e}");
    }

    #[test]
    fn overrides_set_nested_keys_and_are_checked() {
        let (cfg, _) = load_config_str(
            BASE,
            "c.toml",
            &[
                "train.batch_size=64".into(),
                "data.test=day1.tsv".into(),
                "model.top=[8, 4]".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.train.batch_size, 64);
        assert_eq!(cfg.data.test.as_deref(), Some(Path::new("day1.tsv")));
        assert_eq!(cfg.model.top, vec![8, 4]);
        let e = load_config_str(BASE, "c.toml", &["train.epoch=3".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("(from --set)") && e.contains("did you mean `train.epochs`"),
            "{e}"
        );
        assert!(load_config_str(BASE, "c.toml", &["novalue".into()]).is_err());
    }

    /// Fuzzing the loader (`shardrec_data::fuzzing`; `launch/fuzz.sh` is the long run):
    /// the bundled configs and the recorded corpus, mutated, with `--set` overrides (the
    /// lines after a `#--set` line), give a config or an error, never a panic.
    #[test]
    fn fuzz_config_loader() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut fuzzer = shardrec_data::fuzzing::Fuzzer::new("config", &root.join("fuzz/corpus"));
        let mut bundled: Vec<_> = std::fs::read_dir(root.join("configs"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        bundled.sort();
        for p in bundled {
            fuzzer = fuzzer.seed(std::fs::read(p).unwrap());
        }
        fuzzer
            .dictionary(&[
                "\n#--set\n",
                "\n",
                "=",
                "\"",
                "[",
                "]",
                "{",
                "}",
                ",",
                ".",
                "[data]",
                "[model]",
                "[train]",
                "[embedding]",
                "[[data.columns]]",
                "seed",
                "epochs",
                "batch_size",
                "lr",
                "kind",
                "dim",
                "threshold",
                "true",
                "\"x\"",
                "nan",
                "inf",
                "\"hashed\"",
                "\"qr\"",
                "\"din\"",
                "\"dare\"",
            ])
            .run(|input| {
                let text = String::from_utf8_lossy(input);
                let (toml, sets) = text.split_once("\n#--set\n").unwrap_or((&text, ""));
                let overrides: Vec<String> = sets.lines().map(str::to_string).collect();
                let _ = load_config_str(toml, "fuzz.toml", &overrides);
            });
    }
}
