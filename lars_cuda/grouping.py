"""``create_optimizer_lars``: the seed's parameter grouping
(``docs/semantics.md``, grouping)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .optimizer import Lars

__all__ = ["create_optimizer_lars", "is_norm_layer", "split_lars_parameters"]

# The seed caught BatchNorm1d/2d/3d and LayerNorm; _NormBase adds SyncBatchNorm and
# the InstanceNorms, and GroupNorm and RMSNorm are normalisations too.
_NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES += (nn.RMSNorm,)


def is_norm_layer(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES)


def split_lars_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(LARS parameters, excluded parameters), each in ``model.named_parameters()``
    order, without frozen (``requires_grad=False``) parameters. Excluded: every
    parameter of a normalisation layer and every other one whose qualified name
    contains ``bias``. A shared parameter is excluded if any owner excludes it."""
    excluded_ids = set()
    for module_name, module in model.named_modules(remove_duplicate=False):
        for name, p in module.named_parameters(recurse=False):
            qualified = f"{module_name}.{name}" if module_name else name
            if is_norm_layer(module) or "bias" in qualified:
                excluded_ids.add(id(p))
    lars_params, excluded = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (excluded if id(p) in excluded_ids else lars_params).append(p)
    return lars_params, excluded


def create_optimizer_lars(
    model: nn.Module,
    lr: float | torch.Tensor,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    bn_bias_separately: bool = False,
    epsilon: float = 0.0,
    **kwargs: Any,
) -> Lars:
    """The seed's factory. ``bn_bias_separately=False``: one group, every trainable
    parameter, LARS and weight decay. ``True``: group 0 holds the LARS parameters
    (with ``weight_decay``), group 1 the normalisation and bias parameters with
    ``weight_decay=0, lars=False``. Extra keywords (``eeta``, ``nesterov``,
    ``foreach``, ``fused``, ...) go to :class:`Lars`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if bn_bias_separately:
        lars_params, excluded = split_lars_parameters(model)
        groups = [
            dict(params=lars_params),
            dict(params=excluded, weight_decay=0.0, lars=False),
        ]
    else:
        groups = [dict(params=[p for p in model.parameters() if p.requires_grad])]
    if not any(g["params"] for g in groups):
        raise ValueError("the model has no trainable parameters")
    return Lars(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, epsilon=epsilon, **kwargs)
