#!/usr/bin/env bash
# Training throughput of shardrec's DLRM against TorchRec's fused path on the same file,
# alternating runs (A B A B) so drift hits both. Not a test: prints figures.
#
#   launch/bench_speed.sh [ROWS] [THREADS] [REPEATS]      (defaults 3000000 1 2)
#
# Data: ROWS generated rows, 26 categorical fields drawn (near-)uniformly from 10^6
# values each (so each table has close to 10^6 rows), 13 dense; the last 20% are the test
# split, the first 80% are trained on for one epoch. Model: batch 2048, dim 16, bottom
# 512-256-16, top 512-256-1, element-wise Adagrad (lr 0.01) on the tables and Adam (1e-3)
# on the dense part, on both sides. Needs ../shared/peers (TorchRec + FBGEMM CPU).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROWS=${1:-3000000}
THREADS=${2:-1}
REPEATS=${3:-2}
source launch/env.sh
BIN=${BIN:-target/release/shardrec}   # BIN=... measures another build
[ -x "$BIN" ] || bash launch/setup.sh
PY=$(bash ../shared/peers/setup.sh | tail -n 1)
# shellcheck source=launch/bench_dlrm_data.sh
source launch/bench_dlrm_data.sh
LOG=$DIR/bench_speed-$ROWS-$THREADS.log
: > "$LOG"
for rep in $(seq "$REPEATS"); do
  echo "[bench] run $rep: shardrec" >&2
  "$BIN" train "$CFG" 2>/dev/null | tail -n 1 | sed 's/^/SHARDREC /' >> "$LOG"
  echo "[bench] run $rep: torchrec (fused)" >&2
  "$PY" ../shared/peers/torchrec_dlrm.py "$DATA" --epochs 1 --threads "$THREADS" --batch-size 2048 \
      --emb-dim 16 --ebc fused --emb-opt adagrad --emb-lr 0.01 2>&1 | grep -E "RESULT|\[load\]" >> "$LOG"
done
python3 - "$LOG" <<'PY'
import json, re, sys, statistics as st
ours, peer, tables = [], [], []
for line in open(sys.argv[1]):
    if line.startswith("SHARDREC "):
        s = json.loads(line[9:]); ours.append(s)
    elif line.startswith("RESULT"):
        peer.append({k: v for k, v in re.findall(r"(\w+)=(\S+)", line)})
for i, (a, b) in enumerate(zip(ours, peer)):
    print(f"run {i+1}: shardrec {a['train_samples_per_s']:.0f} samples/s (test AUC {a['auc']:.4f}) | "
          f"torchrec fused {float(b['train_samples_per_s']):.0f} samples/s (test AUC {float(b['test_auc']):.4f})")
mo = st.mean(a['train_samples_per_s'] for a in ours)
mp = st.mean(float(b['train_samples_per_s']) for b in peer)
t = ours[-1]["time"]
print(f"mean: shardrec {mo:.0f}, torchrec {mp:.0f} samples/s; ratio {mo/mp:.2f}")
print(f"shardrec step time shares (last run): lookup + sparse update {t['lookup_plus_sparse_update_share']:.1%}; "
      f"lookup {t['lookup_s']:.1f} s, sparse update {t['sparse_update_s']:.1f} s, dense fwd/bwd {t['dense_forward_backward_s']:.1f} s, "
      f"data wait {t['data_wait_s']:.1f} s; peak RSS {ours[-1]['peak_rss_bytes']/2**30:.2f} GiB; "
      f"embedding {ours[-1]['embedding_bytes']/2**30:.2f} GiB + optimizer state {ours[-1]['optimizer_state_bytes']/2**30:.2f} GiB")
PY
