#!/usr/bin/env bash
# Sets up (launch/setup.sh), then runs every check: formatting, clippy, and all tests
# (unit tests of each crate and the integration tests in tests/), in release mode so the
# libtorch bindings are compiled once for both the binary and the tests.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash launch/setup.sh
source launch/env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release --quiet -- -D warnings
# a build without MPI (for machines without MPICH) compiles and is lint-clean
cargo clippy -p shardrec --all-targets --release --no-default-features --quiet -- -D warnings
# no two modules of the trainer (or of the data crate) import each other
python3 launch/check_imports.py trainer/src
python3 launch/check_imports.py trainer/data/src
# the data crate builds without libtorch and MPI
if cargo tree -p shardrec-data -e normal --prefix none | grep -qE '^(tch|torch-sys|mpi) '; then
  echo "shardrec-data depends on libtorch or MPI" >&2
  exit 1
fi
cargo test --workspace --release
