//! What a training run writes while and after it trains: checkpoints every
//! `train.checkpoint_every` steps (keeping `train.checkpoint_keep`), the best validation's
//! model (`train.restore_best`), and the final model, in the format its ranks can write.

use std::path::{Path, PathBuf};
use std::time::Instant;

use shardrec_models::DenseOptimizer;
use shardrec_tables::Exchange;
use shardrec_tables::LocalEmbeddings;

use super::checked_file::ModelIoError;
use super::checkpoint::{
    agree, checkpoint_dir, list_checkpoints, prune_checkpoints, write_checkpoint, CheckpointSource,
    Position, ValidationState,
};
use super::model_io::{save_model, ModelDescription};
use super::saved::{fill_saved, SavedFolder};
use super::PersistError;
use crate::bundle::ModelBundle;
use crate::cluster::Cluster;
use crate::config::{ExperimentConfig, Preprocessing};
use crate::data::PreparedDataset;
use crate::embedding::EmbeddingEngine;
use crate::progress::Progress;
use crate::sharding_plan::CollectionPlans;
use crate::TrainError;

/// The checkpoints and models a run writes, and what it has written.
pub struct RunCheckpoints<'a> {
    run: PathBuf,
    cfg: &'a ExperimentConfig,
    cluster: &'a Cluster,
    data: &'a PreparedDataset,
    plans: &'a CollectionPlans,
    /// Rows of the job's step, which checkpoints record.
    batch_size: usize,
    preprocessing: Preprocessing,
    pub written: usize,
    pub seconds: f64,
    pub last_step: Option<usize>,
    pub last_dir: Option<PathBuf>,
    /// `train.restore_best`: the step and folder of the best validation's model.
    pub best: Option<(usize, PathBuf)>,
}

impl<'a> RunCheckpoints<'a> {
    pub fn new(
        run: PathBuf,
        cfg: &'a ExperimentConfig,
        cluster: &'a Cluster,
        data: &'a PreparedDataset,
        plans: &'a CollectionPlans,
        batch_size: usize,
    ) -> Self {
        Self {
            run,
            cfg,
            cluster,
            data,
            plans,
            batch_size,
            preprocessing: cfg.data.preprocessing(),
            written: 0,
            seconds: 0.0,
            last_step: None,
            last_dir: None,
            best: None,
        }
    }

