#!/usr/bin/env bash
# Distributed training throughput: DLRM on generated data with 26 tables of ~10^6 rows
# (the data of launch/bench_speed.sh), `-np 1` then `-np 2` (one torch thread per rank),
# with the per-step breakdown and the share of step time in the two exchanges, and each
# rank's peak RSS beside its bytes of tables + optimizer state. Not a test: prints figures.
#
#   launch/bench_distributed.sh [ROWS] [RANKS...]      (defaults 3000000 1 2)
#   SETS="train.shuffle_window=131072" launch/bench_distributed.sh   (extra --set overrides)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROWS=${1:-3000000}
shift || true
RANKS=("$@")
((${#RANKS[@]})) || RANKS=(1 2)
source launch/env.sh
BIN=${BIN:-target/release/shardrec}   # BIN=... compares another build
[ -x "$BIN" ] || bash launch/setup.sh
THREADS=1   # one torch thread per rank
# shellcheck source=launch/bench_dlrm_data.sh
source launch/bench_dlrm_data.sh
LOG=$DIR/bench_distributed-$ROWS.log
OVERRIDES=()
for kv in ${SETS:-}; do OVERRIDES+=(--set "$kv"); done
: > "$LOG"
for n in "${RANKS[@]}"; do
  echo "[bench] mpirun -np $n" >&2
  rm -rf "$DIR/runs/distributed-np$n"   # a run folder holds one run
  mpirun -np "$n" "$BIN" train "$CFG" --set train.run_dir="$DIR/runs/distributed-np$n" \
    ${OVERRIDES[@]+"${OVERRIDES[@]}"} 2>/dev/null \
    | tail -n 1 | sed "s/^/NP$n /" >> "$LOG"
done
python3 - "$LOG" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    tag, js = line.split(" ", 1)
    s = json.loads(js)
    t = s["time"]
    print(f"{tag}: {s['train_samples_per_s']:.0f} samples/s, test AUC {s['auc']:.4f}, {s['steps']} steps")
    print(f"  rank 0 breakdown (s): data {t['data_wait_s']:.1f}, lookup {t['lookup_s']:.1f} "
          f"(id exchange {t['id_exchange_s']:.1f}, embedding exchange fwd {t['embedding_exchange_forward_s']:.1f}), "
          f"dense fwd/bwd {t['dense_forward_backward_s']:.1f}, all-reduce {t['all_reduce_s']:.1f}, "
          f"sparse update {t['sparse_update_s']:.1f} (embedding exchange bwd {t['embedding_exchange_backward_s']:.1f}); "
          f"exchanges {t['exchange_share']:.1%} of step time")
    rss = s["peak_rss_bytes_per_rank"]
    mine = s['embedding_bytes_this_rank'] + s['optimizer_state_bytes_this_rank']
    print(f"  tables + optimizer state: {(s['embedding_bytes'] + s['optimizer_state_bytes'])/2**30:.2f} GiB in all, "
          f"{mine/2**30:.2f} GiB on rank 0; "
          f"peak RSS per rank: {', '.join(f'{r/2**30:.2f} GiB' for r in rss)}; "
          f"above rank 0's tables + state: {', '.join(f'{(r - mine)/2**20:.0f} MiB' for r in rss)}")
PY
