#!/usr/bin/env bash
# The GPU check: the CUDA ops against the CPU's (first: they cannot be tested anywhere else),
# whole-step parity, throughput against PyTorch, where the step's time goes, the loader's rate and
# a short accuracy run, in one command of about 8 minutes on an H100/H200.
#
#   tools/gpu-check.sh --prepare    # HERE (no GPU): build the CUDA binary, fill gpu-carry/, check
#                                   # that the working tree plus gpu-carry/ fits in 64 MiB
#   tools/gpu-check.sh              # THERE (GPU machine, repository root): run the checks; full
#                                   # logs go to $OUT (default gpu-check-logs/), a table prints last
#
# gpu-carry/ (ignored by git) holds: stream-train-cudnn.gz (the main build: this crate's CUDA
# kernels and cuDNN convolutions with cached plans) and stream-train-cuda.gz (no cuDNN: the
# lowered convolution backward, for the A/B), both from tools/pack-gpu-binary.sh, prep-dataset.gz
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
  for feature in cudnn cuda; do
    bin="$CARRY/stream-train-$feature.gz"
    if [ ! -f "$bin" ] || [ -n "$(find src vendor build.rs Cargo.toml Cargo.lock -newer "$bin" -print -quit)" ]; then
      tools/pack-gpu-binary.sh $feature
    fi
  done
  cargo build --release --bin prep-dataset
  mkdir -p "$CARRY"
  strip -o "$CARRY/prep-dataset" target/release/prep-dataset
  gzip -9 -f "$CARRY/prep-dataset"
  install -m 0644 "$SHARED/datasets/cifar10-jpeg.tar.gz" "$CARRY/"
  # airbench94 for the fast preset's yardstick (the GPU machine cannot fetch it); optional.
  [ -f "$CARRY/airbench.tar.gz" ] || { pip download --no-deps --no-binary :all: -d "$CARRY/pip" airbench==0.1.8 \
    && mv "$CARRY"/pip/airbench-*.tar.gz "$CARRY/airbench.tar.gz" && rm -rf "$CARRY/pip"; } || echo "warning: no airbench sdist: the fast-vs-airbench stage will be skipped"
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
OUT=$(cd "$OUT" && pwd)   # absolute: some stages run from another folder
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
declare -A R   # results for the final table
# The whole check stays inside BUDGET seconds (the device tool allows 600 per command): each stage
# gets the smaller of its own limit and what is left, and stages run most valuable first.
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-480}
# GPU_CHECK_ONLY="parity step-stock ...": run only the stages named (a follow-up call).
ONLY=${GPU_CHECK_ONLY:-}
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/check.log"; }
# run NAME SECONDS CMD...: stdout+stderr to $OUT/NAME.log; status kept, never aborts the check.
run() {
  local name=$1 secs=$2; shift 2
  if [ -n "$ONLY" ] && [[ " $ONLY prep " != *" $name "* ]]; then return 125; fi
  local left=$((START + BUDGET - $(date +%s)))
  if [ "$left" -lt 20 ]; then log "$name: skipped, $left s of the budget left"; return 124; fi
  [ "$secs" -le "$left" ] || secs=$left
  log "$name (limit ${secs}s): $*"
  local t0=$(date +%s.%N)
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  R[$name.s]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
  [ $rc -eq 0 ] || log "$name: exit $rc (see $OUT/$name.log)"
  return $rc
}
last() { sed -n "s|.*$2 *\([0-9.]*\).*|\1|p" "$OUT/$1.log" 2>/dev/null | tail -1; }
# final NAME: the run's headline accuracy, or the last finished epoch's when the limit cut it.
final() {
  local acc; acc=$(sed -n 's/^test accuracy: //p' "$OUT/$1.log" 2>/dev/null | tail -1)
  if [ -n "$acc" ]; then echo "$acc"; return; fi
  grep -E '^epoch +[0-9]+/' "$OUT/$1.log" 2>/dev/null | tail -1 | sed -n 's|^epoch *\([0-9/]*\):.*test loss [0-9.]* acc \([0-9.]*%\).*|\2 after epoch \1 (cut short)|p'
}
# (awk, not bc: the GPU machine's image has no bc)
ratio() { if [ -n "${1:-}" ] && [ -n "${2:-}" ]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; else echo n/a; fi; }
row() { printf '%-46s %s\n' "$1" "$2"; }
# The table, rewritten after every stage: a check cut short still leaves what it measured.
table() {
  {
    echo "gpu-check $(date -u +%F) on ${R[card]:-?}, $(nproc) cores, $(($(date +%s) - START)) s"
    row "CUDA ops vs CPU ops (check-ops)" "${R[ops-test]:-n/a}"
    row "seed b128 step split f32 (ncu kernel time)" "${R[split-f32]:-n/a}"
    row "  the same bf16 (top 10 kernels: split-*-ncu.log.top10)" "${R[split-bf16]:-n/a}"
    row "CPU/GPU parity f32, no TF32 (seed, 16 images)" "${R[parity]:-n/a}"
    row "  the same with TF32 (as trained)" "${R[parity-tf32]:-n/a}"
    row "candle step-bench seed b128 f32 (images/s)" "${R[step]:-n/a}"
    row "  peak memory of that step (pool, used/reserved)" "${R[step-mem]:-n/a}"
    row "  the same with --kernels stock (images/s)" "${R[step-stock]:-n/a} (fast/stock $(ratio "${R[step]:-}" "${R[step-stock]:-}"))"
    row "  the same without cuDNN (lowered conv, images/s)" "${R[step-nodnn]:-n/a} (cudnn/lowered $(ratio "${R[step]:-}" "${R[step-nodnn]:-}"))"
    row "  the same with --no-tf32 (images/s)" "${R[step-notf32]:-n/a}"
    row "candle step-bench seed b128 bf16 (images/s)" "${R[step-bf16]:-n/a}"
    for v in torch-f32 torch-f32-cl torch-bf16 torch-bf16-cl; do
      local mine=${R[step]:-}
      case $v in torch-bf16*) mine=${R[step-bf16]:-} ;; esac
      row "PyTorch eager $v (images/s)" "${R[$v]:-n/a} (candle/torch $(ratio "$mine" "${R[$v]:-}"))"
    done
    row "graph vs eager, seed 24 steps" "${R[graph-eq]:-n/a}"
    row "  eager vs eager (the spread)" "${R[graph-spread]:-n/a}"
    row "  negative control: rates frozen at capture" "${R[graph-neg]:-n/a}"
    row "seed 200 real steps f32, --cuda-graph" "${R[graph-loop]:-n/a}"
    for p in f32 bf16; do
      for b in 128 256 512; do
        row "seed $p b$b images/s" "${R[matrix-$p-$b]:-n/a}; torch.compile (optimizer eager) ${R[compile-$p-$b]:-n/a}"
      done
    done
    row "seed 200 real steps f32 (epoch line)" "${R[loop]:-n/a}"
    row "  peak GPU memory (nvidia-smi, MiB)" "${R[mem]:-n/a} (pool: ${R[loop-mem]:-n/a})"
    row "  step breakdown, launch-blocking (ms/step)" "${R[spans]:-n/a}"
    row "NCCL, one rank, tiny 50 steps (epoch line)" "${R[nccl]:-n/a}"
    row "ops per step, fast kernels (op-bench, ms)" "${R[ops]:-n/a}"
    row "  the same, candle's ops (--kernels stock)" "${R[ops-stock]:-n/a}"
    row "  cuDNN conv with cached plans (op-bench)" "${R[ops-dnn]:-n/a}"
    row "bf16 vs f32 step (seed, 16 images)" "${R[parity-bf16]:-n/a}"
    row "tiny preset f32: final test accuracy" "${R[tiny-f32]:-n/a} in ${R[tiny-f32.s]:-?} s"
    row "tiny preset bf16: final test accuracy" "${R[tiny-bf16]:-n/a} in ${R[tiny-bf16.s]:-?} s"
    row "--preset fast, 5 seeds: final test accuracy" "${R[fast]:-n/a}, ${R[fast-s]:-?} s per run (whole process)"
    row "--preset fast-muon, 5 seeds: final test accuracy" "${R[muon]:-n/a}, ${R[muon-s]:-?} s per run (whole process)"
    row "airbench94 (PyPI) on the same images" "${R[airbench]:-n/a}"
    row "--pipeline-only, seed augmentation (images/s)" "${R[pipeline]:-n/a}"
    echo "logs: $OUT/*.log; per-stage profile of the real steps: $OUT/loop.log, $OUT/profile.jsonl, $OUT/trace.json"
  } > "$OUT/summary.txt"
}

