#!/usr/bin/env python
"""Time one optimizer step of every LARS we know, on real parameter lists.

    python benchmarks/bench_step.py                    # this machine's default device
    python benchmarks/bench_step.py --device cuda --sets all

Implementations (same parameters, same gradients, same run, interleaved round
by round so drift hits all alike): our per-parameter reference loop, our
foreach path, our fused kernel, torch.compile of our foreach step, timm's Lars,
and torch.optim.SGD(momentum, weight_decay, fused=True) as the no-norm floor.
Gradients are random (never zeros), rotated among three sets between steps.
Timing: CUDA events on a GPU, a wall clock on the CPU (where the step is
synchronous); median and p10-p90 of --steps steps after --warmup.

Writes benchmarks/results/<device>-<date>.json and .png, and prints a markdown
table per (set, dtype) last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from typing import Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lars_cuda  # noqa: E402
from param_sets import SETS, numel  # noqa: E402

HYPER = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
IMPLS = ["reference", "foreach", "fused", "compiled_foreach", "timm", "sgd_fused"]
CPU_DEFAULT_SETS = ["resnet50", "vit_b_16", "tiny_10k", "one_100m"]
ALL_SETS = ["resnet50", "resnet152", "vit_b_16", "bert_large", "tiny_10k", "one_100m"]
N_GRAD_SETS = 3


def make_optimizer(impl: str, params: list[torch.Tensor]):
    if impl == "reference":
        return lars_cuda.Lars(params, eeta=1e-3, foreach=False, fused=False, **HYPER)
    if impl in ("foreach", "compiled_foreach"):
        return lars_cuda.Lars(params, eeta=1e-3, foreach=True, fused=False, **HYPER)
    if impl == "fused":
        return lars_cuda.Lars(params, eeta=1e-3, fused=True, **HYPER)
    if impl == "timm":
        from timm.optim import Lars as TimmLars

        return TimmLars(params, trust_coeff=1e-3, trust_clip=True, **HYPER)
    if impl == "sgd_fused":
        return torch.optim.SGD(params, fused=True, **HYPER)
    raise ValueError(impl)


def step_function(impl: str, opt) -> Callable[[], None]:
    if impl == "compiled_foreach":
        return torch.compile(opt.step)
    return opt.step


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1] for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        name = f"cpu {name} {torch.get_num_threads()}t"
    return re.sub(r"[^A-Za-z0-9]+", "-", name.strip()).strip("-").lower()


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read plus written per second by a large device-to-device copy."""
    n = 64 * 2**20 if device.type == "cpu" else 512 * 2**20
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    times = [timed(lambda: dst.copy_(src), device) for _ in range(12)][2:]
    return 2 * n * 4 / statistics.median(times)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def count_launches_and_alloc(step: Callable[[], None], device: torch.device) -> tuple[Optional[int], Optional[int]]:
    """(CUDA kernels per step, or top-level CPU ops per step; bytes allocated by the step)."""
    from torch.profiler import ProfilerActivity, profile

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated(device) - base
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                   and "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
        return len(kernels), extra
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = prof.events()

    def is_op(e) -> bool:
        return e is not None and (e.name.startswith("aten::") or e.name.startswith("lars_cuda::"))

    # Ops called from Python (not the ones an op calls inside itself).
    top = [e for e in events if is_op(e) and not is_op(e.cpu_parent)]
    alloc = sum(max(e.self_cpu_memory_usage, 0) for e in events)
    return len(top), alloc


