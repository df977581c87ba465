#!/usr/bin/env bash
# Memory-budget sweeps (issue 4): hashed, QR and unified tables at 50, 20, 10, 5, 2 and 1%
# of the collisionless bytes, beside the collisionless model, on
#   criteo: the bundled Criteo sample, DLRM (configs/criteo_dlrm.toml), SEEDS seeds;
#   synth:  2M generated rows, 26 fields with log-spaced cardinalities from 10 to 10^6 (the data of
#           launch/bench_synthetic.sh), DLRM (configs/synthetic_dlrm.toml with MLPs of
#           128-64 to keep 19 runs under half an hour on 2 cores), one seed.
# Each writes sweep.csv and sweep.png under data/bench/sweep-<which>. Not a test.
#   launch/bench_sweep.sh [criteo|synth|all] [SEEDS]      (defaults all 3)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WHICH=${1:-all}
SEEDS=${2:-3}
source launch/env.sh
BIN=target/release/shardrec
[ -x "$BIN" ] || bash launch/setup.sh
BUDGETS=0.5,0.2,0.1,0.05,0.02,0.01
if [[ $WHICH == criteo || $WHICH == all ]]; then
  "$BIN" sweep configs/criteo_dlrm.toml --budgets "$BUDGETS" --seeds "$SEEDS" \
    --out data/bench/sweep-criteo > data/bench/sweep-criteo.json
  cat data/bench/sweep-criteo/sweep.csv
fi
if [[ $WHICH == synth || $WHICH == all ]]; then
  DATA=data/bench/synthetic/synth-2000000.tsv
  if [ ! -f "$DATA.json" ]; then
    mkdir -p data/bench/synthetic
    CARDS=$(python3 -c "print(','.join(str(round(10 ** (1 + 5 * i / 25))) for i in range(26)))")
    "$BIN" synth --rows 2000000 --cardinalities "$CARDS" --out "$DATA" > /dev/null
  fi
  "$BIN" sweep configs/synthetic_dlrm.toml --budgets "$BUDGETS" --seeds 1 \
    --set data.train="$DATA" --set data.cache_dir=\"data/bench/synthetic/prepared\" \
    --set "model.bottom=[128, 64]" --set "model.top=[128, 64]" \
    --out data/bench/sweep-synth > data/bench/sweep-synth.json
  cat data/bench/sweep-synth/sweep.csv
fi
