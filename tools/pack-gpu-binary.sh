#!/usr/bin/env bash
# Packs the CUDA `stream-train` for the GPU machine: cross-built here (tools/cuda-build.sh),
# stripped and gzipped into gpu-carry/.
#
#   tools/pack-gpu-binary.sh [cuda|cudnn]     ->  gpu-carry/stream-train-<feature>.gz
#
# The build itself is tools/cuda-build.sh (CUDA 13.0 from PyPI wheels into ~/.cache/cuda13-pip,
# a link stub for libcuda, sm_90 for H100/H200; ~9 minutes from scratch on 2 cores, into
# target-cuda/ so the CPU build in target/ stays untouched). At run time the GPU machine needs
# the driver's libcuda.so.1 and PyTorch cu130's pip libraries (cuBLAS 13, cuRAND 10, cudart 13,
# cuDNN 9 for the cudnn build); tools/gpu-check.sh puts them on LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURE=${1:-cuda}
case "$FEATURE" in cuda|cudnn) ;; *) echo "usage: $0 [cuda|cudnn]" >&2; exit 2;; esac
# The cuDNN build carries NCCL too (for --nccl; the library is loaded from the pip wheels).
features=$FEATURE
[ "$FEATURE" = cudnn ] && features=cudnn,nccl
tools/cuda-build.sh build "$features" --bin stream-train
mkdir -p gpu-carry
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
strip -o "$tmp" target-cuda/release/stream-train
gzip -9 -c "$tmp" > "gpu-carry/stream-train-$FEATURE.gz.tmp"
mv "gpu-carry/stream-train-$FEATURE.gz.tmp" "gpu-carry/stream-train-$FEATURE.gz"
ls -l "gpu-carry/stream-train-$FEATURE.gz"
