#!/usr/bin/env bash
# Twice the RAM (issue 18): DLRM on generated Zipf(1.1) data with 26 hashed tables of
# BUCKETS rows each, dim 16, Adagrad (128 bytes of rows + state a row: 26 x 15.5M rows is
# 51.6 GB, 48 GiB, on a 23 GiB machine), in the file tier with a 4 GiB cache, against the
# same model with tables of RAM_BUCKETS rows that fit in RAM. One epoch of the training
# rows each; no checkpoint. Prints samples/s, their ratio, peak RSS, the hit rate and
# the test AUC. Not a test: prints figures.
#
#   launch/bench_file_tier_huge.sh [ROWS] [BUCKETS] [RAM_BUCKETS] [TIER_DIR]
#   (defaults 2500000 15500000 1000000 data/bench/tier)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROWS=${1:-2500000}
BUCKETS=${2:-15500000}
RAM_BUCKETS=${3:-1000000}
TIER=${4:-data/bench/tier}
CACHE=$((4 << 30))
# shellcheck source=launch/dlrm_config.sh
source "$(dirname "${BASH_SOURCE[0]}")/dlrm_config.sh"
zipf_data "$ROWS" 10000000
CFG=$DIR/bench_file_tier_huge.toml
mkdir -p "$TIER"
dlrm_config "$CFG" "$DATA" 1 "kind = \"hashed\"
buckets = $RAM_BUCKETS" "log_every = 100000"
"$BIN" prepare "$CFG" > /dev/null
RUNS=$DIR/runs/file-tier-huge
rm -rf "$RUNS"
report() { # label
  python3 -c '
import json, sys
label = sys.argv[1]
s = json.loads(sys.stdin.read().splitlines()[-1])
tiers = s.get("file_tier") or []
hits = sum(t["hits"] for t in tiers)
misses = sum(t["misses"] for t in tiers)
file_gib = sum(t["file_bytes"] for t in tiers) / 2**30
rate = "%.3f" % (hits / max(1, hits + misses)) if tiers else "-"
rows = s["embedding_params"] // 16
print("%s: %d table rows (%.1f GiB of rows + state; files %.1f GiB), %.0f samples/s, "
      "peak RSS %.2f GiB, hit rate %s, test AUC %s, samples %d" % (
      label, rows, rows * 128 / 2**30, file_gib, s["train_samples_per_s"],
      s["peak_rss_bytes"] / 2**30, rate, s["auc"], s["samples_seen"]))' "$1"
}
echo "[bench] RAM: $RAM_BUCKETS buckets a table" >&2
"$BIN" train "$CFG" --set train.run_dir="\"$RUNS/ram\"" 2>/dev/null | report ram
echo "[bench] file tier: $BUCKETS buckets a table, cache $CACHE bytes" >&2
"$BIN" train "$CFG" --set train.run_dir="\"$RUNS/file\"" --set embedding.buckets="$BUCKETS" \
  --set "embedding.storage={kind=\"file\", dir=\"$TIER\", cache_bytes=$CACHE}" 2>/dev/null | report file
