//! Which categorical features `data.keyed_features` keys, checked against a schema. Its
//! own module because the schema comes from the row parser, which reads the config.

use crate::config::Violation;
use crate::raw_format::Schema;

/// Per categorical feature of `schema`, whether `keyed` (the names of
/// `data.keyed_features`) lists it; or the first name that is not a categorical
/// feature, is listed twice, or keys one member of a shared vocabulary (sequence data:
/// a target and its history are one id space) but not the other.
pub(crate) fn keyed_flags(keyed: &[String], schema: &Schema) -> Result<Vec<bool>, Violation> {
    let bad = |name: &str, rule: String| Violation {
        key: "data.keyed_features".into(),
        value: format!("`{name}`"),
        range: rule,
    };
    let mut flags = vec![false; schema.categorical.len()];
    for name in keyed {
        let Some(f) = schema.categorical.iter().position(|c| &c.name == name) else {
            let rule = if schema.dense.contains(name) {
                "a dense column, not a categorical feature (with data.dense_as_categorical = true it would be one)".to_string()
            } else {
                format!(
                    "not a categorical feature of the data; those are {}",
                    feature_list(schema)
                )
            };
            return Err(bad(name, rule));
        };
        if flags[f] {
            return Err(bad(name, "listed twice".into()));
        }
        flags[f] = true;
    }
    if schema.is_sequence() {
        for [a, b] in crate::sequence_format::SHARED_VOCABULARIES {
            if flags[a] != flags[b] {
                let (on, off) = if flags[a] { (a, b) } else { (b, a) };
                let rule = format!(
                    "shares one vocabulary with `{}`: list both or neither",
                    schema.categorical[off].name
                );
                return Err(bad(&schema.categorical[on].name, rule));
            }
        }
    }
    Ok(flags)
}

/// The categorical features' names for a message, the first 40 of a long list.
fn feature_list(schema: &Schema) -> String {
    const SHOWN: usize = 40;
    let names: Vec<String> = schema
        .categorical
        .iter()
        .take(SHOWN)
        .map(|c| format!("`{}`", c.name))
        .collect();
    let more = schema.categorical.len().saturating_sub(SHOWN);
    match (names.is_empty(), more) {
        (true, _) => "none".into(),
        (false, 0) => names.join(", "),
        (false, n) => format!("{} and {n} more", names.join(", ")),
    }
}
