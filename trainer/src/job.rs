//! What every command that runs a model on the job's ranks sets up first, whatever it
//! then does (train, evaluate, an OptEmbed stage, a sweep point): the devices, the threads
//! per rank, the prepared data (rank 0 first), the model's table collections and the
//! GAUC group.

use shardrec_tables::Exchange;

use crate::cluster::Cluster;
use crate::config::ExperimentConfig;
use crate::data::PreparedDataset;
use crate::device::resolve_device;
use crate::embedding::build_collections;
use crate::sequence::{sequence_embedding_config, sequence_table_schema};
use crate::TrainError;

/// Why a job cannot be set up as configured; each names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("thread pool: {0}")]
    ThreadPool(#[from] rayon::ThreadPoolBuildError),
    #[error("rank 0 could not prepare the data (its error is above)")]
    Rank0Prepare,
    #[error("model.kind = \"{model}\" trains on behaviour sequences: set data.format = \"sequence\" (the data's features are {features})")]
    NotSequenceData { model: String, features: String },
    #[error(
        "[optembed] prunes single-valued feature tables; it does not apply to sequence models"
    )]
    OptEmbedOnSequenceModel,
    #[error("eval.gauc_by = \"{name}\" is not a categorical feature (features: {features})")]
    UnknownGroupFeature { name: String, features: String },
    #[error("train.batch_size = {batch} is the batch of the whole job and must divide among its {ranks} ranks (or set train.batch_size_per_rank = true)")]
    BatchNotDivisible { batch: usize, ranks: usize },
    #[error("train.mode = \"stream\": feature `{feature}` has a vocabulary, which cannot span days; make it dynamic (embedding.kind = \"dynamic\" or its [[embedding.tables]] entry)")]
    StreamNeedsDynamic { feature: String },
    #[error("{file}: the training split has no rows")]
    EmptyTrainingSplit { file: std::path::PathBuf },
    #[error("{key} needs a non-empty validation split")]
    NeedsValidation { key: &'static str },
    #[error("eval.relevant_positions = {path}: {why}")]
    RelevantPositions {
        path: std::path::PathBuf,
        why: &'static str,
    },
    #[error("train.slices = {slices}: under mpirun it must be 1 or the number of ranks ({ranks})")]
    SlicesUnderMpi { slices: usize, ranks: usize },
    #[error("{file}: the data's columns differ from the model's")]
    DataColumnsDiffer { file: std::path::PathBuf },
    #[error("no test (or validation) rows to evaluate; set data.test")]
    NothingToEvaluate,
    #[error("{dir}: no main collection")]
    NoMainCollection { dir: std::path::PathBuf },
    #[error("only sequence models (din, twin, dare) retrieve behaviours")]
    NotASequenceModel,
    #[error("no test AUC although a test split was asked for (data.test or data.split.test): the test split has {rows} rows, or one class only; the summary and model are in {run}")]
    NoTestMetric {
        rows: usize,
        run: std::path::PathBuf,
    },
}

/// Logs a line of the job to stderr.
pub fn log(msg: &str) {
    eprintln!("[shardrec] {msg}");
}

fn quiet(_: &str) {}

/// The dense model's device and the tables' (`train.device`, `embedding.device`); under
/// mpirun each rank takes the GPU of its index on its node, modulo the node's devices.
pub fn resolve_devices(
    cfg: &ExperimentConfig,
    cluster: &Cluster,
) -> Result<(tch::Device, tch::Device), TrainError> {
    let device = resolve_device("train.device", &cfg.train.device, cluster.local_rank())?;
    let table_device = resolve_device(
        "embedding.device",
        &cfg.embedding.device,
        cluster.local_rank(),
    )?;
    Ok((device, table_device))
}

/// Threads per rank: as configured, or the node's cores divided among its ranks.
fn threads_for(cfg: &ExperimentConfig, ranks_on_node: usize) -> usize {
    if cfg.train.threads > 0 {
        cfg.train.threads
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / ranks_on_node.max(1)).max(1)
    }
}

/// Runs `f` with libtorch and the table kernels limited to the configured threads.
pub fn with_threads<T: Send>(
    cfg: &ExperimentConfig,
    ranks_on_node: usize,
    f: impl FnOnce(usize) -> T + Send,
) -> Result<T, TrainError> {
    let threads = threads_for(cfg, ranks_on_node);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads * ranks_on_node.max(1) > cores {
        log(&format!(
            "warning: {threads} threads x {} ranks on this node, which has {cores} cores: they will take turns (set train.threads = 0 to divide the cores)",
            ranks_on_node.max(1)
        ));
    }
    tch::set_num_threads(threads as i32);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(JobError::from)?;
    Ok(pool.install(|| f(threads)))
}

/// Prepares (or finds cached) data: rank 0 first, then the others read its cache, so
/// ranks never prepare the same files at once. A failure on rank 0 stops every rank.
pub fn prepare_on_ranks(
    cluster: &Cluster,
    prepare: impl Fn(&dyn Fn(&str)) -> Result<PreparedDataset, crate::data::DataError>,
) -> Result<PreparedDataset, TrainError> {
    if cluster.world_size() == 1 {
        return Ok(prepare(&log)?);
    }
    let first = cluster.is_root().then(|| prepare(&log));
    let mut failed = [u32::from(matches!(first, Some(Err(_))))];
    cluster.all_reduce_max(&mut failed);
    match first {
        Some(r) => Ok(r?),
        None if failed[0] != 0 => Err(JobError::Rank0Prepare.into()),
        None => Ok(prepare(&quiet)?),
    }
}

/// The collections the configured model reads: one embedding feature per categorical
/// feature, or for sequence models their item, category and time tables.
pub fn model_collections(
    cfg: &ExperimentConfig,
    data: &PreparedDataset,
) -> Result<crate::embedding::Collections, TrainError> {
    let schema = &data.meta.schema;
    let sequence_data = schema.is_sequence();
    if !cfg.model.kind.is_sequence() {
        return build_collections(
            &cfg.embedding,
            &cfg.budget,
            schema,
            &data.meta.vocab_sizes,
            cfg.seed,
            cfg.model.kind,
        )
        .map_err(TrainError::from);
    }
    if !sequence_data {
        return Err(JobError::NotSequenceData {
            model: serde_json::to_value(cfg.model.kind)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?")
                .to_string(),
            features: schema
                .categorical
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into());
    }
    if cfg.optembed.as_ref().is_some_and(|o| o.enabled) {
        return Err(JobError::OptEmbedOnSequenceModel.into());
    }
    let (table_schema, rows) = sequence_table_schema(&cfg.model, &data.meta.vocab_sizes);
    build_collections(
        &sequence_embedding_config(&cfg.embedding, &cfg.model),
        &cfg.budget,
        &table_schema,
        &rows,
        cfg.seed,
        cfg.model.kind,
    )
    .map_err(TrainError::from)
}

/// The categorical feature GAUC groups by (`eval.gauc_by`), by index.
pub fn group_feature(
    cfg: &ExperimentConfig,
    data: &PreparedDataset,
) -> Result<Option<usize>, TrainError> {
    let Some(g) = &cfg.eval.gauc_by else {
        return Ok(None);
    };
    let names: Vec<&str> = data
        .meta
        .schema
        .categorical
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    names.iter().position(|n| n == g).map(Some).ok_or_else(|| {
        JobError::UnknownGroupFeature {
            name: g.clone(),
            features: names.join(", "),
        }
        .into()
    })
}
