#!/usr/bin/env bash
# The embedding-heavy config of issue 21 against TorchRec's fused tables, alternating
# runs on the same files and threads: 13 dense, 26 single-valued and 8 multi-valued
# features (bags of about 20 ids), ids from 10^6 values, dim 64, DLRM (bottom 512-256-64,
# top 512-256-1), batch 2048, Adagrad lr 0.01 on the tables (sum pooling), Adam 1e-3 on
# the MLPs, one epoch over 80% of ROWS rows, the rest the test split.
#   usage: launch/bench_multihot.sh [ROWS] [THREADS] [ROUNDS]     (defaults 200000 2 2)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-200000}
THREADS=${2:-2}
ROUNDS=${3:-2}
source launch/env.sh
BIN=${BIN:-target/release/shardrec}   # BIN=... measures another build
[ -x "$BIN" ] || bash launch/setup.sh
PY=$(bash ../shared/peers/setup.sh | tail -n 1)
DIR=data/bench/multihot-$ROWS
mkdir -p "$DIR"
[ -f "$DIR/m-test.tsv" ] || "$PY" launch/make_multihot.py "$DIR/m" "$ROWS"
CFG=$DIR/multihot-$THREADS.toml
{
  printf 'seed = 2024\n[data]\nformat = "delimited"\ntrain = "%s"\ntest = "%s"\n' "$DIR/m-train.tsv" "$DIR/m-test.tsv"
  printf 'cache_dir = "%s/prepared"\ncolumns = [\n  { name = "label", role = "label" },\n' "$DIR"
  for i in $(seq 1 13); do printf '  { name = "I%d", role = "dense" },\n' "$i"; done
  for i in $(seq 1 26); do printf '  { name = "S%d", role = "categorical" },\n' "$i"; done
  for i in $(seq 1 8); do printf '  { name = "M%d", role = "categorical", separator = "|" },\n' "$i"; done
  printf ']\n[embedding]\ndim = 64\npooling = "sum"\noptimizer = { kind = "adagrad", lr = 0.01, eps = 1e-8 }\n'
  printf '[model]\nkind = "dlrm"\nbottom = [512, 256]\ntop = [512, 256]\n[optimizer]\nkind = "adam"\nlr = 0.001\n'
  printf '[train]\nepochs = 1\nbatch_size = 2048\nthreads = %s\nsave_model = false\n' "$THREADS"
} > "$CFG"
"$BIN" prepare "$CFG" > /dev/null
for r in $(seq 1 "$ROUNDS"); do
  ours=$("$BIN" train "$CFG" 2>/dev/null | tail -n 1)
  peer=$("$PY" launch/torchrec_multihot.py "$DIR/m-train.tsv" --test "$DIR/m-test.tsv" \
    --threads "$THREADS" --emb-dim 64 --batch-size 2048 2>&1 | grep RESULT)
  python3 - "$ours" "$peer" "$r" <<'PY'
import json, sys
ours, peer, r = json.loads(sys.argv[1]), dict(kv.split("=", 1) for kv in sys.argv[2].split()[1:] if "=" in kv), sys.argv[3]
a, b = ours["train_samples_per_s"], float(peer["train_samples_per_s"])
t = ours.get("time", {})
print(f"round {r}: shardrec {a:.0f} samples/s (test AUC {ours['auc']:.4f}, peak RSS {ours['peak_rss_bytes'] / 2**20:.0f} MiB) | "
      f"torchrec fused {b:.0f} samples/s (test AUC {float(peer['test_auc']):.4f}) | ratio {a / b:.2f}x")
print(f"  shardrec phases: {json.dumps(t)}")
PY
done
