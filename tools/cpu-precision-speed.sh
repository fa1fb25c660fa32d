#!/usr/bin/env bash
# Training-step speed on the CPU, f32 against bf16, candle against its PyTorch mirror, alternated.
#
#   tools/cpu-precision-speed.sh STORE [ROUNDS] [PRESETS...]   (defaults: 3 rounds, fast-cpu fast-muon)
#
# STORE is a prepped store folder (the mirror reads its images; step-bench uses random ones).
# Each round runs, per preset: candle f32, PyTorch f32, candle bf16, PyTorch bf16 (autocast
# around forward and loss, channels_last), each 4 timed steps at batch 1000 on 2 threads.
# Needs a release build (cargo build --release) and torch. Prints one line per process.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:?usage: tools/cpu-precision-speed.sh STORE [ROUNDS] [PRESETS...]}
shift
rounds=${1:-3}
[ $# -eq 0 ] || shift
if [ $# -gt 0 ]; then presets=("$@"); else presets=(fast-cpu fast-muon); fi
bin=target/release/stream-train
echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(git rev-parse --short HEAD)"
for preset in "${presets[@]}"; do
  for round in $(seq "$rounds"); do
    for p in f32 bf16; do
      c=$("$bin" step-bench --preset "$preset" --device cpu --batch-size 1000 --steps 4 --threads 2 \
            --precision "$p" 2>&1 | grep 'images/s' || echo "failed")
      echo "$preset round $round candle $p: $c"
      t=$(python3 tools/fast_reference.py --data "$store" --binary "$bin" --preset "$preset" \
            --flags '--batch-size 1000' --threads 2 --steps 4 --amp "$p" 2>&1 | grep 'images/s' || echo "failed")
      echo "$preset round $round torch $p: $t"
    done
  done
done
