//! The sections of an experiment file. Keys users set most keep stable names: `seed`,
//! `data.format`, `data.train`, `data.valid`, `data.test`, `model.kind`, `train.epochs`,
//! `train.batch_size`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shardrec_data::config::DataConfig;
use shardrec_models::{DenseOptimizerConfig, ModelConfig};
use shardrec_tables::{OptimizerKind, PlanStrategy, Pooling, RowDtype, ShardingKind};

fn default_seed() -> u64 {
    2024
}

/// A whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Name used for the run folder; defaults to the config file's stem.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub data: DataConfig,
    #[serde(default)]
    pub embedding: EmbeddingConfig,
    pub model: ModelConfig,
    /// Optimizer of the dense network.
    #[serde(default)]
    pub optimizer: DenseOptimizerConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub sharding: ShardingConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    /// OptEmbed row pruning and width search (`shardrec train` then runs its stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optembed: Option<super::OptEmbedConfig>,
}

impl ExperimentConfig {
    /// Whether one process's tables are fused (`embedding.fused`; unset: on a GPU, when
    /// nothing the fused path lacks is asked for). Under mpirun the tables are sharded
    /// and each shard keeps its own tensor.
    pub fn fused_tables(&self) -> bool {
        let e = &self.embedding;
        e.fused.unwrap_or(e.device != "cpu") && self.fused_blocker().is_none()
    }

    /// What in this config the fused tables cannot serve, as (key, value, why).
    pub fn fused_blocker(&self) -> Option<(&'static str, String, &'static str)> {
        let e = &self.embedding;
        let dynamic = e.kind == TableKindConfig::Dynamic
            || e.tables
                .iter()
                .any(|t| t.kind == Some(TableKindConfig::Dynamic));
        if self.optembed.is_some() {
            Some((
                "optembed",
                "set".into(),
                "OptEmbed masks and compacts host tables",
            ))
        } else if self.train.slices > 1 {
            Some((
                "train.slices",
                self.train.slices.to_string(),
                "a step in slices adds host gradients",
            ))
        } else if dynamic {
            Some((
                "embedding.kind",
                "dynamic".into(),
                "dynamic tables set rows on the host as keys take them",
            ))
        } else if e.uses_file_tier() && e.gpu_cache_bytes == 0 {
            Some((
                "embedding.storage",
                "file".into(),
                "the file tier is host storage (a device cache over it needs embedding.gpu_cache_bytes)",
            ))
        } else if e.row_dtype != shardrec_tables::RowDtype::F32 {
            Some((
                "embedding.row_dtype",
                format!("{:?}", e.row_dtype),
                "fused tables keep f32 rows",
            ))
        } else {
            None
        }
    }
}

/// `[sharding]`: where the tables' rows live when the job has several ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShardingConfig {
    /// `auto` (balance each rank's bytes of rows + optimizer state: big tables row-wise,
    /// small ones whole) or one kind for every table: `row_wise`, `table_wise`,
    /// `column_wise`, `data_parallel`.
    #[serde(default)]
    pub strategy: PlanStrategy,
    /// Per-table kind, by table name (e.g. `C3 = "data_parallel"`).
    #[serde(default)]
    pub tables: std::collections::BTreeMap<String, ShardingKind>,
    /// Bytes of rows + optimizer state one rank may hold; planning fails, naming the
    /// table, when they cannot fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_per_rank: Option<u64>,
    /// A plan written by an earlier run (`sharding_plan.toml` in its run folder), for the
    /// identical placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TableKindConfig {
    /// One row per vocabulary id.
    #[default]
    Plain,
    /// A fixed number of buckets, ids hashed with a per-feature seed.
    Hashed,
    /// Quotient-remainder compositional embedding (Shi et al. 2020): two small tables
    /// indexed by `id / m` and `id % m`, combined as `[embedding.qr] combine` says.
    Qr,
    /// Unified embedding / feature multiplexing (Coleman et al. 2023): the feature's
    /// chunks are salted hashes into the shared pool `[embedding.unified]`.
    Unified,
    /// No vocabulary: the feature's raw 64-bit keys reach rows through a map filled while
    /// training, with admission and eviction (`[embedding.dynamic]`; Monolith's
    /// collisionless table, DeepRec's EmbeddingVariable, TorchRec's managed collisions).
    Dynamic,
}

