#!/usr/bin/env bash
# Sourced by the speed benchmarks: generates (once) ROWS rows of Criteo-shaped data whose
# 26 categorical fields are drawn near-uniformly from 10^6 values each (so each table has
# close to 10^6 rows), writes the benchmark's DLRM config (batch 2048, dim 16, bottom
# 512-256-16, top 512-256-1, Adagrad lr 0.01 on the tables, Adam 1e-3 on the MLPs, one
# epoch, THREADS threads) to $CFG and prepares the data.
#   needs: BIN ROWS THREADS; sets: DIR DATA CFG
DIR=data/bench
# shellcheck source=launch/dlrm_config.sh
source "$(dirname "${BASH_SOURCE[0]}")/dlrm_config.sh"
DATA=$DIR/uniform-$ROWS.tsv
CFG=$DIR/bench_dlrm-$THREADS.toml
mkdir -p "$DIR"
[ -f "$DATA.json" ] || "$BIN" synth --rows "$ROWS" --cardinality 1000000 --zipf 0.0001 --out "$DATA" > /dev/null
dlrm_config "$CFG" "$DATA" "$THREADS"
"$BIN" prepare "$CFG" > /dev/null
