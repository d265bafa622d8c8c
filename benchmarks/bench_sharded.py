#!/usr/bin/env python
"""The sharded LARS (or LAMB) step on 2 CPU ranks (gloo): ResNet-50's parameter
list as DTensors sharded along dim 0 (what fully_shard makes) vs the same list
unsharded, and our paths vs timm's Lars (Lamb) on the same DTensors (a
per-tensor loop or foreach: DTensor turns each of its norms into collectives of
its own, the peer behaviour on sharded models).

    python benchmarks/bench_sharded.py                    # launches itself under torchrun (2 ranks)
    python benchmarks/bench_sharded.py --optimizer lamb   # lars_cuda.Lamb vs timm's Lamb

Same parameters, same gradients, one run, implementations interleaved round
by round; per step the slower rank's time counts (a barrier before, a
max-reduction of the times after); median and p10-p90 of --steps steps after
--warmup. Collectives per step counted by CommDebugMode. Writes
benchmarks/results/sharded-cpu-<date>.{json,md} (LAMB: sharded-lamb-cpu-...).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMPLS = ["unsharded_fused", "fused", "foreach", "reference", "timm"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", default="resnet50", help="a parameter list of benchmarks/param_sets.py")
    p.add_argument("--optimizer", default="lars", choices=["lars", "lamb"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    return p.parse_args(argv)


def launch_under_torchrun(argv) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.abspath(__file__), *argv]
    return subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def build(impl: str, shapes, mesh, optimizer: str = "lars"):
    from torch.distributed.tensor import Shard, distribute_tensor

    import lars_cuda

    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen)
        g = torch.randn(shape, generator=gen) * 1e-2
        if impl != "unsharded_fused":
            p, g = distribute_tensor(p, mesh, [Shard(0)]), distribute_tensor(g, mesh, [Shard(0)])
        p = torch.nn.Parameter(p)
        p.grad = g
        params.append(p)
    path = {"unsharded_fused": dict(fused=True), "fused": dict(fused=True), "foreach": dict(foreach=True),
            "reference": dict(foreach=False, fused=False)}
    if optimizer == "lamb":  # Lamb's defaults (max_grad_norm=1.0: the clip's all-reduce too)
        if impl == "timm":
            from timm.optim import Lamb as TimmLamb

            return TimmLamb(params, lr=1e-3, weight_decay=0.01)
        return lars_cuda.Lamb(params, lr=1e-3, weight_decay=0.01, **path[impl])
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
    if impl == "timm":
        from timm.optim import Lars as TimmLars

        return TimmLars(params, trust_coeff=1e-3, trust_clip=True, **kw)
    return lars_cuda.Lars(params, **kw, **path[impl])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "RANK" not in os.environ:
        return launch_under_torchrun(argv)
    args = parse_args(argv)
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.debug import CommDebugMode

    from benchmarks.param_sets import SETS

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    shapes = SETS[args.set]()
    impls = args.impls.split(",")
    opts = {impl: build(impl, shapes, mesh, args.optimizer) for impl in impls}
    collectives = {}
    for impl in impls:
        with CommDebugMode() as comm:
            opts[impl].step()
        collectives[impl] = comm.get_total_counts()
    times = {impl: [] for impl in impls}
    for i in range(args.warmup + args.steps):
        for impl in impls:
            dist.barrier()
            t0 = time.perf_counter()
            opts[impl].step()
            elapsed = torch.tensor(time.perf_counter() - t0)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            if i >= args.warmup:
                times[impl].append(elapsed.item())
    if rank == 0:
        numel = sum(torch.Size(s).numel() for s in shapes)
        med = {impl: statistics.median(ts) for impl, ts in times.items()}
        rows = []
        for impl in impls:
            q = statistics.quantiles(times[impl], n=10) if len(times[impl]) > 1 else [med[impl]] * 9
            rows.append(dict(impl=impl, median_ms=med[impl] * 1e3, p10_ms=q[0] * 1e3, p90_ms=q[-1] * 1e3,
                             collectives_per_step=collectives[impl],
                             x_unsharded=med[impl] / med["unsharded_fused"] if "unsharded_fused" in med else None,
                             speedup_vs_timm=med["timm"] / med[impl] if "timm" in med else None))
        date = datetime.date.today().isoformat()
        cpu = cpu_name()
        meta = dict(date=date, cpu=cpu, ranks=dist.get_world_size(), backend="gloo", set=args.set,
                    optimizer=args.optimizer,
                    tensors=len(shapes), numel=numel, steps=args.steps, warmup=args.warmup,
                    torch=torch.__version__, threads=torch.get_num_threads())
        lines = [f"Sharded {args.optimizer.upper()} step, {args.set} ({len(shapes)} tensors, "
                 f"{numel / 1e6:.1f} M params, float32), "
                 f"2 ranks x {torch.get_num_threads()} thread(s), gloo, {cpu}, {date}; median of {args.steps} steps",
                 "", "| impl | median ms | p10–p90 ms | collectives/step | × unsharded fused | speed-up vs timm |",
                 "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['impl']} | {r['median_ms']:.1f} | {r['p10_ms']:.1f}–{r['p90_ms']:.1f} | "
                         f"{r['collectives_per_step']} | {r['x_unsharded']:.2f} | {r['speedup_vs_timm']:.1f}x |")
        text = "\n".join(lines)
        print(text, flush=True)
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
        os.makedirs(out, exist_ok=True)
        stem = os.path.join(out, f"sharded-{'lamb-' if args.optimizer == 'lamb' else ''}cpu-{date}")
        with open(stem + ".json", "w") as f:
            json.dump(dict(meta=meta, rows=rows, times_ms={k: [t * 1e3 for t in v] for k, v in times.items()}), f,
                      indent=1)
        with open(stem + ".md", "w") as f:
            f.write(text + "\n")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
