#!/usr/bin/env bash
# A Python environment with pyarrow and numpy, for writing Parquet and npy files the
# way users' tools do (launch/make_format_samples.py, launch/criteo_to_parquet.py).
# Idempotent; prints the python to use.   usage: formats_venv.sh [VENV_DIR]
set -euo pipefail
V=${1:-$HOME/.cache/shardrec-formats-venv}
if ! [ -x "$V/bin/python" ] || ! "$V/bin/python" -c 'import pyarrow, numpy' 2>/dev/null; then
  python3 -m venv "$V"
  "$V/bin/pip" install -q pyarrow numpy
fi
echo "$V/bin/python"
