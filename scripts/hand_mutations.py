"""Hand mutations of the C++ kernels (mutmut mutates Python only): each one is
applied to a scratch copy of the repository, the CPU extension is rebuilt there
(LARS_CUDA_FORCE_CPU=1, ninja rebuilds only what changed) and the kernel's tests
are run against it. A mutant the tests do not fail is a survivor. The CUDA
device code's mutants (csrc/cuda/*.cuh) are run by the emulated CUDA kernel's
tests (tests/integration/test_emulated_cuda.py and test_emulated_cuda_lamb.py, which
rebuild the emulated backend from the scratch copy's sources); the shared math
(csrc/lars.h, csrc/lamb.h) and op layer by the CPU kernel's (LAMB's element math by
the emulated LAMB tests, which also step Lamb(fused=True) against the oracle).

    python scripts/hand_mutations.py [--keep] [--only NAME ...]

Prints one line per mutant and a summary; exits 1 if any mutant survived."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = "/tmp/lars_cuda-hand-mutations"
TESTS = ["tests/unit/test_fused_op.py", "tests/unit/test_lars_math.py", "tests/unit/test_conformance.py",
         "tests/unit/test_validation.py", "tests/unit/test_compat.py"]

# The emulated CUDA kernel's tests, without the sanitizer runs (their own build).
EMULATED = ["tests/integration/test_emulated_cuda.py", "-k", "not sanitiz"]
# LAMB's: the CPU kernel's tests, and the emulated CUDA LAMB kernel's (which step
# Lamb(fused=True) through the emulator against the oracle: a break of the shared
# element math, csrc/lamb.h, shows there although both kernels share it).
LAMB = ["tests/unit/test_lamb_fused.py"]
EMULATED_LAMB = ["tests/integration/test_emulated_cuda_lamb.py", "-k", "not sanitiz"]

# (name, file, original text, mutated text[, tests]): each original must occur exactly once;
# tests default to TESTS.
MUTANTS = [
    ("kernel writes nothing", "csrc/cpu/lars_cpu.cpp",
     "    if (g.params.empty() || (io.out != nullptr && !g.hyper.lars)) continue;\n",
     "    if (true) continue;\n"),
    ("no guard for a zero gradient norm", "csrc/lars.h",
     "(w > 0.f && n > 0.f)", "(w > 0.f)"),
    ("trust ratio capped at 0.8x trust_clip", "csrc/lars.h",
     "r = clamp_nan(r, 0.f, h.trust_clip);", "r = clamp_nan(r, 0.f, 0.8f * h.trust_clip);"),
    ("nesterov uses the buffer", "csrc/lars.h",
     "    buf = c.momentum * buf + d;\n    u = c.nesterov ? d + c.momentum * buf : buf;",
     "    buf = c.momentum * buf + d;\n    u = buf;"),
    ("update clip skipped", "csrc/lars.h",
     "  if (c.clip) d = clamp_fn(d, c.clip_lo, c.clip_hi);\n  V u = d;", "  V u = d;"),
    ("weight decay also without LARS", "csrc/lars.h",
     "{ return h.decay ? h.weight_decay : 0.f; }", "{ return h.weight_decay; }"),
    ("maximize ignored", "csrc/lars.h",
     "return h.maximize ? -inv_scale : inv_scale;", "return inv_scale;"),
    ("found_inf ignored", "csrc/cpu/lars_cpu.cpp",
     "if (found_inf.has_value() && found_inf->item<double>() != 0.0) return;", ""),
    ("norm of g not unscaled", "csrc/lars.h",
     "static_cast<float>(sqrt(gg)) * (g_coef < 0.f ? -g_coef : g_coef);",
     "static_cast<float>(sqrt(gg));"),
    # The flavours (lars_cuda.compat): each switch of lars.h dropped in turn.
    ("ratio on the gradient ignored", "csrc/lars.h",
     "return h.ratio_on_grad ? TensorStep{lr, r, wd} : TensorStep{lr * r, 1.f, wd};",
     "return TensorStep{lr * r, 1.f, wd};"),
    ("dampening ignored", "csrc/lars.h", "undamped(V(1.f - h.dampening))", "undamped(V(1.f))"),
    ("<g, p> left out of the SSL denominator", "csrc/lars.h", "2.0 * wd * (pg * c)", "0.0 * wd * (pg * c)"),
    ("LARC clip skipped", "csrc/lars.h", "if (h.larc_clip) r = fminf(r / lr, 1.f);", ""),
    ("LARC zero-norm branch decays", "csrc/lars.h", "if (zero && h.zero_norm_skip) return {lr, 1.f, 0.f};",
     "if (zero && h.zero_norm_skip) return {lr, 1.f, wd};"),
    ("last chunk of a tensor left out of its norm", "csrc/cpu/lars_cpu_kernel.h",
     "for (; i < n_spans && spans[i].tensor == k; ++i) {",
     "for (; i < n_spans && spans[i].tensor == k; ++i) {\n"
     "          if (i + 1 < n_spans && spans[i + 1].tensor != k && i > 0 && spans[i - 1].tensor == k) continue;"),
    ("dense copies of strided params not written back", "csrc/buckets.cpp",
     "for (auto& [dst, src] : bucket.write_back) dst.copy_(src);", ""),
    ("only group 0 checked", "csrc/group_args.cpp",
     "    check_tensors(op, k, g, grad_scale, found_inf, seen);",
     "    if (k == 0) check_tensors(op, k, g, grad_scale, found_inf, seen);"),
    ("duplicate params not refused", "csrc/group_args.cpp",
     "seen.insert(p.data_ptr()).second || p.numel() == 0", "true"),
    ("vector path's tail not updated", "csrc/cpu/traversal.h",
     "  for (; i < end; ++i) {\n    float pv = to_float(p[i]);",
     "  for (; false; ++i) {\n    float pv = to_float(p[i]);"),
    ("vector path drops the momentum buffer", "csrc/cpu/traversal.h",
     "          if constexpr (kM) L::store_update(m + i + j * L::kElems, mv + j * L::kVecs);", ""),
    ("one of the four norm chains left out", "csrc/cpu/traversal.h",
     "p2 = sp + at::vec::vec_reduce_all<float>(add, (vp[0] + vp[1]) + (vp[2] + vp[3]));",
     "p2 = sp + at::vec::vec_reduce_all<float>(add, (vp[0] + vp[1]) + vp[2]);"),
    # The CUDA device code, under the emulator.
    ("CUDA: __syncthreads removed before warp 0 reads the warps' sums", "csrc/cuda/traversal.cuh",
     "  if (lane == 0) smem[warp] = v;\n  __syncthreads();\n", "  if (lane == 0) smem[warp] = v;\n", EMULATED),
    ("CUDA: __syncthreads removed before smem is reused by the next chunk", "csrc/cuda/traversal.cuh",
     "  __syncthreads();  // smem is reused by the next chunk\n", "", EMULATED),
    ("CUDA: a shuffle offset wrong (block_sum starts at 8)", "csrc/cuda/traversal.cuh",
     "  for (int o = 16; o > 0; o >>= 1) {\n    v.pp += __shfl_down_sync(0xffffffffu, v.pp, o);",
     "  for (int o = 8; o > 0; o >>= 1) {\n    v.pp += __shfl_down_sync(0xffffffffu, v.pp, o);", EMULATED),
    ("CUDA: the last chunk of a multi-chunk tensor left out of its norm", "csrc/cuda/kernel.cuh",
     "c < tr.first_chunk + tr.n_chunks; c += 32)", "c < tr.first_chunk + tr.n_chunks - (tr.n_chunks > 1); c += 32)",
     EMULATED),
    ("CUDA: the tail path skipped", "csrc/cuda/traversal.cuh",
     "for (int64_t i = tail + threadIdx.x; i < end; i += kThreads)",
     "for (int64_t i = tail + threadIdx.x; i < tail; i += kThreads)", EMULATED),
    ("CUDA: a partial written to the wrong row (the tensor's)", "csrc/cuda/kernel.cuh",
     "if (threadIdx.x == 0) tab.partials[c] = total;", "if (threadIdx.x == 0) tab.partials[ch.tensor] = total;",
     EMULATED),
    ("CUDA: grid.sync() removed between the norms and the ratios", "csrc/cuda/kernel.cuh",
     "    if (phases & kGridSync) cg::this_grid().sync();\n\n    if (phases & kPhaseRatios) {",
     "\n    if (phases & kPhaseRatios) {", EMULATED),
    ("CUDA: the wave bound off by one (a wave's last tensor gets no ratio)", "csrc/cuda/kernel.cuh",
     "t < wave.end_tensor; t += n_warps)", "t < wave.end_tensor - 1; t += n_warps)", EMULATED),
    ("CUDA: the inf flag ignored", "csrc/cuda/kernel.cuh",
     "  if (found_inf != nullptr && *found_inf != 0.f) return;\n", "", EMULATED),
    ("CUDA: the vector path drops the momentum buffer's store", "csrc/cuda/traversal.cuh",
     "            if (with_m) store_pack<P, N>(m + i, mm[u]);\n", "", EMULATED),
    ("CUDA: the update reads the previous tensor's step", "csrc/cuda/kernel.cuh",
     "const TensorStep* st = &tab.steps[ch.tensor];",
     "const TensorStep* st = &tab.steps[ch.tensor == 0 ? 0 : ch.tensor - 1];", EMULATED),
    # LAMB (issue 36): the CUDA kernel under the emulator, the shared element math, the CPU kernel.
    ("LAMB CUDA: apply ignores the caution scale", "csrc/cuda/lamb_kernel.cuh",
     "p = pd - step * lamb_full_update(u, pd, scale, c);", "p = pd - step * lamb_full_update(u, pd, 1.f, c);",
     EMULATED_LAMB),
    ("LAMB CUDA: the ratio phase drops the count shuffle", "csrc/cuda/lamb_kernel.cuh",
     "        sums.count += __shfl_down_sync(0xffffffffu, sums.count, o);\n", "", EMULATED_LAMB),
    ("LAMB CUDA: block_sum4 loses its first __syncthreads", "csrc/cuda/lamb_kernel.cuh",
     "  if (lane == 0) smem[warp] = x;\n  __syncthreads();\n", "  if (lane == 0) smem[warp] = x;\n", EMULATED_LAMB),
    ("LAMB CUDA: the norms sum the undecayed param", "csrc/cuda/lamb_kernel.cuh",
     "    s.pp += pd * pd;", "    s.pp += p * p;", EMULATED_LAMB),
    ("LAMB CUDA: the update ignores the ratio phase", "csrc/cuda/lamb_kernel.cuh",
     "      } else if (row.needs_sums) {", "      } else if (false) {", EMULATED_LAMB),
    ("LAMB CUDA: the tail loop starts at begin", "csrc/cuda/lamb_kernel.cuh",
     "  for (int64_t i = tail + threadIdx.x; i < end; i += kThreads) {",
     "  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {", EMULATED_LAMB),
    ("LAMB: trust clip as a floor", "csrc/lamb.h",
     "if (h.trust_clip) r = r > 1.f ? 1.f : r;", "if (h.trust_clip) r = r < 1.f ? 1.f : r;", EMULATED_LAMB),
    ("LAMB: the second bias correction with beta1", "csrc/lamb.h",
     "pow(static_cast<double>(h.beta2), step)", "pow(static_cast<double>(h.beta1), step)", EMULATED_LAMB),
    ("LAMB: the caution norm without the cross term", "csrc/lamb.h",
     "n2 = sc * sc * s.uu + 2.0 * sc * wd * s.up + wd * wd * s.pp;", "n2 = sc * sc * s.uu + wd * wd * s.pp;",
     EMULATED_LAMB),
    ("LAMB: grad averaging ignored", "csrc/lamb.h",
     "a1(V(h.grad_averaging ? 1.f - h.beta1 : 1.f)),", "a1(V(1.f - h.beta1)),", EMULATED_LAMB),
    ("LAMB CPU: the vector sums skip the mask count", "csrc/cpu/lamb_cpu_kernel.h",
     "          sk = sk + mask;\n", "", LAMB),
    ("LAMB CPU: apply ignores the scale in the vector loop", "csrc/cpu/lamb_cpu_kernel.h",
     "    const Vec scale_v(scale), step_v(step);", "    const Vec scale_v(1.f), step_v(step);", LAMB),
    ("LAMB CPU: the ratios swap the sums of p² and u²", "csrc/cpu/lamb_cpu_kernel.h",
     "        sums.pp += partials[4 * i];", "        sums.pp += partials[4 * i + 1];", LAMB),
    ("LAMB CPU: the grad squares drop the tail", "csrc/cpu/lamb_cpu_kernel.h",
     "    tail += static_cast<double>(x) * x;", "    (void)x;", LAMB),
    ("LAMB CPU: the grad squares read one of their four streams", "csrc/cpu/lamb_cpu_kernel.h",
     "    for (auto& stream : acc)\n      for (Vec& a : stream) total = total + a;",
     "    for (Vec& a : acc[0]) total = total + a;", LAMB),
    # (one-pass tensors have weight_decay 0, so breaking their decoupled decay changes
    # nothing: an equivalent mutant, measured; their lr is what this one breaks)
    ("LAMB CPU: one-pass tensors step with twice the lr", "csrc/cpu/lamb_cpu_kernel.h",
     "          lamb_step_span<P>(x, s.begin, s.end, 1.f, x.lr);",
     "          lamb_step_span<P>(x, s.begin, s.end, 1.f, 2.f * x.lr);", LAMB),
    # LAMB's sharded halves (fused_lamb_norms / fused_lamb_apply_).
    ("LAMB CUDA: the norms store Σu² as Σp²", "csrc/cuda/lamb_kernel.cuh",
     "        out[0] = sums.pp;", "        out[0] = sums.uu;", EMULATED_LAMB),
    ("LAMB CUDA: the apply half ignores the rows", "csrc/cuda/lamb_kernel.cuh",
     "      if (row.needs_sums && io.in != nullptr) {", "      if (false) {", EMULATED_LAMB),
    ("LAMB: a row's caution scale ignores its numel", "csrc/lamb.h",
     "  const float scale = lamb_caution_scale(h, row[3], row[4]);",
     "  const float scale = lamb_caution_scale(h, row[3], 1.0);", EMULATED_LAMB),
    ("LAMB CPU: the norms leave out the numel", "csrc/cpu/lamb_cpu_kernel.h",
     "    row[4] = x.h->caution ? static_cast<double>(x.numel) : 0.0;", "    row[4] = 0.0;", LAMB),
    ("LAMB CPU: the apply half steps every tensor with lr", "csrc/cpu/lamb_cpu_kernel.h",
     "    steps.push_back(x.needs_sums() ? lamb_step_of_row(*x.h, x.lr, rows + kLambSumsPerTensor * x.index)\n"
     "                                   : LambStepScale{x.lr, 1.f});",
     "    steps.push_back(LambStepScale{x.lr, 1.f});", LAMB),
]


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=SCRATCH, capture_output=True, text=True, **kw)


def fresh_copy():
    if os.path.exists(SCRATCH):
        shutil.rmtree(SCRATCH)
    ignore = shutil.ignore_patterns(".venv", "mutants", "build", ".git", "runs", "logs", "*.so", "__pycache__")
    shutil.copytree(REPO, SCRATCH, ignore=ignore)


def build_and_test(env, tests=TESTS) -> tuple[bool, str]:
    b = run([sys.executable, "setup.py", "build_ext", "--inplace"], env=env, timeout=900)
    if b.returncode != 0:
        return False, "build failed: " + b.stderr[-400:]
    t = run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:logging", "-p", "no:cacheprovider",
             "--deselect", "tests/unit/test_fused_op.py::test_torch_compile_traces_a_fused_step_without_graph_breaks",
             *tests], env=env, timeout=1800)
    return t.returncode == 0, t.stdout.strip().splitlines()[-1] if t.stdout.strip() else t.stderr[-300:]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append", default=None,
                    help="run the mutants whose name contains this (may be given several times)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = ap.parse_args()
    env = dict(os.environ, LARS_CUDA_FORCE_CPU="1", PYTHONDONTWRITEBYTECODE="1")
    fresh_copy()
    ok, detail = build_and_test(env, TESTS + LAMB + EMULATED + EMULATED_LAMB[:1])
    if not ok:
        print(f"the unmutated copy does not pass: {detail}")
        return 2
    survivors = 0
    mutants = [m for m in MUTANTS if args.only is None or any(part in m[0] for part in args.only)]
    for name, rel, old, new, *tests in mutants:
        path = os.path.join(SCRATCH, rel)
        text = open(path).read()
        if text.count(old) != 1:
            print(f"STALE    {name}: the original text occurs {text.count(old)} times in {rel}")
            survivors += 1
            continue
        open(path, "w").write(text.replace(old, new))
        t0 = time.time()
        passed, detail = build_and_test(env, tests[0] if tests else TESTS)
        open(path, "w").write(text)
        verdict = "SURVIVED" if passed else "killed  "
        survivors += passed
        print(f"{verdict} {name} ({rel}, {time.time() - t0:.0f} s): {detail}", flush=True)
    print(f"{len(mutants) - survivors} of {len(mutants)} hand mutants killed")
    if not args.keep:
        shutil.rmtree(SCRATCH, ignore_errors=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
