#!/usr/bin/env python
"""ResNet-50 training throughput with synthetic data, one process per optimizer:
lars-fused, sgd-fused, lars-foreach and timm's Lars (bf16 autocast, channels_last).

    python benchmarks/train_throughput.py --out results.json [--steps 60 --batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {
    "lars-fused": ["--base-op", "lars", "--optimizer-impl", "fused"],
    "sgd-fused": ["--base-op", "sgd", "--optimizer-impl", "fused"],
    "lars-foreach": ["--base-op", "lars", "--optimizer-impl", "foreach"],
    "timm-lars": ["--base-op", "timm_lars"],
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--extra", default="--amp bf16 --channels-last", help="trainer flags for every run")
    p.add_argument("--run-timeout", type=float, default=120.0, help="seconds per trainer run")
    args = p.parse_args()
    results = {}
    for name, flags in RUNS.items():
        cmd = [sys.executable, os.path.join(ROOT, "train", "imagenet.py"), "--synthetic", "--model", args.model,
               "--batch-size", str(args.batch_size), "--synthetic-size", str(args.batch_size * args.steps),
               "--epochs", "1", "--warmup-epochs", "0.1", "--base-lr", "1.0", "--bn-bias-separately",
               "--workers", "6", "--val-subset", str(args.batch_size), "--dist", "none", "--no-tensorboard",
               "--quiet", "--log-dir", f"/tmp/throughput-{name}", *args.extra.split(), *flags]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.run_timeout)
        except subprocess.TimeoutExpired as exc:  # keep what the others measured
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            proc = subprocess.CompletedProcess(cmd, -9, out, f"timed out after {args.run_timeout}s")
        wall = time.perf_counter() - t0
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("epoch 1/1")), "")
        m = re.search(r"([\d.]+) img/s\s+optimizer ([\d.]+)% of step time", line)
        results[name] = dict(images_per_s=float(m.group(1)) if m else None,
                             optimizer_share_pct=float(m.group(2)) if m else None,
                             returncode=proc.returncode, line=line, stderr_tail=proc.stderr[-800:],
                             process_wall_s=wall)
        print(f"{name:13s} ({wall:.0f}s in all) {line}", flush=True)
        if proc.returncode != 0:
            print(proc.stderr[-1500:], flush=True)
        base = results.get("sgd-fused", {}).get("images_per_s")
        for r in results.values():
            r["vs_sgd_fused"] = r["images_per_s"] / base if base and r["images_per_s"] else None
        with open(args.out, "w") as f:  # after every run: a stopped benchmark keeps what it measured
            json.dump(dict(command=" ".join(sys.argv), results=results), f, indent=1)
    print("\n| run | images/s | optimizer share | vs sgd-fused |\n|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['images_per_s']} | {r['optimizer_share_pct']}% | "
              f"{'—' if r['vs_sgd_fused'] is None else format(r['vs_sgd_fused'], '.3f')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
