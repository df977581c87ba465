//! Range and consistency checks of a deserialised experiment, each naming its key: one
//! function per section (the `[data]` section's live with it, in the data crate), in the
//! order of the file's sections.

use shardrec_data::config::{check_range, violation, Violation};
use shardrec_models::MAX_DROPOUT;
use shardrec_tables::RowDtype;

use super::schema::{
    AdmitConfig, EmbeddingConfig, EvictConfig, ExperimentConfig, StorageConfig, StorageKind,
    TableKindConfig,
};

/// Every violation, in key order of the file's sections.
pub fn validate(c: &ExperimentConfig) -> Vec<Violation> {
    let mut v = Vec::new();
    c.data.violations(&mut v);
    embedding_violations(c, &mut v);
    model_violations(c, &mut v);
    optimizer_violations(c, &mut v);
    train_violations(c, &mut v);
    if let Some(o) = c.optembed.as_ref().filter(|o| o.enabled) {
        optembed_violations(c, o, &mut v);
    }
    v
}

/// `[embedding]` and `[budget]`: widths, buckets, pools, the sparse optimizer, tables.
fn embedding_violations(c: &ExperimentConfig, v: &mut Vec<Violation>) {
    let e = &c.embedding;
    check_range(v, "embedding.dim", e.dim, 1, 4096);
    let budgeted = c.budget.bytes.is_some() || c.budget.fraction.is_some();
    if e.kind == TableKindConfig::Hashed && !budgeted {
        check_range(v, "embedding.buckets", e.buckets, 1, 1 << 40);
    }
    if let Some(f) = c.budget.fraction {
        check_range(v, "budget.fraction", f, f64::MIN_POSITIVE, 1.0);
    }
    if let Some(b) = c.budget.bytes {
        check_range(v, "budget.bytes", b, 1, u64::MAX);
    }
    check_range(v, "embedding.unified.tables", e.unified.tables, 1, 4096);
    check_range(v, "embedding.unified.dim", e.unified.dim, 0, 4096);
    check_range(v, "embedding.unified.chunks", e.unified.chunks, 0, 1024);
    if let Some(m) = e.qr.collisions {
        check_range(v, "embedding.qr.collisions", m, 1, 1 << 40);
    }
    if let Some(s) = e.init.scale {
        check_range(v, "embedding.init.scale", s, f32::MIN_POSITIVE, 10.0);
    }
    storage_violations("embedding.storage", &e.storage, v);
    host_only_violations(e, v);
    if let (Some(true), Some((key, value, why))) = (e.fused, c.fused_blocker()) {
        violation(
            v,
            "embedding.fused",
            "true",
            format!("cannot be set with {key} = {value}: {why}"),
        );
    }
    if e.gpu_cache_bytes > 0 && !c.fused_tables() {
        let why = match c.fused_blocker() {
            Some((key, value, why)) => format!("{key} = {value}: {why}"),
            None => "embedding.fused is off (it is on by default on a GPU)".into(),
        };
        violation(
            v,
            "embedding.gpu_cache_bytes",
            e.gpu_cache_bytes,
            format!("caches the rows of fused tables only, and this job has none: {why}"),
        );
    }
    dynamic_violations(c, v);
    let o = &e.optimizer;
    check_range(v, "embedding.optimizer.lr", o.lr, f32::MIN_POSITIVE, 1000.0);
    check_range(
        v,
        "embedding.optimizer.weight_decay",
        o.weight_decay,
        0.0,
        1.0,
    );
    check_range(
        v,
        "embedding.optimizer.initial_accumulator",
        o.initial_accumulator,
        0.0,
        1e6,
    );
    if let Some(x) = o.eps {
        check_range(v, "embedding.optimizer.eps", x, 0.0, 1.0);
    }
    for (k, b) in [
        ("embedding.optimizer.beta1", o.beta1),
        ("embedding.optimizer.beta2", o.beta2),
    ] {
        if let Some(b) = b {
            check_range(v, k, b, 0.0, 0.999_999);
        }
    }
    for t in &e.tables {
        if t.features.is_empty() {
            violation(
                v,
                "embedding.tables.features",
                format!("table `{}`", t.name),
                "needs at least one feature",
            );
        }
        if let Some(dim) = t.dim {
            check_range(v, "embedding.tables.dim", dim, 1, 4096);
        }
        if let Some(b) = t.buckets {
            check_range(v, "embedding.tables.buckets", b, 1, 1 << 40);
        }
        if let Some(s) = &t.storage {
            storage_violations(
                &format!("embedding.tables.storage (table `{}`)", t.name),
                s,
                v,
            );
        }
        if t.kind.unwrap_or(e.kind) == TableKindConfig::Hashed
            && t.buckets.unwrap_or(e.buckets) == 0
        {
            violation(
                v,
                "embedding.tables.buckets",
                format!("table `{}`", t.name),
                "a hashed table needs buckets >= 1",
            );
        }
    }
}

