#!/usr/bin/env bash
# Sets up (launch/setup.sh), generates data with a known ceiling, trains DLRM on it and
# prints the test AUC beside the Bayes AUC; with ../shared/data present, also trains on
# the real Criteo sample.
#   DEMO_ROWS (default 500000), DEMO_CARDINALITY (default 100000)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash launch/setup.sh
source launch/env.sh
BIN=target/release/shardrec
ROWS=${DEMO_ROWS:-500000}
CARD=${DEMO_CARDINALITY:-100000}
DATA=data/demo/synth-$ROWS-$CARD.tsv
if [ ! -f "$DATA.json" ]; then
  "$BIN" synth --rows "$ROWS" --cardinality "$CARD" --out "$DATA" > /dev/null
fi
BAYES=$(python3 -c "import json; print(round(json.load(open('$DATA.json'))['bayes_auc'], 4))")
echo "== training DLRM on $ROWS generated rows ($DATA)"
SUMMARY=$("$BIN" train configs/synthetic_dlrm.toml --set data.train="$DATA" | tail -n 1)
python3 - "$SUMMARY" "$BAYES" <<'PY'
import json, sys
s, bayes = json.loads(sys.argv[1]), float(sys.argv[2])
print(f"generated data: test AUC {s['auc']:.4f}  (Bayes ceiling {bayes:.4f}, gap {bayes - s['auc']:.4f})  "
      f"logloss {s['logloss']:.4f}  {s['train_samples_per_s']:.0f} samples/s  run folder {s['run_dir']}")
print(f"learning curves: {s['run_dir']}/curves.png")
PY
CRITEO=../shared/data/criteo/criteo_sample.tsv
if [ -f "$CRITEO" ]; then
  echo "== training DLRM on the real Criteo sample ($CRITEO)"
  SUMMARY=$("$BIN" train configs/criteo_dlrm.toml | tail -n 1)
  python3 -c "import json,sys; s=json.loads(sys.argv[1]); print(f\"Criteo sample: test AUC {s['auc']:.4f}  logloss {s['logloss']:.4f}  ({s['rows_train']} train / {s['rows_test']} test rows)\")" "$SUMMARY"
else
  echo "(no ../shared/data here: skipping the real Criteo sample)"
fi
