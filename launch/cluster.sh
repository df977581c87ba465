#!/usr/bin/env bash
# Launches a shardrec job on a cluster with MPICH's mpirun (hydra):
#
#   launch/cluster.sh [--hostfile FILE] [--ranks-per-node K] [--threads T] [--dry-run] \
#       COMMAND CONFIG [ARGS...]
#
#   COMMAND       train or check-exchange, passed to shardrec
#   --hostfile    one host per line (MPICH format, `host[:slots]`); default: this machine
#   --ranks-per-node  ranks started on each host (default 1)
#   --threads     torch / table threads per rank (default: the node's cores / ranks per node)
#   --dry-run     print the mpirun command instead of running it
#
# Every host needs the same shardrec binary and libtorch at the same paths (a shared
# file system, or `launch/setup.sh` run on each), and the data paths the config names.
# Examples:
#   launch/cluster.sh --hostfile hosts --ranks-per-node 2 train configs/criteo_dlrm.toml
#   launch/cluster.sh --ranks-per-node 4 check-exchange
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOSTFILE="" PER_NODE=1 THREADS="" DRY=0
while (($#)); do
  case "$1" in
    --hostfile) HOSTFILE=$2; shift 2 ;;
    --ranks-per-node) PER_NODE=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
(($#)) || { echo "cluster.sh: missing COMMAND (see --help)" >&2; exit 2; }
[[ "$PER_NODE" =~ ^[1-9][0-9]*$ ]] || { echo "cluster.sh: --ranks-per-node must be a positive integer, got '$PER_NODE'" >&2; exit 2; }
if [ -n "$HOSTFILE" ]; then
  [ -r "$HOSTFILE" ] || { echo "cluster.sh: cannot read hostfile '$HOSTFILE'" >&2; exit 2; }
  NODES=$(grep -cvE '^\s*(#|$)' "$HOSTFILE")
  ((NODES > 0)) || { echo "cluster.sh: hostfile '$HOSTFILE' lists no hosts" >&2; exit 2; }
else
  NODES=1
fi
if [ -z "$THREADS" ]; then
  CORES=$(nproc)
  THREADS=$(( CORES / PER_NODE > 0 ? CORES / PER_NODE : 1 ))
fi
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || { echo "cluster.sh: --threads must be a positive integer, got '$THREADS'" >&2; exit 2; }
source "$ROOT/launch/env.sh"
BIN="$ROOT/target/release/shardrec"
[ -x "$BIN" ] || { echo "cluster.sh: $BIN is missing; run launch/setup.sh first" >&2; exit 2; }
if mpirun --version 2>&1 | grep -qi "open mpi"; then
  echo "cluster.sh: 'mpirun' is Open MPI; shardrec is built against MPICH" >&2; exit 2
fi
NP=$((NODES * PER_NODE))
CMD=(mpirun -np "$NP" -ppn "$PER_NODE")
[ -z "$HOSTFILE" ] || CMD+=(-f "$HOSTFILE")
CMD+=(-genv LD_LIBRARY_PATH "$LD_LIBRARY_PATH" -genv OMP_NUM_THREADS "$THREADS")
SUB=$1; shift
CMD+=("$BIN" "$SUB")
if [ "$SUB" = train ] || [ "$SUB" = eval ]; then
  (($#)) || { echo "cluster.sh: $SUB needs a CONFIG" >&2; exit 2; }
  CFG=$1; shift
  CMD+=("$CFG" --set "train.threads=$THREADS" "$@")
else
  CMD+=("$@")
fi
echo "[cluster] $NP ranks ($NODES nodes x $PER_NODE), $THREADS threads per rank" >&2
if ((DRY)); then
  printf '%q ' "${CMD[@]}"; echo
else
  exec "${CMD[@]}"
fi
