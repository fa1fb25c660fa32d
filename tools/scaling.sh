#!/usr/bin/env bash
# Data-parallel scaling on this machine, side by side: the tiny preset on the real store, trained
# by 1 rank and by 2 ranks (mpirun; each rank bound to one core, one compute thread, one
# augmentation thread), rounds interleaved so drift hits both alike. Prints each round's training
# images/s (all ranks together, evaluation excluded) and the ratio of the medians.
#
#   tools/scaling.sh [ROUNDS] [STEPS]      (needs: cargo build --release --features mpi; mpirun)
#
# STORE (default datasets/cifar10) must hold a prepped store, e.g. from the shared JPEG archive:
#   target/release/prep-dataset --source ../shared/datasets/cifar10-jpeg.tar.gz
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
STEPS=${2:-150}
STORE=${STORE:-datasets/cifar10}
BIN=target/release/stream-train
[ -x "$BIN" ] || { echo "error: $BIN missing: cargo build --release --features mpi" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {  # run RANKS ROUND -> images/s of the training epoch
  local n=$1 r=$2
  RAYON_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe --bind-to core -np "$n" \
    "$BIN" --preset tiny --data "$STORE" --runs "$work" --name "r$r-n$n" --threads 1 \
    --epochs 1 --limit-train-batches "$STEPS" -q |
    sed -n 's/^epoch .* \([0-9]*\) img\/s .*/\1/p' | head -1
}
declare -a one two
for r in $(seq "$ROUNDS"); do
  a=$(run 1 "$r"); b=$(run 2 "$r")
  echo "round $r: 1 rank $a images/s, 2 ranks $b images/s" >&2
  one+=("$a"); two+=("$b")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
m1=$(median "${one[@]}"); m2=$(median "${two[@]}")
printf 'tiny, %s steps of 64 per rank, 1 thread per rank: 1 rank %s images/s, 2 ranks %s images/s, ratio %.2f\n' \
  "$STEPS" "$m1" "$m2" "$(echo "$m2 / $m1" | bc -l)"
