"""An ``OptimizerInfo`` for :class:`lars_cuda.Lars`, in the form PyTorch's generic
optimizer tests (``TestOptimRenewed`` in pytorch's test/test_optim.py) are driven by,
built from the classes the installed torch ships. ``tests/unit/test_conformance.py`` runs
our own tests of those generic behaviours against it."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import StepLR
from torch.testing._internal.common_optimizers import (
    ErrorOptimizerInput,
    OptimizerErrorEnum,
    OptimizerInfo,
    OptimizerInput,
    get_error_inputs_for_all_optims,
)

from lars_cuda import Lars, PolynomialWarmup


def lars_optim_inputs(device, dtype=None):
    """Realistic configs (no foreach/fused flags: tests add those). Every config sets
    lr (Lars requires one) and a trust coefficient big enough that 20 steps move a
    small problem visibly."""
    base = dict(lr=0.5, eeta=0.05)
    return [
        OptimizerInput(params=None, kwargs=dict(base), desc="seed defaults (clips 50 and 10)"),
        OptimizerInput(params=None, kwargs=dict(base, lr=torch.tensor(0.5)), desc="tensor lr"),
        OptimizerInput(params=None, kwargs=dict(base, weight_decay=0.05), desc="weight_decay"),
        OptimizerInput(params=None, kwargs=dict(base, momentum=0.9), desc="momentum"),
        OptimizerInput(params=None, kwargs=dict(base, momentum=0.9, weight_decay=0.05, nesterov=True),
                       desc="nesterov"),
        OptimizerInput(params=None, kwargs=dict(base, momentum=0.9, weight_decay=0.05, maximize=True),
                       desc="maximize"),
        OptimizerInput(params=None, kwargs=dict(base, momentum=0.9, trust_clip=None, update_clip=None),
                       desc="no clips"),
        OptimizerInput(params=None, kwargs=dict(base, momentum=0.9, weight_decay=0.05, epsilon=1e-3),
                       desc="epsilon"),
        OptimizerInput(params=None, kwargs=dict(base, momentum=0.9, trust_clip=0.01, update_clip=0.05),
                       desc="tight clips"),
    ]


def lars_optim_error_inputs(device, dtype):
    """torch's error inputs for every optimizer (given an lr), then Lars's own."""
    inputs = []
    for e in get_error_inputs_for_all_optims(device, dtype):
        kwargs = dict(e.optimizer_error_input.kwargs)
        kwargs.setdefault("lr", 0.1)
        inputs.append(ErrorOptimizerInput(
            OptimizerInput(params=e.optimizer_error_input.params, kwargs=kwargs, desc=e.optimizer_error_input.desc),
            error_on=e.error_on, error_type=e.error_type, error_regex=e.error_regex))

    def bad(kwargs, error_type, regex, desc, error_on=OptimizerErrorEnum.CONSTRUCTION_ERROR):
        return ErrorOptimizerInput(OptimizerInput(params=None, kwargs=kwargs, desc=desc),
                                   error_on=error_on, error_type=error_type, error_regex=regex)

    inputs += [
        bad(dict(), TypeError, "needs a learning rate", "no lr"),
        bad(dict(lr=-0.1), ValueError, "Invalid learning rate: -0.1", "negative lr"),
        bad(dict(lr=float("nan")), ValueError, "Invalid learning rate", "nan lr"),
        bad(dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element", "two-element lr"),
        bad(dict(lr=torch.tensor(1, dtype=torch.int64)), TypeError, "floating point", "integer lr tensor"),
        bad(dict(lr="0.1"), TypeError, "lr must be a float", "string lr"),
        bad(dict(lr=0.1, momentum=-0.5), ValueError, "Invalid momentum value: -0.5", "negative momentum"),
        bad(dict(lr=0.1, weight_decay=-1.0), ValueError, "Invalid weight_decay value", "negative weight_decay"),
        bad(dict(lr=0.1, epsilon=-1.0), ValueError, "Invalid epsilon value", "negative epsilon"),
        bad(dict(lr=0.1, eeta=0.0), ValueError, "Invalid eeta", "zero eeta"),
        bad(dict(lr=0.1, eeta=2.0), ValueError, "Invalid eeta", "eeta above 1"),
        bad(dict(lr=0.1, trust_clip=-1.0), ValueError, "Invalid trust_clip", "negative trust_clip"),
        bad(dict(lr=0.1, update_clip=float("nan")), ValueError, "Invalid update_clip", "nan update_clip"),
        bad(dict(lr=0.1, nesterov=True), ValueError, "Nesterov momentum requires a nonzero momentum",
            "nesterov without momentum"),
        bad(dict(lr=0.1, foreach=True, fused=True), ValueError, "foreach and fused cannot both be True",
            "foreach and fused"),
        bad(dict(lr=0.1, maximize=1), TypeError, "maximize must be a bool", "maximize not a bool"),
        bad(dict(lr=0.1, momentum="0.9"), TypeError, "momentum must be a real number", "string momentum"),
    ]
    return inputs


LARS_SCHEDULERS = [
    lambda opt: PolynomialWarmup(opt, decay_steps=20, warmup_steps=3),
    lambda opt: StepLR(opt, gamma=0.9, step_size=5),
]

LARS_OPTIM_INFO = OptimizerInfo(
    Lars,
    optim_inputs_func=lars_optim_inputs,
    optim_error_inputs_func=lars_optim_error_inputs,
    scheduler_inputs=([LARS_SCHEDULERS[0]], [LARS_SCHEDULERS[1]], LARS_SCHEDULERS),
    supported_impls=("foreach", "fused"),
    not_og_supported_flags=("foreach", "fused", "maximize"),
    supports_fused_on=("cpu", "cuda"),
    supports_complex=False,
    supports_sparse=False,
)
