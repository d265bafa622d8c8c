#!/usr/bin/env bash
# Breaks the LAMB kernels on purpose, one way at a time, and shows that tests fail
# (issue 36: "the new tests fail when the LAMB math is broken on purpose in each path").
# scripts/lamb_breaks.py does the same for the Python paths. Each break is a sed on one
# file; the file is restored after its run.
#   the CUDA kernel and the shared element math (csrc/cuda/lamb_kernel.cuh, csrc/lamb.h):
#     the emulated build only (tests/integration/test_emulated_cuda_lamb.py, ~35 s each);
#   the CPU kernel (csrc/cpu/lamb_cpu_kernel.h): rebuilt in place with
#     `setup.py build_ext --inplace` (~2.5 min each on 2 cores; the first build is a full one),
#     then tests/unit/test_lamb_fused.py; the clean kernel is rebuilt at the end.
# Usage: bash scripts/lamb_kernel_breaks.sh [emulated|cpu|all]   (prints one line per break)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WHAT=${1:-all}

break_and_test() {  # FILE NAME SED_EXPR TEST_CMD...
  local file=$1 name=$2 expr=$3
  shift 3
  cp "$file" "$file.unbroken"
  sed -i "$expr" "$file"
  if cmp -s "$file" "$file.unbroken"; then
    echo "$name: the sed matched nothing (update this script)"
  else
    echo "$name: $("$@" 2>&1 | tail -1)"
  fi
  mv "$file.unbroken" "$file"
}

emulated() { $PY -m pytest -q -p no:cacheprovider tests/integration/test_emulated_cuda_lamb.py; }
cpu() { $PY setup.py build_ext --inplace > /dev/null 2>&1 && $PY -m pytest -q -p no:cacheprovider tests/unit/test_lamb_fused.py; }

if [ "$WHAT" != cpu ]; then
  K=csrc/cuda/lamb_kernel.cuh
  break_and_test $K "apply ignores the caution scale" \
    's/p = pd - step \* lamb_full_update(u, pd, scale, c);/p = pd - step * lamb_full_update(u, pd, 1.f, c);/' emulated
  break_and_test $K "ratio phase drops the count shuffle" \
    's/        sums.count += __shfl_down_sync(0xffffffffu, sums.count, o);//' emulated
  break_and_test $K "block_sum4 loses its first __syncthreads" '0,/  __syncthreads();$/s//  \/\/ (removed)/' emulated
  break_and_test $K "norms sum the undecayed param" 's/    s.pp += pd \* pd;/    s.pp += p * p;/' emulated
  break_and_test $K "update ignores the ratio phase" 's/      if (row.needs_sums) {/      if (false) {/' emulated
  break_and_test $K "tail loop starts at begin" \
    's/  for (int64_t i = tail + threadIdx.x; i < end; i += kThreads) {/  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {/' emulated
  H=csrc/lamb.h
  break_and_test $H "trust clip as a floor" \
    's/if (h.trust_clip) r = r > 1.f ? 1.f : r;/if (h.trust_clip) r = r < 1.f ? 1.f : r;/' emulated
  break_and_test $H "second bias correction with beta1" \
    's/pow(static_cast<double>(h.beta2), step)/pow(static_cast<double>(h.beta1), step)/' emulated
  break_and_test $H "caution norm without the cross term" \
    's/n2 = sc \* sc \* s.uu + 2.0 \* sc \* wd \* s.up + wd \* wd \* s.pp;/n2 = sc * sc * s.uu + wd * wd * s.pp;/' emulated
  break_and_test $H "grad averaging ignored" \
    's/a1(V(h.grad_averaging ? 1.f - h.beta1 : 1.f)),/a1(V(1.f - h.beta1)),/' emulated
fi
if [ "$WHAT" != emulated ]; then
  C=csrc/cpu/lamb_cpu_kernel.h
  break_and_test $C "vector sums skip the mask count" 's/          sk = sk + mask;//' cpu
  break_and_test $C "apply ignores the scale in the vector loop" \
    's/    const Vec scale_v(scale), step_v(step);/    const Vec scale_v(1.f), step_v(step);/' cpu
  break_and_test $C "ratios swap the sums of p² and u²" \
    's/        sums.pp += partials\[4 \* i\];/        sums.pp += partials[4 * i + 1];/' cpu
  break_and_test $C "grad squares drop the tail" 's/    tail += static_cast<double>(x) \* x;/    (void)x;/' cpu
  # (one-pass tensors have weight_decay 0, so breaking their decoupled decay changes nothing: an
  # equivalent mutant, measured; their lr is what this one breaks)
  break_and_test $C "one-pass tensors step with twice the lr" \
    's/    const Vec one(1.f), step_v(t.lr);/    const Vec one(1.f), step_v(2.f * t.lr);/' cpu
  $PY setup.py build_ext --inplace > /dev/null 2>&1 && echo "the clean CPU kernel is rebuilt"
fi
