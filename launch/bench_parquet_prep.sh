#!/usr/bin/env bash
# `shardrec prepare` of the same generated rows as Criteo TSV and as Parquet (written by
# pyarrow, categorical columns as int64), alternating, ROUNDS rounds: seconds and peak
# RSS of each, and the ratio. With FILES=N (e.g. 24) it then prepares a set of N
# copies of the Parquet file as one training glob, inside a memory cgroup of
# MEMORY_LIMIT (default 3G) when /sys/fs/cgroup/memory is writable, and prints the
# peak RSS and the cgroup's peak usage (page cache included).
#   usage: launch/bench_parquet_prep.sh [ROWS] [ROUNDS]      (defaults 2000000 2)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-2000000}
ROUNDS=${2:-2}
BIN=target/release/shardrec
[ -x "$BIN" ] || cargo build --release --bin shardrec
PY=$(bash launch/formats_venv.sh)
DIR=data/bench/parquet-$ROWS
mkdir -p "$DIR"
TSV=$DIR/rows.tsv
[ -f "$TSV.json" ] || "$BIN" synth --rows "$ROWS" --cardinality 1000000 --out "$TSV" > /dev/null
[ -f "$DIR/rows.parquet" ] || "$PY" launch/criteo_to_parquet.py "$TSV" "$DIR/rows.parquet"

columns() {
  echo 'columns = ['
  echo '  { name = "label", role = "label" },'
  for i in $(seq 1 13); do echo "  { name = \"I$i\", role = \"dense\" },"; done
  for i in $(seq 1 26); do echo "  { name = \"C$i\", role = \"categorical\" },"; done
  echo ']'
}
printf '[data]\nformat = "criteo"\ntrain = "%s"\ncache_dir = "%s/cache"\n[model]\nkind = "lr"\n' \
  "$TSV" "$DIR" > "$DIR/criteo.toml"
{ printf '[data]\nformat = "parquet"\ntrain = "%s"\ncache_dir = "%s/cache"\n' "$DIR/rows.parquet" "$DIR"
  columns; printf '[model]\nkind = "lr"\n'; } > "$DIR/parquet.toml"

timed() { # name config -> "name seconds peak_kb"
  rm -rf "$DIR/cache"
  /usr/bin/time -f "$1 %e s, peak RSS %M KB" "$BIN" prepare "$2" 2>&1 >/dev/null | tail -1
}
echo "prepare of $ROWS rows, $(nproc) cores, alternating:"
for r in $(seq 1 "$ROUNDS"); do
  tsv=$(timed criteo "$DIR/criteo.toml"); echo "  round $r: $tsv"
  pq=$(timed parquet "$DIR/parquet.toml"); echo "  round $r: $pq"
  awk -v a="$(echo "$tsv" | awk '{print $2}')" -v b="$(echo "$pq" | awk '{print $2}')" \
    'BEGIN { printf "  round ratio: Parquet %.2fx faster than Criteo TSV\n", a / b }'
done

FILES=${FILES:-0}
[ "$FILES" -gt 0 ] || exit 0
SET=$DIR/set-$FILES
mkdir -p "$SET"
for i in $(seq 0 $((FILES - 1))); do
  [ -f "$SET/day_$i.parquet" ] || cp "$DIR/rows.parquet" "$SET/day_$i.parquet"
done
{ printf '[data]\nformat = "parquet"\ntrain = "%s/day_*.parquet"\ncache_dir = "%s/cache"\n' "$SET" "$SET"
  printf 'split = { kind = "random", test = 0.1 }\n'; columns; printf '[model]\nkind = "lr"\n'; } > "$SET/set.toml"
rm -rf "$SET/cache"
echo "$FILES files, $(du -sh "$SET" | cut -f1) of Parquet; memory: $(free -g | awk '/Mem/ {print $2}') GiB"
# Peak RSS counts the prepared columns' mapped pages too (prepare reads them back to
# check every id), which are page cache the kernel reclaims; the anonymous part is what
# the process itself holds. Both are sampled from /proc every 0.2 s.
watch_rss() { # pid -> "peak anonymous RSS, peak file-backed RSS" in MiB
  local anon=0 file=0 a f
  while [ -e "/proc/$1/status" ]; do
    read -r a f < <(awk '/^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {print a+0, f+0}' "/proc/$1/status" 2>/dev/null || echo "0 0")
    [ "$a" -gt "$anon" ] && anon=$a
    [ "$f" -gt "$file" ] && file=$f
    sleep 0.2
  done
  echo "peak anonymous RSS $((anon >> 10)) MiB, peak file-backed RSS $((file >> 10)) MiB"
}
CG=/sys/fs/cgroup/memory/shardrec_prep_bench
start=$(date +%s.%N)
if mkdir -p "$CG" 2>/dev/null && echo "${MEMORY_LIMIT:-3G}" > "$CG/memory.limit_in_bytes" 2>/dev/null; then
  sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
  sh -c "echo \$\$ > $CG/cgroup.procs; exec $BIN prepare $SET/set.toml" > /dev/null 2>&1 &
  pid=$!
  echo "set: $(watch_rss $pid)"
  wait $pid
  echo "cgroup limit ${MEMORY_LIMIT:-3G}, cgroup peak (RSS + page cache): $(( $(cat "$CG/memory.max_usage_in_bytes") >> 20 )) MiB"
  rmdir "$CG" 2>/dev/null || true
else
  "$BIN" prepare "$SET/set.toml" > /dev/null 2>&1 &
  pid=$!
  echo "set: $(watch_rss $pid)"
  wait $pid
fi
echo "set: $(echo "$(date +%s.%N) - $start" | bc) s"
du -sh "$SET/cache" | sed 's/^/prepared: /'
rm -rf "$SET/cache"
