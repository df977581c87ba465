#!/usr/bin/env bash
# Checkpoint cost at the scale of the speed benchmarks: DLRM on generated data with 26
# tables of ~10^6 rows (23.5M rows, dim 16, Adagrad: 1.5 GB of rows + 1.5 GB of state).
# Trains STEPS steps under `-np 1` and `-np 2` writing one checkpoint at the end, resumes
# the 1-rank checkpoint under 2 ranks and the 2-rank one under 1 (resharding on load),
# and evaluates the 2-rank model under 1 rank. Prints bytes written, write and load
# seconds, and the test AUCs (which must agree). Not a test: prints figures.
#
#   launch/bench_checkpoint.sh [ROWS] [STEPS]      (defaults 3000000 200)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROWS=${1:-3000000}
STEPS=${2:-200}
source launch/env.sh
BIN=target/release/shardrec
[ -x "$BIN" ] || bash launch/setup.sh
THREADS=1
# shellcheck source=launch/bench_dlrm_data.sh
source launch/bench_dlrm_data.sh
OUTDIR=$DIR/runs/checkpoint
rm -rf "$OUTDIR"
LOG=$DIR/bench_checkpoint-$ROWS.log
: > "$LOG"
common=(--set train.max_steps="$STEPS" --set train.checkpoint_every="$STEPS")
for n in 1 2; do
  echo "[bench] train -np $n, $STEPS steps, checkpoint at the end" >&2
  mpirun -np "$n" "$BIN" train "$CFG" "${common[@]}" --set train.save_model=true \
    --set train.run_dir="\"$OUTDIR/np$n\"" 2>/dev/null | tail -n 1 | sed "s/^/TRAIN$n /" >> "$LOG"
done
for pair in "1 2" "2 1"; do
  set -- $pair
  echo "[bench] resume the -np $1 checkpoint under -np $2" >&2
  mpirun -np "$2" "$BIN" train "$CFG" "${common[@]}" --set train.save_model=false \
    --set train.run_dir="\"$OUTDIR/resume$1to$2\"" --resume "$OUTDIR/np$1" 2>/dev/null \
    | tail -n 1 | sed "s/^/RESUME$1to$2 /" >> "$LOG"
done
echo "[bench] evaluate the -np 2 model in one process" >&2
/usr/bin/time -f "%e" -o "$DIR/eval_time" "$BIN" eval "$CFG" --model "$OUTDIR/np2/model" 2>/dev/null \
  | tail -n 1 | sed "s/^/EVAL2to1 /" >> "$LOG"
echo "EVALTIME $(cat "$DIR/eval_time")" >> "$LOG"
du -sb "$OUTDIR"/np1/checkpoints/step-* "$OUTDIR"/np2/checkpoints/step-* | sed "s/^/DU /" >> "$LOG"
python3 - "$LOG" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    tag, rest = line.rstrip("\n").split(" ", 1)
    if tag == "DU":
        size, path = rest.split("\t")
        print(f"checkpoint {path}: {int(size)/1e9:.2f} GB")
        continue
    if tag == "EVALTIME":
        print(f"one-process eval of the 2-rank model: {float(rest):.1f} s wall (loading, preparing, scoring)")
        continue
    s = json.loads(rest)
    if tag.startswith("TRAIN"):
        print(f"{tag}: {s['steps']} steps, test AUC {s['auc']:.6f}; checkpoint written in {s['checkpoint_write_s']:.1f} s "
              f"({s['world_size']} rank(s)); peak RSS per rank {[round(r/2**30, 2) for r in s['peak_rss_bytes_per_rank']]} GiB")
    elif tag.startswith("RESUME"):
        print(f"{tag}: loaded (resharded) in {s['resume_load_s']:.1f} s, steps {s['steps']}, test AUC {s['auc']:.6f}")
    else:
        print(f"{tag}: test AUC {s['auc']:.6f}, logloss {s['logloss']:.6f}, saved by {s['saved_by_ranks']} ranks")
PY
