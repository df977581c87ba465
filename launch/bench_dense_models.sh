#!/usr/bin/env bash
# Issue 21: DeepFM and DCNv2 (configs/synthetic_*.toml) of two builds on the same
# generated rows, alternating runs (A B A B ...), one epoch, 2 threads. Not a test:
# prints one line per run.
#
#   BIN_A=target/release/shardrec BIN_B=/path/to/other/shardrec launch/bench_dense_models.sh [ROUNDS]
#
# Data: `shardrec synth --rows 300000 --cardinality 1000000` (240,000 rows train, 60,000
# test), generated once into data/bench/s300k. Each build prepares it into its own cache
# (prepared formats may differ between builds). A line: model, build (a or b), round,
# samples/s, test AUC, dense forward+backward s, lookup + sparse update s, peak RSS MiB.
# Runs, summaries and logs go to data/bench/dense-models.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=data/bench/dense-models
BIN_A=${BIN_A:-target/release/shardrec}
BIN_B=${BIN_B:?set BIN_B to the build to compare with}
BIN=$BIN_A
source launch/bench_jobs.sh
ROUNDS=${1:-3}
D=data/bench/s300k
mkdir -p "$D"
[ -f "$D/synth.tsv.json" ] || "$BIN_A" synth --rows 300000 --cardinality 1000000 --out "$D/synth.tsv" > /dev/null
for model in deepfm dcnv2; do
  for r in $(seq "$ROUNDS"); do
    for side in a b; do
      bin=$BIN_A
      [ "$side" = b ] && bin=$BIN_B
      BIN=$bin job "$model-$side-$r" 1 "configs/synthetic_$model.toml" \
        --set "data.train=\"$D/synth.tsv\"" --set "data.cache_dir=\"$D/cache-$side\""
      tail -n 1 "$OUT/$model-$side-$r.json" | python3 -c "
import json, sys
s = json.load(sys.stdin); t = s['time']
print('$model $side $r', round(s['train_samples_per_s']), s['auc'], round(t['dense_forward_backward_s'], 2),
      round(t['lookup_s'] + t['sparse_update_s'], 2), round(s['peak_rss_bytes'] / 2**20))"
    done
  done
done
