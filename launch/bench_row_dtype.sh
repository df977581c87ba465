#!/usr/bin/env bash
# Row precision (issue 18): DLRM on the generated Zipf(1.1) data of the file-tier
# benchmark, the tables' rows stored as f32, f16 and bf16 (optimizer state f32), in RAM
# and in the file tier with a cache of 10% of the rows, runs alternated
# (f32, f16, bf16, f16 file, ...). Prints samples/s, the ratio to the f32 run of the same
# round, the test AUC and its difference from f32's, and the table bytes this rank holds
# (rows plus state in RAM; for the file tier, its cache). Not a test: prints figures.
#
#   launch/bench_row_dtype.sh [ROWS] [ROUNDS] [TIER_DIR]   (defaults 500000 2 data/bench/tier)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROWS=${1:-500000}
ROUNDS=${2:-2}
TIER=${3:-data/bench/tier}
# shellcheck source=launch/dlrm_config.sh
source "$(dirname "${BASH_SOURCE[0]}")/dlrm_config.sh"
zipf_data "$ROWS" 1000000
CFG=$DIR/bench_row_dtype.toml
mkdir -p "$TIER"
dlrm_config "$CFG" "$DATA" 1 "" "log_every = 100000"
"$BIN" prepare "$CFG" > /dev/null
RUNS=$DIR/runs/row-dtype
rm -rf "$RUNS"
run() { # name, extra --set...
  local name=$1
  shift
  "$BIN" train "$CFG" --set train.run_dir="\"$RUNS/$name\"" "$@" 2>/dev/null | tail -n 1 |
    python3 -c '
import json, sys
s = json.loads(sys.stdin.read())
held = s["embedding_bytes_this_rank"] + s["optimizer_state_bytes_this_rank"]
print(s["train_samples_per_s"], s["auc"], s["embedding_bytes_this_rank"], held, s["embedding_params"])'
}
echo "round  rows   storage  samples/s  ratio  auc       auc-f32    weight_MB  held_MB"
for round in $(seq 1 "$ROUNDS"); do
  read -r sps32 auc32 w32 held32 params < <(run "f32-$round")
  printf "%5s  %-5s  %-7s %10.0f  %5s  %.6f  %9s  %9.1f  %7.1f\n" "$round" f32 ram "$sps32" 1.00 "$auc32" - \
    "$(python3 -c "print($w32 / 1e6)")" "$(python3 -c "print($held32 / 1e6)")"
  rows=$((params / 16))
  # a cached record: 16 weights (2 bytes each) + 16 Adagrad floats, and 17 bytes of bookkeeping
  cache=$((rows / 10 * (8 * 4 + 16 * 4 + 17)))
  for variant in "f16 ram" "bf16 ram" "f16 file"; do
    read -r dtype where <<< "$variant"
    sets=(--set "embedding.row_dtype=\"$dtype\"")
    [ "$where" = file ] && sets+=(--set "embedding.storage={kind=\"file\", dir=\"$TIER\", cache_bytes=$cache}")
    read -r sps auc w held _ < <(run "$dtype-$where-$round" "${sets[@]}")
    python3 -c "print('%5s  %-5s  %-7s %10.0f  %5.2f  %.6f  %+9.6f  %9.1f  %7.1f' % ('$round', '$dtype', '$where', $sps, $sps / $sps32, $auc, $auc - $auc32, $w / 1e6, $held / 1e6))"
  done
done
echo "tables: $rows rows of dim 16 with Adagrad state"
