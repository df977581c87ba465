#!/usr/bin/env bash
# What a lent GPU machine needs to run launch/bench_gpu.sh, under target/gpu-carry
# (ignored by git, about 15 MB): the stripped release binary, MPICH's runtime (libmpich
# and the libraries `ldd` lists that such a machine may lack), mpiexec.hydra and its
# proxy. The machine brings its own libtorch (PyTorch 2.11's); bench_gpu.sh finds it.
#
#   bash launch/gpu_carry.sh
# then, with the device tool, from the repository root (one call, < 10 minutes):
#   run(carry=["target/gpu-carry"], timeout_s=560, command=
#     "export PATH=$PWD/target/gpu-carry/bin:$PATH LD_LIBRARY_PATH=$PWD/target/gpu-carry/lib;
#      SHARDREC_BIN=target/gpu-carry/bin/shardrec MPIEXEC=mpiexec.hydra WORK=/tmp/gpu
#      bash launch/bench_gpu.sh $OUT/gpu")
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
cargo build --release -p shardrec
out=target/gpu-carry
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
strip -o "$out/bin/shardrec" target/release/shardrec
for lib in libmpich.so.12 libhwloc.so.15 libucp.so.0 libucs.so.0 libuct.so.0 libucm.so.0 \
    libnuma.so.1 libudev.so.1; do
    path=$(ldd target/release/shardrec | awk -v l="$lib" '$1 == l { print $3 }')
    [[ -n $path ]] || { echo "ldd lists no $lib" >&2; exit 1; }
    strip --strip-unneeded -o "$out/lib/$lib" "$path"
done
cp "$(command -v mpiexec.hydra)" "$(command -v hydra_pmi_proxy)" "$out/bin/"
du -sh "$out"
