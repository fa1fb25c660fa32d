#!/usr/bin/env bash
# The GPU check: correctness, throughput, where the step's time goes, the PyTorch yardstick, the
# loader's rate and a short accuracy run, in one command of about 8 minutes on an H100/H200.
#
#   tools/gpu-check.sh --prepare    # HERE (no GPU): build the CUDA binary, fill gpu-carry/, check
#                                   # that the working tree plus gpu-carry/ fits in 64 MiB
#   tools/gpu-check.sh              # THERE (GPU machine, repository root): run the checks; full
#                                   # logs go to $OUT (default gpu-check-logs/), a table prints last
#
# gpu-carry/ (ignored by git) holds: stream-train-cuda.gz (tools/build-cuda.sh), prep-dataset.gz
# (the CPU build: prepping needs no GPU) and cifar10-jpeg.tar.gz (the shared JPEG CIFAR-10, 19 MB,
# prepped there in seconds). The GPU machine needs python3 with torch (cu130) and its nvidia-*
# wheels, whose libraries the binary loads. Record what it prints in docs/gpu-results.md.
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=gpu-carry
LIMIT_MIB=64

if [ "${1:-}" = "--prepare" ]; then
  set -e
  SHARED=${CIFAR_STREAM_SHARED:-../shared}
  if [ ! -f "$CARRY/stream-train-cuda.gz" ] || [ -n "$(find src Cargo.toml Cargo.lock -newer "$CARRY/stream-train-cuda.gz" -print -quit)" ]; then
    tools/build-cuda.sh cuda
  fi
  cargo build --release --bin prep-dataset
  mkdir -p "$CARRY"
  strip -o "$CARRY/prep-dataset" target/release/prep-dataset
  gzip -9 -f "$CARRY/prep-dataset"
  install -m 0644 "$SHARED/datasets/cifar10-jpeg.tar.gz" "$CARRY/"
  # What travels: tracked and untracked-but-not-ignored files, plus the carry folder.
  tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  carry=$(du -cb "$CARRY" | tail -1 | cut -f1)
  total=$((tree + carry))
  printf 'working tree %.1f MiB + %s/ %.1f MiB = %.1f MiB (limit %d MiB)\n' \
    "$(echo "$tree/1048576" | bc -l)" "$CARRY" "$(echo "$carry/1048576" | bc -l)" "$(echo "$total/1048576" | bc -l)" "$LIMIT_MIB"
  [ "$total" -le $((LIMIT_MIB * 1048576)) ] || { echo "error: over the $LIMIT_MIB MiB limit" >&2; exit 1; }
  echo "ready: run tools/gpu-check.sh on the GPU machine, carrying $CARRY"
  exit 0
fi

OUT=${OUT:-gpu-check-logs}
mkdir -p "$OUT"
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
declare -A R   # results for the final table
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/check.log"; }
# run NAME SECONDS CMD...: stdout+stderr to $OUT/NAME.log; status kept, never aborts the check.
run() {
  local name=$1 secs=$2; shift 2
  log "$name: $*"
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || log "$name: exit $rc (see $OUT/$name.log)"
  return $rc
}
last() { sed -n "s/.*$2 *\([0-9.]*\).*/\1/p" "$OUT/$1.log" 2>/dev/null | tail -1; }

for f in stream-train-cuda.gz prep-dataset.gz cifar10-jpeg.tar.gz; do
  [ -f "$CARRY/$f" ] || { echo "error: $CARRY/$f missing: run tools/gpu-check.sh --prepare here first" >&2; exit 1; }
done
gunzip -c "$CARRY/stream-train-cuda.gz" > "$W/stream-train" && gunzip -c "$CARRY/prep-dataset.gz" > "$W/prep-dataset"
chmod +x "$W/stream-train" "$W/prep-dataset"
PY=${PYTHON:-python3}
NV=$($PY -c 'import nvidia,os,glob;print(":".join(sorted(d for p in nvidia.__path__ for d in glob.glob(os.path.join(p,"*","lib")))))' 2>/dev/null)
export LD_LIBRARY_PATH="$NV${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{ nvidia-smi; ldd "$W/stream-train"; $PY -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'; nproc; } > "$OUT/machine.log" 2>&1
if ldd "$W/stream-train" | grep -q 'not found'; then
  log "missing libraries:"; ldd "$W/stream-train" | grep 'not found' | tee -a "$OUT/check.log"
