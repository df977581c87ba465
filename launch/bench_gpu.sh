#!/usr/bin/env bash
# Issue 20's device checks in one script (docs/benchmarks.md section 16): DLRM on
# generated data shaped like Criteo (26 hashed tables of 10^5 to 10^7 rows, Zipf ids,
# batch 65,536, Adagrad tables, Adam dense, dense part on the GPU) with the tables
#   host     in host RAM (the dense part alone on the GPU)
#   device   on the GPU, one tensor per table (embedding.fused = false: today's path)
#   fused    fused per width on the GPU
#   cache    fused behind a GPU cache of 10% of the rows, the rows in host RAM
# at dim 16 (all four) and dim 128 (fused and host), and `mpiexec -np 2` on the one GPU
# (each rank's shards fused) against one process (test AUC within 0.002). It prints one line per run: samples/s
# (median of the logged windows after the first, and the run's mean), the time the step
# waited for its input, test AUC. OUT_DIR gets results.txt, the configs, summaries and
# logs; the data and run folders go to WORK.
#
# On the GPU machine (see launch/gpu_carry.sh for what to carry there):
#   bash launch/bench_gpu.sh OUT_DIR
# Environment:
#   SHARDREC_BIN  the binary (default target/release/shardrec)
#   MPIEXEC       mpiexec for the two-rank check (default: mpiexec on PATH; "none" skips)
#   WORK          data, prepared columns, run folders (default OUT_DIR/work)
#   ROWS          generated rows (default 4000000; 10% are the test split)
#   CACHE_SHARE   the device cache's share of the rows (default 0.1)
#   ONLY          runs to do, comma-separated (default all: fused16,device16,host16,
#                 cache16,np1,np2,fused128,host128, in that order)
#   SMOKE=1       toy sizes on the CPU, to check the script itself
set -euo pipefail

OUT=${1:?usage: bash launch/bench_gpu.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$OUT/work}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
BIN=${SHARDREC_BIN:-target/release/shardrec}
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
ONLY=${ONLY:-fused16,device16,host16,cache16,np1,np2,fused128,host128}
MPIEXEC=${MPIEXEC:-mpiexec}
if [[ ${SMOKE:-0} == 1 ]]; then
    ROWS=${ROWS:-40000}; BATCH=1024; DEVICE=cpu; THREADS=2
    SIZES=(20000 6000 2000 600); CACHE_SHARE=${CACHE_SHARE:-0.5}
else
    ROWS=${ROWS:-4000000}; BATCH=65536; DEVICE=cuda; THREADS=8
    SIZES=(10000000 3000000 1000000 100000); CACHE_SHARE=${CACHE_SHARE:-0.1}
fi

# the machine's own libtorch (PyTorch's), when the binary is not next to one
if python3 -c 'import torch' 2>/dev/null; then
    TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
fi
echo "binary $BIN, $ROWS rows, batch $BATCH, device $DEVICE"
[[ $DEVICE == cuda ]] && { nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; }

DATA=$WORK/criteo_like.tsv
if [[ ! -s $DATA ]]; then
    "$BIN" synth --rows "$ROWS" --out "$DATA" --cardinality 20000000 >"$OUT/synth.json"
fi

# table rows: 1 of 10^7, 3 of 3x10^6, 6 of 10^6, 16 of 10^5 (Criteo's spread)
table_rows() {
    local i=$1
    if ((i < 1)); then echo "${SIZES[0]}"
    elif ((i < 4)); then echo "${SIZES[1]}"
    elif ((i < 10)); then echo "${SIZES[2]}"
    else echo "${SIZES[3]}"; fi
}
TOTAL_ROWS=0
for i in $(seq 0 25); do TOTAL_ROWS=$((TOTAL_ROWS + $(table_rows "$i"))); done

