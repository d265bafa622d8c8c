#!/usr/bin/env python
"""Images/s of the two input pipelines on generated ImageNet-sized JPEGs
(500x375, quality 90): the PIL ImageFolder pipeline per worker count, and the
--data-backend gpu path (workers read bytes; decode + RandomResizedCrop + flip +
normalise batched on the device) on the CPU and, when there is one, the GPU.

    python benchmarks/bench_input.py [--images 512 --batch-size 64 --out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train.data import image_folder  # noqa: E402
from train.fast_data import BatchDecoder, EncodedImageFolder, collate_encoded, split_encoded  # noqa: E402


def make_jpegs(root: str, n: int) -> None:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        cls = os.path.join(root, f"c{i % 10}")
        os.makedirs(cls, exist_ok=True)
        small = torch.rand(3, 12, 16, generator=gen)
        big = torch.nn.functional.interpolate(small[None], size=(375, 500), mode="bicubic", align_corners=False)
        noise = torch.rand(3, 375, 500, generator=gen) * 0.15  # some texture, so files are photo-sized
        pixels = ((big[0] * 0.85 + noise).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(os.path.join(cls, f"{i}.jpg"), quality=90)


def images_per_s(loader, consume) -> float:
    it = iter(loader)
    consume(next(it))  # warm-up: workers started, first batch decoded
    n, t0 = 0, time.perf_counter()
    for batch in it:
        n += consume(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        make_jpegs(root, args.images)
        mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs) / args.images / 1e3
        print(f"{args.images} JPEGs of 500x375, {mb:.0f} kB each; cpu threads {torch.get_num_threads()}")
        pil = image_folder(root, train=True, flag="--train-dir")
        for w in map(int, args.workers.split(",")):
            loader = DataLoader(pil, batch_size=args.batch_size, shuffle=True, num_workers=w, drop_last=True)
            rate = images_per_s(loader, lambda b: len(b[1]))
            rows.append(dict(pipeline="pil", device="cpu", workers=w, images_per_s=rate))
            print(rows[-1], flush=True)
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        enc = EncodedImageFolder(root)
        for dev in devices:
            decoder = BatchDecoder(torch.device(dev), train=True)
            w = max(map(int, args.workers.split(",")))
            loader = DataLoader(enc, batch_size=args.batch_size, shuffle=True, num_workers=w, drop_last=True,
                                collate_fn=collate_encoded)
            rate = images_per_s(loader, lambda b: len(decoder(split_encoded(b[0], b[1]))[1]))
            rows.append(dict(pipeline="gpu-backend", device=dev, workers=w, images_per_s=rate))
            print(rows[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(images=args.images, rows=rows), f, indent=1)
    print("\n| pipeline | decode device | loader workers | images/s |\n|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['pipeline']} | {r['device']} | {r['workers']} | {r['images_per_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
