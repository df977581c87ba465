#!/usr/bin/env bash
# Sourced by the speed benchmarks: generates (once) ROWS rows of Criteo-shaped data whose
# 26 categorical fields are drawn near-uniformly from 10^6 values each (so each table has
# close to 10^6 rows), writes the benchmark's DLRM config (batch 2048, dim 16, bottom
# 512-256-16, top 512-256-1, Adagrad lr 0.01 on the tables, Adam 1e-3 on the MLPs, one
# epoch, THREADS threads) to $CFG and prepares the data.
#   needs: BIN ROWS THREADS; sets: DIR DATA CFG
DIR=data/bench
DATA=$DIR/uniform-$ROWS.tsv
CFG=$DIR/bench_dlrm-$THREADS.toml
mkdir -p "$DIR"
[ -f "$DATA.json" ] || "$BIN" synth --rows "$ROWS" --cardinality 1000000 --zipf 0.0001 --out "$DATA" > /dev/null
cat > "$CFG" <<TOML
seed = 2024
[data]
format = "criteo"
train = "$DATA"
split = { kind = "tail", test = 0.2 }
cache_dir = "$DIR/prepared"
[embedding]
dim = 16
optimizer = { kind = "adagrad", lr = 0.01, eps = 1e-8 }
[model]
kind = "dlrm"
bottom = [512, 256]
top = [512, 256]
[optimizer]
kind = "adam"
lr = 0.001
[train]
epochs = 1
batch_size = 2048
threads = $THREADS
save_model = false
TOML
"$BIN" prepare "$CFG" > /dev/null
