//! The ranks of a job: one plain process, or the ranks `mpirun` started (MPICH through
//! the `mpi` crate). MPI is initialised only when a process manager launched us (its
//! `PMI_*` / `PMIX_*` variables are set), so the same binary runs unchanged without
//! mpirun. Implements the tables' [`Exchange`] (all-to-all with counts) and the dense
//! collectives the trainer needs (all-reduce, all-gather).

use mpi::collective::SystemOperation;
use mpi::datatype::{Equivalence, Partition, PartitionMut};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;
use shardrec_tables::{Exchange, TableError};

/// This process's place in the job.
pub struct Cluster {
    rank: usize,
    size: usize,
    mpi: Option<MpiWorld>,
}

struct MpiWorld {
    // Field order matters: the communicator is dropped before the universe finalises MPI.
    world: SimpleCommunicator,
    _universe: mpi::environment::Universe,
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

fn too_big(what: &str, n: usize) -> TableError {
    TableError::Exchange(format!(
        "{what}: {n} values exceed MPI's 32-bit count; use smaller batches or more ranks"
    ))
}

fn count(what: &str, n: usize) -> Result<Count, TableError> {
    Count::try_from(n).map_err(|_| too_big(what, n))
}

fn displacements(counts: &[Count]) -> Result<Vec<Count>, TableError> {
    let mut acc: i64 = 0;
    counts
        .iter()
        .map(|&c| {
            let d = Count::try_from(acc).map_err(|_| too_big("all-to-all buffer", acc as usize));
            acc += i64::from(c);
            d
        })
        .collect()
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
    pub fn from_environment() -> Result<Self, String> {
        if !launched_by_mpirun() {
            return Ok(Self::solo());
        }
        let universe = mpi::initialize().ok_or_else(|| {
            "MPI was already initialised in this process (internal error)".to_string()
        })?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Self {
            rank,
            size,
            mpi: Some(MpiWorld {
                world,
                _universe: universe,
            }),
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
    pub fn all_reduce_sum<T: Equivalence + Copy>(&self, buf: &mut [T]) {
        if let Some(m) = &self.mpi {
            let send = buf.to_vec();
            m.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
        }
    }

    /// Element-wise maximum over all ranks, in place.
    pub fn all_reduce_max<T: Equivalence + Copy>(&self, buf: &mut [T]) {
        if let Some(m) = &self.mpi {
            let send = buf.to_vec();
            m.world
                .all_reduce_into(&send[..], buf, SystemOperation::max());
        }
    }

    /// Every rank's `v`, concatenated in rank order, on every rank.
    pub fn all_gather<T: Equivalence + Copy + Default>(
        &self,
        v: &[T],
    ) -> Result<Vec<T>, TableError> {
        let Some(m) = &self.mpi else {
            return Ok(v.to_vec());
        };
        let mine = count("all-gather", v.len())?;
        let mut counts = vec![0 as Count; self.size];
        m.world.all_gather_into(&mine, &mut counts[..]);
        let displs = displacements(&counts)?;
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut out = vec![T::default(); total];
        {
            let mut part = PartitionMut::new(&mut out[..], counts, &displs[..]);
            m.world.all_gather_varcount_into(v, &mut part);
        }
        Ok(out)
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

    /// Ends the whole job with `code`: under mpirun `MPI_Abort`, so the other ranks never
    /// wait forever in a collective for a rank that has stopped; else a plain exit.
    pub fn abort(&self, code: i32) -> ! {
        if let Some(m) = &self.mpi {
            m.world.abort(code)
        }
        std::process::exit(code)
    }

    /// Waits for every rank.
    pub fn barrier(&self) {
        if let Some(m) = &self.mpi {
            m.world.barrier();
        }
    }

    fn all_to_all_v<T: Equivalence + Copy + Default>(
        &self,
        send: Vec<Vec<T>>,
    ) -> Result<Vec<Vec<T>>, TableError> {
        if send.len() != self.size {
            return Err(TableError::SizeMismatch {
                what: "all-to-all send buffers (one per rank)".into(),
                expected: self.size,
                got: send.len(),
            });
        }
        let Some(m) = &self.mpi else {
            return Ok(send);
        };
        let send_counts = send
            .iter()
            .map(|v| count("all-to-all", v.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut recv_counts = vec![0 as Count; self.size];
        m.world
            .all_to_all_into(&send_counts[..], &mut recv_counts[..]);
        let send_displs = displacements(&send_counts)?;
        let recv_displs = displacements(&recv_counts)?;
        let flat: Vec<T> = send.concat();
        let total: usize = recv_counts.iter().map(|&c| c as usize).sum();
        let mut recv = vec![T::default(); total];
        {
            let s = Partition::new(&flat[..], &send_counts[..], &send_displs[..]);
            let mut r = PartitionMut::new(&mut recv[..], &recv_counts[..], &recv_displs[..]);
            m.world.all_to_all_varcount_into(&s, &mut r);
        }
        Ok(recv_displs
            .iter()
            .zip(&recv_counts)
            .map(|(&d, &c)| recv[d as usize..(d + c) as usize].to_vec())
            .collect())
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