for f in stream-train-cudnn.gz prep-dataset.gz cifar10-jpeg.tar.gz; do  # (the cuda build is optional)
  [ -f "$CARRY/$f" ] || { echo "error: $CARRY/$f missing: run tools/gpu-check.sh --prepare here first" >&2; exit 1; }
done
gunzip -c "$CARRY/stream-train-cudnn.gz" > "$W/stream-train" && gunzip -c "$CARRY/prep-dataset.gz" > "$W/prep-dataset"
chmod +x "$W/stream-train" "$W/prep-dataset"
if [ -f "$CARRY/stream-train-cuda.gz" ]; then
  gunzip -c "$CARRY/stream-train-cuda.gz" > "$W/stream-train-nodnn" && chmod +x "$W/stream-train-nodnn"
fi
PY=${PYTHON:-python3}
NV=$($PY -c 'import nvidia,os,glob;print(":".join(sorted(d for p in nvidia.__path__ for d in glob.glob(os.path.join(p,"*","lib")))))' 2>/dev/null)
export LD_LIBRARY_PATH="$NV${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{ nvidia-smi; ldd "$W/stream-train"; [ -x "$W/stream-train-nodnn" ] && ldd "$W/stream-train-nodnn"; $PY -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))'; nproc; } > "$OUT/machine.log" 2>&1
if ldd "$W/stream-train" | grep -q 'not found'; then
  log "missing libraries:"; ldd "$W/stream-train" | grep 'not found' | tee -a "$OUT/check.log"