/// The file tier and 16-bit rows are host features: tables on a device refuse them.
fn host_only_violations(e: &EmbeddingConfig, v: &mut Vec<Violation>) {
    if e.device == "cpu" {
        return;
    }
    // a device cache over the file tier is the hierarchy device -> RAM -> file
    if e.uses_file_tier() && e.gpu_cache_bytes == 0 {
        violation(
            v,
            "embedding.device",
            &e.device,
            "must be cpu with the file tier (its cache is in host memory)",
        );
    }
    if e.row_dtype != RowDtype::F32 {
        violation(
            v,
            "embedding.device",
            &e.device,
            "must be cpu with 16-bit rows (embedding.row_dtype): a device table keeps f32 rows",
        );
    }
}

/// `[embedding.dynamic]` and what dynamic tables do not work with yet.
fn dynamic_violations(c: &ExperimentConfig, v: &mut Vec<Violation>) {
    let e = &c.embedding;
    let d = &e.dynamic;
    if let Some(rows) = d.capacity {
        check_range(v, "embedding.dynamic.capacity", rows, 1, 1 << 40);
    }
    match d.admit {
        Some(AdmitConfig::MinCount {
            min_count,
            sketch_bytes,
        }) => {
            check_range(
                v,
                "embedding.dynamic.admit.min_count",
                min_count,
                1,
                1 << 20,
            );
            check_range(
                v,
                "embedding.dynamic.admit.sketch_bytes",
                sketch_bytes,
                16,
                1 << 40,
            );
        }
        Some(AdmitConfig::Probability { probability }) => {
            check_range(
                v,
                "embedding.dynamic.admit.probability",
                probability,
                f32::MIN_POSITIVE,
                1.0,
            );
        }
        None => {}
    }
    if let EvictConfig::Ttl { ttl_steps } = d.evict {
        check_range(
            v,
            "embedding.dynamic.evict.ttl_steps",
            ttl_steps,
            1,
            u64::MAX,
        );
    }
    let dynamic = e.kind == TableKindConfig::Dynamic
        || e.tables
            .iter()
            .any(|t| t.kind == Some(TableKindConfig::Dynamic));
    if !dynamic {
        return;
    }
    let refuse = |v: &mut Vec<Violation>, key: &str, value: &str, why: &str| {
        violation(v, key, value, format!("tables of kind dynamic {why}"))
    };
    if e.device != "cpu" {
        refuse(
            v,
            "embedding.device",
            &e.device,
            "keep their rows in host memory (cpu)",
        );
    }
    if c.model.kind.is_sequence() {
        refuse(
            v,
            "embedding.kind",
            "dynamic",
            "serve the CTR models, not the sequence models yet",
        );
    }
    if c.optembed.as_ref().is_some_and(|o| o.enabled) {
        refuse(
            v,
            "optembed.enabled",
            "true",
            "cannot be pruned by OptEmbed (rows change keys)",
        );
    }
}

/// A file tier needs its folder and a cache of at least one set of rows.
fn storage_violations(key: &str, s: &StorageConfig, v: &mut Vec<Violation>) {
    if s.kind == StorageKind::Ram && s.dir.is_none() {
        return;
    }
    if s.dir.is_none() {
        violation(
            v,
            &format!("{key}.dir"),
            "none",
            "a file tier needs its folder",
        );
    }
    check_range(
        v,
        &format!("{key}.cache_bytes"),
        s.cache_bytes,
        4096,
        u64::MAX,
    );
}

/// `[model]`: layer widths, dropout, sequence lengths.
fn model_violations(c: &ExperimentConfig, v: &mut Vec<Violation>) {
    model_section_violations(&c.model, v);
}

/// The `[model]` section's checks, for a config or a saved manifest's model.
pub fn model_section_violations(m: &shardrec_models::ModelConfig, v: &mut Vec<Violation>) {
    check_range(v, "model.dropout", m.dropout, 0.0, MAX_DROPOUT);
    check_range(v, "model.cross_layers", m.cross_layers, 0, 64);
    for (k, layers) in [
        ("model.hidden", &m.hidden),
        ("model.bottom", &m.bottom),
        ("model.top", &m.top),
        ("model.attention_hidden", &m.attention_hidden),
    ] {
        for &w in layers.iter() {
            check_range(v, k, w, 1, 1 << 20);
        }
    }
    check_range(v, "model.sequence_len", m.sequence_len, 1, 1 << 20);
    check_range(v, "model.top_k", m.top_k, 1, 1 << 20);
    if let Some(a) = m.attention_dim {
        check_range(v, "model.attention_dim", a, 1, 1 << 16);
    }
}

/// `[optimizer]`: the dense optimizer.
fn optimizer_violations(c: &ExperimentConfig, v: &mut Vec<Violation>) {
    let p = &c.optimizer;
    check_range(v, "optimizer.lr", p.lr, f64::MIN_POSITIVE, 1000.0);
    check_range(v, "optimizer.weight_decay", p.weight_decay, 0.0, 1.0);
    check_range(v, "optimizer.beta1", p.beta1, 0.0, 0.999_999);
    check_range(v, "optimizer.beta2", p.beta2, 0.0, 0.999_999);
    check_range(v, "optimizer.eps", p.eps, 0.0, 1.0);
    check_range(v, "optimizer.momentum", p.momentum, 0.0, 0.999);
}

