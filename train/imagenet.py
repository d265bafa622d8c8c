#!/usr/bin/env python
"""Train an image classifier with LARS (or SGD) the way the seed project trained
ResNet-50 on ImageNet, on Horovod (mpirun/horovodrun), torch.distributed
(torchrun) or one process.

    mpirun -np 8 python train/imagenet.py --train-dir ... --val-dir ... \\
        --base-op lars --bn-bias-separately --batch-size 128 --base-lr 5.657 \\
        --warmup-epochs 0.3125 --wd 1e-4 --lr-scaling keep

Facts and flags: docs/semantics.md, "The trainer". Global batch =
batch-size x ranks x batches-per-allreduce; the lr follows PolynomialWarmup per
optimizer step (power 2 for LARS, 1 otherwise).

The entry point only: the command line is train/cli.py, the parts
train/builders.py, the loop train/trainer.py, the numbers and plots
train/metrics.py, checkpoints and resume train/checkpoint.py.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

if not __package__ and "train" not in sys.modules:
    # `python train/imagenet.py` (the seed's command) runs this file as a script:
    # the folder is registered as the package `train` it is, so its modules import
    # as train.* (without putting the repository on sys.path).
    _here = os.path.dirname(os.path.abspath(__file__))
    _spec = importlib.util.spec_from_file_location("train", os.path.join(_here, "__init__.py"),
                                                   submodule_search_locations=[_here])
    sys.modules["train"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["train"])

import torch  # noqa: E402

from train import checkpoint as ckpt  # noqa: E402
from train.cli import parse_args  # noqa: E402
from train.data import DataError  # noqa: E402
from train.distributed import make_dist  # noqa: E402
from train.trainer import Trainer  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        dist = make_dist(args.dist, torch.cuda.is_available() and not args.no_cuda, args.dist_timeout,
                         fsdp=args.fsdp)
    except ImportError as exc:
        print(f"error: --dist {args.dist} needs {exc.name}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        Trainer(args, dist).fit()
    except (DataError, ckpt.CheckpointError, ckpt.UnsafeCheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
