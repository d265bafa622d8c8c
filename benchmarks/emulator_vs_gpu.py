"""The emulated CUDA kernel's bits against the GPU's, on the emulated tests' cases
(tests/integration/test_emulated_cuda.py: every flavour, four dtype pairs, multi-chunk, one-element
and empty tensors, a zero weight and a zero gradient, two steps). nvcc contracts
a*b+c into FMA where the emulator's g++ build cannot, so the two may differ by an
ulp or so per element: this says by how much. Run by benchmarks/gpu_check.sh; one
JSON line per case, then a summary line.

    python benchmarks/emulator_vs_gpu.py [--against-cpu]   (the CPU kernel instead: a dry run without a GPU)
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lars_cuda import functional  # noqa: E402
from tests.integration import test_emulated_cuda as cases  # noqa: E402


def steps(device, names, dtypes):
    groups = []
    for k, name in enumerate(names):
        params = [p.to(device) for p in cases.tensors(k, dtypes)[0]]
        groups.append((params, [None] * len(params), dict(cases.OPTION_SETS[name])))
    for step in range(2):
        functional.fused_lars_groups([
            (params, [g.to(device) for g in cases.tensors(100 * (step + 1) + k, dtypes)[1]], bufs, options)
            for k, (params, bufs, options) in enumerate(groups)])
    return [t.cpu() for params, bufs, _ in groups for t in params + [b for b in bufs if b is not None]]


def ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in units in the last place of their dtype (same-sign neighbours)."""
    ints = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[a.dtype]
    return (a.view(ints).long() - b.view(ints).long()).abs()


def main() -> int:
    device = "cpu" if "--against-cpu" in sys.argv else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no GPU: nothing to compare (--against-cpu compares with the CPU kernel)")
        return 1
    monkeypatch = pytest.MonkeyPatch()
    worst = 0
    for names in [[n] for n in cases.OPTION_SETS] + [list(cases.OPTION_SETS)]:
        for dtype_name, dtypes in cases.DTYPES.items():
            gpu = steps(device, names, dtypes)
            with monkeypatch.context() as m:
                cases.route_through_the_emulator(m)
                cases.configure(3, True)
                emulated = steps("cpu", names, dtypes)
            diff = [ulps(a, b) for a, b in zip(emulated, gpu) if a.numel()]
            elements = sum(d.numel() for d in diff)
            differing = sum(int((d != 0).sum()) for d in diff)
            most = max(int(d.max()) for d in diff)
            # ulps mislead near zero (a sign flip is ~2^31 of them): the difference at the tensor's scale too
            scaled = max(float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))
                         for a, b in zip(emulated, gpu) if a.numel())
            worst = max(worst, scaled)
            print(json.dumps({"groups": "+".join(names) if len(names) < 3 else "all", "dtypes": dtype_name,
                              "elements": elements, "differing": differing, "max_ulps": most,
                              "max_diff_over_tensor_max": scaled}), flush=True)
    print(json.dumps({"summary": f"emulator vs {device}", "max_diff_over_tensor_max": worst}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