/// `[train]`, the devices, `[eval]` and `[sharding]`.
fn train_violations(c: &ExperimentConfig, v: &mut Vec<Violation>) {
    let t = &c.train;
    check_range(v, "train.epochs", t.epochs, 1, 1_000_000);
    if t.mode == super::schema::TrainMode::Stream {
        // every day is trained once, in order
        check_range(v, "train.epochs", t.epochs, 1, 1);
    }
    check_range(v, "train.batch_size", t.batch_size, 1, 1 << 24);
    check_range(v, "train.threads", t.threads, 0, 1024);
    check_range(v, "train.loader_queue", t.loader_queue, 1, 1024);
    check_range(v, "train.shuffle_window", t.shuffle_window, 1, 1 << 32);
    let is_device = |d: &str| {
        d == "cpu"
            || d == "cuda"
            || d.strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<u32>().is_ok())
    };
    for (key, device) in [
        ("train.device", &t.device),
        ("embedding.device", &c.embedding.device),
    ] {
        if !is_device(device) {
            violation(
                v,
                key,
                format!("\"{device}\""),
                "must be \"cpu\", \"cuda\" or \"cuda:N\"",
            );
        }
    }
    let has_valid = c.data.has_validation();
    if t.early_stopping_patience > 0 && !has_valid {
        violation(
            v,
            "train.early_stopping_patience",
            t.early_stopping_patience,
            "needs a validation split (data.valid or data.split.valid > 0)",
        );
    }
    check_range(v, "train.slices", t.slices, 1, 1 << 12);
    if t.slices > 1 && c.model.batch_norm {
        violation(
            v,
            "train.slices",
            t.slices,
            "cannot be combined with model.batch_norm (a slice's batch statistics are not the step's)",
        );
    }
    if t.restore_best && !has_valid {
        violation(
            v,
            "train.restore_best",
            t.restore_best,
            "needs a validation split (data.valid or data.split.valid > 0)",
        );
    }
    check_range(v, "eval.batch_size", c.eval.batch_size, 1, 1 << 24);
    if let Some(limit) = c.sharding.memory_limit_per_rank {
        check_range(v, "sharding.memory_limit_per_rank", limit, 1, u64::MAX);
    }
}

/// `[optembed]` (when enabled): its ranges, and the tables and data it needs.
fn optembed_violations(c: &ExperimentConfig, o: &super::OptEmbedConfig, v: &mut Vec<Violation>) {
    check_range(v, "optembed.alpha", o.alpha, 0.0, 1e6);
    check_range(v, "optembed.threshold_lr", o.threshold_lr, 0.0, 1e3);
    check_range(v, "optembed.threshold_init", o.threshold_init, -1e6, 1e6);
    if let Some(e) = o.supernet_epochs {
        check_range(v, "optembed.supernet_epochs", e, 1, 1_000_000);
    }
    if let Some(e) = o.retrain_epochs {
        check_range(v, "optembed.retrain_epochs", e, 1, 1_000_000);
    }
    if let Some(s) = o.supernet_init.as_ref().and_then(|i| i.scale) {
        check_range(
            v,
            "optembed.supernet_init.scale",
            s,
            f32::MIN_POSITIVE,
            10.0,
        );
    }
    let s = &o.search;
    check_range(v, "optembed.search.population", s.population, 1, 1 << 20);
    check_range(v, "optembed.search.parents", s.parents, 1, 1 << 20);
    check_range(v, "optembed.search.generations", s.generations, 1, 1 << 20);
    check_range(v, "optembed.search.mutations", s.mutations, 0, 1 << 20);
    check_range(v, "optembed.search.crossovers", s.crossovers, 0, 1 << 20);
    check_range(
        v,
        "optembed.search.mutation_prob",
        s.mutation_prob,
        0.0,
        1.0,
    );
    if s.mutations + s.crossovers == 0 && s.generations > 1 {
        violation(
            v,
            "optembed.search.mutations",
            s.mutations,
            "mutations + crossovers must breed at least one child per generation",
        );
    }
    let e = &c.embedding;
    let compressed = e.kind != TableKindConfig::Plain
        || e.tables.iter().any(|t| {
            t.kind.is_some_and(|k| k != TableKindConfig::Plain)
                || t.features.len() != 1
                || t.dim.is_some_and(|x| x != e.dim)
        });
    if compressed {
        violation(
            v,
            "embedding.kind",
            format!("{:?}", e.kind).to_lowercase(),
            "[optembed] prunes plain tables: one per feature, embedding.dim wide",
        );
    }
    if let Some(col) = c.data.columns.iter().find(|col| col.separator.is_some()) {
        violation(
            v,
            &format!("data.columns.{}.separator", col.name),
            "set",
            "[optembed] masks one row per field and sample: multi-valued columns are not supported",
        );
    }
    if !c.data.has_validation() {
        violation(
            v,
            "optembed",
            "enabled",
            "the search scores widths on a validation split: set data.valid or data.split.valid > 0",
        );
    }
}
