#!/usr/bin/env bash
# The one prepared run for a GPU machine (H100/H200; torch, nvcc, ncu and
# compute-sanitizer installed, no network). Builds the extension, runs the CUDA
# tests and compute-sanitizer memcheck/racecheck (concurrently: correctness
# only), compares the CPU emulator's bits with the GPU's, then, alone on the
# GPU, the step benchmark, ncu on the fused kernel and ResNet-50 training
# throughput.
# At most 8 files come back from the device tool, so $OUT holds exactly:
#   check.log                 every stage's output, then a summary table
#   bench-resnet50.json       step benchmark, ResNet-50 fp32+bf16, every peer but torch.compile
#   bench-compiled.json       the same with torch.compile(foreach) (slow to compile)
#   bench-rest.json           the larger and odd parameter sets
#   ncu.txt                   Nsight Compute sections of the fused kernel
#   train_throughput.json     images/s of lars-fused, sgd-fused, lars-foreach, timm
#   tune.json                 the kernel's knobs (wave size, grid, launch path) against fused SGD
#   gdb.txt                   the op tests under cuda-gdb (a backtrace if one crashes)
# (render .md/.png here with: python benchmarks/bench_step.py --render FILE.json)
# Stages are ordered by importance and skipped once BUDGET_S is spent.
# Usage: OUT=dir bash benchmarks/gpu_check.sh    (BUDGET_S=420 by default)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}
BUDGET_S=${BUDGET_S:-420}
BENCH_TMP=$(mktemp -d)
T0=$(date +%s)
SUMMARY=()

left() { echo $((BUDGET_S - ($(date +%s) - T0))); }

stage() {  # stage NAME TIMEOUT_S CMD...   (output appended to $LOG)
  local name=$1 limit=$2
  shift 2
  local l
  l=$(left)
  if [ "$l" -lt 20 ]; then
    SUMMARY+=("$(printf '%-20s skipped (budget spent)' "$name")")
    return 1
  fi
  [ "$limit" -gt "$l" ] && limit=$l
  echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)" >> "$LOG"
  local s
  s=$(date +%s)
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  SUMMARY+=("$(printf '%-20s rc=%-3s %4ss' "$name" "$rc" "$(($(date +%s) - s))")")
  return $rc
}

{
  echo "date: $(date -u)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -2
} >> "$LOG" 2>&1

# -Xptxas=-v: registers, shared memory and spills of every kernel, in build.log.
# In place rather than `pip install -e .`: that machine's pip/setuptools pair
# turns an editable install into a build-isolated one, which needs the network.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# The system compiler, not the image's /opt/gcc one: on 2026-11-26 an H100
# machine's default g++ (/opt/gcc/bin) linked parts of libstdc++ into the
# extension, and the first error message that formatted an integer crashed in
# them (benchmarks/results/h100/gdb-backtrace-*.txt).
if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
{ echo "CXX=${CXX:-default}: $(${CXX:-g++} --version | head -1); g++ on PATH: $(command -v g++)"; } >> "$LOG"
# A compiler that rejects the x86 CPU kernels' target pragmas (AVX2, AVX-512) gets a second try without them.
stage build 240 env NVCC_APPEND_FLAGS="-Xptxas=-v" $PY setup.py build_ext --inplace ||
  stage build_no_avx2 200 env LARS_CUDA_NO_AVX2=1 NVCC_APPEND_FLAGS="-Xptxas=-v" $PY setup.py build_ext --inplace ||
  { grep -B2 -A12 "error" "$LOG" | head -80; printf '%s\n' "${SUMMARY[@]}"; exit 1; }

{ echo "libstdc++ in the extension:"; ldd lars_cuda/_C*.so | grep -E "stdc|gomp"
  echo "std:: functions defined in it (nonzero: a static libstdc++ copy): $(nm -C lars_cuda/_C*.so | grep -c ' [Tt] std::.*codecvt')"; } >> "$LOG" 2>&1

# Correctness, four processes at once (timings are not taken here): the CUDA
# and op tests (xdist, so a crash in one test does not hide the others),
# memcheck, racecheck, and the op tests once more under cuda-gdb, so a crash
# comes back with a C++ backtrace.
(stage cuda_tests 150 env LARS_BIG_TEST=1 $PY -m pytest -q -p no:cacheprovider -n 3 tests/integration/test_cuda.py \
   tests/integration/test_cuda_lamb.py tests/unit/test_fused_op.py; echo "cuda_tests rc=$?" > "$BENCH_TMP/tests.rc"
 # torch.optim's generic behaviours (tests/support/optim_info.py) with CUDA params, every path
 stage conformance_cuda 90 env LARS_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider -n 2 \
   tests/unit/test_conformance.py; echo "conformance_cuda rc=$?" >> "$BENCH_TMP/tests.rc") &
(timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $PY benchmarks/gpu_case.py > "$BENCH_TMP/memcheck.log" 2>&1;
 echo "memcheck rc=$?" >> "$BENCH_TMP/memcheck.log") &
(timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 $PY benchmarks/gpu_case.py > "$BENCH_TMP/racecheck.log" 2>&1;
 echo "racecheck rc=$?" >> "$BENCH_TMP/racecheck.log") &
(timeout 120 cuda-gdb -q -batch -ex "set pagination off" -ex run -ex bt --args $PY -m pytest -q -p no:cacheprovider \
   -p no:xdist tests/unit/test_fused_op.py > "$OUT/gdb.txt" 2>&1;
 echo "cuda-gdb rc=$?" >> "$OUT/gdb.txt") &
wait
for f in memcheck racecheck; do echo "=== $f"; tail -25 "$BENCH_TMP/$f.log"; done >> "$LOG"
SUMMARY+=("$(head -1 "$BENCH_TMP/tests.rc" 2>/dev/null)" "$(sed -n 2p "$BENCH_TMP/tests.rc" 2>/dev/null)" \
          "$(tail -1 "$BENCH_TMP/memcheck.log")" \
          "$(tail -1 "$BENCH_TMP/racecheck.log")")

# The emulator's bits (tests/support/cuda_emulator, what every make test runs) against the GPU's
# on the same cases: how far FMA contraction and the GPU's own arithmetic move them.
stage emulator_vs_gpu 150 $PY benchmarks/emulator_vs_gpu.py

# Speed, one thing at a time on the GPU.
bench() {  # bench TAG LIMIT ARGS...
  local tag=$1 limit=$2
  shift 2
  # float32 and bfloat16 only (make bench's default adds float16): the stage limits were sized for two dtypes.
  stage "bench$tag" "$limit" $PY benchmarks/bench_step.py --device cuda --dtypes float32,bfloat16 \
    --out-dir "$BENCH_TMP" --tag="$tag" "$@"
  cp "$BENCH_TMP"/*"$tag".json "$OUT/bench$tag.json" 2>/dev/null
}
stage tune 90 $PY benchmarks/gpu_tune.py --out "$OUT/tune.json"
bench -resnet50 90 --sets resnet50 --impls reference,foreach,fused,timm,sgd_fused
stage ncu 60 bash -c "ncu --clock-control none -k regex:lars_kernel -c 2 --section SpeedOfLight \
  --section Occupancy --section MemoryWorkloadAnalysis --section LaunchStats --section WarpStateStats \
  $PY benchmarks/gpu_case.py --resnet50 --steps 2 > '$OUT/ncu.txt' 2>&1"
# Every LARS flavour's fused step vs the seed's and vs its original (lars_cuda.compat)
stage flavours 60 $PY benchmarks/bench_flavours.py --device cuda --sets resnet50,vit_b_16 --steps 10 \
  --out-dir "$BENCH_TMP" && cp "$BENCH_TMP"/flavours-cuda-*.json "$OUT/" 2>/dev/null
stage train_throughput 200 $PY benchmarks/train_throughput.py --steps 30 --run-timeout 60 \
  --out "$OUT/train_throughput.json"
# LAMB: the fused kernel (never run on a GPU before) vs foreach, timm's Lamb and fused AdamW
stage lamb 120 $PY benchmarks/bench_lamb.py --device cuda --sets resnet50,bert_base --dtype float32,bfloat16 \
  --impls lamb_fused,lamb_foreach,timm,adamw_fused --steps 20 --warmup 3 --out-dir "$BENCH_TMP"
bench -compiled 120 --sets resnet50 --impls compiled_foreach,fused,sgd_fused
bench -rest 100 --sets resnet152,vit_b_16,bert_large,one_100m,tiny_10k --impls foreach,fused,timm,sgd_fused \
  --steps 12 --warmup 2

{
  echo; echo "=== summary ($(($(date +%s) - T0))s)"; printf '%s\n' "${SUMMARY[@]}"
  for f in "$BENCH_TMP"/*.md; do [ -f "$f" ] && { echo; echo "--- $(basename "$f")"; cat "$f"; }; done
} | tee -a "$LOG"
