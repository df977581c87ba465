//! The behaviour-sequence TSV that DIN, TWIN and DARE train on, one sample per line:
//!
//! `label<TAB>user_id<TAB>target_item<TAB>target_category<TAB>hist_items<TAB>hist_categories`
//!
//! The history columns are comma-separated ids, oldest first, of equal length, both
//! empty when there is no history. Target and history share a vocabulary (an item is
//! one id whether it is the target or a behaviour), so `prepare` counts the item columns
//! together and the category columns together. Histories are kept whole in the prepared
//! data; a model takes the newest `model.sequence_len` of them at batch time.

/// Categorical features of sequence data, in order.
pub const SEQUENCE_FEATURES: [&str; 5] = [
    "user_id",
    "target_item",
    "target_category",
    "hist_items",
    "hist_categories",
];

pub const USER: usize = 0;
pub const TARGET_ITEM: usize = 1;
pub const TARGET_CATEGORY: usize = 2;
pub const HIST_ITEMS: usize = 3;
pub const HIST_CATEGORIES: usize = 4;

/// Features counted into one vocabulary: items with items, categories with categories.
pub const SHARED_VOCABULARIES: [[usize; 2]; 2] = [
    [TARGET_ITEM, HIST_ITEMS],
    [TARGET_CATEGORY, HIST_CATEGORIES],
];
