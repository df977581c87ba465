//! The ranks of a job: one plain process, or the ranks `mpirun` started (MPICH through
//! the `mpi` crate). MPI is initialised only when a process manager launched us (its
//! `PMI_*` / `PMIX_*` variables are set), so the same binary runs unchanged without
//! mpirun. Implements the tables' [`Exchange`] (all-to-all with counts) and the dense
//! collectives the trainer needs (all-reduce, all-gather).
//!
//! This module is the only place that knows MPI: the `mpi` cargo feature (on by default)
//! brings the MPI world in [`mpi_world`]; a `--no-default-features` build has none, trains
//! in one process, and refuses to run under mpirun rather than run N copies of one job.

#[cfg(feature = "mpi")]
mod mpi_world;
#[cfg(not(feature = "mpi"))]
mod no_mpi;

#[cfg(feature = "mpi")]
use mpi_world::MpiWorld;
#[cfg(not(feature = "mpi"))]
use no_mpi::MpiWorld;
use shardrec_tables::{Exchange, TableError};

#[cfg(feature = "mpi")]
pub use mpi_world::Element;
#[cfg(not(feature = "mpi"))]
pub use no_mpi::Element;

/// Why the job's ranks could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("MPI was already initialised in this process (internal error)")]
    AlreadyInitialised,
    #[error("launched by mpirun, but this shardrec was built without MPI (--no-default-features); rebuild with the default features, or run it without mpirun")]
    BuiltWithoutMpi,
}

/// This process's place in the job.
pub struct Cluster {
    rank: usize,
    size: usize,
    mpi: Option<MpiWorld>,
}

/// Whether a process manager (mpirun / mpiexec / srun with PMI) started this process.
pub fn launched_by_mpirun() -> bool {
    ["PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

impl Cluster {
    /// One plain process.
    pub fn solo() -> Self {
        Self {
            rank: 0,
            size: 1,
            mpi: None,
        }
    }

    /// The MPI world when launched by mpirun, else one plain process.
    pub fn from_environment() -> Result<Self, ClusterError> {
        if !launched_by_mpirun() {
            return Ok(Self::solo());
        }
        let world = MpiWorld::initialise()?;
        Ok(Self {
            rank: world.rank(),
            size: world.size(),
            mpi: Some(world),
        })
    }

    /// This rank's index among the ranks on its node (MPICH's hydra says it; else the
    /// rank), e.g. to pick its GPU.
    pub fn local_rank(&self) -> usize {
        env_usize("MPI_LOCALRANKID").unwrap_or(self.rank)
    }

    /// Ranks on this node (1 without mpirun).
    pub fn local_size(&self) -> usize {
        env_usize("MPI_LOCALNRANKS").unwrap_or(1)
    }

    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    pub fn is_mpi(&self) -> bool {
        self.mpi.is_some()
    }

    /// Sums `buf` element-wise over all ranks, in place.
    pub fn all_reduce_sum<T: Element>(&self, buf: &mut [T]) {
        if let Some(m) = &self.mpi {
            m.all_reduce_sum(buf);
        }
    }

    /// Element-wise maximum over all ranks, in place.
    pub fn all_reduce_max<T: Element>(&self, buf: &mut [T]) {
        if let Some(m) = &self.mpi {
            m.all_reduce_max(buf);
        }
    }

    /// Every rank's `v`, concatenated in rank order, on every rank.
    pub fn all_gather<T: Element>(&self, v: &[T]) -> Result<Vec<T>, TableError> {
        match &self.mpi {
            Some(m) => m.all_gather(v),
            None => Ok(v.to_vec()),
        }
    }

    /// Rank 0's bytes, on every rank.
    pub fn broadcast_from_root(&self, v: &[u8]) -> Result<Vec<u8>, TableError> {
        self.all_gather(if self.is_root() { v } else { &[] })
    }

    /// Every rank's bytes (of any length), in rank order, on every rank.
    pub fn all_gather_bytes(&self, v: &[u8]) -> Result<Vec<Vec<u8>>, TableError> {
        let lens = self.all_gather(&[v.len() as u64])?;
        let all = self.all_gather(v)?;
        let mut at = 0usize;
        Ok(lens
            .iter()
            .map(|&n| {
                let part = all[at..at + n as usize].to_vec();
                at += n as usize;
                part
            })
            .collect())
    }

    /// Every rank's report entries (JSON values), in rank order, on every rank.
    pub fn all_gather_json(
        &self,
        mine: &[serde_json::Value],
    ) -> Result<Vec<serde_json::Value>, TableError> {
        let all = self.all_gather_bytes(&serde_json::to_vec(mine).unwrap_or_default())?;
        Ok(all
            .iter()
            .filter_map(|b| serde_json::from_slice::<Vec<serde_json::Value>>(b).ok())
            .flatten()
            .collect())
    }

    /// Ends the whole job with `code`: under mpirun `MPI_Abort`, so the other ranks never
    /// wait forever in a collective for a rank that has stopped; else a plain exit.
    pub fn abort(&self, code: i32) -> ! {
        if let Some(m) = &self.mpi {
            m.abort(code)
        }
        std::process::exit(code)
    }

    /// Waits for every rank.
    pub fn barrier(&self) {
        if let Some(m) = &self.mpi {
            m.barrier();
        }
    }

    fn all_to_all_v<T: Element>(&self, send: Vec<Vec<T>>) -> Result<Vec<Vec<T>>, TableError> {
        if send.len() != self.size {
            return Err(TableError::SizeMismatch {
                what: "all-to-all send buffers (one per rank)".into(),
                expected: self.size,
                got: send.len(),
            });
        }
        match &self.mpi {
            Some(m) => m.all_to_all_v(send),
            None => Ok(send),
        }
    }
}

impl Exchange for Cluster {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.size
    }
    fn all_to_all_u64(&self, send: Vec<Vec<u64>>) -> Result<Vec<Vec<u64>>, TableError> {
        self.all_to_all_v(send)
    }
    fn all_to_all_f32(&self, send: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, TableError> {
        self.all_to_all_v(send)
    }
}
