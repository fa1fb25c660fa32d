#!/usr/bin/env bash
# Training-step throughput, side by side in one run: candle with stock candle-nn ops, candle
# with this crate's fast ops, PyTorch eager (default layout and channels_last), same model
# (`--preset tiny` unless PRESET is set), batch 128, 2 threads, random images. Rounds are
# interleaved so drift on a shared machine hits every contender alike; the table shows medians.
#
#   PYTHON=/path/to/venv/bin/python tools/compare_step.sh [ROUNDS]
#
# Needs a release build (cargo build --release) and torch for $PYTHON (not part of CI).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
PRESET=${PRESET:-tiny}
BATCH=${BATCH:-128}
STEPS=${STEPS:-20}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-python3}
BIN=target/release/stream-train
[ -x "$BIN" ] || { echo "error: $BIN missing: run cargo build --release" >&2; exit 1; }

declare -A runs=(
  [candle-stock]="$BIN step-bench --preset $PRESET --batch-size $BATCH --steps $STEPS --threads $THREADS --kernels stock"
  [candle-fast]="$BIN step-bench --preset $PRESET --batch-size $BATCH --steps $STEPS --threads $THREADS --kernels fast"
  [torch]="$PYTHON tools/torch_reference.py speed --preset $PRESET --batch-size $BATCH --steps $STEPS --threads $THREADS --binary $BIN"
  [torch-channels-last]="$PYTHON tools/torch_reference.py speed --preset $PRESET --batch-size $BATCH --steps $STEPS --threads $THREADS --binary $BIN --channels-last"
)
order=(candle-stock candle-fast torch torch-channels-last)
declare -A results
for r in $(seq "$ROUNDS"); do
  for name in "${order[@]}"; do
    rate=$(RAYON_NUM_THREADS=$THREADS ${runs[$name]} | sed -n 's/.*images\/s: \([0-9.]*\).*/\1/p' | tail -1)
    echo "round $r  $name: $rate images/s" >&2
    results[$name]="${results[$name]:-} $rate"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
torch=$(echo "${results[torch]}" | median)
printf '%-22s %10s %10s\n' "$PRESET, batch $BATCH" "images/s" "vs torch"
for name in "${order[@]}"; do
  m=$(echo "${results[$name]}" | median)
  printf '%-22s %10.0f %9.2fx\n' "$name" "$m" "$(echo "$m / $torch" | bc -l)"
done
