//! A fast, deterministic hasher for vocabulary maps (tens of millions of short keys per
//! pass). Not DoS-resistant, which does not matter for reading one's own data files.

use std::hash::{BuildHasher, Hasher};

use shardrec_tables::mix64;

#[derive(Debug, Default, Clone, Copy)]
pub struct FastHashBuilder;

impl BuildHasher for FastHashBuilder {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0x243F_6A88_85A3_08D3)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = mix64(self.0 ^ u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.0 = mix64(self.0 ^ u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = mix64(self.0 ^ n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
