#!/usr/bin/env python
"""Large-batch convergence on real data: LARS vs momentum SGD on Fashion-MNIST.

Same epoch budget for every run; for each batch size, LARS with the seed's
recipe (base lr scaled with sqrt(batch), warmup epochs linear in batch as in the
seed's table, polynomial decay power 2, normalisation and bias parameters
without LARS and weight decay) against SGD with linear lr scaling, the same
warmup and the trainer's polynomial decay (power 1, as the seed). Every run is
one trainer process with its own log dir; finished runs are read back from
their history.json and interrupted ones resume from their checkpoints, so the
study can be completed in parts.

    python benchmarks/convergence.py                      # the full grid
    python benchmarks/convergence.py --sweep              # the LARS base-lr sweep first
    python benchmarks/convergence.py --batch-sizes 1024 --seeds 0 --optimizers lars   # one cell

Outputs (under --out, default benchmarks/results/convergence/): runs/<name>/
(trainer logs), convergence.json (every run), convergence.md (mean ± spread
per cell, wall time) and convergence.png (accuracy vs batch size).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "convergence")


def lars_lr(batch: int, base_at_1k: float) -> float:
    """The seed's table scales LARS's base lr with sqrt(batch): 2^2.5 at 1K, 2^4 at 8K."""
    return base_at_1k * math.sqrt(batch / 1024)


def sgd_lr(batch: int, base_at_256: float) -> float:
    """Goyal et al.'s linear scaling rule."""
    return base_at_256 * batch / 256


def warmup_epochs(batch: int) -> float:
    """The seed's table: 10/2^6 epochs at 512 ... 10/2^2 at 8K, i.e. linear in batch."""
    return 10 * batch / 32768


def run_name(opt: str, batch: int, seed: int, lr: float) -> str:
    return f"{opt}-b{batch}-lr{lr:g}-s{seed}"


def run_one(args, opt: str, batch: int, seed: int, lr: float) -> dict:
    name = run_name(opt, batch, seed, lr)
    log_dir = os.path.join(args.out, "runs", name)
    history_path = os.path.join(log_dir, "history.json")
    done = _finished(history_path, args.epochs)
    if done is None and args.report_only:
        return None
    if done is None:
        cmd = [sys.executable, os.path.join(ROOT, "train", "imagenet.py"), "--dataset", "fashion-mnist",
               "--model", args.model, "--base-op", opt, "--bn-bias-separately", "--batch-size", str(batch),
               "--val-batch-size", "1000", "--epochs", str(args.epochs), "--base-lr", str(lr),
               "--warmup-epochs", str(warmup_epochs(batch)), "--wd", str(args.wd), "--seed", str(seed),
               "--workers", "0", "--dist", "none", "--log-dir", log_dir, "--resume", "auto", "--quiet",
               "--no-tensorboard"]
        t0 = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        print(f"    {[ln for ln in proc.stdout.splitlines() if ln.startswith('final')][-1]}  "
              f"({time.time() - t0:.0f}s)", flush=True)
        done = _finished(history_path, args.epochs)
    last = done["epochs"][-1]
    return dict(name=name, optimizer=opt, batch=batch, seed=seed, lr=lr, warmup_epochs=warmup_epochs(batch),
                epochs=args.epochs, val_top1=last["val_top1"], val_loss=last["val_loss"],
                train_loss=last["train_loss"], wall_s=sum(e["train_time_s"] for e in done["epochs"]))


def _finished(history_path: str, epochs: int):
    if not os.path.exists(history_path):
        return None
    with open(history_path) as f:
        data = json.load(f)
    return data if data["epochs"] and data["epochs"][-1]["epoch"] == epochs else None


