#!/usr/bin/env bash
# Test AUC of shardrec (DeepFM, DLRM) beside the peers (DeepCTR-Torch DeepFM, TorchRec
# DLRM) on the bundled real samples, same data and split as ../shared/peers (last 20% of
# rows as test; Avazu: train.csv / test.csv), 3 epochs, batch 1024, dim 16, one thread,
# over several seeds. Not a test: prints a table.
#
#   launch/bench_quality.sh [SEEDS] [DATASET ...]     (default 5 seeds, all four datasets)
#
# Environment: QUALITY_FIRST_SEED (default 1; above 1 the log is appended to, so more
# seeds can be added to an earlier run), QUALITY_PEERS (default "deepctr_deepfm
# torchrec_dlrm"). The table is computed over every line of the log.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SEEDS=${1:-5}
shift || true
DATASETS=("$@")
((${#DATASETS[@]})) || DATASETS=(criteo avazu frappe movielens100k)
FIRST=${QUALITY_FIRST_SEED:-1}
read -r -a PEERS <<< "${QUALITY_PEERS:-deepctr_deepfm torchrec_dlrm}"
source launch/env.sh
BIN=target/release/shardrec
[ -x "$BIN" ] || bash launch/setup.sh
PY=$(bash ../shared/peers/setup.sh | tail -n 1)
D=../shared/data
DIR=data/bench/quality
mkdir -p "$DIR"
# Avazu for the peers: label then the 22 categorical columns (id dropped, hour -> hour of
# day), exactly what shardrec's avazu format reads.
for f in train test; do
  awk -F, 'NR==1 && $1=="id" {next} {printf "%s\t%s", $2, substr($3, length($3)-1); for(i=4;i<=NF;i++) printf "\t%s", $i; printf "\n"}' \
    "$D/avazu/$f.csv" > "$DIR/avazu_$f.tsv"
done
LOG=$DIR/quality.log
[ "$FIRST" -gt 1 ] || : > "$LOG"
declare -A PEER_ARGS=(
  [criteo]="$D/criteo/criteo_sample.tsv"
  [avazu]="$DIR/avazu_train.tsv --test $DIR/avazu_test.tsv --num-dense 0 --num-sparse 22"
  [frappe]="$D/frappe/frappe_ctr.tsv --num-dense 0 --num-sparse 10"
  [movielens100k]="$D/movielens-100k/ml100k_ctr.tsv --num-dense 0 --num-sparse 8"
)
for ds in "${DATASETS[@]}"; do
  for seed in $(seq "$FIRST" "$SEEDS"); do
    for m in deepfm dlrm; do
      rm -rf "$DIR/runs/${ds}_$m-$seed"   # a run folder holds one run
      auc=$("$BIN" train "configs/${ds}_$m.toml" --set seed="$seed" --set train.save_model=false \
              --set train.run_dir="$DIR/runs/${ds}_$m-$seed" 2>/dev/null | tail -n 1 | python3 -c "import json,sys; print(json.load(sys.stdin)['auc'])")
      echo "$ds shardrec.$m $seed $auc" | tee -a "$LOG"
    done
    # shellcheck disable=SC2086
    for p in "${PEERS[@]}"; do
      auc=$("$PY" "../shared/peers/$p.py" ${PEER_ARGS[$ds]} --epochs 3 --threads 1 --seed "$seed" 2>&1 \
              | grep RESULT | sed -E 's/.*test_auc=([0-9.]+).*/\1/')
      echo "$ds peer.$p $seed $auc" | tee -a "$LOG"
    done
  done
done
python3 - "$LOG" <<'PY'
import sys, statistics as st
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    ds, who, seed, auc = line.split()
    runs[(ds, who)].append(float(auc))
print("| data | shardrec DeepFM | shardrec DLRM | DeepCTR DeepFM | TorchRec DLRM | better peer - 0.002 | met |")
print("|---|---|---|---|---|---|---|")
for ds in ["criteo", "avazu", "frappe", "movielens100k"]:
    m = {w: runs[(ds, w)] for w in ["shardrec.deepfm", "shardrec.dlrm", "peer.deepctr_deepfm", "peer.torchrec_dlrm"]}
    if not all(m.values()):
        continue
    f = lambda v: f"{st.mean(v):.4f} ± {st.stdev(v) if len(v) > 1 else 0:.4f} (n={len(v)})"
    bar = max(st.mean(m["peer.deepctr_deepfm"]), st.mean(m["peer.torchrec_dlrm"])) - 0.002
    ok = all(st.mean(m[w]) >= bar for w in ["shardrec.deepfm", "shardrec.dlrm"])
    print(f"| {ds} | {f(m['shardrec.deepfm'])} | {f(m['shardrec.dlrm'])} | {f(m['peer.deepctr_deepfm'])} | "
          f"{f(m['peer.torchrec_dlrm'])} | {bar:.4f} | {'yes' if ok else 'no'} |")
PY
