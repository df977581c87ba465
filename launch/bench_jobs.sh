# Sourced by the bench_*.sh scripts after they set OUT: the built binary, and `job`, which
# runs one training (one process, or under mpirun with one thread per rank) and keeps its
# summary and log in $OUT.
source launch/env.sh
BIN=${BIN:-target/release/shardrec}
[ -x "$BIN" ] || bash launch/setup.sh
mkdir -p "$OUT"

# runs one job: NAME RANKS CONFIG [--set ...]
job() {
  local name=$1 ranks=$2 cfg=$3
  shift 3
  local cmd=("$BIN" train "$cfg" --set "train.run_dir=\"$OUT/$name\"" "$@")
  if [ "$ranks" -gt 1 ]; then
    cmd=(mpirun -np "$ranks" "${cmd[@]}" --set train.threads=1)
  fi
  echo "== $name: ${cmd[*]}" >&2
  rm -rf "${OUT:?}/$name"   # a run folder holds one run: the bench replaces its own
  "${cmd[@]}" > "$OUT/$name.json" 2> "$OUT/$name.err"
}
