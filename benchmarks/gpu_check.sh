#!/usr/bin/env bash
# The one prepared run for a GPU machine (H100/H200; torch, nvcc, ncu and
# compute-sanitizer installed, no network). Builds the extension, runs the CUDA
# tests, compute-sanitizer memcheck and racecheck on a small case, the step
# benchmark, ncu on the fused kernel and a ResNet-50 training throughput check.
# Everything goes to $OUT (at most 8 files come back from the device tool):
#   check.log            every stage's output, then a summary table
#   bench/<device>-<date>.json .md .png   the step benchmark
#   ncu.txt              Nsight Compute sections of the fused kernel
#   train_throughput.json  images/s of lars-fused, sgd-fused, lars-foreach, timm
#   input.json           images/s of the PIL and the GPU-decode input pipelines
# Stages are ordered by importance and skipped once the time budget is spent.
# Usage: OUT=dir bash benchmarks/gpu_check.sh    (BUDGET_S=480 by default)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT/bench"
LOG="$OUT/check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}
BUDGET_S=${BUDGET_S:-480}
T0=$(date +%s)
SUMMARY=()

stage() {  # stage NAME TIMEOUT_S CMD...
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - ($(date +%s) - T0)))
  if [ "$left" -lt 20 ]; then
    SUMMARY+=("$(printf '%-22s skipped (budget spent)' "$name")")
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)" >> "$LOG"
  local s=$(date +%s)
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  SUMMARY+=("$(printf '%-22s rc=%-3s %4ss' "$name" "$rc" "$(($(date +%s) - s))")")
  return $rc
}

{
  echo "date: $(date -u)"; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -2
} >> "$LOG" 2>&1

stage build 300 $PY -m pip install --no-build-isolation --no-deps -e . || { cat "$LOG" | tail -40; exit 1; }
stage cuda_tests 150 env LARS_BIG_TEST=1 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_fused_op.py
stage cpu_tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_lars_math.py tests/test_validation.py
stage memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 9 $PY benchmarks/gpu_case.py
stage racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 9 $PY benchmarks/gpu_case.py
stage bench_resnet50 120 $PY benchmarks/bench_step.py --device cuda --sets resnet50 --out-dir "$OUT/bench" --tag -resnet50
stage ncu 60 ncu --clock-control none -k regex:lars_kernel -c 2 --section SpeedOfLight --section Occupancy \
  --section MemoryWorkloadAnalysis --section LaunchStats $PY benchmarks/gpu_case.py --resnet50 --steps 2
grep -A200 "lars_kernel" "$LOG" | head -150 > "$OUT/ncu.txt" 2>/dev/null
stage train_throughput 150 $PY benchmarks/train_throughput.py --out "$OUT/train_throughput.json"
stage bench_input 60 $PY benchmarks/bench_input.py --images 512 --workers 0,4,8 --out "$OUT/input.json"
stage bench_rest 200 $PY benchmarks/bench_step.py --device cuda --sets resnet152,vit_b_16,bert_large,tiny_10k,one_100m \
  --impls reference,foreach,fused,timm,sgd_fused --out-dir "$OUT/bench" --tag -rest

{
  echo; echo "=== summary ($(($(date +%s) - T0))s)"; printf '%s\n' "${SUMMARY[@]}"
  for f in "$OUT"/bench/*.md; do [ -f "$f" ] && { echo; echo "--- $f"; cat "$f"; }; done
} | tee -a "$LOG"