fi
R[card]=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
ST="$W/stream-train"
table

# 0. The CUDA kernels against the CPU ops, op by op (forward and every gradient, f32 and bf16):
#    nothing else can test them. On a failure the rest still runs (and says how far off it is).
run ops-test 90 "$ST" check-ops --device cuda
R[ops-test]=$(sed -n 's/^check-ops: //p' "$OUT/ops-test.log" 2>/dev/null | tail -1); table

run prep 90 "$W/prep-dataset" --source "$CARRY/cifar10-jpeg.tar.gz" --out "$W/data" -q

# 1. Correctness: the same weights and batch on the GPU and the CPU (with an f64 yardstick),
#    TF32 off (strict); then with TF32, which rounds conv inputs to 10 mantissa bits, for the record.
run parity 120 "$ST" check-step --preset seed --device cuda --images 16 --no-tf32
R[parity]=$(sed -n 's/^check-step: //p' "$OUT/parity.log" 2>/dev/null | tail -1); table
run parity-tf32 60 "$ST" check-step --preset seed --device cuda --images 16 --tolerance 1
R[parity-tf32]=$(sed -n 's/^check-step: \(logits [^,]*, worst tensor [^ ]*\).*/\1/p' "$OUT/parity-tf32.log" 2>/dev/null | tail -1); table

