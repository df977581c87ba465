#!/usr/bin/env bash
# OptEmbed (issue 5): the unpruned DeepFM beside OptEmbed's three stages, one process and
# `mpirun -np 2`, on
#   frappe: configs/frappe_optembed.toml (the bundled validation + test files, 8:1:1);
#   synth:  2M generated rows (26 fields, cardinalities 10 to 10^6, Zipf 1.1: many rare
#           ids), configs/synthetic_optembed.toml, the last 20% as the test file.
# Prints a table per dataset; runs and summaries go to data/bench/optembed. Not a test.
#   launch/bench_optembed.sh [frappe|synth|all]        (default all)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WHICH=${1:-all}
OUT=data/bench/optembed
source launch/bench_jobs.sh

report() {
  python3 - "$OUT" "$@" <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
print("| run | test AUC | logloss | embedding params | sparsity | kept rows | widths | search best valid AUC | random best valid AUC | compact max diff | compact / full table bytes |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for n in names:
    d = json.loads(open(f"{out}/{n}.json").read().strip().splitlines()[-1])
    st = d.get("optembed_stages", {})
    s = st.get("search", {})
    full = d.get("embedding_params_full")
    params = d["embedding_params"]
    print(f"| {n} | {d['auc']:.5f} | {d['logloss']:.5f} | {params:,} | "
          + (f"{d['sparsity']:.4f}" if 'sparsity' in d else "0") + " | "
          + (f"{sum(d['kept_rows']):,} / {sum(d['vocab_rows']):,}" if 'kept_rows' in d else "all") + " | "
          + (str(d.get('widths', ''))) + " | "
          + (f"{s['best_valid_auc']:.5f}" if s else "") + " | "
          + (f"{s['random_baseline_best_valid_auc']:.5f}" if s.get('random_baseline_best_valid_auc') else "") + " | "
          + (f"{d['compact_max_abs_prediction_diff']:.2e}" if 'compact_max_abs_prediction_diff' in d else "") + " | "
          + (f"{d['compact_main_table_bytes']:,} / {d['full_main_table_bytes']:,}" if 'compact_main_table_bytes' in d else "") + " |")
    if s:
        print(f"  {n}: best valid AUC per generation: {[round(x, 5) for x in s['generation_best_valid_auc']]}", file=sys.stderr)
PY
}

if [[ $WHICH == frappe || $WHICH == all ]]; then
  job frappe-base 1 configs/frappe_optembed.toml --set optembed.enabled=false
  job frappe-np1 1 configs/frappe_optembed.toml
  job frappe-np2 2 configs/frappe_optembed.toml
  report frappe-base frappe-np1 frappe-np2
fi
if [[ $WHICH == synth || $WHICH == all ]]; then
  DIR=data/bench/synthetic
  DATA=$DIR/synth-2000000.tsv
  mkdir -p "$DIR"
  if [ ! -f "$DATA.json" ]; then
    CARDS=$(python3 -c "print(','.join(str(round(10 ** (1 + 5 * i / 25))) for i in range(26)))")
    "$BIN" synth --rows 2000000 --cardinalities "$CARDS" --out "$DATA" > /dev/null
  fi
  # the generator's test rows are the last 20%: one file each
  [ -f "$OUT/synth-train.tsv" ] || head -n 1600000 "$DATA" > "$OUT/synth-train.tsv"
  [ -f "$OUT/synth-test.tsv" ] || tail -n 400000 "$DATA" > "$OUT/synth-test.tsv"
  S=(--set "data.train=\"$OUT/synth-train.tsv\"" --set "data.test=\"$OUT/synth-test.tsv\"")
  job synth-base 1 configs/synthetic_optembed.toml "${S[@]}" --set optembed.enabled=false
  job synth-np1 1 configs/synthetic_optembed.toml "${S[@]}"
  report synth-base synth-np1
fi