def summarize(runs: list[dict]) -> list[dict]:
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        cells.setdefault((r["optimizer"], r["batch"]), []).append(r)
    out = []
    for (opt, batch), rs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        accs = [r["val_top1"] for r in rs]
        out.append(dict(optimizer=opt, batch=batch, lr=rs[0]["lr"], n=len(rs), mean=statistics.mean(accs),
                        spread=(max(accs) - min(accs)) / 2 if len(accs) > 1 else 0.0,
                        wall_s=statistics.mean(r["wall_s"] for r in rs)))
    return out


def markdown(cells: list[dict], args) -> str:
    lines = [f"Fashion-MNIST, {args.model}, {args.epochs} epochs, wd {args.wd}; test top-1 (%) mean ± half-range "
             f"over seeds; wall time per run on this machine.\n",
             "| batch | optimizer | base lr | runs | test top-1 (%) | wall s/run |", "|---:|---|---:|---:|---:|---:|"]
    for c in cells:
        lines.append(f"| {c['batch']} | {c['optimizer']} | {c['lr']:.4g} | {c['n']} | {c['mean']:.2f} ± "
                     f"{c['spread']:.2f} | {c['wall_s']:.0f} |")
    return "\n".join(lines)


def plot(cells: list[dict], path: str, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for opt in sorted({c["optimizer"] for c in cells}):
        cs = sorted((c for c in cells if c["optimizer"] == opt), key=lambda c: c["batch"])
        ax.errorbar([c["batch"] for c in cs], [c["mean"] for c in cs], yerr=[c["spread"] for c in cs],
                    marker="o", capsize=3, label=opt.upper())
    ax.set(xscale="log", xlabel="global batch size", ylabel="test top-1 (%)",
           title=f"Fashion-MNIST, {args.model}, {args.epochs} epochs")
    ax.set_xticks([c["batch"] for c in cells])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--model", default="cifar_resnet8")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--batch-sizes", default="256,1024,4096,8192")
    p.add_argument("--optimizers", default="lars,sgd")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--lars-lr-at-1k", type=float, default=None,
                   help="LARS base lr at batch 1K (default: the sweep's best if it ran, else 2^2.5 as the seed)")
    p.add_argument("--sgd-lr-at-256", type=float, default=0.1)
    p.add_argument("--report-only", action="store_true",
                   help="start no run: tabulate the finished ones (a study completed in parts)")
    p.add_argument("--sweep", action="store_true",
                   help="first sweep LARS's lr at 1K over 2^1.5, 2^2.5 (the seed's), 2^3.5, 2^4.5 (seed 0)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    sweep_path = os.path.join(args.out, "lars_lr_sweep.json")
    if args.sweep:
        sweep = [r for r in (run_one(args, "lars", 1024, 0, 2.0 ** e) for e in (1.5, 2.5, 3.5, 4.5)) if r]
        with open(sweep_path, "w") as f:
            json.dump(sweep, f, indent=1)
        print("sweep:", ", ".join(f"lr {r['lr']:.3g}: {r['val_top1']:.2f}%" for r in sweep))
    if args.lars_lr_at_1k is None:
        if os.path.exists(sweep_path):
            with open(sweep_path) as f:
                args.lars_lr_at_1k = max(json.load(f), key=lambda r: r["val_top1"])["lr"]
        else:
            args.lars_lr_at_1k = 2.0 ** 2.5

    runs = []
    for batch in map(int, args.batch_sizes.split(",")):
        for opt in args.optimizers.split(","):
            for seed in map(int, args.seeds.split(",")):
                lr = lars_lr(batch, args.lars_lr_at_1k) if opt == "lars" else sgd_lr(batch, args.sgd_lr_at_256)
                runs.append(run_one(args, opt, batch, seed, lr))
    runs = [r for r in runs if r is not None]
    cells = summarize(runs)
    with open(os.path.join(args.out, "convergence.json"), "w") as f:
        json.dump(dict(args=vars(args), runs=runs, cells=cells), f, indent=1)
    table = markdown(cells, args)
    with open(os.path.join(args.out, "convergence.md"), "w") as f:
        f.write(table + "\n")
    plot(cells, os.path.join(args.out, "convergence.png"), args)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
