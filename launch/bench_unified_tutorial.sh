#!/usr/bin/env bash
# Google's Unified Embedding tutorial comparison on MovieLens-100k: collisionless,
# hashing trick and unified embedding at the same parameters, 5 seeds each (the split
# stays seed 42), mean and standard deviation of test AUC and logloss. Not a test.
#   launch/bench_unified_tutorial.sh [SEEDS]      (default 5)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SEEDS=${1:-5}
source launch/env.sh
BIN=target/release/shardrec
[ -x "$BIN" ] || bash launch/setup.sh
LOG=data/bench/unified_tutorial.log
mkdir -p data/bench
: > "$LOG"
for method in collisionless hashed unified; do
  for seed in $(seq 1 "$SEEDS"); do
    "$BIN" train "configs/movielens100k_$method.toml" --set seed="$seed" 2>/dev/null \
      | tail -n 1 | sed "s/^/$method /" >> "$LOG"
  done
done
python3 - "$LOG" <<'PY'
import json, sys, statistics as st
rows = {}
for line in open(sys.argv[1]):
    m, js = line.split(" ", 1)
    rows.setdefault(m, []).append(json.loads(js))
print(f"{'method':14} {'AUC':>14} {'logloss':>14} {'emb params':>10} {'all params':>10} runs")
for m, rs in rows.items():
    a = [r["auc"] for r in rs]; l = [r["logloss"] for r in rs]
    emb = rs[0]["embedding_params"]
    # network: 6 features x 16 -> 128 -> 64 -> 1
    total = emb + 96 * 128 + 128 + 128 * 64 + 64 + 64 + 1
    print(f"{m:14} {st.mean(a):.4f} ({st.pstdev(a):.4f}) {st.mean(l):.4f} ({st.pstdev(l):.4f}) {emb:>10} {total:>10} {len(rs)}")
PY