fn default_sketch_bytes() -> u64 {
    1 << 20
}

/// `embedding.dynamic.admit`: when a new key gets a row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AdmitConfig {
    /// After `min_count` sightings, counted in a count-min sketch of `sketch_bytes`
    /// (per table and rank; counted in the summary's bytes).
    MinCount {
        min_count: u32,
        #[serde(default = "default_sketch_bytes")]
        sketch_bytes: u64,
    },
    /// With probability `probability` at each sighting.
    Probability { probability: f32 },
}

/// `embedding.dynamic.evict`: which key gives up its row when the table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EvictKind {
    #[default]
    Lru,
    Lfu,
}

/// `lru`, `lfu`, or `{ ttl_steps = N }` (rows idle N steps are freed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EvictConfig {
    Kind(EvictKind),
    Ttl { ttl_steps: u64 },
}

impl Default for EvictConfig {
    fn default() -> Self {
        Self::Kind(EvictKind::Lru)
    }
}

/// `[embedding.dynamic]`: tables of kind `dynamic`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DynamicConfig {
    /// Rows of each dynamic table over all ranks (a table's own `buckets` or
    /// `budget.tables` entry overrides it). Unset: sized by `[budget]`, else
    /// `DEFAULT_DYNAMIC_CAPACITY` rows whose memory is taken as rows come into use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// Unset: every key gets a row at first sight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admit: Option<AdmitConfig>,
    #[serde(default)]
    pub evict: EvictConfig,
    /// What a key without a row reads: `zeros` (left out of its bag) or a `learned` row.
    #[serde(default)]
    pub default: DefaultRowConfig,
}

/// `embedding.dynamic.default`: the row of keys that hold none (not admitted yet, evicted,
/// or unseen at evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DefaultRowConfig {
    /// Zeros: the key is left out of its bag (Monolith's and DeepRec's constant default).
    #[default]
    Zeros,
    /// One trained row per table (its global row 0, starting at zeros), read and updated
    /// by every such key, as a plain table's out-of-vocabulary row is.
    Learned,
}

impl DynamicConfig {
    /// The admission rule the key maps apply.
    pub fn admission(&self) -> shardrec_tables::Admission {
        match self.admit {
            None => shardrec_tables::Admission::Always,
            Some(AdmitConfig::MinCount {
                min_count,
                sketch_bytes,
            }) => shardrec_tables::Admission::MinCount {
                min_count,
                sketch_bytes,
            },
            Some(AdmitConfig::Probability { probability }) => {
                shardrec_tables::Admission::Probability { p: probability }
            }
        }
    }

    /// The eviction rule the key maps apply.
    pub fn eviction(&self) -> shardrec_tables::Eviction {
        match self.evict {
            EvictConfig::Kind(EvictKind::Lru) => shardrec_tables::Eviction::Lru,
            EvictConfig::Kind(EvictKind::Lfu) => shardrec_tables::Eviction::Lfu,
            EvictConfig::Ttl { ttl_steps } => {
                shardrec_tables::Eviction::TtlSteps { steps: ttl_steps }
            }
        }
    }
}

/// Rows of a dynamic table with no capacity set (its RAM is taken as rows come into use).
pub const DEFAULT_DYNAMIC_CAPACITY: u64 = 1 << 20;

/// How the two halves of a QR embedding combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QrCombine {
    /// Element-wise product (the paper's best).
    #[default]
    Mul,
    Sum,
    /// Concatenation; each half is `dim / 2` wide.
    Concat,
}

/// `[embedding.qr]`: quotient-remainder tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QrConfig {
    /// `m`: ids per quotient row; the remainder table has `m` rows, the quotient table
    /// `ceil(vocab / m)`. Unset: the largest rows a `[budget]` allows, else 4.
    #[serde(default)]
    pub collisions: Option<u64>,
    #[serde(default)]
    pub combine: QrCombine,
}

impl Default for QrConfig {
    fn default() -> Self {
        Self {
            collisions: None,
            combine: QrCombine::Mul,
        }
    }
}

