//! The seam between tables and the memory that holds their rows.
//!
//! A shard's rows are one contiguous block of `rows x width` f32 values. Today that block
//! lives in RAM ([`InMemoryRows`]); tables larger than RAM will put it in a memory-mapped
//! file, which is also a contiguous `&mut [f32]`, so nothing above this trait changes.

/// Contiguous row-major storage of f32 rows.
pub trait RowStorage: Send + Sync + std::fmt::Debug {
    fn as_slice(&self) -> &[f32];
    fn as_mut_slice(&mut self) -> &mut [f32];
    /// Bytes of memory this storage holds.
    fn bytes(&self) -> usize {
        std::mem::size_of_val(self.as_slice())
    }
}

/// Rows in a heap vector.
#[derive(Debug, Clone, PartialEq)]
pub struct InMemoryRows {
    data: Vec<f32>,
}

impl InMemoryRows {
    pub fn zeros(len: usize) -> Self {
        Self {
            data: vec![0.0; len],
        }
    }

    pub fn filled(len: usize, value: f32) -> Self {
        Self {
            data: vec![value; len],
        }
    }

    pub fn from_vec(data: Vec<f32>) -> Self {
        Self { data }
    }
}

impl RowStorage for InMemoryRows {
    fn as_slice(&self) -> &[f32] {
        &self.data
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }
}
