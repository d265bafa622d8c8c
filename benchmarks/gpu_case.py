#!/usr/bin/env python
"""A small CUDA workload of the fused kernel, for compute-sanitizer and ncu.

    python benchmarks/gpu_case.py            # a small model, both launch paths, AMP flags
    python benchmarks/gpu_case.py --resnet50 # ResNet-50's parameter list, a few steps (for ncu)
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lars_cuda  # noqa: E402
from param_sets import SETS  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--resnet50", action="store_true")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    shapes = SETS["resnet50"]() if args.resnet50 else [(32, 3, 3, 3), (32,), (70_001,), (0,), (10, 32)]
    for dtype in (torch.float32, torch.bfloat16):
        params = [torch.nn.Parameter(torch.randn(s, device="cuda", dtype=dtype)) for s in shapes]
        groups = [{"params": params}]
        if not args.resnet50:
            # The seed's second group (no LARS, no decay) with maximize, and a strided-view
            # param (stepped through a dense copy): every path of fused_lars_groups_.
            extra = [torch.nn.Parameter(torch.randn(9, device="cuda", dtype=dtype)),
                     torch.nn.Parameter(torch.randn(12, 5, 2, device="cuda", dtype=dtype)[..., 0])]
            groups.append({"params": extra, "lars": False, "weight_decay": 0.0, "maximize": True})
            params = params + extra
        for p_ in params:
            p_.grad = torch.randn_like(p_)
        opt = lars_cuda.Lars(groups, lr=torch.tensor(0.1, device="cuda"), momentum=0.9, weight_decay=1e-4,
                             nesterov=True, fused=True)
        for launch in ("cooperative", "three-kernel"):
            if launch == "three-kernel":
                os.environ["LARS_CUDA_LAUNCH"] = "three-kernel"
                torch.ops.lars_cuda.reload_launch_config()  # (the extension reads the knobs once)
            for _ in range(args.steps):
                opt.step()
            torch.cuda.synchronize()
            print(dtype, launch, "->", lars_cuda.ops.last_cuda_launch(), flush=True)
            os.environ.pop("LARS_CUDA_LAUNCH", None)
            torch.ops.lars_cuda.reload_launch_config()
            if args.resnet50:
                break
        if not args.resnet50:  # the AMP path: a skipped and an unscaled step
            opt.grad_scale = torch.tensor(4.0, device="cuda")
            for inf in (1.0, 0.0):
                opt.found_inf = torch.tensor(inf, device="cuda")
                opt.step()
            del opt.grad_scale, opt.found_inf
            torch.cuda.synchronize()
        if not args.resnet50:  # the sharded step's halves: norms out, then the update from given sums
            from lars_cuda.functional import fused_lars_groups, fused_lars_norms

            plan = []
            for group in opt.param_groups:
                options = {k: group[k] for k in ("lr", "momentum", "weight_decay", "eeta", "epsilon", "lars",
                                                  "nesterov", "trust_clip", "update_clip", "maximize")}
                ps = [p_.detach() for p_ in group["params"]]
                plan.append((ps, [p_.grad for p_ in group["params"]],
                             [opt.state[p_]["momentum_buffer"] for p_ in group["params"]], options))
            for launch in ("cooperative", "three-kernel"):
                if launch == "three-kernel":
                    os.environ["LARS_CUDA_LAUNCH"] = "three-kernel"
                    torch.ops.lars_cuda.reload_launch_config()
                sums = fused_lars_norms([(ps, gs, o) for ps, gs, _, o in plan])
                fused_lars_groups(plan, sums=sums, grad_scale=torch.tensor(2.0, device="cuda"),
                                  found_inf=torch.tensor(0.0, device="cuda", dtype=torch.float64))
                torch.cuda.synchronize()
                print(dtype, "sharded halves", launch, "->", lars_cuda.ops.last_cuda_launch(), flush=True)
                os.environ.pop("LARS_CUDA_LAUNCH", None)
                torch.ops.lars_cuda.reload_launch_config()
        if not args.resnet50:  # LAMB (csrc/cuda/lamb_kernel.cuh): two groups, caution, clip, both launch paths
            lamb_params = [torch.nn.Parameter(torch.randn(s, device="cuda", dtype=dtype)) for s in shapes]
            for p_ in lamb_params:
                p_.grad = torch.randn_like(p_)
            lamb = lars_cuda.Lamb([{"params": lamb_params[:3]}, {"params": lamb_params[3:], "caution": True,
                                                                 "weight_decay": 0.0, "always_adapt": True}],
                                  lr=torch.tensor(0.01, device="cuda"), fused=True)
            for launch in ("cooperative", "three-kernel"):
                if launch == "three-kernel":
                    os.environ["LARS_CUDA_LAUNCH"] = "three-kernel"
                    torch.ops.lars_cuda.reload_launch_config()
                lamb.step()
                torch.cuda.synchronize()
                print(dtype, "lamb", launch, "->", lars_cuda.ops.last_cuda_launch(), flush=True)
                # LAMB's sharded halves (fused_lamb_norms, then fused_lamb_apply_ from the rows)
                from lars_cuda.lamb_functional import lamb_halves
                from lars_cuda.lamb_options import LambOptions

                ps = [p_.detach() for p_ in lamb_params]
                state = [lamb.state[p_] for p_ in lamb_params]
                halves = lamb_halves("fused", ps, [p_.grad for p_ in lamb_params], [s["exp_avg"] for s in state],
                                     [s["exp_avg_sq"] for s in state], [s["step"] + 1 for s in state],
                                     LambOptions(lr=0.01, caution=True), clip=torch.tensor(2.0, device="cuda"),
                                     sharded=True)
                rows = next(halves)
                try:
                    halves.send(rows)
                except StopIteration:
                    pass
                torch.cuda.synchronize()
                print(dtype, "lamb sharded halves", launch, "->", lars_cuda.ops.last_cuda_launch(), flush=True)
                os.environ.pop("LARS_CUDA_LAUNCH", None)
                torch.ops.lars_cuda.reload_launch_config()
    print("gpu_case done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