fn default_pool_tables() -> usize {
    2
}

/// `[embedding.unified]`: the shared pool of unified tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnifiedConfig {
    /// `T`: tables of the pool (chunks go to them round robin).
    #[serde(default = "default_pool_tables")]
    pub tables: usize,
    /// `B`: rows of each pool table (0: as many as `[budget]` allows).
    #[serde(default)]
    pub buckets: u64,
    /// `d_c`: columns of a chunk (0: `embedding.dim / chunks`).
    #[serde(default)]
    pub dim: usize,
    /// `c_f` of a feature without its own entry in `chunks_per_feature` (0: 2).
    #[serde(default)]
    pub chunks: usize,
    /// Per-feature chunks (wider embeddings for some features).
    #[serde(default)]
    pub chunks_per_feature: std::collections::BTreeMap<String, usize>,
    /// Sum a feature's probes (width `d_c`) instead of concatenating them.
    #[serde(default)]
    pub multi_probe: bool,
}

impl Default for UnifiedConfig {
    fn default() -> Self {
        Self {
            tables: default_pool_tables(),
            buckets: 0,
            dim: 0,
            chunks: 0,
            chunks_per_feature: Default::default(),
            multi_probe: false,
        }
    }
}

/// `[budget]`: bytes the embedding parameters may take (f32 rows x columns; optimizer
/// state is reported apart). Hashed, QR and unified tables are sized to fit; plain ones
/// must already fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// For all tables of the main collection.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// Instead of bytes: a fraction of the collisionless (one row per id) bytes.
    #[serde(default)]
    pub fraction: Option<f64>,
    /// Per table, by name (a feature's own table is named after it).
    #[serde(default)]
    pub tables: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InitKind {
    /// Uniform in [-scale, scale]; default scale sqrt(1 / rows) (TorchRec).
    #[default]
    Uniform,
    /// Normal with standard deviation `scale` (default 0.01).
    Normal,
}

/// Row initialisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    #[serde(default)]
    pub kind: InitKind,
    #[serde(default)]
    pub scale: Option<f32>,
}

fn default_sparse_kind() -> OptimizerKind {
    OptimizerKind::RowwiseAdagrad
}

fn default_sparse_lr() -> f32 {
    0.01
}

/// The sparse optimizer of the embedding tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseOptimizerConfig {
    /// Default `rowwise_adagrad` (one accumulator per row, as TorchRec's and HugeCTR's
    /// production configs).
    #[serde(default = "default_sparse_kind")]
    pub kind: OptimizerKind,
    #[serde(default = "default_sparse_lr")]
    pub lr: f32,
    #[serde(default)]
    pub weight_decay: f32,
    #[serde(default)]
    pub eps: Option<f32>,
    #[serde(default)]
    pub beta1: Option<f32>,
    #[serde(default)]
    pub beta2: Option<f32>,
    #[serde(default)]
    pub initial_accumulator: f32,
}

impl SparseOptimizerConfig {
    /// The tables' optimizer this section describes (unset values keep the optimizer's
    /// defaults).
    pub fn init(&self) -> shardrec_tables::SparseOptimizer {
        let mut o = shardrec_tables::SparseOptimizer::new(self.kind, self.lr);
        o.weight_decay = self.weight_decay;
        o.initial_accumulator = self.initial_accumulator;
        if let Some(e) = self.eps {
            o.eps = e;
        }
        if let Some(b) = self.beta1 {
            o.beta1 = b;
        }
        if let Some(b) = self.beta2 {
            o.beta2 = b;
        }
        o
    }
}

impl Default for SparseOptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::RowwiseAdagrad,
            lr: default_sparse_lr(),
            weight_decay: 0.0,
            eps: None,
            beta1: None,
            beta2: None,
            initial_accumulator: 0.0,
        }
    }
}

/// Which tier holds a table's rows and optimizer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// Every row in RAM.
    #[default]
    Ram,
    /// Rows in a file under `dir`, the hot ones in a cache of `cache_bytes` in RAM.
    File,
}

