//! A validated [`CollectionSpec`]: table names resolved to indices and every feature given
//! its columns in the collection's output (one row of `width` floats per sample), so the
//! lookup and the dense model agree on where each feature's vector sits.

use std::collections::HashMap;

use crate::spec::{CollectionSpec, Combine, Pooling, RowMap};
use crate::TableError;

/// One probe with its table resolved and its columns within the feature's vector.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedProbe {
    pub table: usize,
    pub map: RowMap,
    /// Offset of this probe's row within the feature's vector (0 unless `Concat`).
    pub sub_offset: usize,
}

/// Where a feature sits in the output and how it is computed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureLayout {
    pub name: String,
    /// First output column of this feature.
    pub offset: usize,
    /// Number of output columns.
    pub width: usize,
    pub probes: Vec<ResolvedProbe>,
    pub combine: Combine,
    pub pooling: Pooling,
}

/// The checked form of a [`CollectionSpec`].
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionLayout {
    spec: CollectionSpec,
    features: Vec<FeatureLayout>,
    width: usize,
}

impl CollectionLayout {
    /// Validates names, sizes and probe rules; computes output offsets.
    pub fn new(spec: CollectionSpec) -> Result<Self, TableError> {
        let mut table_index = HashMap::new();
        for (i, t) in spec.tables.iter().enumerate() {
            if t.rows == 0 || t.dim == 0 {
                return Err(TableError::InvalidTable {
                    table: t.name.clone(),
                    reason: format!(
                        "needs at least one row and one column, has {} x {}",
                        t.rows, t.dim
                    ),
                });
            }
            if table_index.insert(t.name.clone(), i).is_some() {
                return Err(TableError::DuplicateName {
                    what: "table",
                    name: t.name.clone(),
                });
            }
        }
        let mut seen = HashMap::new();
        let mut features = Vec::with_capacity(spec.features.len());
        let mut offset = 0;
        for f in &spec.features {
            if seen.insert(f.name.clone(), ()).is_some() {
                return Err(TableError::DuplicateName {
                    what: "feature",
                    name: f.name.clone(),
                });
            }
            let bad = |reason: String| TableError::InvalidFeature {
                feature: f.name.clone(),
                reason,
            };
            if f.probes.is_empty() {
                return Err(bad("has no probes".into()));
            }
            let mut probes = Vec::with_capacity(f.probes.len());
            let mut sub_offset = 0;
            for p in &f.probes {
                let &t = table_index
                    .get(&p.table)
                    .ok_or_else(|| TableError::UnknownTable {
                        feature: f.name.clone(),
                        table: p.table.clone(),
                    })?;
                let table = &spec.tables[t];
                match p.map {
                    RowMap::Offset { offset, id_rows }
                        if offset
                            .checked_add(id_rows)
                            .is_none_or(|end| end > table.rows) =>
                    {
                        return Err(bad(format!(
                            "ids at offset {offset} with {id_rows} rows overrun table `{}` ({} rows)",
                            table.name, table.rows
                        )));
                    }
                    RowMap::Quotient { divisor: 0 } => {
                        return Err(bad("quotient divisor must be positive".into()))
                    }
                    RowMap::Remainder { modulus } if modulus == 0 || modulus > table.rows => {
                        return Err(bad(format!(
                            "remainder modulus {modulus} must be in [1, {}] (rows of `{}`)",
                            table.rows, table.name
                        )))
                    }
                    _ => {}
                }
                probes.push(ResolvedProbe {
                    table: t,
                    map: p.map.clone(),
                    sub_offset,
                });
                if f.combine == Combine::Concat {
                    sub_offset += table.dim;
                }
            }
            let dims: Vec<usize> = probes.iter().map(|p| spec.tables[p.table].dim).collect();
            let width = match f.combine {
                Combine::Concat => dims.iter().sum(),
                Combine::Sum | Combine::Mul => {
                    if dims.iter().any(|&d| d != dims[0]) {
                        return Err(bad(format!(
                            "{:?} needs probes of equal width, got {dims:?}",
                            f.combine
                        )));
                    }
                    if f.combine == Combine::Mul && probes.len() != 2 {
                        return Err(bad(format!(
                            "mul combines exactly two probes, got {}",
                            probes.len()
                        )));
                    }
                    dims[0]
                }
            };
            features.push(FeatureLayout {
                name: f.name.clone(),
                offset,
                width,
                probes,
                combine: f.combine,
                pooling: f.pooling,
            });
            offset += width;
        }
        Ok(Self {
            spec,
            features,
            width: offset,
        })
    }

