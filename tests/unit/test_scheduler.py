"""PolynomialWarmup gives the contract's lr sequence (spec §3)."""

from __future__ import annotations

import math

import pytest
import torch

from lars_cuda import Lars, PolynomialWarmup


def expected_lr(k, b, D, W, end, power):
    if k < W:
        return b * k / W
    j = k - math.ceil(W)
    return (b - end) * (1 - min(j, D - W) / (D - W)) ** power + end


def lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
    return out


def _opt(lr=4.0):
    return Lars([torch.nn.Parameter(torch.ones(2))], lr=lr)


@pytest.mark.parametrize("W", [0, 3, 2.5, 0.3125])
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_sequence_matches_the_closed_form_including_past_the_end(W, power):
    opt = _opt()
    sched = PolynomialWarmup(opt, decay_steps=12, warmup_steps=W, end_lr=0.01, power=power)
    got = lrs(sched, opt, 20)
    want = [expected_lr(k, 4.0, 12, W, 0.01, power) for k in range(20)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert got[-1] == pytest.approx(0.01)


def test_first_step_runs_with_lr_zero_under_warmup():
    opt = _opt()
    PolynomialWarmup(opt, decay_steps=10, warmup_steps=2)
    assert opt.param_groups[0]["lr"] == 0.0


def test_fractional_warmup_starts_decay_at_the_ceiling():
    opt = _opt(1.0)
    sched = PolynomialWarmup(opt, decay_steps=10, warmup_steps=2.5, end_lr=0.0)
    got = lrs(sched, opt, 4)
    assert got[:3] == pytest.approx([0.0, 0.4, 0.8])
    assert got[3] == pytest.approx(1.0)  # k = 3 >= 2.5, j = 3 - 3 = 0


def test_state_dict_resumes_the_exact_sequence():
    opt = _opt()
    sched = PolynomialWarmup(opt, decay_steps=15, warmup_steps=4, end_lr=0.0, power=2.0)
    full = lrs(sched, opt, 12)

    opt2 = _opt()
    sched2 = PolynomialWarmup(opt2, decay_steps=15, warmup_steps=4, end_lr=0.0, power=2.0)
    first = lrs(sched2, opt2, 5)
    saved, saved_opt = sched2.state_dict(), opt2.state_dict()
    opt3 = _opt()
    opt3.load_state_dict(saved_opt)
    sched3 = PolynomialWarmup(opt3, decay_steps=15, warmup_steps=4, end_lr=0.0, power=2.0)
    sched3.load_state_dict(saved)
    opt3.param_groups[0]["lr"] = sched3.get_last_lr()[0]
    assert first + lrs(sched3, opt3, 7) == full


def test_tensor_lr_is_written_in_place():
    lr = torch.tensor(2.0)
    opt = Lars([torch.nn.Parameter(torch.ones(2))], lr=lr)
    sched = PolynomialWarmup(opt, decay_steps=10, warmup_steps=4)
    assert opt.param_groups[0]["lr"] is lr
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] is lr
    assert lr.item() == pytest.approx(2.0 * 3 / 4)


@pytest.mark.parametrize(
    "kwargs", [dict(decay_steps=0), dict(decay_steps=10, warmup_steps=-1), dict(decay_steps=10, power=0.0),
               dict(decay_steps=10, end_lr=-1.0), dict(decay_steps=math.inf)]
)
def test_invalid_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        PolynomialWarmup(_opt(), **kwargs)
