#!/usr/bin/env python
"""Tuning sweep of the CUDA kernel's knobs on one parameter list, in one process:
wave size (LARS_CUDA_WAVE_MB), grid (LARS_CUDA_BLOCKS_PER_SM) and launch path,
each timed interleaved with torch's fused SGD (the no-norm floor) on the same
parameters and gradients. Prints a table and writes JSON.

    python benchmarks/gpu_tune.py --out tune.json [--set resnet50 --dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lars_cuda  # noqa: E402
from param_sets import SETS, numel  # noqa: E402

KNOBS = ("LARS_CUDA_WAVE_MB", "LARS_CUDA_BLOCKS_PER_SM", "LARS_CUDA_LAUNCH")
CONFIGS = {
    "default (one wave)": {},
    "waves 8 MB": {"LARS_CUDA_WAVE_MB": "8"},
    "waves 16 MB": {"LARS_CUDA_WAVE_MB": "16"},
    "waves 25 MB": {"LARS_CUDA_WAVE_MB": "25"},
    "waves 40 MB": {"LARS_CUDA_WAVE_MB": "40"},
    "2 blocks/SM": {"LARS_CUDA_BLOCKS_PER_SM": "2"},
    "three kernels": {"LARS_CUDA_LAUNCH": "three-kernel"},
}


def set_env(env: dict) -> None:
    for k in KNOBS:
        os.environ.pop(k, None)
    os.environ.update(env)
    torch.ops.lars_cuda.reload_launch_config()  # the extension reads the knobs once


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--set", default="resnet50")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    dev = torch.device("cuda")
    shapes = SETS[args.set]()
    rows = []
    for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
        gen = torch.Generator(device=dev).manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, device=dev, generator=gen).to(dtype)) for s in shapes]
        # One gradient set: 8 optimizers x 3 sets would overflow the kernel's
        # 16-entry table cache and time table rebuilds. p, g and m of ResNet-50
        # are ~6x the L2, so one set does not measure the cache.
        grads = [torch.randn(s, device=dev, generator=gen).to(dtype) for s in shapes]
        hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
        runners = {"sgd_fused": torch.optim.SGD(params, fused=True, **hyper)}
        for name in CONFIGS:
            runners[name] = lars_cuda.Lars(params, eeta=1e-3, fused=True, **hyper)
        times = {name: [] for name in runners}
        for r in range(args.steps + 5):
            for name, opt in runners.items():
                set_env(CONFIGS.get(name, {}))
                for prm, g in zip(params, grads):
                    prm.grad = g
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                opt.step()
                end.record()
                end.synchronize()
                if r >= 5:
                    times[name].append(start.elapsed_time(end) * 1e3)
        set_env({})
        sgd = statistics.median(times["sgd_fused"])
        floor_bytes = numel(shapes) * 5 * params[0].element_size()
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append(dict(set=args.set, dtype=str(dtype).replace("torch.", ""), config=name,
                             env=CONFIGS.get(name, {}), median_us=med, p10_us=statistics.quantiles(ts, n=10)[0],
                             p90_us=statistics.quantiles(ts, n=10)[-1], x_sgd_fused=med / sgd,
                             floor_gbs=floor_bytes / med / 1e3))
        del params, grads, runners
        torch.cuda.empty_cache()
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                l2_bytes=torch.cuda.get_device_properties(0).L2_cache_size)
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=1)
    print(f"\n{meta['device']}, L2 {meta['l2_bytes'] / 2**20:.0f} MiB, set {args.set}")
    print("| dtype | config | median µs | p10–p90 µs | × fused SGD | GB/s over 20 B/elem (fp32) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['dtype']} | {r['config']} | {r['median_us']:.0f} | {r['p10_us']:.0f}–{r['p90_us']:.0f} | "
              f"{r['x_sgd_fused']:.3f} | {r['floor_gbs']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
