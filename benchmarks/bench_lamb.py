#!/usr/bin/env python
"""LAMB steps on real parameter lists: lars_cuda.Lamb's paths against timm's
``Lamb`` (the LAMB users run today), ``torch.compile`` of our foreach step, and
``torch.optim.AdamW(fused=True)`` as the floor (Adam's work without LAMB's norms).

    python benchmarks/bench_lamb.py [--device cuda] [--sets bert_base,vit_b_16,resnet50] [--dtype bfloat16]

Same parameters and gradients for every implementation, one process,
implementations interleaved round by round; median of --steps steps after
--warmup. Writes benchmarks/results/lamb-<device>-<dtype>-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lars_cuda  # noqa: E402
from bench_step import device_name, timed  # noqa: E402  (CUDA events on a GPU, a wall clock on the CPU)
from param_sets import SETS, numel  # noqa: E402

LR, WD = 1e-3, 0.01
IMPLS = {
    "lamb_fused": "lars_cuda.Lamb(fused=True): the kernel, every group in one call",
    "lamb_foreach": "lars_cuda.Lamb(foreach=True)",
    "lamb_loop": "lars_cuda.Lamb(foreach=False)",
    "lamb_compiled": "torch.compile of lars_cuda.Lamb(foreach=True).step",
    "timm": "timm.optim.Lamb (default: foreach)",
    "adamw_fused": "torch.optim.AdamW(fused=True) (the floor)",
}
DEFAULT_IMPLS = ["lamb_fused", "lamb_foreach", "timm", "adamw_fused"]


def make(impl: str, params):
    if impl == "lamb_fused":
        return lars_cuda.Lamb(params, lr=LR, weight_decay=WD, fused=True)
    if impl == "lamb_foreach":
        return lars_cuda.Lamb(params, lr=LR, weight_decay=WD, foreach=True)
    if impl == "lamb_loop":
        return lars_cuda.Lamb(params, lr=LR, weight_decay=WD, foreach=False)
    if impl == "lamb_compiled":
        return lars_cuda.Lamb(params, lr=torch.tensor(LR), weight_decay=WD, foreach=True)
    if impl == "timm":
        from timm.optim import Lamb as TimmLamb

        return TimmLamb(params, lr=LR, weight_decay=WD)
    if impl == "adamw_fused":
        return torch.optim.AdamW(params, lr=LR, weight_decay=WD, fused=True)
    raise ValueError(impl)


def run_set(set_name: str, dtype, device, impls, steps: int, warmup: int) -> list[dict]:
    shapes = SETS[set_name]()
    gen = torch.Generator(device=device).manual_seed(0)
    base = [torch.randn(s, device=device, generator=gen).to(dtype) for s in shapes]
    grads = [torch.randn(s, device=device, generator=gen).to(dtype) * 1e-2 for s in shapes]
    params, opts, steppers = {}, {}, {}
    for impl in impls:  # each its own copy of the parameters (their values drift apart)
        params[impl] = [torch.nn.Parameter(b.clone()) for b in base]
        for p, g in zip(params[impl], grads):
            p.grad = g  # no implementation writes into the grads
        opts[impl] = make(impl, params[impl])
        steppers[impl] = torch.compile(opts[impl].step) if impl == "lamb_compiled" else opts[impl].step
    times = {impl: [] for impl in impls}
    for r in range(warmup + steps):
        for impl in impls:
            t = timed(steppers[impl], device)
            if r >= warmup:
                times[impl].append(t)
    med = {impl: statistics.median(ts) for impl, ts in times.items()}
    rows = []
    for impl in impls:
        rows.append(dict(set=set_name, dtype=str(dtype).replace("torch.", ""), impl=impl, what=IMPLS[impl],
                         tensors=len(shapes), numel=numel(shapes), median_ms=med[impl] * 1e3,
                         p10_ms=statistics.quantiles(times[impl], n=10)[0] * 1e3,
                         p90_ms=statistics.quantiles(times[impl], n=10)[-1] * 1e3,
                         x_adamw_fused=med[impl] / med["adamw_fused"] if "adamw_fused" in med else None,
                         speedup_vs_timm=med["timm"] / med[impl] if "timm" in med else None))
    return rows


def markdown(rows: list[dict], device: str, date: str) -> str:
    out = [f"LAMB step — {device}, {date}", ""]
    for key in dict.fromkeys((r["set"], r["dtype"]) for r in rows):
        sub = [r for r in rows if (r["set"], r["dtype"]) == key]
        out += [f"**{key[0]}** ({sub[0]['tensors']} tensors, {sub[0]['numel'] / 1e6:.1f} M, {key[1]})", "",
                "| impl | what | median ms | p10–p90 ms | × AdamW fused | speed-up vs timm |",
                "|---|---|---|---|---|---|"]
        for r in sub:
            x = f"{r['x_adamw_fused']:.2f}" if r["x_adamw_fused"] is not None else ""
            s = f"{r['speedup_vs_timm']:.2f}x" if r["speedup_vs_timm"] is not None else ""
            out.append(f"| {r['impl']} | {r['what']} | {r['median_ms']:.1f} | {r['p10_ms']:.1f}–{r['p90_ms']:.1f} "
                       f"| {x} | {s} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sets", default="bert_base,vit_b_16,resnet50")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help=f"from {list(IMPLS)}")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    impls = args.impls.split(",")
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        p.error(f"unknown impls {unknown}; choose from {list(IMPLS)}")
    dtypes = [getattr(torch, d) for d in args.dtype.split(",")]
    name = device_name(device)
    date = datetime.date.today().isoformat()
    rows = []
    for dtype in dtypes:
        for set_name in args.sets.split(","):
            rows += run_set(set_name, dtype, device, impls, args.steps, args.warmup)
    table = markdown(rows, f"{name}, torch {torch.__version__}", date)
    print(table, flush=True)
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"lamb-{'cpu' if device.type == 'cpu' else 'cuda'}-"
                                      f"{'-'.join(d.replace('float', 'f') for d in args.dtype.split(','))}-{date}")
    with open(stem + ".json", "w") as f:
        json.dump(dict(meta=dict(device=name, date=date, torch=torch.__version__, argv=argv or sys.argv[1:]),
                       rows=rows), f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
