//! The sharded exchange over real MPI (MPICH, `mpirun -np 1, 2, 4`): every sharding kind
//! and sparse optimizer gives the embeddings and rows of the one-process table.

use std::time::Duration;

use crate::common::*;

#[test]
fn sharded_exchange_over_mpi_matches_the_one_process_table() {
    let dir = tempfile::tempdir().unwrap();
    for ranks in [1, 2, 4] {
        let o = run_mpi(
            dir.path(),
            ranks,
            &["check-exchange"],
            Duration::from_secs(120),
        );
        let report = summary(&o);
        assert_eq!(report["world_size"], ranks, "{report}");
        assert_eq!(report["mpi"], true, "{report}");
        let cases = report["cases"].as_array().unwrap();
        // table-, row-, column-wise and data-parallel, each with four optimizers
        assert!(cases.len() >= 16, "{report}");
        for c in cases {
            assert!(c["max_embedding_diff"].as_f64().unwrap() <= 1e-6, "{c}");
            assert!(c["max_row_diff"].as_f64().unwrap() <= 1e-6, "{c}");
            assert_eq!(c["max_row_diff_sliced"].as_f64(), Some(0.0), "{c}");
            assert_eq!(c["every_row_held_once"], true, "{c}");
        }
        assert_eq!(report["ok"], true, "{report}");
    }
}
