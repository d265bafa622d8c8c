"""The LAMB contract's float64 oracle (tests/support/reference.py, lamb_step_f64;
docs/semantics.md, "LAMB") against real ``timm.optim.Lamb`` in float64, on both of
timm's paths and every switch timm has, and against apex's FusedLAMB restated from
its source (benchmarks/originals.py) on every switch apex has: the oracle the coming ``lars_cuda.Lamb``
will be tested against is held to the original first."""

from __future__ import annotations

import sys

import pytest
import torch

from ..support.paths import BENCHMARKS
from ..support.reference import global_clip_f64, lamb_step_f64

sys.path.insert(0, BENCHMARKS)
from originals import ApexFusedLAMB  # noqa: E402

timm_lamb = pytest.importorskip("timm.optim.lamb")

SHAPES = [(7, 5), (5,), (3, 2, 2)]
STEPS = 4
# (timm's keyword arguments, the oracle's)
SWITCHES = {
    "defaults": ({}, {}),
    "no clipping": (dict(max_grad_norm=None), {}),
    "clipping binds": (dict(max_grad_norm=0.5), {}),
    "no decay, not adapted": (dict(weight_decay=0.0), dict(weight_decay=0.0)),
    "no decay, always adapted": (dict(weight_decay=0.0, always_adapt=True),
                                 dict(weight_decay=0.0, always_adapt=True)),
    "LAMBC trust clip": (dict(trust_clip=True), dict(trust_clip=True)),
    "decoupled decay": (dict(decoupled_decay=True, weight_decay=0.1), dict(decay_mode="decoupled", weight_decay=0.1)),
    "corrected decoupled decay": (dict(decoupled_decay=True, corrected_weight_decay=True, weight_decay=0.1),
                                  dict(decay_mode="decoupled", weight_decay=0.1, max_lr=0.02)),
    "no bias correction": (dict(bias_correction=False), dict(bias_correction=False)),
    "no grad averaging": (dict(grad_averaging=False), dict(grad_averaging=False)),
    "caution": (dict(caution=True), dict(caution=True)),
    "other betas and eps": (dict(betas=(0.8, 0.99), eps=1e-4), dict(betas=(0.8, 0.99), eps=1e-4)),
}


def _tensors(seed):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    params[1].zero_()  # a zero weight: ratio 1
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) * 3 for s in SHAPES] for _ in range(STEPS)]
    return params, grads


@pytest.mark.parametrize("foreach", [False, True], ids=["timm-loop", "timm-foreach"])
@pytest.mark.parametrize("switch", list(SWITCHES))
def test_the_lamb_oracle_steps_as_timm_lamb(switch, foreach):
    timm_kw, oracle_kw = SWITCHES[switch]
    params, grads = _tensors(0)
    lr = 0.02
    ours = [p.clone() for p in params]
    theirs = [torch.nn.Parameter(p.clone()) for p in params]
    opt = timm_lamb.Lamb(theirs, lr=lr, foreach=foreach, **timm_kw)
    max_grad_norm = timm_kw.get("max_grad_norm", 1.0)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    for t in range(1, STEPS + 1):
        clip = global_clip_f64(grads[t - 1], max_grad_norm)
        for i, (p, g) in enumerate(zip(ours, grads[t - 1])):
            m, v = moments[i]
            ours[i], m, v = lamb_step_f64(p, g, m, v, step=t, lr=lr, clip=clip, **oracle_kw)
            moments[i] = (m, v)
        for p, g in zip(theirs, grads[t - 1]):
            p.grad = g.clone()
        opt.step()
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-13, msg=f"param {i} after {STEPS} steps")
        torch.testing.assert_close(moments[i][0], opt.state[b]["exp_avg"], rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(moments[i][1], opt.state[b]["exp_avg_sq"], rtol=1e-12, atol=1e-13)


def test_the_global_clip_is_one_when_off_or_below_the_bound():
    g = [torch.full((4,), 0.5, dtype=torch.float64)]  # norm 1
    assert global_clip_f64(g, None) == 1.0 and global_clip_f64(g, 2.0) == 1.0
    assert global_clip_f64(g, 0.25) == pytest.approx(4.0)


APEX_SWITCHES = {
    "defaults (adam_w_mode: decay in the update)": ({}, {}),
    "L2 mode (decay in the gradient)": (dict(adam_w_mode=False), dict(decay_mode="grad")),
    "clipping binds": (dict(max_grad_norm=0.5), {}),
    "no decay, not adapted": (dict(weight_decay=0.0), dict(weight_decay=0.0)),
    "no decay, use_nvlamb": (dict(weight_decay=0.0, use_nvlamb=True), dict(weight_decay=0.0, always_adapt=True)),
    "no bias correction, no grad averaging": (dict(bias_correction=False, grad_averaging=False),
                                              dict(bias_correction=False, grad_averaging=False)),
}


@pytest.mark.parametrize("switch", list(APEX_SWITCHES))
def test_the_lamb_oracle_steps_as_apex_fused_lamb(switch):
    apex_kw, oracle_kw = APEX_SWITCHES[switch]
    params, grads = _tensors(1)
    lr = 0.02
    ours = [p.clone() for p in params]
    theirs = [torch.nn.Parameter(p.clone()) for p in params]
    opt = ApexFusedLAMB(theirs, lr=lr, **apex_kw)
    max_grad_norm = apex_kw.get("max_grad_norm", 1.0)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    for t in range(1, STEPS + 1):
        clip = global_clip_f64(grads[t - 1], max_grad_norm)
        for i, (p, g) in enumerate(zip(ours, grads[t - 1])):
            ours[i], m, v = lamb_step_f64(p, g, *moments[i], step=t, lr=lr, clip=clip, **oracle_kw)
            moments[i] = (m, v)
        for p, g in zip(theirs, grads[t - 1]):
            p.grad = g.clone()
        opt.step()
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-13, msg=f"param {i} after {STEPS} steps")