def run_set(set_name: str, dtype: torch.dtype, device: torch.device, impls: list[str], steps: int, warmup: int,
            copy_bw: float) -> list[dict]:
    shapes = SETS[set_name]()
    n = numel(shapes)
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, device=device, generator=gen).to(dtype)) for s in shapes]
    grad_sets = [[torch.randn(s, device=device, generator=gen).to(dtype) for s in shapes]
                 for _ in range(N_GRAD_SETS)]

    def set_grads(k: int) -> None:
        for p, g in zip(params, grad_sets[k % N_GRAD_SETS]):
            p.grad = g

    runners = {}
    for impl in impls:
        if impl == "compiled_foreach" and (len(shapes) > 1000 or (device.type == "cpu" and set_name != "resnet50")):
            print(f"  {set_name}/{impl}: skipped (compile time on this device)", flush=True)
            continue
        try:
            opt = make_optimizer(impl, params)
            step = step_function(impl, opt)
            set_grads(0)
            t0 = time.perf_counter()
            step()  # first step: state, compilation
            print(f"  {set_name}/{dtype_name(dtype)}/{impl}: first step {time.perf_counter() - t0:.2f}s", flush=True)
            runners[impl] = step
        except Exception as exc:  # a peer that cannot run this case is reported, not fatal
            print(f"  {set_name}/{impl}: skipped ({type(exc).__name__}: {exc})", flush=True)

    times: dict[str, list[float]] = {impl: [] for impl in runners}
    for r in range(warmup + steps):
        for impl, step in runners.items():
            set_grads(r + 1)
            t = timed(step, device)
            if r >= warmup:
                times[impl].append(t)

    rows = []
    medians = {impl: statistics.median(ts) for impl, ts in times.items()}
    floor_bytes = n * 5 * torch.tensor([], dtype=dtype).element_size()  # read w, g, m; write w, m
    for impl, ts in times.items():
        launches, alloc = count_launches_and_alloc(runners[impl], device) if impl != "compiled_foreach" or \
            device.type == "cuda" else (None, None)
        med = medians[impl]
        q = statistics.quantiles(ts, n=10) if len(ts) >= 2 else [med] * 9
        rows.append(dict(
            set=set_name, dtype=dtype_name(dtype), numel=n, n_tensors=len(shapes), impl=impl,
            median_us=med * 1e6, p10_us=q[0] * 1e6, p90_us=q[-1] * 1e6, times_us=[t * 1e6 for t in ts],
            x_sgd_fused=med / medians["sgd_fused"] if "sgd_fused" in medians else None,
            x_reference=med / medians["reference"] if "reference" in medians else None,
            speedup_vs_reference=medians["reference"] / med if "reference" in medians else None,
            gbs=floor_bytes / med / 1e9, frac_copy_bw=floor_bytes / med / copy_bw,
            launches_per_step=launches, alloc_bytes_per_step=alloc,
        ))
    return rows


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def markdown(rows: list[dict], device: str, copy_bw: float) -> str:
    out = [f"Device: {device}; measured copy bandwidth {copy_bw / 1e9:.1f} GB/s (read+write)."]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["set"], r["dtype"]), []).append(r)
    for (set_name, dtype), rs in groups.items():
        out.append(f"\n**{set_name}** ({rs[0]['n_tensors']} tensors, {rs[0]['numel'] / 1e6:.2f} M elements), {dtype}\n")
        out.append("| impl | median µs | p10–p90 µs | × fused SGD | speed-up vs reference | GB/s (floor bytes) "
                   "| % copy BW | launches/ops per step | alloc MB/step |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rs:
            fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
            out.append(
                f"| {r['impl']} | {r['median_us']:.0f} | {r['p10_us']:.0f}–{r['p90_us']:.0f} | "
                f"{fmt(r['x_sgd_fused'], '.2f')} | {fmt(r['speedup_vs_reference'], '.1f')}x | {r['gbs']:.1f} | "
                f"{100 * r['frac_copy_bw']:.0f}% | {fmt(r['launches_per_step'], 'd')} | "
                f"{fmt(None if r['alloc_bytes_per_step'] is None else r['alloc_bytes_per_step'] / 2**20, '.1f')} |")
    return "\n".join(out)


def plot(rows: list[dict], path: str, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6.5 * len(dtypes), 4.8), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        for impl in IMPLS:
            pts = sorted((r["numel"], r["median_us"], r["set"]) for r in rows
                         if r["impl"] == impl and r["dtype"] == dtype)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=impl)
        # Set names along the top edge (x in data units, y as a fraction of the axes).
        for numel_, set_name in sorted({(r["numel"], r["set"]) for r in rows if r["dtype"] == dtype}):
            ax.text(numel_, 0.98, set_name, transform=ax.get_xaxis_transform(), fontsize=7, rotation=90,
                    ha="right", va="top")
        ax.set(xscale="log", yscale="log", xlabel="parameter elements", ylabel="step time (µs, median)",
               title=f"{device}, {dtype}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: str, rows: list[dict], name: str, copy_bw: float, device: torch.device,
               argv: Optional[list[str]]) -> None:
    meta = dict(device=name, torch=torch.__version__, date=datetime.datetime.now().isoformat(timespec="seconds"),
                command=" ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
                copy_bandwidth_bytes_per_s=copy_bw, threads=torch.get_num_threads(), hyper=HYPER,
                cpu_kernel=lars_cuda.ops.cpu_kernel() if lars_cuda.has_fused("cpu") else None,
                cuda_launch=lars_cuda.ops.last_cuda_launch() if device.type == "cuda" else None,
                cuda_variant=os.environ.get("LARS_CUDA_VARIANT"))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=1)
    os.replace(tmp, path)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sets", default=None, help=f"comma list of {sorted(SETS)}, or 'all' (default: "
                                                f"{','.join(CPU_DEFAULT_SETS)} on CPU, all on GPU)")
    p.add_argument("--dtypes", default="float32,bfloat16,float16")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--tag", default="", help="added to the output file names")
    p.add_argument("--render", metavar="JSON", help="only redraw the .md and .png of a results JSON")
    args = p.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            data = json.load(f)
        stem = os.path.splitext(args.render)[0]
        meta = data["meta"]
        plot(data["results"], stem + ".png", meta["device"])
        table = markdown(data["results"], meta["device"], meta["copy_bandwidth_bytes_per_s"])
        with open(stem + ".md", "w") as f:
            f.write(table + "\n")
        print(table)
        return 0

    device = torch.device(args.device)
    if args.sets is None:
        sets = CPU_DEFAULT_SETS if device.type == "cpu" else ALL_SETS
    elif args.sets == "all":
        sets = ALL_SETS
    else:
        sets = args.sets.split(",")
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        p.error(f"unknown sets {unknown}; choose from {sorted(SETS)}")
    impls = args.impls.split(",")
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]

    name = device_name(device)
    print(f"device {name}; torch {torch.__version__}; lars_cuda CPU kernel "
          f"{lars_cuda.ops.cpu_kernel() if lars_cuda.has_fused('cpu') else 'not built'}", flush=True)
    copy_bw = copy_bandwidth(device)
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"{name}-{datetime.date.today().isoformat()}{args.tag}")
    rows: list[dict] = []
    for set_name in sets:
        for dtype in dtypes:
            rows += run_set(set_name, dtype, device, impls, args.steps, args.warmup, copy_bw)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            # Written after every case, so a run stopped by a time limit keeps what it measured.
            write_json(stem + ".json", rows, name, copy_bw, device, argv)
    plot(rows, stem + ".png", name)
    table = markdown(rows, name, copy_bw)
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")
    print(f"\nwrote {stem}.json, .md and .png\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
