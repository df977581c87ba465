# Sourced by the launch scripts: where libtorch lives and how the build finds it.
TORCH_VERSION=2.11.0
export LIBTORCH="${SHARDREC_LIBTORCH:-$HOME/.cache/shardrec/libtorch-$TORCH_VERSION}"
export LIBTORCH_BYPASS_VERSION_CHECK=0
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
