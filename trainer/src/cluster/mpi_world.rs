//! The MPI world (MPICH through the `mpi` crate): the collectives [`super::Cluster`]
//! delegates to when mpirun started the job.

use mpi::collective::SystemOperation;
use mpi::datatype::{Equivalence, Partition, PartitionMut};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;
use shardrec_tables::TableError;

use super::ClusterError;

/// A value the collectives move: one MPI knows the datatype of.
pub trait Element: Equivalence + Copy + Default {}
impl<T: Equivalence + Copy + Default> Element for T {}

pub(super) struct MpiWorld {
    // Field order matters: the communicator is dropped before the universe finalises MPI.
    world: SimpleCommunicator,
    _universe: mpi::environment::Universe,
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

impl MpiWorld {
    pub(super) fn initialise() -> Result<Self, ClusterError> {
        let universe = mpi::initialize().ok_or(ClusterError::AlreadyInitialised)?;
        Ok(Self {
            world: universe.world(),
            _universe: universe,
        })
    }

    pub(super) fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    pub(super) fn size(&self) -> usize {
        self.world.size() as usize
    }

    pub(super) fn all_reduce_sum<T: Element>(&self, buf: &mut [T]) {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
    }

    pub(super) fn all_reduce_max<T: Element>(&self, buf: &mut [T]) {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::max());
    }

    pub(super) fn all_gather<T: Element>(&self, v: &[T]) -> Result<Vec<T>, TableError> {
        let mine = count("all-gather", v.len())?;
        let mut counts = vec![0 as Count; self.size()];
        self.world.all_gather_into(&mine, &mut counts[..]);
        let displs = displacements(&counts)?;
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut out = vec![T::default(); total];
        {
            let mut part = PartitionMut::new(&mut out[..], counts, &displs[..]);
            self.world.all_gather_varcount_into(v, &mut part);
        }
        Ok(out)
    }

    pub(super) fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    pub(super) fn barrier(&self) {
        self.world.barrier();
    }

    pub(super) fn all_to_all_v<T: Element>(
        &self,
        send: Vec<Vec<T>>,
    ) -> Result<Vec<Vec<T>>, TableError> {
        let send_counts = send
            .iter()
            .map(|v| count("all-to-all", v.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut recv_counts = vec![0 as Count; self.size()];
        self.world
            .all_to_all_into(&send_counts[..], &mut recv_counts[..]);
        let send_displs = displacements(&send_counts)?;
        let recv_displs = displacements(&recv_counts)?;
        let flat: Vec<T> = send.concat();
        let total: usize = recv_counts.iter().map(|&c| c as usize).sum();
        let mut recv = vec![T::default(); total];
        {
            let s = Partition::new(&flat[..], &send_counts[..], &send_displs[..]);
            let mut r = PartitionMut::new(&mut recv[..], &recv_counts[..], &recv_displs[..]);
            self.world.all_to_all_varcount_into(&s, &mut r);
        }
        Ok(recv_displs
            .iter()
            .zip(&recv_counts)
            .map(|(&d, &c)| recv[d as usize..(d + c) as usize].to_vec())
            .collect())
    }
}
