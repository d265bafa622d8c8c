"""``StepOptions``: one param group's step options, resolved once per step — and
the only Python owner of the op's packed layout (the ``hyper`` row and the flag
bits of ``fused_lars_groups_``/``fused_lars_apply_``; ``csrc/group_args.h`` is the
C++ owner, and ``tests/test_layout.py`` checks the two agree).

A group holds Lars's options (``Lars._OPTIONS``), some of them switches that
decide what a step does to which tensor: ``decay=None`` (weight decay exactly
where LARS adapts), ``always_adapt=False`` (timm: adapt only where
``weight_decay != 0``) and the self-supervised filters (1-D params without decay
and/or adaptation). :meth:`StepOptions.views` resolves them into at most two
views, each a frozen ``StepOptions`` with plain booleans and the params it steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor

__all__ = ["FLAG_BITS", "HYPER_FIELDS", "KERNEL_DTYPES", "LARS_OPTIONS", "LR", "PATH_OPTIONS", "SELECTION_OPTIONS",
           "STEP_OPTIONS", "StepOptions", "compute_dtype"]

LR = Union[float, Tensor]

# The dtypes the compiled kernel steps (it computes in float32); float64 runs foreach.
KERNEL_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every path computes a tensor's step in: float64 for float64
    tensors, float32 for every other floating type (the kernel's)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# The op's hyper row of a group, in order (a disabled clip is NaN; a tensor lr
# travels in lr_tensors and its slot holds 0) ...
HYPER_FIELDS = ("lr", "momentum", "weight_decay", "eeta", "epsilon", "trust_clip", "update_clip", "dampening")
# ... and its flag bits.
FLAG_BITS = {"lars": 1, "nesterov": 2, "maximize": 4, "decay": 8, "ratio_on_grad": 16, "norm_of_update": 32,
             "larc_clip": 64, "zero_norm_skip": 128}
_NO_CLIP = float("nan")


@dataclass(frozen=True)
class StepOptions:
    """What the step's math takes for one set of tensors (see ``docs/semantics.md``).
    ``decay`` is resolved (a bool); the defaults are the seed's."""

    lr: LR
    momentum: float = 0.0
    weight_decay: float = 0.0
    eeta: float = 1e-3
    epsilon: float = 0.0
    lars: bool = True
    nesterov: bool = False
    trust_clip: Optional[float] = 50.0
    update_clip: Optional[float] = 10.0
    maximize: bool = False
    dampening: float = 0.0
    decay: bool = True
    ratio_on_grad: bool = False
    norm_of_update: bool = False
    larc_clip: bool = False
    zero_norm_skip: bool = False

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> "StepOptions":
        """From a mapping of the keyword arguments of :func:`lars_cuda.functional.lars`
        (missing switches take the seed's values; ``decay=None`` means ``lars``; a
        one-element lr tensor becomes a 0-dim view). The one place both are resolved."""
        kw = {k: v for k, v in options.items() if k in _FIELDS}
        lr = kw.get("lr")
        if isinstance(lr, Tensor) and lr.dim() != 0:
            # torch.optim takes a one-element lr tensor of any shape ((), (1,), (1, 1));
            # a 0-dim view of it broadcasts like a float (no copy, no host sync).
            kw["lr"] = lr.reshape(())
        if kw.get("decay") is None:
            kw["decay"] = bool(kw.get("lars", True))
        return cls(**kw)

    @classmethod
    def views(cls, group: Mapping[str, Any], params: list[Tensor]) -> list[tuple["StepOptions", list[int]]]:
        """The group as the step sees it: ``(options, indices into params)`` per view.
        timm's ``always_adapt=False`` turns LARS off for a group without weight decay,
        and the self-supervised filters give 1-D params (biases, norms) a view without
        decay (``decay_filter``) and/or adaptation (``adaptation_filter``). The common
        case is one view of every param."""
        lars_on = group["lars"] and (group["always_adapt"] or group["weight_decay"] != 0)
        base = cls.of({**group, "lars": lars_on})  # (decay=None: where this view adapts)
        if not (group["decay_filter"] or group["adaptation_filter"]):
            return [(base, list(range(len(params))))]
        flat = dataclasses.replace(base, lars=lars_on and not group["adaptation_filter"],
                                   decay=base.decay and not group["decay_filter"])
        views = []
        for want_flat, options in ((False, base), (True, flat)):
            idx = [i for i, p in enumerate(params) if (p.ndim == 1) == want_flat]
            if idx:
                views.append((options, idx))
        return views

    def first_step(self) -> "StepOptions":
        """The options of a fresh buffer's first step: it copies d (torch.optim.SGD),
        which a zero buffer gives with dampening 0 (momentum*0 + d == d)."""
        return dataclasses.replace(self, dampening=0.0)

    @property
    def has_momentum(self) -> bool:
        return self.momentum != 0

    # ---- the op's packed layout (csrc/group_args.h) ----
    @property
    def flags(self) -> int:
        return sum(bit for name, bit in FLAG_BITS.items() if getattr(self, name))

    @property
    def lr_tensor(self) -> Optional[Tensor]:
        return self.lr if isinstance(self.lr, Tensor) else None

    def hyper_row(self) -> list[float]:
        row = {f: getattr(self, f) for f in HYPER_FIELDS}
        row["lr"] = 0.0 if isinstance(self.lr, Tensor) else float(self.lr)
        for clip in ("trust_clip", "update_clip"):
            row[clip] = _NO_CLIP if row[clip] is None else float(row[clip])
        return [float(row[f]) for f in HYPER_FIELDS]


# The option names of a Lars param group, all derived from StepOptions' fields
# (the one list of them): the step's math takes STEP_OPTIONS; SELECTION_OPTIONS
# decide which tensors a view adapts and decays (StepOptions.views); PATH_OPTIONS
# choose the path (lars_cuda.plan.choose_path).
STEP_OPTIONS = tuple(f.name for f in dataclasses.fields(StepOptions))
SELECTION_OPTIONS = ("always_adapt", "decay_filter", "adaptation_filter")
PATH_OPTIONS = ("foreach", "fused")
LARS_OPTIONS = STEP_OPTIONS + SELECTION_OPTIONS + PATH_OPTIONS
# (a constant: torch.compile traces a step without calling dataclasses.fields)
_FIELDS = frozenset(STEP_OPTIONS)