# 1a. The step as one CUDA graph (issue 38, docs/capture.md; never run on a GPU before): two eager
#     runs of 24 seed steps (their spread: cuDNN may pick non-deterministic algorithms) and one
#     with the graph (warm-up, capture with its first replay held to an eager step, 22 launches),
#     the rate (a one-epoch warm-up) and the EMA decay changing every step; weights, EMA,
#     momentum, statistics and sums compared tensor by tensor. The negative control replays
#     with the rates frozen at capture and must come out further from eager than the spread.
#     Then 200 real steps with the graph (GPU busy on its epoch line), beside stage 3's eager loop.
G="--preset seed --device cuda --data $W/data --runs $W/runs --epochs 1 --limit-train-batches 24 --warmup-epochs 1 -q"
run graph-eager-a 90 "$ST" $G --name graph-eager-a --no-cuda-graph
run graph-eager-b 90 "$ST" $G --name graph-eager-b --no-cuda-graph
run graph-graph 90 "$ST" $G --name graph-graph --cuda-graph
run graph-frozen 90 "$ST" $G --name graph-frozen --cuda-graph --cuda-graph-fault-freeze-rates
cmp_runs() { $PY tools/compare_checkpoints.py "$W/runs/$1" "$W/runs/$2" 2>&1 | tail -1; }
R[graph-spread]=$(cmp_runs graph-eager-a graph-eager-b)
R[graph-eq]=$(cmp_runs graph-eager-a graph-graph)
R[graph-neg]=$(cmp_runs graph-eager-a graph-frozen)
# Verdicts on the largest relative difference: the graph within the eager pair's (0 when they are
# equal), the control far outside it, or caught inside its run by the replay check.
maxdiff() { sed -n 's/.*max rel diff \([0-9.a-z+-]*\).*/\1/p' <<<"$1"; }
verdict() {  # verdict GRAPH_LINE SPREAD_LINE WANT(within|outside)
  awk -v n="$(maxdiff "$1")" -v s="$(maxdiff "$2")" -v want="$3" 'BEGIN {
    if (n == "" || s == "") { print "NO RESULT"; exit }
    within = (n + 0 <= s + 0)
    if (want == "within") print (within ? "within the eager spread" : "OUTSIDE the eager spread")
    else print ((n + 0 > 10 * (s + 0) && n + 0 > 0) ? "fails, as it must" : "PASSES: the comparison cannot see a frozen rate") }'
}
R[graph-eq]="${R[graph-eq]} -> $(verdict "${R[graph-eq]}" "${R[graph-spread]}" within)"
R[graph-neg]="${R[graph-neg]} -> $(verdict "${R[graph-neg]}" "${R[graph-spread]}" outside)"
given_up() { grep -m1 'CUDA graph given up' "$OUT/$1.log" 2>/dev/null; }
[ -n "$(given_up graph-graph)" ] && R[graph-eq]="FAILED: $(given_up graph-graph)"
[ -n "$(given_up graph-frozen)" ] && R[graph-neg]="fails, as it must (caught in the run): $(given_up graph-frozen)"
table
run graph-loop 150 "$ST" --preset seed --device cuda --data "$W/data" --runs "$W/runs" --name graph-loop \
  --epochs 1 --limit-train-batches 200 --cuda-graph -q
R[graph-loop]=$(grep -E '^epoch +1/' "$OUT/graph-loop.log" 2>/dev/null | tail -1 | sed 's/.*train loss/train loss/'); table

# 1c. Eager against graph, step-bench seed at batch 128, 256 and 512 in f32 and bf16 (each line
#     says whether its timed steps were replays), with PyTorch eager (channels_last,
#     cudnn.benchmark) beside. torch.compile(mode="reduce-overhead") compiles for about a minute
#     a shape: its rows are their own call, GPU_CHECK_ONLY="compile-f32-128 compile-bf16-128 ...".
#     (It graphs the forward and backward; its optimizer step stays eager, ours is in the graph.)
for p in f32 bf16; do
  for b in 128 256 512; do
    run "eager-$p-$b" 60 "$ST" step-bench --preset seed --device cuda --batch-size $b --steps 30 --precision $p --no-cuda-graph
    run "graph-$p-$b" 60 "$ST" step-bench --preset seed --device cuda --batch-size $b --steps 30 --precision $p --cuda-graph
    run "torch-$p-$b" 90 $PY tools/torch_reference.py speed --preset seed --device cuda --batch-size $b --steps 30 \
      --amp $p --channels-last --cudnn-benchmark --binary "$ST"
    R[matrix-$p-$b]="candle eager $(last "eager-$p-$b" 'images/s:'), graph $(last "graph-$p-$b" 'images/s:') ($(sed -n 's/^CUDA graph: //p' "$OUT/graph-$p-$b.log" 2>/dev/null | tail -1)), torch $(last "torch-$p-$b" 'images/s:')"
    table
  done