# config NAME DIM TABLE_DEVICE EXTRA_EMBEDDING_LINES
config() {
    local name=$1 dim=$2 table_device=$3 extra=$4
    local f=$OUT/$name.toml
    cat >"$f" <<EOF
seed = 2024
[data]
format = "criteo"
train = "$DATA"
cache_dir = "$WORK/prepared"
split = { kind = "tail", test = 0.1 }
dense_transform = "log1p"
[embedding]
dim = $dim
kind = "hashed"
buckets = ${SIZES[3]}
device = "$table_device"
optimizer = { kind = "adagrad", lr = 0.01, eps = 1e-8 }
$extra
EOF
    for i in $(seq 0 25); do
        printf '[[embedding.tables]]\nname = "C%d"\nfeatures = ["C%d"]\nbuckets = %d\n' \
            $((i + 1)) $((i + 1)) "$(table_rows "$i")" >>"$f"
    done
    cat >>"$f" <<EOF
[model]
kind = "dlrm"
bottom = [512, 256]
top = [512, 256]
[optimizer]
kind = "adam"
lr = 0.001
[train]
batch_size = $BATCH
threads = $THREADS
device = "$DEVICE"
log_every = 5
save_model = false
run_dir = "$WORK/runs/$name"
EOF
    echo "$f"
}

# report NAME SUMMARY_JSON: one line of figures
report() {
    python3 - "$1" "$2" "$WORK/runs/$1/metrics.jsonl" <<'EOF'
import json, statistics, sys
name, summary, metrics = sys.argv[1:4]
s = json.loads(open(summary).read().strip().splitlines()[-1])
rates = []
try:
    for line in open(metrics):
        m = json.loads(line)
        if "samples_per_s" in m:
            rates.append(m["samples_per_s"])
except FileNotFoundError:
    pass
steady = statistics.median(rates[1:]) if len(rates) > 1 else float("nan")
t = s.get("time", {})
fused = s.get("fused_tables") or [{}]
print(f"{name:9s} tables={s.get('tables')} ranks={s.get('world_size')} "
      f"samples/s steady={steady:,.0f} mean={s.get('train_samples_per_s', 0):,.0f} "
      f"auc={s.get('auc')} data_wait_s={t.get('data_wait_s', 0):.3f} "
      f"lookup_s={t.get('lookup_s', 0):.3f} sparse_update_s={t.get('sparse_update_s', 0):.3f} "
      f"dense_s={t.get('dense_forward_backward_s', 0):.3f} "
      f"plan_wait_s={fused[0].get('plan_wait_s')} plan_inline_s={fused[0].get('plan_inline_s')} "
      f"cache_moves_s={fused[0].get('cache_moves_s')} "
      f"hit_rate={[g.get('hit_rate') for g in fused[0].get('groups', [])]} "
      f"peak_rss_gb={s.get('peak_rss_bytes', 0) / 2**30:.1f}")
EOF
}

wanted() { [[ ",$ONLY," == *",$1,"* ]]; }

train() {
    local name=$1 cfg=$2
    shift 2
    rm -rf "$WORK/runs/$name"
    local t0=$SECONDS
    if "$@" "$BIN" train "$cfg" >"$OUT/$name.out" 2>"$OUT/$name.err"; then
        echo "$(report "$name" "$OUT/$name.out") wall_s=$((SECONDS - t0))" | tee -a "$OUT/results.txt"
    else
        echo "$name FAILED (see $OUT/$name.err):" | tee -a "$OUT/results.txt"
        tail -5 "$OUT/$name.err" | tee -a "$OUT/results.txt"
    fi
}

# bytes of rows and Adagrad state at width $1, times a fraction $2
cache_bytes() { python3 -c "print(int($TOTAL_ROWS * $1 * 2 * 4 * $2))"; }

# the issue's comparisons first, the slow dim-128 host run last (a time limit cuts the end)
wanted fused16 && train fused16 "$(config fused16 16 $DEVICE 'fused = true')"
wanted device16 && train device16 "$(config device16 16 $DEVICE 'fused = false')"
wanted host16 && train host16 "$(config host16 16 cpu '')"
wanted cache16 && train cache16 "$(config cache16 16 $DEVICE "fused = true
gpu_cache_bytes = $(cache_bytes 16 "$CACHE_SHARE")")"
# two ranks on the one GPU (each rank's shards fused) against one process
wanted np1 && train np1 "$(config np1 16 $DEVICE '')"
if wanted np2 && [[ $MPIEXEC != none ]]; then
    cfg=$(config np2 16 $DEVICE '')
    sed -i "s/^threads = .*/threads = $((THREADS / 2))/" "$cfg"
    train np2 "$cfg" "$MPIEXEC" -np 2
fi
wanted fused128 && train fused128 "$(config fused128 128 $DEVICE 'fused = true')"
wanted host128 && train host128 "$(config host128 128 cpu '')"
echo "figures in $OUT/results.txt"
