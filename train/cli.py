"""The trainer's command line: the seed's flags with its defaults, then ours
(docs/semantics.md, "The trainer"). ``parse_args`` returns a read-only
:class:`RunConfig`: nothing rewrites a flag after parsing; what is derived from
the flags (the data backend's default) is derived here, once."""

from __future__ import annotations

import argparse
from types import MappingProxyType
from typing import Any, Optional

import torch

DESCRIPTION = "Train an image classifier with LARS (or SGD) the way the seed project trained ResNet-50 on ImageNet."


class RunConfig:
    """The parsed command line, read-only: ``config.batch_size`` as from argparse;
    assigning raises. ``as_dict()`` is what checkpoints and history.json record."""

    __slots__ = ("_values",)

    def __init__(self, namespace: argparse.Namespace, **derived: Any):
        object.__setattr__(self, "_values", MappingProxyType({**vars(namespace), **derived}))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"the trainer has no option {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the run's configuration is read-only (tried to set {name!r}); derive a value "
                             f"from it instead of rewriting a flag")

    def __reduce__(self):  # (DataLoader workers under spawn receive it pickled)
        return _config_from_dict, (dict(self._values),)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        return "RunConfig(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"


def _config_from_dict(values: dict[str, Any]) -> RunConfig:
    return RunConfig(argparse.Namespace(**values))


def parse_args(argv: Optional[list[str]] = None) -> RunConfig:
    p = argparse.ArgumentParser(description=DESCRIPTION,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # The seed's flags, with its defaults.
    p.add_argument("--train-dir", default=None, help="ImageFolder of training images")
    p.add_argument("--val-dir", default=None, help="ImageFolder of validation images")
    p.add_argument("--log-dir", default="./logs/imagenet", help="TensorBoard logs and checkpoints")
    p.add_argument("--checkpoint-format", default="checkpoint-{epoch}.pth.tar")
    p.add_argument("--fp16-allreduce", action="store_true", help="compress gradients to fp16 for the all-reduce")
    p.add_argument("--batches-per-allreduce", type=int, default=1,
                   help="B: backward passes (chunks of --batch-size) per optimizer step")
    p.add_argument("--model", default="resnet50", help="a torchvision classifier, or cifar_resnet20/small_convnet")
    p.add_argument("--batch-size", type=int, default=32, help="per rank, per backward pass")
    p.add_argument("--val-batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("--base-lr", type=float, default=0.0125)
    p.add_argument("--warmup-epochs", type=float, default=5)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--wd", type=float, default=5e-5)
    p.add_argument("--epsilon", type=float, default=1e-5)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--base-op", choices=["sgd", "lars", "timm_lars", "lamb"], default="sgd",
                   help="timm_lars: timm's Lars, for comparisons; lamb: lars_cuda.Lamb (--wd its weight decay, "
                        "its own betas, eps and max_grad_norm)")
    p.add_argument("--bn-bias-separately", action="store_true",
                   help="no LARS and no weight decay for normalisation and bias parameters")
    p.add_argument("--lr-scaling", choices=["keep", "linear", "sqrt"], default="keep",
                   help="base lr x 1, x N*B or x sqrt(N*B) for N ranks")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--single-threaded", action="store_true", help="one intra-op CPU thread per rank")
    p.add_argument("--seed", type=int, default=42)
    # Ours.
    p.add_argument("--dist", choices=["auto", "horovod", "torch", "none"], default="auto")
    p.add_argument("--dist-timeout", type=float, default=600.0,
                   help="seconds to wait for a peer before failing: torch.distributed's timeout, Horovod's "
                        "stall shutdown time (HOROVOD_STALL_SHUTDOWN_TIME_SECONDS, unless set)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--fsdp", action="store_true",
                   help="shard the model with FSDP2 (fully_shard per residual block and at the root; torchrun, "
                        "--dist torch); checkpoints become torch.distributed.checkpoint folders (*.dcp)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--workers", type=int, default=4, help="data loader processes per rank")
    p.add_argument("--data-backend", choices=["pil", "gpu"], default=None,
                   help="gpu: workers read bytes, decode and augment run batched on the device (on the CPU "
                        "without a GPU); default gpu when CUDA is available, else pil")
    p.add_argument("--resume", default=None, help="'auto' (latest valid checkpoint in --log-dir) or a path")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps (smoke runs)")
    p.add_argument("--dataset", choices=["imagefolder", "fashion-mnist"], default="imagefolder")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: Debian's)")
    p.add_argument("--synthetic", action="store_true", help="random ImageNet-shaped data (throughput)")
    p.add_argument("--synthetic-size", type=int, default=12800, help="images per synthetic epoch")
    p.add_argument("--train-subset", type=int, default=0, help="use only the first N training images")
    p.add_argument("--val-subset", type=int, default=0, help="use only the first N validation images")
    p.add_argument("--optimizer-impl", choices=["auto", "fused", "foreach", "reference"], default="auto",
                   help="which Lars/SGD path runs the step")
    p.add_argument("--eeta", type=float, default=1e-3, help="LARS trust coefficient")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.batches_per_allreduce < 1:
        p.error("--batches-per-allreduce must be at least 1")
    if args.batch_size < 1 or args.val_batch_size < 1:
        p.error("batch sizes must be positive")
    if args.epochs < 1:
        p.error("--epochs must be at least 1")
    if args.fsdp and args.amp == "fp16":
        p.error("--fsdp with --amp fp16 is not supported (GradScaler's scale would be updated from each rank's "
                "own inf check); use --amp bf16")
    if args.fsdp and args.dist in ("horovod", "none"):
        p.error(f"--fsdp needs torch.distributed (torchrun, --dist torch or auto), not --dist {args.dist}")
    # Derived once, here; the flag itself stays as given.
    backend = args.data_backend or ("gpu" if torch.cuda.is_available() and not args.no_cuda else "pil")
    return RunConfig(args, data_backend=backend)