/// `embedding.storage` (every table) or a table's own `storage`: the file tier
/// (FBGEMM's SSD tables, TorchRec's UVM caching) for tables larger than RAM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub kind: StorageKind,
    /// The folder of the tables' files (on a real disk: SSD for speed); created if absent.
    /// With `kind = "ram"`, where tables go when `sharding.strategy = "auto"` cannot meet
    /// `sharding.memory_limit_per_rank` in RAM.
    #[serde(default)]
    pub dir: Option<std::path::PathBuf>,
    /// The cache of hot rows, per rank: in `embedding.storage`, shared by the rank's
    /// file tables in proportion to their rows; in a table's own entry, that table's.
    #[serde(default)]
    pub cache_bytes: u64,
    /// Read the next step's rows into the cache while a step computes (FBGEMM's
    /// prefetch pipeline); `embedding.storage`'s setting holds for every table. Unset:
    /// on in one process, off under mpirun, where the ranks must first exchange the next
    /// batch's ids on the step's thread (on 2 cores it cost more than it saved: see
    /// docs/benchmarks.md section 14).
    #[serde(default)]
    pub prefetch: Option<bool>,
    /// Which row of a full cache set gives way: "lru" (the default) or "lfu".
    #[serde(default)]
    pub policy: shardrec_tables::CachePolicy,
}

impl StorageConfig {
    /// The file tier it describes, for a cache of `cache_bytes` (None: RAM).
    pub fn init(&self, cache_bytes: u64) -> Option<shardrec_tables::FileTier> {
        match self.kind {
            StorageKind::File => self.spill(cache_bytes),
            StorageKind::Ram => None,
        }
    }

    /// The file tier under `dir` whatever `kind` says (for tables the planner moved there
    /// to meet `sharding.memory_limit_per_rank`); None without a folder.
    pub fn spill(&self, cache_bytes: u64) -> Option<shardrec_tables::FileTier> {
        self.dir.as_ref().map(|dir| shardrec_tables::FileTier {
            dir: dir.clone(),
            cache_bytes,
            policy: self.policy,
        })
    }
}

/// A table serving one or more features, overriding the `[embedding]` defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub name: String,
    pub features: Vec<String>,
    #[serde(default)]
    pub kind: Option<TableKindConfig>,
    #[serde(default)]
    pub dim: Option<usize>,
    #[serde(default)]
    pub buckets: Option<u64>,
    /// This table's tier, instead of `embedding.storage`.
    #[serde(default)]
    pub storage: Option<StorageConfig>,
}

fn default_dim() -> usize {
    16
}

/// `[embedding]`: tables for the categorical features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    #[serde(default = "default_dim")]
    pub dim: usize,
    /// Default table kind of a feature without its own `[[embedding.tables]]` entry.
    #[serde(default)]
    pub kind: TableKindConfig,
    /// Rows of each hashed table.
    #[serde(default)]
    pub buckets: u64,
    #[serde(default)]
    pub pooling: Pooling,
    #[serde(default)]
    pub init: InitConfig,
    #[serde(default)]
    pub optimizer: SparseOptimizerConfig,
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// Features with fewer ids than this get a plain (collisionless) table of their own
    /// whatever `kind` says (0: none); they still count against a `[budget]`.
    #[serde(default)]
    pub plain_below: u64,
    /// The unified pool (tables of kind `unified`).
    #[serde(default)]
    pub unified: UnifiedConfig,
    /// Quotient-remainder settings (tables of kind `qr`).
    #[serde(default)]
    pub qr: QrConfig,
    /// Capacity, admission and eviction of tables of kind `dynamic`.
    #[serde(default)]
    pub dynamic: DynamicConfig,
    /// Where the tables' rows and optimizer state live: "cpu" (host memory) or "cuda"
    /// ("cuda:N"; under mpirun each rank takes GPU `local rank % GPUs`), where gathers and
    /// sparse updates then run.
    #[serde(default = "default_device")]
    pub device: String,
    /// Tables of one width in one libtorch tensor on `device`, a step's lookup and
    /// update a few batched ops (see `embedding::FusedEmbeddings`; under mpirun, each
    /// rank's shards, served and updated in one batch a step: `embedding::FusedShards`).
    /// Unset: fused when `device` is a GPU and the job allows it (no OptEmbed, no
    /// `train.slices`, no dynamic tables); `true` on "cpu" runs the same tensor path on
    /// host memory; `false` on a GPU keeps one tensor per table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fused: Option<bool>,
    /// Bytes of `device` memory for a cache of the hot rows and their state over tables
    /// that stay in RAM or the file tier (fused tables only; 0: every row on `device`).
    /// Evicted rows are written back; a step's misses come in one batched copy.
    #[serde(default)]
    pub gpu_cache_bytes: u64,
    /// Where the tables' rows live: RAM (the default) or the file tier.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Precision of the stored rows (`f32`, `f16` or `bf16`; optimizer state stays f32):
    /// 16-bit rows halve a table's bytes in RAM, in the cache and on file, and are updated
    /// with stochastic rounding (FBGEMM's fp16 weights).
    #[serde(default)]
    pub row_dtype: RowDtype,
}