done
if [ -n "$ONLY" ]; then
  for p in f32 bf16; do
    for b in 128 256 512; do
      run "compile-$p-$b" 240 $PY tools/torch_reference.py speed --preset seed --device cuda --batch-size $b --steps 30 \
        --amp $p --channels-last --cudnn-benchmark --compile reduce-overhead --binary "$ST" || continue
      R[compile-$p-$b]=$(last "compile-$p-$b" 'images/s:'); table
    done
  done
fi

# 0b. The split of a seed step (issue 20: measured before the step changes): the GPU's kernel time
#     against the step's wall time. ncu times every kernel of step-bench's 3 steps (2 warm-up + 1,
#     the same kernels each but the first's one-time setup; reported as their mean, so a little
#     high); batch 1 launches the same kernels with next
#     to no work in them, so its step time is about the host's dispatch alone. (ncu reads counters
#     on Firecracker machines only: on gVisor this row says n/a.)
for p in f32 bf16; do
  run "split-$p-b128" 60 "$ST" step-bench --preset seed --device cuda --batch-size 128 --steps 50 --precision $p --no-cuda-graph
  run "split-$p-b1" 60 "$ST" step-bench --preset seed --device cuda --batch-size 1 --steps 50 --precision $p --no-cuda-graph
  run "split-$p-ncu" 150 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
    "$ST" step-bench --preset seed --device cuda --batch-size 128 --steps 1 --precision $p --no-cuda-graph
  R[split-$p]=$($PY - "$OUT/split-$p-ncu.log" "$(last "split-$p-b128" 'images/s:')" "$(last "split-$p-b1" 'images/s:')" <<'PY' 2>>"$OUT/split-$p.err"
import csv, collections, sys
rows = list(csv.reader(l for l in open(sys.argv[1]) if l.startswith('"')))
head, body = rows[0], rows[1:]
name, value = head.index("Kernel Name"), head.index("Metric Value")
ns = collections.Counter()
for r in body:
    ns[r[name]] += float(r[value].replace(",", ""))
steps = 3
gpu_ms = sum(ns.values()) / steps / 1e6
wall_ms = 128 / float(sys.argv[2]) * 1e3
host_ms = 1 / float(sys.argv[3]) * 1e3 if sys.argv[3] else float("nan")
with open(sys.argv[1] + ".top10", "w") as f:
    for k, v in ns.most_common(10):
        f.write(f"{v / steps / 1e6:8.3f} ms/step  {k[:120]}\n")
print(f"GPU {gpu_ms:.1f} of {wall_ms:.1f} ms = busy {100 * gpu_ms / wall_ms:.0f}%, "
      f"{len(body) / steps:.0f} kernels/step, host alone (b1) {host_ms:.1f} ms")
PY
); table
done


# 1b. Each new op against candle's, at every layer shape of the seed network (op-bench: the conv
#     forward + both gradients, BatchNorm, the block tail and the squeeze).
run ops 90 "$ST" op-bench --preset seed --device cuda --reps 5
R[ops]=$(sed -n 's/^fast-path ms per step: //p' "$OUT/ops.log" 2>/dev/null | tail -1)
R[ops-dnn]=$(sed -n 's/^cudnn conv: //p' "$OUT/ops.log" 2>/dev/null | tail -1); table
run ops-stock 90 "$ST" op-bench --preset seed --device cuda --reps 5 --kernels stock
R[ops-stock]=$(sed -n 's/^fast-path ms per step: //p' "$OUT/ops-stock.log" 2>/dev/null | tail -1); table

