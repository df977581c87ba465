//! A build without MPI (`--no-default-features`): there is no MPI world, so a
//! [`super::Cluster`] is always one plain process and its collectives are the identity.

use shardrec_tables::TableError;

use super::ClusterError;

/// A value the collectives move.
pub trait Element: Copy + Default {}
impl<T: Copy + Default> Element for T {}

/// Uninhabited: no value exists, so every method below is unreachable.
pub(super) enum MpiWorld {}

impl MpiWorld {
    pub(super) fn initialise() -> Result<Self, ClusterError> {
        Err(ClusterError::BuiltWithoutMpi)
    }

    pub(super) fn rank(&self) -> usize {
        match *self {}
    }

    pub(super) fn size(&self) -> usize {
        match *self {}
    }

    pub(super) fn all_reduce_sum<T: Element>(&self, _: &mut [T]) {
        match *self {}
    }

    pub(super) fn all_reduce_max<T: Element>(&self, _: &mut [T]) {
        match *self {}
    }

    pub(super) fn all_gather<T: Element>(&self, _: &[T]) -> Result<Vec<T>, TableError> {
        match *self {}
    }

    pub(super) fn abort(&self, _: i32) -> ! {
        match *self {}
    }

    pub(super) fn barrier(&self) {
        match *self {}
    }

    pub(super) fn all_to_all_v<T: Element>(
        &self,
        _: Vec<Vec<T>>,
    ) -> Result<Vec<Vec<T>>, TableError> {
        match *self {}
    }
}