    pub fn spec(&self) -> &CollectionSpec {
        &self.spec
    }

    pub fn features(&self) -> &[FeatureLayout] {
        &self.features
    }

    /// Output columns per sample (sum of feature widths).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Feature widths in order (what the dense model needs to split the output).
    pub fn feature_widths(&self) -> Vec<usize> {
        self.features.iter().map(|f| f.width).collect()
    }

    pub fn num_tables(&self) -> usize {
        self.spec.tables.len()
    }

    /// Width of every table, in table order.
    pub fn table_dims(&self) -> Vec<usize> {
        self.spec.tables.iter().map(|t| t.dim).collect()
    }

    pub fn table_dim(&self, t: usize) -> usize {
        self.spec.tables[t].dim
    }

    pub fn table_rows(&self, t: usize) -> u64 {
        self.spec.tables[t].rows
    }

    /// Parameter count of all tables.
    pub fn parameters(&self) -> u64 {
        self.spec.tables.iter().map(|t| t.rows * t.dim as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FeatureSpec, Probe, TableSpec};
    use crate::RowInit;

    fn table(name: &str, rows: u64, dim: usize) -> TableSpec {
        TableSpec {
            name: name.into(),
            rows,
            dim,
            init: RowInit::Zeros,
        }
    }

    fn feature(name: &str, probes: Vec<Probe>, combine: Combine) -> FeatureSpec {
        FeatureSpec {
            name: name.into(),
            probes,
            combine,
            pooling: Pooling::Sum,
        }
    }

    #[test]
    fn concat_widths_add_up_and_offsets_follow() {
        let spec = CollectionSpec {
            tables: vec![table("a", 10, 4), table("b", 8, 2)],
            features: vec![
                feature(
                    "x",
                    vec![Probe {
                        table: "a".into(),
                        map: RowMap::Hash { seed: 1 },
                    }],
                    Combine::Concat,
                ),
                feature(
                    "y",
                    vec![
                        Probe {
                            table: "a".into(),
                            map: RowMap::Hash { seed: 2 },
                        },
                        Probe {
                            table: "b".into(),
                            map: RowMap::Hash { seed: 3 },
                        },
                    ],
                    Combine::Concat,
                ),
            ],
        };
        let l = CollectionLayout::new(spec).unwrap();
        assert_eq!(l.feature_widths(), vec![4, 6]);
        assert_eq!(l.features()[1].offset, 4);
        assert_eq!(l.features()[1].probes[1].sub_offset, 4);
        assert_eq!(l.width(), 10);
    }

    #[test]
    fn rejects_bad_specs_with_names() {
        let bad_sum = CollectionSpec {
            tables: vec![table("a", 10, 4), table("b", 8, 2)],
            features: vec![feature(
                "y",
                vec![
                    Probe {
                        table: "a".into(),
                        map: RowMap::Hash { seed: 2 },
                    },
                    Probe {
                        table: "b".into(),
                        map: RowMap::Hash { seed: 3 },
                    },
                ],
                Combine::Sum,
            )],
        };
        let e = CollectionLayout::new(bad_sum).unwrap_err().to_string();
        assert!(e.contains("`y`") && e.contains("equal width"), "{e}");

        let unknown = CollectionSpec {
            tables: vec![table("a", 10, 4)],
            features: vec![feature(
                "z",
                vec![Probe {
                    table: "q".into(),
                    map: RowMap::Hash { seed: 2 },
                }],
                Combine::Concat,
            )],
        };
        let e = CollectionLayout::new(unknown).unwrap_err().to_string();
        assert!(e.contains("`q`") && e.contains("`z`"), "{e}");

        let overrun = CollectionSpec {
            tables: vec![table("a", 10, 4)],
            features: vec![feature(
                "z",
                vec![Probe {
                    table: "a".into(),
                    map: RowMap::Offset {
                        offset: 5,
                        id_rows: 6,
                    },
                }],
                Combine::Concat,
            )],
        };
        assert!(CollectionLayout::new(overrun).is_err());
        assert!(CollectionLayout::new(CollectionSpec {
            tables: vec![table("a", 0, 4)],
            features: vec![]
        })
        .is_err());
    }
}
