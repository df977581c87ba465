#!/usr/bin/env bash
# Idempotent set-up for shardrec on a fresh Debian machine:
#   1. Debian packages (compiler, MPICH, libclang for the mpi crate's bindgen),
#   2. libtorch 2.11.0 unpacked from the PyPI wheel into a folder outside the repo,
#   3. `cargo build --release` (binary: target/release/shardrec).
# Every step is skipped when its result is already present, so running it twice is cheap.
#
# Environment:
#   SHARDREC_LIBTORCH   where libtorch lives (default: $HOME/.cache/shardrec/libtorch-2.11.0)
#   SHARDREC_SKIP_BUILD set to 1 to stop after installing dependencies
# Prints `export LIBTORCH=...` hints on stderr; sourcing is not needed: launch/*.sh call
# `launch/env.sh` which sets the same variables.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/env.sh
source "$ROOT/launch/env.sh"

log() { echo "[setup] $*" >&2; }

# --- 1. Debian packages -----------------------------------------------------------------
PKGS=(build-essential pkg-config unzip mpich libmpich-dev libclang-dev python3-pip fonts-dejavu-core)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if mpirun --version 2>&1 | grep -qi "open mpi"; then
  log "error: 'mpirun' is Open MPI; shardrec needs MPICH's mpirun first on PATH (apt-get remove openmpi-bin)"
  exit 1
fi

# --- 2. libtorch 2.11.0 from the PyPI wheel ---------------------------------------------
if [ "$(cat "$LIBTORCH/build-version" 2>/dev/null)" != "$TORCH_VERSION" ] \
   || [ ! -f "$LIBTORCH/lib/libtorch_cpu.so" ] || [ ! -f "$LIBTORCH/lib/libcudart.so.13" ]; then
  log "fetching libtorch $TORCH_VERSION into $LIBTORCH (PyPI wheel, ~530 MB download)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps -d "$tmp" \
    "torch==$TORCH_VERSION" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85"
  staging="$LIBTORCH.partial"
  rm -rf "$staging"
  mkdir -p "$staging/lib"
  (cd "$tmp" && unzip -q -o torch-"$TORCH_VERSION"-*.whl 'torch/include/*' \
      torch/lib/libtorch_cpu.so torch/lib/libc10.so torch/lib/libtorch.so torch/lib/libgomp.so.1)
  mv "$tmp/torch/include" "$staging/include"
  mv "$tmp"/torch/lib/* "$staging/lib/"
  (cd "$tmp" && unzip -q -o nvidia_cuda_runtime-*.whl 'nvidia/cu13/lib/libcudart.so.13' \
      && unzip -q -o nvidia_cuda_cupti-*.whl 'nvidia/cu13/lib/libcupti.so.13')
  mv "$tmp"/nvidia/cu13/lib/* "$staging/lib/"
  echo "$TORCH_VERSION" > "$staging/build-version"
  rm -rf "$LIBTORCH"
  mkdir -p "$(dirname "$LIBTORCH")"
  mv "$staging" "$LIBTORCH"
  rm -rf "$tmp"
  trap - EXIT
fi

# --- 3. build ---------------------------------------------------------------------------
if [ "${SHARDREC_SKIP_BUILD:-0}" != "1" ]; then
  command -v cargo >/dev/null || { log "error: cargo not found; install Rust (rustup) first"; exit 1; }
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --quiet)
fi
log "ready: $ROOT/target/release/shardrec (LIBTORCH=$LIBTORCH)"
