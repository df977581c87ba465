#!/usr/bin/env bash
# The long fuzz run: every fuzz target for SECONDS each (default 600), JOBS at a time
# (default 2). Each prints its executions; a panic saves its input under fuzz/corpus/
# and the run fails. CI runs the same targets for 4 s each inside launch/test.sh.
#   bash launch/fuzz.sh [SECONDS] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
seconds=${1:-600}
jobs=${2:-2}
logs=$(mktemp -d)
# the test binaries, copied: a build during the run cannot change what runs
exe() { cargo test --release "$@" --no-run 2>&1 | sed -n 's/.*Executable.*(\(.*\))/\1/p' | tail -1; }
cp "$(exe -p shardrec-data --test fuzz)" "$logs/data-fuzz"
cp "$(exe -p shardrec --lib)" "$logs/trainer-lib"
targets=(
  "data-fuzz row_parsers"
  "data-fuzz prepared_reader"
  "trainer-lib config::load::tests::fuzz_config_loader"
  "trainer-lib persist::fuzz::fuzz_checkpoint_manifest"
  "trainer-lib persist::fuzz::fuzz_model_manifest"
)
status=0
for i in "${!targets[@]}"; do
  read -r bin name <<<"${targets[$i]}"
  # the libtorch tests find fuzz/corpus from the crate's folder, as under cargo
  SHARDREC_FUZZ_SECONDS=$seconds "$logs/$bin" "$name" --exact --nocapture >"$logs/$i.log" 2>&1 &
  if (( (i + 1) % jobs == 0 )); then wait || status=1; fi
done
wait || status=1
grep -h "^fuzz " "$logs"/*.log
if grep -lE "panicked|FAILED" "$logs"/*.log >/dev/null 2>&1 || [ $status -ne 0 ]; then
  echo "a fuzz target failed; logs in $logs" >&2
  exit 1
fi
