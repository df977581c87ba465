#!/usr/bin/env bash
# Gap to the Bayes AUC on generated data: shardrec's DLRM, DCNv2 and DeepFM beside the peers
# (TorchRec DLRM, DeepCTR-Torch DeepFM) on the same file and split (last 20% as test),
# one epoch, batch 1024, dim 16, one thread. Not a test: prints a table.
#
#   launch/bench_synthetic.sh [ROWS]          (default 2000000)
#
# Data: 26 categorical fields with cardinalities from 10 to 10^6 (log-spaced, Zipf 1.1),
# 13 dense fields; the teacher's Bayes AUC on the test split is the ceiling.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROWS=${1:-2000000}
source launch/env.sh
BIN=target/release/shardrec
[ -x "$BIN" ] || bash launch/setup.sh
PY=$(bash ../shared/peers/setup.sh | tail -n 1)
DIR=data/bench/synthetic
mkdir -p "$DIR"
CARDS=$(python3 -c "print(','.join(str(round(10 ** (1 + 5 * i / 25))) for i in range(26)))")
DATA=$DIR/synth-$ROWS.tsv
[ -f "$DATA.json" ] || "$BIN" synth --rows "$ROWS" --cardinalities "$CARDS" --out "$DATA" > /dev/null
LOG=$DIR/synthetic-$ROWS.log
: > "$LOG"
for m in dlrm dcnv2 deepfm; do
  rm -rf "$DIR/runs/$m"   # a run folder holds one run
  "$BIN" train "configs/synthetic_$m.toml" --set data.train="$DATA" --set data.cache_dir="$DIR/prepared" \
      --set train.threads=1 --set train.save_model=false --set train.run_dir="$DIR/runs/$m" 2>/dev/null \
      | tail -n 1 | sed "s/^/SHARDREC $m /" >> "$LOG"
done
"$PY" ../shared/peers/torchrec_dlrm.py "$DATA" --epochs 1 --threads 1 2>&1 | grep RESULT >> "$LOG"
"$PY" ../shared/peers/deepctr_deepfm.py "$DATA" --epochs 1 --threads 1 2>&1 | grep RESULT >> "$LOG"
python3 - "$LOG" "$DATA.json" <<'PY'
import json, re, sys
bayes = json.load(open(sys.argv[2]))["bayes_auc"]
print(f"Bayes test AUC {bayes:.4f}")
print("| model | test AUC | logloss | gap to Bayes | train samples/s |")
print("|---|---|---|---|---|")
for line in open(sys.argv[1]):
    if line.startswith("SHARDREC"):
        _, m, js = line.split(" ", 2)
        s = json.loads(js)
        print(f"| shardrec {m} | {s['auc']:.4f} | {s['logloss']:.4f} | {bayes - s['auc']:.4f} | {s['train_samples_per_s']:.0f} |")
    else:
        d = dict(re.findall(r"(\w+)=(\S+)", line))
        print(f"| {d['peer']} | {float(d['test_auc']):.4f} | {float(d['test_logloss']):.4f} | "
              f"{bayes - float(d['test_auc']):.4f} | {float(d['train_samples_per_s']):.0f} |")
PY