# 2. Throughput with no data path, and the PyTorch yardstick on the same GPU.
run step 90 "$ST" step-bench --preset seed --device cuda --batch-size 128 --steps 100 --no-cuda-graph
R[step]=$(last step 'images/s:')
R[step-mem]=$(sed -n 's/^peak memory: //p' "$OUT/step.log" 2>/dev/null | tail -1); table
run step-bf16 90 "$ST" step-bench --preset seed --device cuda --batch-size 128 --steps 100 --precision bf16 --no-cuda-graph
R[step-bf16]=$(last step-bf16 'images/s:'); table
# The A/B of the whole step: candle's own ops (its cuDNN forward, its backward, its BatchNorm).
# (10 steps: candle's weight gradient alone takes about 1.2 s a step at this size)
run step-stock 90 "$ST" step-bench --preset seed --device cuda --batch-size 128 --steps 10 --kernels stock --no-cuda-graph
R[step-stock]=$(last step-stock 'images/s:'); table
for v in "f32 --channels-last" "bf16 --channels-last" "f32" "bf16"; do
  set -- $v
  name="torch-$1${2:+-cl}"
  run "$name" 90 $PY tools/torch_reference.py speed --preset seed --device cuda --batch-size 128 --steps 100 --amp "$@" --binary "$ST"
  R[$name]=$(last "$name" 'images/s:'); table
done

# 3. The real loop on real images for 200 steps: throughput, stall, per-stage profile, memory.
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/gpu-memory.csv" 2>/dev/null &
MEM=$!
run loop 150 "$ST" --preset seed --device cuda --data "$W/data" --runs "$W/runs" --name loop \
  --epochs 1 --limit-train-batches 200 --no-cuda-graph --profile-json "$OUT/profile.jsonl" --trace "$OUT/trace.json" -q
kill $MEM 2>/dev/null
R[mem]=$(sort -n "$OUT/gpu-memory.csv" 2>/dev/null | tail -1)
R[loop-mem]=$(sed -n 's/^peak GPU memory: //p' "$OUT/loop.log" 2>/dev/null | tail -1)
R[loop]=$(grep -E '^epoch +1/' "$OUT/loop.log" 2>/dev/null | tail -1 | sed 's/.*train loss/train loss/'); table

# 3b. NCCL: a one-rank job (one GPU cannot host two NCCL ranks) whose gradients go through
#     ncclAllReduce: the bootstrap and the device all-reduce run; two ranks stay unverified.
run nccl 90 "$ST" --preset tiny --device cuda --data "$W/data" --runs "$W/runs" --name nccl \
  --nccl --epochs 1 --limit-train-batches 50 -q
R[nccl]=$(grep -E '^epoch +1/' "$OUT/nccl.log" 2>/dev/null | tail -1 | sed 's/.*train loss/train loss/'); table

# 4. Where the step's time goes. With launches queued asynchronously the host's spans measure
#    launch time; CUDA_LAUNCH_BLOCKING=1 makes each span the GPU's time (and the run slower).
CUDA_LAUNCH_BLOCKING=1 run spans 90 "$ST" --preset seed --device cuda --data "$W/data" --runs "$W/runs" \
  --name spans --epochs 1 --limit-train-batches 40 --no-cuda-graph --profile-json "$OUT/spans.jsonl" -q
R[spans]=$($PY - "$OUT/spans.jsonl" <<'PY' 2>/dev/null
import json, sys
p = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1]
ms = {s["stage"]: s["mean_ms"] for s in p["stages"]}
print(" ".join(f"{k} {ms[k]:.1f}" for k in ("h2d", "forward", "backward", "optimizer", "wait") if k in ms))
PY
); table
# The rest of the A/B: no cuDNN (the lowered backward), and f32 without TF32.
if [ -x "$W/stream-train-nodnn" ]; then
  run step-nodnn 90 "$W/stream-train-nodnn" step-bench --preset seed --device cuda --batch-size 128 --steps 100 --no-cuda-graph
  R[step-nodnn]=$(last step-nodnn 'images/s:'); table
fi
run step-notf32 90 "$ST" step-bench --preset seed --device cuda --batch-size 128 --steps 100 --no-tf32 --no-cuda-graph
R[step-notf32]=$(last step-notf32 'images/s:'); table

