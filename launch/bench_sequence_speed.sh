#!/usr/bin/env bash
# Issue 21: DIN, TWIN and DARE training speed against the plain PyTorch reference
# (../shared/peers/torch_dare.py: dense nn.Embedding tables, one Adam), same data, same
# threads, same protocol (random 5% validation split, best epoch tested), alternating
# runs. Generated sequences: `shardrec synth --kind sequence` with USERS users x 10
# targets (the last 2 of each user are the test split), every history HISTORY long.
#   launch/bench_sequence_speed.sh [models]        (default "dare twin din")
# Environment: USERS (15000: 120k training + 30k test samples), HISTORY (200, also L),
# EPOCHS (2), THREADS (2), ROUNDS (2 alternating pairs), MAX_STEPS (unset: whole epochs;
# set: shardrec stops there, for profiling; the peer is then skipped).
# Prints one row per run: samples/s of both, their ratio, test AUCs, and shardrec's
# lookup + sparse update share of the step. Runs go to data/bench/sequence-speed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=data/bench/sequence-speed
source launch/bench_jobs.sh
MODELS=${1:-dare twin din}
USERS=${USERS:-15000}
HISTORY=${HISTORY:-200}
EPOCHS=${EPOCHS:-2}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
D=$OUT/data-u$USERS-l$HISTORY
if [ ! -s "$D/synth-test.tsv" ]; then
  "$BIN" synth --kind sequence --users "$USERS" --targets-per-user 10 --test-targets 2 \
    --history "$HISTORY" --out "$D/synth" >/dev/null
fi
PEER=../shared/peers/torch_dare.py
PY=$(bash ../shared/peers/setup.sh | tail -n 1)   # the peers' venv (numpy, torch, scikit-learn)
[ -s "$PEER" ] || { echo "no peer at $PEER" >&2; exit 1; }

ours() { # NAME MODEL
  local extra=()
  [ -n "${MAX_STEPS:-}" ] && extra=(--set "train.max_steps=$MAX_STEPS")
  job "$1" 1 "configs/sequence_$2.toml" --set "data.train=\"$D/synth-train.tsv\"" \
    --set "data.test=\"$D/synth-test.tsv\"" --set "data.cache_dir=\"$D/cache\"" \
    --set "model.sequence_len=$HISTORY" --set "train.epochs=$EPOCHS" \
    --set "train.threads=$THREADS" "${extra[@]}"
}

peer() { # NAME MODEL
  echo "== $1: torch_dare.py --model $2" >&2
  "$PY" "$PEER" "$D/synth-train.tsv" --test "$D/synth-test.tsv" --model "$2" \
    --seq-len "$HISTORY" --epochs "$EPOCHS" --threads "$THREADS" > "$OUT/$1.log" 2>&1
}

rows=()
for m in $MODELS; do
  for r in $(seq 1 "$ROUNDS"); do
    ours "$m-shardrec-$r" "$m"
    [ -n "${MAX_STEPS:-}" ] || peer "$m-peer-$r" "$m"
    rows+=("$m $r")
  done
done

python3 - "$OUT" "${MAX_STEPS:-}" "${rows[@]}" <<'PY'
import json, re, sys
out, profiling, rows = sys.argv[1], sys.argv[2], sys.argv[3:]
print("| model | round | shardrec samples/s | peer samples/s | ratio | shardrec test AUC | peer test AUC | lookup s | sparse update s | dense fwd+bwd s | lookup + update share |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for row in rows:
    m, r = row.split()
    s = json.loads(open(f"{out}/{m}-shardrec-{r}.json").read().strip().splitlines()[-1])
    ph = s["time"]
    ours = s["train_samples_per_s"]
    peer_sps, peer_auc = None, None
    if not profiling:
        line = [l for l in open(f"{out}/{m}-peer-{r}.log") if l.startswith("RESULT")][-1]
        kv = dict(re.findall(r"(\w+)=(\S+)", line))
        peer_sps, peer_auc = float(kv["train_samples_per_s"]), float(kv["test_auc"])
    ratio = f"{ours / peer_sps:.2f}x" if peer_sps else "-"
    fmt = lambda v, f: "-" if v is None else format(v, f)
    print(f"| {m} | {r} | {ours:,.0f} | {fmt(peer_sps, ',.0f')} | {ratio} | {fmt(s.get('auc'), '.5f')} | "
          f"{fmt(peer_auc, '.5f')} | {ph['lookup_s']:.1f} | {ph['sparse_update_s']:.1f} | "
          f"{ph['dense_forward_backward_s']:.1f} | {ph['lookup_plus_sparse_update_share']:.1%} |")
PY
