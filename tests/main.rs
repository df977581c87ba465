//! shardrec's integration tests, in one binary (each test binary links libtorch).
//!
//! Tests that read the bundled real data (`../shared/data`) skip with a message when it
//! is absent (a user's clone); CI sets `SHARDREC_REQUIRE_SHARED=1`, which turns the
//! absence into a failure.

mod common;

mod bad_config;
mod bad_input;
mod checkpoints;
mod cli_train;
mod data_formats;
mod dynamic;
mod file_tier;
mod fused;
mod launch_scripts;
mod model_files;
mod mpi_exchange;
mod mpi_train;
mod optembed;
mod optimizers;
mod real_data;
mod sequence;
mod synth_data;
mod unified;
