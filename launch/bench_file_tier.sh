#!/usr/bin/env bash
# The file tier at equal size (issue 18): DLRM on generated Zipf(1.1) data, tables in
# RAM against the same tables in the file tier with a cache of 10% and of 1% of their
# rows (with and without the prefetch at 10%), runs alternated (RAM, 10%, 10% without
# prefetch, 1%, RAM, ...). Prints samples/s, the ratio to the RAM run of the same round,
# the cache hit rate, peak RSS and the test AUC (which must agree to the last digit).
# With NP > 1 every run is `mpirun -np NP` (tables row-wise, the cache per rank); with
# POLICY=lfu in the environment the caches are LFU (default lru). Not a test: prints
# figures.
#
#   launch/bench_file_tier.sh [ROWS] [ROUNDS] [TIER_DIR] [NP]   (defaults 500000 2 data/bench/tier 1)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROWS=${1:-500000}
ROUNDS=${2:-2}
TIER=${3:-data/bench/tier}
NP=${4:-1}
POLICY=${POLICY:-lru}
# shellcheck source=launch/dlrm_config.sh
source "$(dirname "${BASH_SOURCE[0]}")/dlrm_config.sh"
zipf_data "$ROWS" 1000000
CFG=$DIR/bench_file_tier.toml
mkdir -p "$TIER"
dlrm_config "$CFG" "$DATA" 1 "" "log_every = 100000"
"$BIN" prepare "$CFG" > /dev/null
RUNS=$DIR/runs/file-tier
rm -rf "$RUNS"
run() { # name, extra --set...
  local name=$1
  shift
  local launch=("$BIN")
  [ "$NP" -gt 1 ] && launch=(mpirun -np "$NP" "$BIN")
  "${launch[@]}" train "$CFG" --set train.run_dir="\"$RUNS/$name\"" \
    --set 'sharding.strategy="row_wise"' "$@" 2>/dev/null | tail -n 1
}
summary_of() {
  python3 -c '
import json, sys
s = json.loads(sys.stdin.read())
tiers = s.get("file_tier") or []
hits = sum(t["hits"] for t in tiers); misses = sum(t["misses"] for t in tiers)
rate = f"{hits / max(1, hits + misses):.3f}" if tiers else "-"
print(s["train_samples_per_s"], s["auc"], s["peak_rss_bytes"], s["embedding_params"], rate)'
}
echo "round  storage             samples/s  ratio  hit_rate  peak_rss_MB  auc"
for round in $(seq 1 "$ROUNDS"); do
  read -r ram_sps ram_auc ram_rss params _ < <(run "ram-$round" | summary_of)
  printf "%5s  %-18s %10.0f  %5s  %8s  %11.0f  %s\n" "$round" ram "$ram_sps" 1.00 - "$((ram_rss / 1000000))" "$ram_auc"
  rows=$((params / 16))
  for variant in 10 10-no-prefetch 1; do
    pct=${variant%%-*}
    prefetch=true
    [ "$variant" = 10-no-prefetch ] && prefetch=false
    # a cached row: 16 weights + 16 Adagrad floats, and 17 bytes of bookkeeping (LFU: 21);
    # per rank
    overhead=17
    [ "$POLICY" = lfu ] && overhead=21
    cache=$((rows * pct / 100 / NP * (32 * 4 + overhead)))
    storage="embedding.storage={kind=\"file\", dir=\"$TIER\", cache_bytes=$cache, prefetch=$prefetch, policy=\"$POLICY\"}"
    read -r sps auc rss _ rate < <(run "file$variant-$round" --set "$storage" | summary_of)
    ratio=$(python3 -c "print(f'{$sps / $ram_sps:.2f}')")
    label="file $pct%"
    [ "$prefetch" = false ] && label="$label, no pf"
    printf "%5s  %-18s %10.0f  %5s  %8s  %11.0f  %s\n" "$round" "$label" "$sps" "$ratio" "$rate" "$((rss / 1000000))" "$auc"
  done
done
echo "tables: $rows rows of dim 16 with Adagrad state ($((rows * 128 / 1000000)) MB)"
