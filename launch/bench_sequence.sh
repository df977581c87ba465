#!/usr/bin/env bash
# DARE (issue 6): DIN, TWIN and DARE side by side, and the search stage's speed.
#   synth:  generated sequences (25,000 users x 10 targets, histories of 1,000, the last
#           2 targets of each user as the test split: 200k training samples), L = 1000,
#           K = 20, one epoch; DARE again under `mpirun -np 2` with its tables sharded
#           row-wise. Reports AUC, GAUC, category AUC and the search's NDCG@20 against
#           the generated relevant behaviours.
#   taobao: ../shared/data/taobao/user_behavior_by_user.csv through `shardrec
#           prepare-taobao` (DARE's protocol), L = 200.
#   movielens: MovieLens-100k ratings as behaviour sequences (genre as category).
#   dist:   DARE, one process against `mpirun -np 2`, on the MovieLens sequences, with and
#           without the head's batch norm (synchronised over the ranks, and not).
#   speed:  the search bench (`cargo bench -p shardrec-models --bench search`) at L = 1000 and 10000, attention widths 48, 24, 12.
# Prints a table per part; runs and summaries go to data/bench/sequence. Not a test.
#   launch/bench_sequence.sh [synth|taobao|movielens|dist|speed|all]    (default all)
# EXTRA_SEEDS="2 3" repeats the generated-data runs of DARE and TWIN with those seeds.
# ITEMS=5000 RELEVANCE_WEIGHT=8 generate other data (default 50000 and 4; the runs then
# go to names ending -i<items>-r<weight>); AUX=1 trains with the auxiliary loss (-aux).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WHICH=${1:-all}
OUT=data/bench/sequence
source launch/bench_jobs.sh

report() {
  python3 - "$OUT" "$@" <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
print("| run | test AUC | logloss | GAUC (user) | category AUC | NDCG@K of the search | best valid AUC | train samples/s | ranks |")
print("|---|---|---|---|---|---|---|---|---|")
f = lambda v: "-" if v is None else f"{v:.5f}"
for n in names:
    d = json.loads(open(f"{out}/{n}.json").read().strip().splitlines()[-1])
    print(f"| {n} | {f(d['auc'])} | {f(d['logloss'])} | {f(d.get('gauc'))} | {f(d.get('category_auc'))} | "
          f"{f(d.get('retrieval_ndcg'))} | {f(d.get('best_valid_auc'))} | {d['train_samples_per_s']:.0f} | {d['world_size']} |")
PY
}

if [ "$WHICH" = synth ] || [ "$WHICH" = all ]; then
  ITEMS=${ITEMS:-50000}
  RW=${RELEVANCE_WEIGHT:-4}
  SUF=""
  if [ "$ITEMS" != 50000 ] || [ "$RW" != 4 ]; then SUF="-i$ITEMS-r$RW"; fi
  D=$OUT/data$SUF
  if [ ! -s "$D/synth-test.relevant" ]; then
    "$BIN" synth --kind sequence --users 25000 --targets-per-user 10 --test-targets 2 \
      --history 1000 --items "$ITEMS" --relevance-weight "$RW" --out "$D/synth" >/dev/null
  fi
  S=(--set "data.train=\"$D/synth-train.tsv\"" --set "data.test=\"$D/synth-test.tsv\""
     --set "eval.relevant_positions=\"$D/synth-test.relevant\"" --set model.sequence_len=1000
     --set "data.cache_dir=\"$OUT/cache$SUF\"" --set train.epochs=1)
  if [ "${AUX:-0}" = 1 ]; then S+=(--set model.aux_loss=true); SUF="$SUF-aux"; fi
  # SKIP=name,name leaves out runs whose summaries are already there
  for spec in "synth-dare$SUF 1 dare" "synth-twin$SUF 1 twin" "synth-dare-np2$SUF 2 dare" \
    "synth-din$SUF 1 din"; do
    set -- $spec
    if [[ ",${SKIP:-}," == *",$1,"* ]]; then continue; fi
    if [ "$2" -gt 1 ]; then
      job "$1" "$2" "configs/sequence_$3.toml" "${S[@]}" --set 'sharding.strategy="row_wise"'
    else
      job "$1" "$2" "configs/sequence_$3.toml" "${S[@]}"
    fi
  done
  extra=()
  for seed in ${EXTRA_SEEDS:-}; do
    for m in dare twin; do
      [[ ",${SKIP:-}," == *",synth-$m-s$seed$SUF,"* ]] ||
        job "synth-$m-s$seed$SUF" 1 "configs/sequence_$m.toml" "${S[@]}" --set seed=$seed
      extra+=("synth-$m-s$seed$SUF")
    done
  done
  cat "$D/synth.json" | python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"generated: {d['train_rows']} train / {d['test_rows']} test samples, {d['mean_relevant_per_sample']:.1f} relevant behaviours per sample, Bayes test AUC {d['bayes_test_auc']:.5f}\")"
  report "synth-din$SUF" "synth-twin$SUF" "synth-dare$SUF" "synth-dare-np2$SUF" "${extra[@]}"