# 5. bf16: how far one step lands from f32, and accuracy against f32 on a short run.
run parity-bf16 90 "$ST" check-step --preset seed --device cuda --images 16 --precision bf16 --tolerance 1
R[parity-bf16]=$(sed -n 's/^check-step: \(logits [^,]*, worst tensor [^ ]*\).*/\1/p' "$OUT/parity-bf16.log" 2>/dev/null | tail -1); table
for p in f32 bf16; do
  run "tiny-$p" 120 "$ST" --preset tiny --device cuda --data "$W/data" --runs "$W/runs" --name "tiny-$p" --precision $p -q
  R[tiny-$p]=$(final "tiny-$p"); table
done

# 5b. --preset fast (issue 23) against airbench94 from its PyPI package, on the same images: five
#     seeds each, final test accuracy (with TTA) and training seconds. airbench reads
#     cifar10/{train,test}.pt (tools/airbench_data.py writes them from the store) and imports
#     torchvision. Its limits add up past one call's budget: run it as its own call,
#     GPU_CHECK_ONLY="fast-0 fast-1 fast-2 fast-3 fast-4 airbench" GPU_CHECK_BUDGET=590.
if [ -f "$CARRY/airbench.tar.gz" ]; then
  for seed in 0 1 2 3 4; do
    run "fast-$seed" 120 "$ST" --preset fast --device cuda --data "$W/data" --runs "$W/runs" \
      --name "fast-$seed" --seed $seed -q
  done
  R[fast]=$(for seed in 0 1 2 3 4; do final "fast-$seed" | cut -d% -f1; done | awk '{ s += $1; n++ } END { if (n) printf "%.2f%% mean of %d", s / n, n }')
  R[fast-s]=$(for seed in 0 1 2 3 4; do echo "${R[fast-$seed.s]:-}"; done | awk '$1 { s += $1; n++ } END { if (n) printf "%.1f", s / n }')
  table
  # airbench94_muon's recipe (Muon on the filters, batch 2000, 8 epochs): its own call,
  # GPU_CHECK_ONLY="muon-0 muon-1 muon-2 muon-3 muon-4".
  for seed in 0 1 2 3 4; do
    run "muon-$seed" 120 "$ST" --preset fast-muon --device cuda --data "$W/data" --runs "$W/runs" \
      --name "muon-$seed" --seed $seed -q
  done
  R[muon]=$(for seed in 0 1 2 3 4; do final "muon-$seed" | cut -d% -f1; done | awk '{ s += $1; n++ } END { if (n) printf "%.2f%% mean of %d", s / n, n }')
  R[muon-s]=$(for seed in 0 1 2 3 4; do echo "${R[muon-$seed.s]:-}"; done | awk '$1 { s += $1; n++ } END { if (n) printf "%.1f", s / n }')
  table
  # A pure-Python sdist: unpacked, not built (pip could not fetch setuptools there).
  mkdir -p "$W/ab" && tar -xzf "$CARRY/airbench.tar.gz" -C "$W/ab"
  $PY tools/airbench_data.py "$W/data" "$W/ab/cifar10" > "$OUT/airbench-data.log" 2>&1
  $PY -c 'import torchvision' >> "$OUT/airbench-data.log" 2>&1 || log "airbench: no torchvision here, its run will fail"
  (cd "$W/ab" && PYTHONPATH="$(echo "$W"/ab/airbench-*)" run airbench 240 $PY -c '
import airbench, statistics, time
airbench.warmup94()
accs, secs = [], []
for run in range(5):
    t = time.perf_counter(); model = airbench.train94(run=run); secs.append(time.perf_counter() - t)
    accs.append(airbench.evaluate(model, airbench.CifarLoader("cifar10", train=False, batch_size=2000), tta_level=2))
print(f"airbench94: {100 * statistics.mean(accs):.2f}% mean of 5 (sd {100 * statistics.stdev(accs):.2f}), {statistics.mean(secs):.2f} s per run (wall, with its evaluation)")
')
  R[airbench]=$(sed -n 's/^airbench94: //p' "$OUT/airbench.log" 2>/dev/null | tail -1); table
fi

# 6. The loader alone on this machine's cores.
run pipeline 60 "$ST" --preset seed --data "$W/data" --pipeline-only --epochs 1 -q
R[pipeline]=$(last pipeline 'images/s:'); table
echo; cat "$OUT/summary.txt"
