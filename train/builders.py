"""What the trainer is made of, built from the run's configuration: the model
(channels-last, FSDP2 sharding), the lr as scaled for the ranks, the optimizer
(Lars, timm's Lars or SGD, on the chosen path), the schedule and AMP."""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import nn

from train.distributed import Dist
from train.models import build_model


def scaled_lr(base_lr: float, scaling: str, n: int) -> float:
    """keep: b; linear: b*N*B; sqrt: b*sqrt(N*B). (The seed computed sqrt(b*N*B), a bug.)"""
    return {"keep": base_lr, "linear": base_lr * n, "sqrt": base_lr * math.sqrt(n)}[scaling]


def make_optimizer(args, model: nn.Module, lr: float, device: torch.device):
    import lars_cuda

    impl = dict(auto={}, fused=dict(fused=True), foreach=dict(foreach=True, fused=False),
                reference=dict(foreach=False, fused=False))[args.optimizer_impl]
    if args.base_op == "lars":
        return lars_cuda.create_optimizer_lars(model, lr=lr, momentum=args.momentum, weight_decay=args.wd,
                                               bn_bias_separately=args.bn_bias_separately, epsilon=args.epsilon,
                                               eeta=args.eeta, **impl)
    if args.bn_bias_separately:
        decay, no_decay = lars_cuda.split_lars_parameters(model)
        groups = [dict(params=decay), dict(params=no_decay, weight_decay=0.0)]
    else:
        groups = [dict(params=[p for p in model.parameters() if p.requires_grad])]
    if args.base_op == "lamb":
        return lars_cuda.Lamb(groups, lr=lr, weight_decay=args.wd, **impl)
    if args.base_op == "timm_lars":
        from timm.optim import Lars as TimmLars

        return TimmLars(groups, lr=lr, momentum=args.momentum, weight_decay=args.wd, trust_coeff=args.eeta,
                        eps=args.epsilon, trust_clip=True)
    if not impl and device.type in ("cpu", "cuda") and not args.fsdp:
        impl = dict(fused=True)  # torch's fused SGD takes no DTensors: foreach under --fsdp
    return torch.optim.SGD(groups, lr=lr, momentum=args.momentum, weight_decay=args.wd, **impl)


def build_training_model(args, dist: Dist, channels: int, classes: int, device: torch.device) -> nn.Module:
    """The model on its device in the chosen memory format; under --fsdp, every rank
    shards the same (broadcast) weights."""
    model = build_model(args.model, channels, classes).to(device)
    model = model.to(memory_format=memory_format(args))
    if args.fsdp:
        from train.fsdp import shard_model

        dist.broadcast_module(model)  # every rank shards the same weights
        shard_model(model)
    return model


def memory_format(args) -> torch.memory_format:
    return torch.channels_last if args.channels_last else torch.contiguous_format


def make_scheduler(args, optimizer, steps_per_epoch: int):
    """The seed's PolynomialWarmup per optimizer step: power 2 for LARS, 1 for SGD."""
    from lars_cuda import PolynomialWarmup

    return PolynomialWarmup(optimizer, decay_steps=args.epochs * steps_per_epoch,
                            warmup_steps=args.warmup_epochs * steps_per_epoch, end_lr=0.0,
                            power=2.0 if args.base_op != "sgd" else 1.0)


def make_amp(args, device: torch.device) -> tuple:
    """(GradScaler or None, a context factory for the forward pass)."""
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    autocast: Callable = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else \
        contextlib.nullcontext
    return scaler, autocast
