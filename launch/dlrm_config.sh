#!/usr/bin/env bash
# Sourced by the benchmarks: dlrm_config OUT DATA THREADS [EMBEDDING_LINES] [TRAIN_LINES]
# writes the speed benchmarks' DLRM config (batch 2048, dim 16, bottom 512-256-16, top
# 512-256-1, Adagrad lr 0.01 on the tables, Adam 1e-3 on the MLPs, one epoch) over the
# Criteo-format DATA (test: its last 20%, prepared under $DIR/prepared) to OUT, with
# extra lines for [embedding] and [train].
dlrm_config() {
  local out=$1 data=$2 threads=$3 embedding=${4:-} train=${5:-}
  {
    cat <<TOML
seed = 2024
[data]
format = "criteo"
train = "$data"
split = { kind = "tail", test = 0.2 }
cache_dir = "$DIR/prepared"
[embedding]
dim = 16
optimizer = { kind = "adagrad", lr = 0.01, eps = 1e-8 }
TOML
    if [ -n "$embedding" ]; then printf '%s\n' "$embedding"; fi
    cat <<TOML
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
threads = $threads
save_model = false
TOML
    if [ -n "$train" ]; then printf '%s\n' "$train"; fi
  } > "$out"
}

# zipf_data ROWS CARDINALITY: the file-tier benchmarks' set-up. Sets BIN (building it if
# missing), DIR (data/bench) and DATA, ROWS generated Criteo rows with Zipf(1.1) ids over
# CARDINALITY values a field, generated once.
zipf_data() {
  local rows=$1 cardinality=$2
  source launch/env.sh
  BIN=target/release/shardrec
  [ -x "$BIN" ] || bash launch/setup.sh
  DIR=data/bench
  DATA=$DIR/zipf-$rows.tsv
  mkdir -p "$DIR"
  [ -f "$DATA.json" ] || "$BIN" synth --rows "$rows" --cardinality "$cardinality" --zipf 1.1 --out "$DATA" > /dev/null
}
