#!/usr/bin/env bash
# Records the figures a refactor must not change: the bundled configs criteo_dlrm,
# movielens100k_unified, frappe_optembed and sequence_dare (on small generated sequences),
# in one process and under `mpirun -np 2`, at their fixed seeds. Prints one line per
# figure (`<job> <key> <value>`, every number of the summary but times, memory and paths)
# into $OUT/figures.txt; compare two of them with `diff`.
#
#   BIN=/tmp/shardrec-before OUT=/tmp/before bash launch/check_unchanged.sh
#   OUT=/tmp/after bash launch/check_unchanged.sh
#   diff /tmp/before/figures.txt /tmp/after/figures.txt && echo unchanged
#
# EPOCHS (default 2) shortens every config's training so the check takes minutes.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:?set OUT to an output folder}
EPOCHS=${EPOCHS:-2}
source launch/bench_jobs.sh
BIN=${BIN_OVERRIDE:-$BIN}
SEQ="$OUT/seq/synth"
mkdir -p "$OUT/seq"
[ -f "$SEQ-train.tsv" ] || "$BIN" synth --kind sequence --users 1500 --history 250 \
  --items 3000 --categories 60 --out "$SEQ" > /dev/null 2>&1

short=(--set "train.epochs=$EPOCHS")
for ranks in 1 2; do
  job "criteo_dlrm-np$ranks" "$ranks" configs/criteo_dlrm.toml "${short[@]}"
  job "movielens100k_unified-np$ranks" "$ranks" configs/movielens100k_unified.toml "${short[@]}"
  job "frappe_optembed-np$ranks" "$ranks" configs/frappe_optembed.toml "${short[@]}" \
    --set optembed.search.generations=5
  job "sequence_dare-np$ranks" "$ranks" configs/sequence_dare.toml "${short[@]}" \
    --set "data.train=\"$SEQ-train.tsv\"" --set "data.test=\"$SEQ-test.tsv\"" \
    --set "eval.relevant_positions=\"$SEQ-test.relevant\"" --set model.sequence_len=100
done

python3 - "$OUT" > "$OUT/figures.txt" <<'PY'
import json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
# times, memory, paths and thread counts vary from run to run; everything else must not
skip = re.compile(r"(_s$|_s\.|time|rss|wall|run_dir|checkpoint|resumed_from|samples_per_s|model_dir|threads)")
def flat(prefix, v):
    if isinstance(v, dict):
        for k in sorted(v):
            yield from flat(f"{prefix}.{k}" if prefix else k, v[k])
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from flat(f"{prefix}[{i}]", x)
    elif isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
        yield prefix, v
for f in sorted(out.glob("*.json")):
    lines = f.read_text().strip().splitlines()
    summary = json.loads(lines[-1])
    for k, v in flat("", summary):
        if not skip.search(k):
            print(f.stem, k, repr(v))
PY
wc -l < "$OUT/figures.txt" | sed 's/^/figures: /'
grep -E ' (auc|logloss|gauc|sparsity|row_sparsity|rows_train|rows_valid|rows_test) ' "$OUT/figures.txt"
