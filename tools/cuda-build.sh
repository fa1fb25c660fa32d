#!/usr/bin/env bash
# Builds (or only checks) the CUDA code of this crate on a machine without a GPU, a driver or a
# system CUDA: the CUDA 13.0 toolkit comes from PyPI wheels into a cache outside the repository.
#
#   tools/cuda-build.sh build [cuda|cudnn][,nccl] [args]  release build into target-cuda/
#   tools/cuda-build.sh check [cargo args]                clippy -D warnings of the cudnn+nccl build
#   tools/cuda-build.sh env                               prints the exports, for a shell to eval
#
# A machine with a CUDA toolkit of its own does not need this: `cargo build --release --features
# cudnn` with nvcc on PATH (or CUDA_HOME set) is the documented path. What this adds:
#   1. CUDA 13.0 exactly (nvcc 13.1 emits PTX that a 580 driver, CUDA 13.0, cannot load), cuBLAS,
#      cuRAND, NVRTC, cuDNN 9 and NCCL 2 from PyPI into $CUDA_PREFIX (~2 GB, once per machine;
#      the versions PyTorch 2.11 cu130 pins, so the GPU machine's pip libraries satisfy the binary);
#   2. the unversioned lib*.so links the linker asks for, and a link-only libcuda.so stub (its
#      SONAME is libcuda.so.1; the real driver's library is used at run time, the stub never
#      leaves this machine);
#   3. CUDA_HOME / CUDNN_LIB / PATH for cudarc's and candle-kernels' build scripts, and
#      CUDA_COMPUTE_CAP (90: H100/H200) for the PTX of candle's kernels and of src/ops/cuda/.
# Cold: ~2 min of download, ~9 min of build on 2 cores (6 of them nvcc on candle's kernels).
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_PREFIX=${CUDA_PREFIX:-$HOME/.cache/cuda13-pip}
TARGET_DIR=${TARGET_DIR:-target-cuda}
CU=$CUDA_PREFIX/nvidia/cu13
DNN=$CUDA_PREFIX/nvidia/cudnn
NCCL=$CUDA_PREFIX/nccl/nvidia/nccl

install_toolkit() {
  if [ ! -x "$CU/bin/nvcc" ]; then
    echo "installing the CUDA 13.0 toolkit from PyPI into $CUDA_PREFIX" >&2
    python3 -m pip install --quiet --no-cache-dir --target "$CUDA_PREFIX" \
      "cuda-toolkit[nvcc,crt,nvvm,cccl,cudart,cublas,curand,nvrtc]==13.0.2" \
      "nvidia-cudnn-cu13==9.19.0.56" >&2
  fi
  if [ ! -d "$NCCL/lib" ]; then
    # A target of its own: pip will not add a package to an existing --target folder.
    # 2.28 is what PyTorch 2.11 cu130 ships; only the soname (libnccl.so.2) matters at run time.
    python3 -m pip install --quiet --no-cache-dir --target "$CUDA_PREFIX/nccl" \
      "nvidia-nccl-cu13==2.28.9" >&2
  fi
  for l in cublas cublasLt curand nvrtc cudart; do
    so=$(cd "$CU/lib" && ls "lib$l.so."[0-9]* | head -n1)
    ln -sf "$so" "$CU/lib/lib$l.so"
  done
  ln -sf libcudnn.so.9 "$DNN/lib/libcudnn.so"
  ln -sf libnccl.so.2 "$NCCL/lib/libnccl.so"
  if [ ! -f "$CU/lib/stubs/libcuda.so" ]; then
    # Every cu* entry point of cuda.h as an empty function: enough to link, never to run.
    mkdir -p "$CU/lib/stubs"
    gcc -E -P -I"$CU/include" "$CU/include/cuda.h" | tr -s ' \n' ' ' \
      | grep -oE 'CUresult cu[A-Za-z0-9_]+ ?\(' | sed -E 's/CUresult (cu[A-Za-z0-9_]+).*/\1/' \
      | sort -u | awk '{print "void " $1 "(void) {}"}' > "$CU/lib/stubs/libcuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so" "$CU/lib/stubs/libcuda_stub.c"
  fi
}

exports() {
  # cudarc's build script adds <each of these>/lib to the link path (CUDA_ROOT: NCCL's).
  echo "export CUDA_HOME='$CU' CUDNN_LIB='$DNN' CUDA_ROOT='$NCCL' PATH='$CU/bin':\"\$PATH\""
  echo "export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90} CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-$(nproc)}"
}

mode=${1:-build}
shift || true
case "$mode" in
  env)
    install_toolkit
    exports
    ;;
  build)
    feature=${1:-cuda}
    shift || true
    case "$feature" in cuda|cudnn|cudnn,nccl|cuda,nccl) ;; *) echo "usage: $0 build [cuda|cudnn][,nccl] [cargo args]" >&2; exit 2;; esac
    install_toolkit
    eval "$(exports)"
    cargo build --release --features "$feature" --target-dir "$TARGET_DIR" "$@"
    ;;
  check)
    install_toolkit
    eval "$(exports)"
    cargo clippy --features cudnn,nccl --target-dir "$TARGET_DIR" --lib --bins "$@" -- -D warnings
    ;;
  *)
    echo "usage: $0 build [cuda|cudnn] [cargo args] | check [cargo args] | env" >&2
    exit 2
    ;;
esac