impl EmbeddingConfig {
    /// The storage a table's own `[[embedding.tables]]` entry gives it.
    pub fn own_storage(&self, table: &str) -> Option<&StorageConfig> {
        self.tables
            .iter()
            .find(|t| t.name == table)
            .and_then(|t| t.storage.as_ref())
    }

    /// Whether the table `name` of a collection is in the file tier by this config (the
    /// planner may move more there).
    pub fn puts_in_file(&self, table: &str) -> bool {
        match self.own_storage(table) {
            Some(s) => s.kind == StorageKind::File,
            None => self.storage.kind == StorageKind::File,
        }
    }

    /// What the planner is told of the tiers for the tables of `layout`: their precision,
    /// which are in the file tier, the RAM the tier's caches take on a rank, and whether
    /// tables may move to it (`embedding.storage.dir` is set).
    pub fn tier_request(
        &self,
        layout: &shardrec_tables::CollectionLayout,
    ) -> shardrec_tables::TierRequest {
        let file_tables: std::collections::BTreeSet<String> = layout
            .spec()
            .tables
            .iter()
            .map(|t| t.name.clone())
            .filter(|n| self.puts_in_file(n))
            .collect();
        let may_spill = self.storage.dir.is_some();
        let shared = if may_spill || self.storage.kind == StorageKind::File {
            self.storage.cache_bytes
        } else {
            0
        };
        let own: u64 = file_tables
            .iter()
            .filter_map(|n| self.own_storage(n))
            .map(|s| s.cache_bytes)
            .sum();
        shardrec_tables::TierRequest {
            row_dtype: self.row_dtype,
            file_tables,
            cache_bytes: shared + own,
            may_spill,
        }
    }

    /// Whether tables may end in the file tier: the config puts some there, or gives the
    /// planner a folder to move them to.
    pub fn may_use_file_tier(&self) -> bool {
        self.uses_file_tier() || self.storage.dir.is_some()
    }

    /// Whether the config puts any table's rows in the file tier.
    pub fn uses_file_tier(&self) -> bool {
        self.storage.kind == StorageKind::File
            || self.tables.iter().any(|t| {
                t.storage
                    .as_ref()
                    .is_some_and(|s| s.kind == StorageKind::File)
            })
    }
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            device: default_device(),
            fused: None,
            gpu_cache_bytes: 0,
            storage: StorageConfig::default(),
            row_dtype: RowDtype::F32,
            plain_below: 0,
            unified: UnifiedConfig::default(),
            qr: QrConfig::default(),
            dynamic: DynamicConfig::default(),
            dim: default_dim(),
            kind: TableKindConfig::Plain,
            buckets: 0,
            pooling: Pooling::Sum,
            init: InitConfig::default(),
            optimizer: SparseOptimizerConfig::default(),
            tables: vec![],
        }
    }
}

fn default_epochs() -> usize {
    1
}
fn default_batch_size() -> usize {
    1024
}
fn default_queue() -> usize {
    4
}
fn default_one() -> usize {
    1
}

fn default_true() -> bool {
    true
}
fn default_window() -> usize {
    1 << 20
}
fn default_device() -> String {
    "cpu".into()
}