fi

# a real behaviour log: NAME FORMAT INPUT [prepare options]; three seeds per model
real_data() {
  local name=$1 format=$2 input=$3
  shift 3
  local D=$OUT/data/$name
  [ -s "$D/test.tsv" ] || "$BIN" prepare --format "$format" --input "$input" --out "$D" "$@" >/dev/null
  local R=(--set "data.train=\"$D/train.tsv\"" --set "data.valid=\"$D/valid.tsv\""
           --set "data.test=\"$D/test.tsv\"" --set "data.cache_dir=\"$OUT/cache\"")
  local runs=()
  for m in din twin dare; do
    for seed in 1 2 3; do
      job "$name-$m-s$seed" 1 "configs/sequence_$m.toml" "${R[@]}" --set seed=$seed
      runs+=("$name-$m-s$seed")
    done
  done
  python3 -c "import json; d=json.load(open('$D/summary.json')); print(f\"$name: {d['users_kept']} users kept, {d['users_dropped']} dropped; {d['rows'][0]} / {d['rows'][1]} / {d['rows'][2]} train / valid / test samples; {d['items']} items, {d['categories']} categories\")"
  report "${runs[@]}"
  python3 - "$OUT" "$name" <<'PY'
import json, sys, statistics as st
out, name = sys.argv[1], sys.argv[2]
print(f"| {name}: mean of 3 seeds | test AUC | GAUC (user) | category AUC |")
print("|---|---|---|---|")
for m in ["din", "twin", "dare"]:
    ds = [json.loads(open(f"{out}/{name}-{m}-s{s}.json").read().strip().splitlines()[-1]) for s in (1, 2, 3)]
    mean = lambda k: st.mean(d[k] for d in ds if d.get(k) is not None)
    sd = lambda k: st.stdev(d[k] for d in ds if d.get(k) is not None)
    print(f"| {m} | {mean('auc'):.4f} ± {sd('auc'):.4f} | {mean('gauc'):.4f} ± {sd('gauc'):.4f} | {mean('category_auc'):.4f} |")
PY
}

if [ "$WHICH" = taobao ] || [ "$WHICH" = all ]; then
  # the paper's 210-behaviour cut keeps 8 of the sample's users: 20, with up to 100
  # training targets per user, keeps most of them
  real_data taobao taobao ../shared/data/taobao/user_behavior_by_user.csv \
    --min-history 20 --train-targets 100 --history 200
fi

if [ "$WHICH" = movielens ] || [ "$WHICH" = all ]; then
  real_data movielens movielens ../shared/data/movielens-100k \
    --min-history 20 --train-targets 20 --history 200
fi

if [ "$WHICH" = dist ] || [ "$WHICH" = all ]; then
  # DARE one process against `mpirun -np 2` (tables row-wise) on the MovieLens sequences,
  # with and without the head's batch norm; with batch norm also without its
  # synchronisation (model.sync_batch_norm = false: statistics per rank, as DDP without
  # SyncBatchNorm)
  D=$OUT/data/movielens
  [ -s "$D/test.tsv" ] || "$BIN" prepare --format movielens --input ../shared/data/movielens-100k \
    --out "$D" --min-history 20 --train-targets 20 --history 200 >/dev/null
  R=(--set "data.train=\"$D/train.tsv\"" --set "data.valid=\"$D/valid.tsv\""
     --set "data.test=\"$D/test.tsv\"" --set "data.cache_dir=\"$OUT/cache\"" --set seed=1
     --set train.threads=1)
  for bn in true false; do
    job "ml-dare-bn$bn-np1" 1 configs/sequence_dare.toml "${R[@]}" --set model.batch_norm=$bn
    job "ml-dare-bn$bn-np2" 2 configs/sequence_dare.toml "${R[@]}" --set model.batch_norm=$bn \
      --set 'sharding.strategy="row_wise"'
  done
  job ml-dare-bntrue-nosync-np2 2 configs/sequence_dare.toml "${R[@]}" --set model.batch_norm=true \
    --set model.sync_batch_norm=false --set 'sharding.strategy="row_wise"'
  report ml-dare-bntrue-np1 ml-dare-bntrue-np2 ml-dare-bntrue-nosync-np2 ml-dare-bnfalse-np1 \
    ml-dare-bnfalse-np2
fi

if [ "$WHICH" = speed ] || [ "$WHICH" = all ]; then
  cargo bench -q -p shardrec-models --bench search -- --lens 1000,10000 --widths 48,24,12 --samples 4000 --repeats 3 | tee "$OUT/search-speed.md"
fi
