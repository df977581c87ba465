//! The models' own checks, in one test binary (each links libtorch): autograd gradients
//! against finite differences, and the dense optimizers against libtorch's.
//! `cargo test -p shardrec-models` runs them.

mod dense_optimizers;
mod gradients;
