#!/usr/bin/env python
"""Every LARS flavour's fused step (lars_cuda.compat) against the seed flavour's
fused step and against the original it replaces, on real parameter lists.

    python benchmarks/bench_flavours.py [--device cuda] [--sets resnet50,vit_b_16]

Pairs: TimmLars vs timm.optim.Lars; LARC vs apex's LARC (restated in
originals.py) around torch's fused SGD; SSLLars vs the Barlow Twins/VICReg
loop; the seed's Lars as the baseline. Same parameters and gradients, one
run, implementations interleaved round by round (the originals write into
p.grad, so every step gets fresh copies of the gradients, outside the timing);
median of --steps steps after --warmup. Writes
benchmarks/results/flavours-<device>-<date>.{json,md}.
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
from lars_cuda import compat  # noqa: E402
from bench_step import device_name, timed  # noqa: E402  (CUDA events on a GPU, a wall clock on the CPU)
from originals import SSLLARS, ApexLARC  # noqa: E402
from param_sets import SETS, numel  # noqa: E402

LR, MOMENTUM, WD = 0.1, 0.9, 1e-4
# impl -> (flavour, what it is); "mine" rows are compared with their flavour's "original" row.
IMPLS = {
    "seed_fused": ("seed", "lars_cuda.Lars(fused=True)"),
    "timm_fused": ("timm", "compat.TimmLars(fused=True)"),
    "timm": ("timm", "timm.optim.Lars (original)"),
    "larc_fused": ("larc", "compat.LARC(fused=True)"),
    "larc_sgd_fused": ("larc", "apex LARC around SGD(fused=True) (original)"),
    "ssl_fused": ("ssl", "compat.SSLLars(fused=True)"),
    "ssl_loop": ("ssl", "Barlow Twins / VICReg LARS (original)"),
}
ORIGINAL = {"timm": "timm", "larc": "larc_sgd_fused", "ssl": "ssl_loop"}
MUTATES_GRADS = {"timm", "larc_sgd_fused"}


def make(impl: str, params):
    if impl == "seed_fused":
        return lars_cuda.Lars(params, lr=LR, momentum=MOMENTUM, weight_decay=WD, fused=True)
    if impl == "timm_fused":
        return compat.TimmLars(params, lr=LR, momentum=MOMENTUM, weight_decay=WD, trust_clip=True, fused=True)
    if impl == "timm":
        from timm.optim import Lars as TimmLars

        return TimmLars(params, lr=LR, momentum=MOMENTUM, weight_decay=WD, trust_clip=True)
    if impl == "larc_fused":
        return compat.LARC(torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WD), fused=True)
    if impl == "larc_sgd_fused":
        return ApexLARC(torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WD, fused=True))
    if impl == "ssl_fused":
        return compat.SSLLars(params, lr=LR, weight_decay=WD, momentum=MOMENTUM, fused=True)
    if impl == "ssl_loop":
        return SSLLARS(params, lr=LR, weight_decay=WD, momentum=MOMENTUM, weight_decay_filter=True,
                       lars_adaptation_filter=True)
    raise ValueError(impl)


def run_set(set_name: str, dtype, device, impls, steps: int, warmup: int) -> list[dict]:
    shapes = SETS[set_name]()
    gen = torch.Generator(device=device).manual_seed(0)
    base = [torch.randn(s, device=device, generator=gen).to(dtype) for s in shapes]
    grads = [torch.randn(s, device=device, generator=gen).to(dtype) * 1e-2 for s in shapes]
    params, opts = {}, {}
    for impl in impls:  # each its own copy of the parameters (their values drift apart)
        params[impl] = [torch.nn.Parameter(b.clone()) for b in base]
        opts[impl] = make(impl, params[impl])

    def set_grads(impl):
        fresh = impl in MUTATES_GRADS
        for p, g in zip(params[impl], grads):
            p.grad = g.clone() if fresh else g

    times = {impl: [] for impl in impls}
    for r in range(warmup + steps):
        for impl in impls:
            set_grads(impl)
            t = timed(opts[impl].step, device)
            if r >= warmup:
                times[impl].append(t)
    med = {impl: statistics.median(ts) for impl, ts in times.items()}
    rows = []
    for impl in impls:
        flavour, what = IMPLS[impl]
        original = ORIGINAL.get(flavour)
        mine = impl.endswith("_fused") and impl != "larc_sgd_fused"
        rows.append(dict(set=set_name, dtype=str(dtype).replace("torch.", ""), impl=impl, flavour=flavour, what=what,
                         tensors=len(shapes), numel=numel(shapes), median_ms=med[impl] * 1e3,
                         p10_ms=statistics.quantiles(times[impl], n=10)[0] * 1e3,
                         p90_ms=statistics.quantiles(times[impl], n=10)[-1] * 1e3,
                         x_seed_fused=med[impl] / med["seed_fused"] if "seed_fused" in med else None,
                         speedup_vs_original=(med[original] / med[impl]
                                              if mine and original in med and impl != original else None)))
    return rows


def markdown(rows: list[dict], device: str, date: str) -> str:
    out = [f"LARS flavours, fused vs the seed flavour and vs the originals — {device}, {date}", ""]
    for set_name in dict.fromkeys(r["set"] for r in rows):
        sub = [r for r in rows if r["set"] == set_name]
        out += [f"**{set_name}** ({sub[0]['tensors']} tensors, {sub[0]['numel'] / 1e6:.1f} M, {sub[0]['dtype']})", "",
                "| impl | what | median ms | p10–p90 ms | × seed fused | speed-up vs original |",
                "|---|---|---|---|---|---|"]
        for r in sub:
            speed = f"{r['speedup_vs_original']:.1f}x" if r["speedup_vs_original"] else ""
            out.append(f"| {r['impl']} | {r['what']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f}–{r['p90_ms']:.2f} | "
                       f"{r['x_seed_fused']:.2f} | {speed} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sets", default="resnet50,vit_b_16")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    impls = args.impls.split(",")
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        p.error(f"unknown impls {unknown}; choose from {list(IMPLS)}")
    dtype = getattr(torch, args.dtype)
    name = device_name(device)  # the card, or the CPU's model and thread count
    date = datetime.date.today().isoformat()
    rows = []
    for set_name in args.sets.split(","):
        rows += run_set(set_name, dtype, device, impls, args.steps, args.warmup)
    table = markdown(rows, f"{name}, torch {torch.__version__}", date)
    print(table, flush=True)
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"flavours-{'cpu' if device.type == 'cpu' else 'cuda'}-{date}")
    with open(stem + ".json", "w") as f:
        json.dump(dict(meta=dict(device=name, date=date, torch=torch.__version__, argv=argv or sys.argv[1:]),
                       rows=rows), f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
