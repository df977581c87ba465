//! What a training run reports: the time each phase of the steps took, and the summary
//! (the last stdout line and `summary.json`), a typed struct serialised to JSON.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;

/// Time spent in each phase of the steps.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timing {
    pub data: Duration,
    /// Includes the forward exchanges (ids out, rows back) when sharded.
    pub lookup: Duration,
    /// The part of `lookup` that turns dynamic features' keys into rows (with the key
    /// exchange when sharded).
    pub key_mapping: Duration,
    pub dense: Duration,
    pub all_reduce: Duration,
    /// Includes the gradient exchange when sharded.
    pub sparse_update: Duration,
    pub exchanges: shardrec_tables::ExchangeTimes,
}

/// The per-rank keys of [`Timing::per_rank_seconds`], in order.
pub const PER_RANK_KEYS: [&str; 7] = [
    "data_wait_s",
    "lookup_s",
    "dense_forward_backward_s",
    "all_reduce_s",
    "sparse_update_s",
    "id_exchange_s",
    "embedding_exchange_s",
];

impl Timing {
    pub fn to_json(self) -> serde_json::Value {
        let total = (self.data + self.lookup + self.dense + self.all_reduce + self.sparse_update)
            .as_secs_f64()
            .max(1e-9);
        let x = self.exchanges;
        json!({
            "data_wait_s": self.data.as_secs_f64(),
            "lookup_s": self.lookup.as_secs_f64(),
            "key_mapping_s": self.key_mapping.as_secs_f64(),
            "dense_forward_backward_s": self.dense.as_secs_f64(),
            "all_reduce_s": self.all_reduce.as_secs_f64(),
            "sparse_update_s": self.sparse_update.as_secs_f64(),
            "id_exchange_s": x.ids.as_secs_f64(),
            "embedding_exchange_s": (x.values + x.gradients).as_secs_f64(),
            "embedding_exchange_forward_s": x.values.as_secs_f64(),
            "embedding_exchange_backward_s": x.gradients.as_secs_f64(),
            "exchange_share": (x.ids + x.values + x.gradients).as_secs_f64() / total,
            "lookup_plus_sparse_update_share": (self.lookup + self.sparse_update).as_secs_f64() / total,
        })
    }

    /// This rank's seconds in the order of [`PER_RANK_KEYS`].
    pub fn per_rank_seconds(&self) -> Vec<f64> {
        let x = self.exchanges;
        [
            self.data,
            self.lookup,
            self.dense,
            self.all_reduce,
            self.sparse_update,
            x.ids,
            x.values + x.gradients,
        ]
        .iter()
        .map(Duration::as_secs_f64)
        .collect()
    }
}

/// A training run's summary. Serialised (keys in alphabetical order, as JSON objects are
/// printed) it is the last line `shardrec train` prints and the run folder's
/// `summary.json`; `extra` holds what hooks and sequence models add.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub auc: Option<f64>,
    pub logloss: Option<f64>,
    pub gauc: Option<f64>,
    pub best_valid_auc: Option<f64>,
    pub restored_best_step: Option<usize>,
    pub train_samples_per_s: f64,
    pub rows_train: usize,
    pub rows_valid: usize,
    pub rows_test: usize,
    pub bad_rows_skipped: u64,
    pub bad_rows: serde_json::Value,
    pub peak_rss_bytes: u64,
    pub steps: usize,
    pub epochs: usize,
    pub stopped_early: bool,
    pub samples_seen: u64,
    pub embedding_params: u64,
    pub collisionless_bytes: u64,
    pub embedding_bytes_main: u64,
    pub budget_bytes: Option<u64>,
    pub embedding_bytes: u64,
    pub optimizer_state_bytes: u64,
    pub embedding_bytes_this_rank: usize,
    pub optimizer_state_bytes_this_rank: usize,
    pub peak_rss_bytes_per_rank: Vec<u64>,
    pub world_size: usize,
    pub batch_size_per_rank: usize,
    pub batch_size: usize,
    pub model_saved: bool,
    pub model: String,
    pub threads: usize,
    /// libgomp's `GOMP_SPINCOUNT` this run had (the binary sets 10000 unless the user set
    /// it or `OMP_WAIT_POLICY`).
    pub openmp_spin_count: Option<String>,
    pub device: String,
    /// How the main tables are held and stepped: `host`, `device` (a tensor per shard)
    /// or `fused` (a tensor per width), on `embedding.device`.
    pub tables: String,
    pub table_device: String,
    pub seed: u64,
    pub time: serde_json::Value,
    pub time_per_rank: Vec<serde_json::Map<String, serde_json::Value>>,
    pub wall_s: f64,
    pub run_dir: String,
    pub validations: Vec<serde_json::Value>,
    pub checkpoints_written: usize,
    pub checkpoint_write_s: f64,
    pub last_checkpoint: Option<String>,
    pub resumed_from: Option<String>,
    pub resume_load_s: Option<f64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl RunSummary {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|e| json!({ "summary_error": e.to_string() }))
    }
}