fi
R[card]=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)

run prep 120 "$W/prep-dataset" --source "$CARRY/cifar10-jpeg.tar.gz" --out "$W/data" -q

# 1. Correctness: the same weights and batch on the GPU and the CPU (with an f64 yardstick).
run parity 180 "$W/stream-train" device-check --preset seed --device cuda --images 16
R[parity]=$(sed -n 's/^parity: //p' "$OUT/parity.log" | tail -1)

# 2. Throughput with no data path, then the real loop for one epoch (profile, stall, memory,
#    and the accuracy one epoch reaches).
run step 150 "$W/stream-train" step-bench --preset seed --device cuda --batch-size 128 --steps 200
R[step]=$(last step 'images/s:')
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/gpu-memory.csv" 2>/dev/null &
MEM=$!
run epoch 300 "$W/stream-train" --preset seed --device cuda --data "$W/data" --runs "$W/runs" \
  --epochs 1 --profile-json "$OUT/profile.jsonl" --trace "$OUT/trace.json" -q
kill $MEM 2>/dev/null
R[mem]=$(sort -n "$OUT/gpu-memory.csv" 2>/dev/null | tail -1)
R[epoch_acc]=$(sed -n 's/^test accuracy: //p' "$OUT/epoch.log" | tail -1)
R[epoch_line]=$(grep -E '^epoch +1/' "$OUT/epoch.log" | tail -1)
cp "$W/runs/seed/metrics.csv" "$OUT/epoch-metrics.csv" 2>/dev/null

# Per op, candle's convolution (forward, input gradient, weight gradient) and BatchNorm at every
# layer shape of the seed model: where the step's time goes, for the next step to target.
run ops 150 "$W/stream-train" op-bench --preset seed --device cuda --reps 5
R[ops]=$(sed -n 's/^total ms per step: //p' "$OUT/ops.log" | tail -1)

# 3. The same model in PyTorch eager on the same GPU.
for v in "f32" "f32 --channels-last" "bf16" "bf16 --channels-last"; do
  set -- $v
  name="torch-$1${2:+-cl}"
  run "$name" 120 $PY tools/torch_reference.py speed --preset seed --device cuda --batch-size 128 --steps 100 --amp "$@" --binary "$W/stream-train"
  R[$name]=$(last "$name" 'images/s:')
done

# 4. The loader alone on this machine's cores.
run pipeline 120 "$W/stream-train" --preset seed --data "$W/data" --runs "$W/runs" --name pipe --pipeline-only --epochs 1 -q
R[pipeline]=$(last pipeline 'images/s:')

{
  echo
  echo "gpu-check $(date -u +%F) on ${R[card]:-?}, $(nproc) cores"
  printf '%-44s %s\n' "CPU/GPU parity (seed, 16 images)" "${R[parity]:-n/a}"
  printf '%-44s %s\n' "candle step-bench seed b128 (images/s)" "${R[step]:-n/a}"
  for v in torch-f32 torch-f32-cl torch-bf16 torch-bf16-cl; do
    ratio=n/a
    if [ -n "${R[step]:-}" ] && [ -n "${R[$v]:-}" ]; then ratio=$(echo "${R[step]} / ${R[$v]}" | bc -l | xargs printf '%.2f'); fi
    printf '%-44s %s (candle/torch %s)\n' "PyTorch $v (images/s)" "${R[$v]:-n/a}" "$ratio"
  done
  printf '%-44s %s\n' "candle ops per step (op-bench, ms)" "${R[ops]:-n/a}"
  printf '%-44s %s\n' "one seed epoch (train line)" "${R[epoch_line]:-n/a}"
  printf '%-44s %s\n' "one seed epoch: test accuracy" "${R[epoch_acc]:-n/a}"
  printf '%-44s %s MiB\n' "peak GPU memory (nvidia-smi)" "${R[mem]:-n/a}"
  printf '%-44s %s\n' "--pipeline-only on the CPU cores (images/s)" "${R[pipeline]:-n/a}"
  echo "per-stage times: $OUT/epoch.log (profile table), $OUT/profile.jsonl, $OUT/trace.json"
} | tee "$OUT/summary.txt"