    /// What a checkpoint or a model is written from (`opt`: None for weights only).
    fn source<'s>(
        &'s self,
        bundle: &'s ModelBundle,
        opt: Option<&'s DenseOptimizer>,
        position: Position,
        validation: &'s ValidationState,
        vocab_file: &'s Path,
    ) -> CheckpointSource<'s> {
        CheckpointSource {
            bundle,
            dense_optimizer: opt,
            position,
            validation,
            seed: self.cfg.seed,
            schema: &self.data.meta.schema,
            vocab_sizes: &self.data.meta.vocab_sizes,
            vocab_file,
            model: &self.cfg.model,
            plans: self.plans,
            batch_size: self.batch_size,
            preprocessing: &self.preprocessing,
            row_dtype: self.cfg.embedding.row_dtype,
        }
    }

    /// Writes the model (weights only) to `<run>/best`, replacing the previous best
    /// (collective).
    pub fn write_best(
        &mut self,
        bundle: &ModelBundle,
        position: Position,
        validation: &ValidationState,
    ) -> Result<(), TrainError> {
        let t = Instant::now();
        let dir = self.run.join("best");
        let cleared = if self.cluster.is_root() && dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| TrainError::Io {
                path: dir.clone(),
                source,
            })
        } else {
            Ok(())
        };
        let what = format!("replacing the best model {}", dir.display());
        agree(self.cluster, cleared, &what)?;
        let vocab = self.data.dir.join("vocab.bin");
        let src = self.source(bundle, None, position, validation, &vocab);
        write_checkpoint(&dir, &src, self.cluster)?;
        self.seconds += t.elapsed().as_secs_f64();
        self.best = Some((position.step, dir));
        Ok(())
    }

    /// Writes `<run>/checkpoints/step-N` (collective) and drops the oldest beyond
    /// `train.checkpoint_keep`.
    pub fn write(
        &mut self,
        bundle: &ModelBundle,
        opt: &DenseOptimizer,
        position: Position,
        validation: &ValidationState,
        progress: &Progress,
    ) -> Result<(), TrainError> {
        let t = Instant::now();
        let dir = checkpoint_dir(&self.run, position.step);
        let vocab = self.data.dir.join("vocab.bin");
        let src = self.source(bundle, Some(opt), position, validation, &vocab);
        let bytes =
            write_checkpoint(&dir, &src, self.cluster).map_err(|e| self.out_of_space(e, &dir))?;
        if self.cluster.is_root() {
            prune_checkpoints(&self.run, self.cfg.train.checkpoint_keep)?;
        }
        let mut total = [bytes];
        self.cluster.all_reduce_sum(&mut total);
        let secs = t.elapsed().as_secs_f64();
        let ranks = self.cluster.world_size();
        progress.println(&format!(
            "[shardrec] step {}: checkpoint {} ({:.1} MB from {ranks} rank{}) in {secs:.2} s",
            position.step,
            dir.display(),
            total[0] as f64 / 1e6,
            if ranks == 1 { "" } else { "s" }
        ));
        self.written += 1;
        self.seconds += secs;
        self.last_step = Some(position.step);
        self.last_dir = Some(dir);
        Ok(())
    }

    /// `train.restore_best`: loads the best validation's model into `bundle` unless it is
    /// what the bundle holds (the step it reached); returns that model's step.
    pub fn restore_best(
        &self,
        bundle: &mut ModelBundle,
        step: usize,
    ) -> Result<Option<usize>, TrainError> {
        let Some((best_step, dir)) = self.best.as_ref().filter(|_| self.cfg.train.restore_best)
        else {
            return Ok(None);
        };
        if *best_step != step {
            fill_saved(dir, &SavedFolder::read(dir)?, bundle)?;
        }
        if self.cluster.is_root() {
            crate::job::log(&format!(
                "testing the model of step {best_step}, the best validation AUC ({})",
                dir.display()
            ));
        }
        Ok(Some(*best_step))
    }

    /// Saves the trained model to `<run>/model`: one process writes whole tables; under
    /// mpirun no rank holds them, so every rank writes its shards (the checkpoint format
    /// without optimizer state), which `shardrec eval` reads under any ranks.
    pub fn save_model(
        &self,
        bundle: &ModelBundle,
        position: Position,
        validation: &ValidationState,
    ) -> Result<(), TrainError> {
        let dir = self.run.join("model");
        let vocab = self.data.dir.join("vocab.bin");
        // several ranks, or dynamic tables (key maps, blocks saved up to the rows in use):
        // the checkpoint layout, weights only
        if self.cluster.world_size() > 1 || bundle.keys.is_some() {
            let src = self.source(bundle, None, position, validation, &vocab);
            write_checkpoint(&dir, &src, self.cluster).map_err(|e| self.out_of_space(e, &dir))?;
            return Ok(());
        }
        fn local(e: &EmbeddingEngine) -> Result<&LocalEmbeddings, TrainError> {
            e.as_local()
                .ok_or_else(|| PersistError::ShardedInOneProcess.into())
        }
        let mut colls: Vec<(&str, &LocalEmbeddings)> = vec![("main", local(&bundle.tables)?)];
        if let Some(f) = &bundle.first_order {
            colls.push(("first_order", local(f)?));
        }
        let what = ModelDescription {
            model: &self.cfg.model,
            schema: &self.data.meta.schema,
            vocab_sizes: &self.data.meta.vocab_sizes,
            vocab_file: &vocab,
            preprocessing: &self.preprocessing,
        };
        save_model(&dir, &bundle.vs, &what, &colls, None)
            .map_err(|e| self.out_of_space(e.into(), &dir))
    }

    /// A write that failed for want of space (a full disk, a quota, a file size limit)
    /// says so, and which complete checkpoint `--resume` would go on from: what was
    /// written before stays complete (checkpoints are renamed into place when whole).
    fn out_of_space(&self, e: TrainError, dir: &Path) -> TrainError {
        use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
        let full = matches!(&e, TrainError::ModelIo(ModelIoError::Io { source, .. })
            if matches!(source.kind(), StorageFull | QuotaExceeded | FileTooLarge));
        if !full {
            return e;
        }
        let newest = list_checkpoints(&self.run.join("checkpoints"))
            .ok()
            .and_then(|mut v| v.pop());
        PersistError::OutOfSpace {
            dir: dir.to_path_buf(),
            resume: match newest {
                Some(c) => format!(
                    "{} is the newest complete checkpoint: free space, then continue with --resume {}",
                    c.display(),
                    self.run.display()
                ),
                None => "no checkpoint is complete yet: free space and start again".into(),
            },
            source: Box::new(e),
        }
        .into()
    }
}
