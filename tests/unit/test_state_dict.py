"""Saving and loading optimizer and scheduler state continues bit for bit."""

from __future__ import annotations

import io

import torch

from lars_cuda import Lars, PolynomialWarmup, create_optimizer_lars


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _train(model, opt, sched, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen)
        y = torch.randint(0, 2, (16,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()


def _make(model, path):
    opt = create_optimizer_lars(model, lr=2.0, momentum=0.9, weight_decay=1e-4, bn_bias_separately=True,
                                eeta=0.01, **path)
    return opt, PolynomialWarmup(opt, decay_steps=20, warmup_steps=2.5, end_lr=0.0, power=2.0)


def test_state_dict_round_trip_continues_bit_identically(path):
    ref = _model()
    opt, sched = _make(ref, path)
    _train(ref, opt, sched, 5, seed=1)
    _train(ref, opt, sched, 5, seed=2)

    resumed = _model()
    opt2, sched2 = _make(resumed, path)
    _train(resumed, opt2, sched2, 5, seed=1)
    buffer = io.BytesIO()
    torch.save({"model": resumed.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    fresh = _model()
    opt3, sched3 = _make(fresh, path)
    fresh.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    sched3.load_state_dict(saved["sched"])
    _train(fresh, opt3, sched3, 5, seed=2)

    for a, b in zip(ref.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt3.param_groups]


def test_sgd_state_dict_with_momentum_buffers_loads_into_lars():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.randn(5)
    sgd.step()
    lars = Lars([p], lr=0.1, momentum=0.9)
    lars.load_state_dict(sgd.state_dict())
    assert torch.equal(lars.state[p]["momentum_buffer"], sgd.state[p]["momentum_buffer"])
    group = lars.param_groups[0]
    assert group["eeta"] == 1e-3 and group["lars"] is True and group["trust_clip"] == 50.0
    p.grad = torch.randn(5)
    lars.step()  # the loaded groups are complete enough to step


def test_loaded_buffers_follow_the_param_dtype():
    p = torch.nn.Parameter(torch.randn(4).bfloat16())
    opt = Lars([p], lr=0.1, momentum=0.9)
    state = {"state": {0: {"momentum_buffer": torch.ones(4)}}, "param_groups": opt.state_dict()["param_groups"]}
    opt.load_state_dict(state)
    assert opt.state[p]["momentum_buffer"].dtype == torch.bfloat16
