//! Which table holds each field: OptEmbed prunes rows and columns per field, so every
//! feature must read a plain table of its own, `embedding.dim` wide. Checked when a bundle
//! with OptEmbed's layer is built and used by the stages to find each field's rows.

use shardrec_tables::{CollectionLayout, RowMap};

use super::OptEmbedError;
use crate::TrainError;

/// Each field's own plain table, as OptEmbed needs them.
#[derive(Debug, Clone)]
pub struct FieldTables {
    pub table_of: Vec<usize>,
    pub rows: Vec<u64>,
    pub names: Vec<String>,
}

impl FieldTables {
    /// Checks that every feature reads its own plain table, `dim` wide, one row per id.
    pub fn of(layout: &CollectionLayout, dim: usize) -> Result<Self, TrainError> {
        let mut out = FieldTables {
            table_of: vec![],
            rows: vec![],
            names: vec![],
        };
        for f in layout.features() {
            let bad = |why: String| {
                TrainError::from(OptEmbedError::NotAPlainFieldTable {
                    feature: f.name.clone(),
                    why,
                })
            };
            let [p] = f.probes.as_slice() else {
                return Err(bad(format!(
                    "has {} probes (kind hashed/qr/unified?)",
                    f.probes.len()
                )));
            };
            let RowMap::Offset { offset: 0, id_rows } = p.map else {
                return Err(bad(
                    "is not a plain table (set embedding.kind = \"plain\")".into()
                ));
            };
            if out.table_of.contains(&p.table) {
                return Err(bad("shares its table with another feature".into()));
            }
            if layout.table_dim(p.table) != dim || f.width != dim {
                return Err(bad(format!("is {} wide, not {dim}", f.width)));
            }
            out.table_of.push(p.table);
            out.rows.push(id_rows);
            out.names.push(f.name.clone());
        }
        Ok(out)
    }
}
