//! How a sequence model finds its inputs in `emb`: each sample's target row and history
//! rows, and within a row the representation set (item, category, time) and, for DARE
//! (Feng et al. 2025, arXiv 2410.02604), the attention set after it.

use tch::Tensor;

use crate::model::{ModelInput, ModelShape, SequenceInput};
use crate::ModelError;

/// Widths of one embedding set: item, category, time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetWidths {
    pub item: i64,
    pub category: i64,
    pub time: i64,
}

impl SetWidths {
    pub fn total(&self) -> i64 {
        self.item + self.category + self.time
    }

    /// A set `width` wide split as evenly as possible over item, category and time.
    pub fn thirds(width: i64) -> Self {
        let t = width / 3;
        Self {
            item: width - 2 * t,
            category: t,
            time: t,
        }
    }

    /// The semantic part (item and category) the search scores apart from time.
    pub fn semantic(&self) -> i64 {
        self.item + self.category
    }
}

/// The layout of a sequence model's embedding row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceWidths {
    pub representation: SetWidths,
    /// DARE's attention set (None: the representation set serves both roles).
    pub attention: Option<SetWidths>,
}

impl SequenceWidths {
    /// Reads the widths from the shape: 3 features (one set) or 6 (`decoupled`).
    pub fn of(
        shape: &ModelShape,
        decoupled: bool,
        model: &'static str,
    ) -> Result<Self, ModelError> {
        let w = &shape.feature_widths;
        let want = if decoupled { 6 } else { 3 };
        if w.len() != want {
            return Err(ModelError::Config {
                key: "kind",
                reason: format!(
                    "{model} reads {want} embedding features (item, category, time{}), got {}",
                    if decoupled {
                        " for representation, then for attention"
                    } else {
                        ""
                    },
                    w.len()
                ),
            });
        }
        let set = |o: usize| SetWidths {
            item: w[o],
            category: w[o + 1],
            time: w[o + 2],
        };
        Ok(Self {
            representation: set(0),
            attention: decoupled.then(|| set(3)),
        })
    }

    pub fn attention_set(&self) -> SetWidths {
        self.attention.unwrap_or(self.representation)
    }
}

/// One batch's embeddings, split by role.
pub struct SequenceParts {
    /// `[B, Dr]`
    pub target: Tensor,
    /// `[B, L, Dr]`
    pub history: Tensor,
    /// `[B, Da]`
    pub query: Tensor,
    /// `[B, L, Da]`
    pub keys: Tensor,
}

/// Splits `input.emb` (`[B * (L + 1), W]`) into target and history, representation and
/// attention.
///
/// With `split_with_sizes`, not one `narrow` or `select` per part: the backward of a
/// split concatenates its parts' gradients into one tensor, where each `narrow` would
/// fill a zero tensor the size of `emb` and the four would then be added up (at L = 200,
/// batch 512, DARE: four 40 MB zero fills and three 40 MB additions a step).
pub fn split_parts<'a>(
    input: &ModelInput<'a>,
    widths: &SequenceWidths,
) -> (SequenceParts, &'a SequenceInput) {
    let seq = input
        .sequence
        .expect("a sequence model is only built for sequence data (checked by the trainer)");
    let l = seq.len;
    let w = input.emb.size()[1];
    let rows = input.emb.view([-1, l + 1, w]);
    let dr = widths.representation.total();
    let (rep, att) = match &widths.attention {
        Some(a) => {
            let mut sets = rows.split_with_sizes([dr, a.total()], 2);
            let att = sets.pop().expect("two parts");
            (sets.pop().expect("two parts"), Some(att))
        }
        None => (rows, None),
    };
    let target_and_history = |set: &Tensor| {
        let mut parts = set.split_with_sizes([1, l], 1);
        let history = parts.pop().expect("two parts");
        (parts.pop().expect("two parts").squeeze_dim(1), history)
    };
    let (target, history) = target_and_history(&rep);
    let (query, keys) = match &att {
        Some(att) => target_and_history(att),
        None => (target.shallow_clone(), history.shallow_clone()),
    };
    (
        SequenceParts {
            target,
            history,
            query,
            keys,
        },
        seq,
    )
}