/// How `[train]` walks the training files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TrainMode {
    /// `train.epochs` passes over the training split (all training files as one).
    #[default]
    Epochs,
    /// The training files are days, trained once each in order; each day after the
    /// first is first evaluated on the model trained on the days before it (progressive
    /// validation), its AUC and logloss written to `metrics.jsonl` and `days.png`.
    /// Every categorical feature must be of kind `dynamic` (no vocabulary over days).
    Stream,
}

/// `[train]`: the training loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// `epochs` (the default) or `stream` (the training files are days).
    #[serde(default)]
    pub mode: TrainMode,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Samples per step over the whole job (each of N ranks takes batch_size / N), or per
    /// rank when `batch_size_per_rank` is true.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default)]
    pub batch_size_per_rank: bool,
    /// Validate every N steps (0: at the end of each epoch).
    #[serde(default)]
    pub eval_every: usize,
    /// Stop after this many validations without a better AUC (0: never).
    #[serde(default)]
    pub early_stopping_patience: usize,
    /// Keep the model of the best validation AUC (`<run>/best`, weights only) and test
    /// and save that one rather than the last (the DARE protocol; Keras's
    /// `restore_best_weights`). Needs a validation split.
    #[serde(default)]
    pub restore_best: bool,
    /// Slices each step's batch is trained in: one process runs the slices one after
    /// another, adding their gradients in slice order, and a job of `slices` ranks runs one
    /// each, adding them in rank order, so both take bit-identical steps (any sharding
    /// kind; `shardrec check-exchange` checks the tables' half). OptEmbed's row norms of
    /// column-wise tables are summed by piece, so its masks may round differently there.
    /// Set it to the rank count a one-process run should reproduce
    /// exactly. 1: the whole batch at once.
    #[serde(default = "default_one")]
    pub slices: usize,
    /// Stop after this many steps (0: no limit).
    #[serde(default)]
    pub max_steps: usize,
    /// Threads for libtorch and for the table kernels (0: the cores divided among the ranks
    /// on this node).
    #[serde(default)]
    pub threads: usize,
    /// Log a line every N steps when not on a terminal (0: about 20 lines per epoch).
    #[serde(default)]
    pub log_every: usize,
    /// Run folder (default: runs/<name>-<time>).
    #[serde(default)]
    pub run_dir: Option<std::path::PathBuf>,
    /// Batches prepared ahead by the loader thread.
    #[serde(default = "default_queue")]
    pub loader_queue: usize,
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Rows shuffled together. Not a memory bound: the loader copies the rows of the next
    /// batches it sends (65,536 rows, about 4 bytes a column a row) reading the window in
    /// file order, and hands the mapped pages back behind it.
    #[serde(default = "default_window")]
    pub shuffle_window: usize,
    /// "cpu" or "cuda".
    #[serde(default = "default_device")]
    pub device: String,
    /// Save the model (dense + tables) in the run folder at the end.
    #[serde(default = "default_true")]
    pub save_model: bool,
    /// Write a checkpoint (every rank's shards with their optimizer state, the dense
    /// model and optimizer, the data position) every N steps and at the end (0: never).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Complete checkpoints kept in `<run>/checkpoints` (older ones are deleted; 0: all).
    #[serde(default = "default_checkpoint_keep")]
    pub checkpoint_keep: usize,
}

fn default_checkpoint_keep() -> usize {
    2
}

impl Default for TrainConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults deserialise")
    }
}

/// 2048: evaluation's activations are the largest tensors a DLRM step holds after the
/// tables, so a smaller batch cuts peak RSS (at 26M rows, 8192 cost 130 MB more) and
/// scores no slower; predictions do not depend on it (docs/benchmarks.md, section 17).
fn default_eval_batch() -> usize {
    2048
}

/// `[eval]`: offline evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Categorical feature whose value groups samples for GAUC (e.g. a user id).
    #[serde(default)]
    pub gauc_by: Option<String>,
    /// Sequence models on generated data: the file listing each test sample's truly
    /// relevant behaviours (`shardrec synth --kind sequence` writes it), to score the
    /// search stage's top K by NDCG@K.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relevant_positions: Option<PathBuf>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            batch_size: default_eval_batch(),
            gauc_by: None,
            relevant_positions: None,
        }
    }
}
