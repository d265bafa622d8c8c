"""Which path a step runs (torch.optim.SGD's rules: ``fused``, ``foreach``, else
the kernel where it serves every tensor), the one warning when the kernel cannot
serve, and what the planner does with groups, fresh buffers and GradScaler's
tensors. Also ``Lars.trust_ratios`` over groups and flavours."""

from __future__ import annotations

import warnings
from unittest import mock

import pytest
import torch

import lars_cuda
from lars_cuda import compat, functional, ops, plan

needs_kernel = pytest.mark.skipif(not ops.has_fused(torch.device("cpu")), reason="the compiled kernel is not built")


def _group(fused=None, foreach=None):
    return {"fused": fused, "foreach": foreach}


def _t(dtype=torch.float32, device="cpu"):
    return torch.ones(2, dtype=dtype, device=device)


@pytest.mark.parametrize("fused, foreach, dtypes, expected", [
    (None, None, [torch.float32], "fused"),
    (None, None, [torch.float32, torch.float16, torch.bfloat16], "fused"),  # every kernel dtype at once
    (None, None, [torch.float32, torch.float64], "foreach"),
    (None, True, [torch.float32], "foreach"),
    (None, False, [torch.float32], "single"),
    (False, None, [torch.float32], "foreach"),
    (False, False, [torch.float32], "single"),
    (True, None, [torch.float32], "fused"),
    (True, None, [torch.float64], "fused"),  # (the planner sends float64 to foreach beside it)
])
@needs_kernel
def test_the_path_follows_torch_sgds_rules(fused, foreach, dtypes, expected):
    assert plan.choose_path(_group(fused, foreach), [_t(d) for d in dtypes]) == expected


def test_params_on_two_devices_run_the_loop_unless_a_path_is_asked_for():
    params = [_t(), _t(device="meta")]
    assert plan.choose_path(_group(), params) == "single"
    assert plan.choose_path(_group(foreach=True), params) == "foreach"  # (then refused by check_path)


def test_fused_true_on_a_device_without_a_kernel_is_fused_for_the_check_to_refuse():
    assert plan.choose_path(_group(fused=True), [_t(device="meta")]) == "fused"
    with pytest.raises(RuntimeError, match=r"^fused=True: the lars_cuda kernel is not built for meta$"):
        lars_cuda.validation.check_path("fused", [_t(device="meta")], [], 0.1)


def test_an_empty_list_is_fused_by_default():
    assert plan.choose_path(_group(), []) == "fused"


@pytest.fixture
def kernel_cannot_run(monkeypatch):
    """A device the kernel is built for but cannot run on (a card without code for it)."""
    monkeypatch.setattr(plan, "_WARNED_UNAVAILABLE", set())
    monkeypatch.setattr(ops, "fused_runs_on", lambda device: False)
    monkeypatch.setattr(ops, "has_fused", lambda device: True)
    monkeypatch.setattr(ops, "fused_unavailable", lambda device: f"WHY({device})")


def _step_warnings(**path):
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = lars_cuda.Lars([p], lr=0.1, **path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        opt.step()  # the line a warning must point at
        line = __import__("inspect").currentframe().f_lineno - 1
    return [w for w in record if issubclass(w.category, RuntimeWarning)], line


@pytest.mark.parametrize("path, prefix", [(dict(fused=True), "fused=True was asked for, but "), (dict(), "")])
def test_a_kernel_that_cannot_run_warns_once_and_the_step_runs_foreach(kernel_cannot_run, path, prefix):
    with mock.patch.object(functional, "multi_tensor_lars", wraps=functional.multi_tensor_lars) as multi:
        record, line = _step_warnings(**path)
    assert multi.called
    assert [str(w.message) for w in record] == [
        f"lars_cuda: {prefix}WHY(cpu); Lars runs the foreach path on cpu instead (same math, slower)"]
    assert _step_warnings(**path)[0] == []  # once per device and process


@pytest.mark.parametrize("path", [dict(fused=True), dict()])
def test_the_warning_points_at_the_users_step_line(kernel_cannot_run, path):
    record, line = _step_warnings(**path)
    assert (record[0].filename, record[0].lineno) == (__file__, line)


def test_the_warning_of_a_fused_request_and_of_the_default_are_each_given_once(kernel_cannot_run):
    assert len(_step_warnings(fused=True)[0]) == 1
    assert len(_step_warnings()[0]) == 1


# ---- the planner ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [dict(fused=True), dict(foreach=True), dict(foreach=False)])
def test_a_group_without_grads_does_not_stop_the_next_group(path):
    idle, busy = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    busy.grad = torch.ones(3)
    lars_cuda.Lars([dict(params=[idle]), dict(params=[busy])], lr=0.1, **path).step()
    assert not torch.equal(busy.detach(), torch.ones(3))
    assert torch.equal(idle.detach(), torch.ones(3))


@pytest.mark.parametrize("path", [dict(foreach=True), dict(foreach=False), dict(fused=False)])
@pytest.mark.parametrize("which", ["grad_scale", "found_inf"])
def test_either_gradscaler_tensor_off_the_fused_path_is_refused(path, which):
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = lars_cuda.Lars([p], lr=0.1, **path)
    setattr(opt, which, torch.tensor(1.0 if which == "grad_scale" else 0.0))
    with pytest.raises(ValueError, match=r"^grad_scale/found_inf are only supported by the fused path$"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3))


@pytest.mark.parametrize("path", [dict(fused=True), dict(foreach=True), dict(foreach=False)])
def test_dampening_with_old_and_fresh_buffers_in_one_group_steps_both_as_sgd(path):
    # a param without a grad on the first step gets its buffer on the second, beside an old one
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(4)) for _ in range(2)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = lars_cuda.Lars([dict(params=ours, lars=False)], lr=0.1, momentum=0.9, dampening=0.3, update_clip=None,
                         **path)
    sgd = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, dampening=0.3)
    for step in range(3):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            g = torch.randn(4) if (step > 0 or i == 0) else None
            a.grad, b.grad = g, g
        opt.step()
        sgd.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt.state[a]["momentum_buffer"], sgd.state[b]["momentum_buffer"])


# ---- trust ratios ------------------------------------------------------------------------------------------------


def _params(seed=0, shapes=((4, 3), (5,), (2, 2))):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen)
    return ps


def _seed_ratio(p, g, eeta, wd, eps=0.0):
    w, n = p.detach().double().norm(), g.double().norm()
    return eeta * w / (n + wd * w + eps)


def test_trust_ratios_skip_a_group_without_lars_and_go_on():
    ps = _params()
    opt = lars_cuda.Lars([dict(params=ps[:1], lars=False), dict(params=ps[1:])], lr=0.1, weight_decay=0.01,
                         eeta=0.02)
    want = torch.stack([_seed_ratio(p, p.grad, 0.02, 0.01) for p in ps[1:]]).float()
    torch.testing.assert_close(opt.trust_ratios(), want)


def test_trust_ratios_without_any_grad_are_empty():
    ps = _params()
    for p in ps:
        p.grad = None
    out = lars_cuda.Lars(ps, lr=0.1).trust_ratios()
    assert out.shape == (0,) and out.dtype == torch.float32


@pytest.mark.parametrize("lr", [0.5, 4.0, torch.tensor(0.5)])
def test_larc_trust_ratios_are_clipped_by_the_lr(lr):
    # apex LARC: r = min(tc*|p| / (|g| + wd|p| + eps) / lr, 1)
    ps = _params()
    opt = compat.LARC(torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=1e-3), trust_coefficient=0.02)
    want = torch.stack([torch.clamp(_seed_ratio(p, p.grad, 0.02, 1e-3, 1e-8) / float(lr), max=1.0)
                        for p in ps]).float()
    torch.testing.assert_close(opt.trust_ratios(), want)


def test_ssl_trust_ratios_divide_the_gradient_by_grad_scale_inside_the_update_norm():
    # SSL: r = eta*|p| / |g + wd p| needs <g, p>, which scales with the gradient too
    ps = _params()
    opt = compat.SSLLars(ps, lr=0.5, weight_decay=0.1, weight_decay_filter=False, lars_adaptation_filter=False)
    plain = opt.trust_ratios()
    for p in ps:
        p.grad = p.grad * 64.0
    torch.testing.assert_close(opt.trust_ratios(grad_scale=64.0), plain)
    want = torch.stack([0.001 * p.detach().norm() / (p.grad / 64.0 + 0.1 * p.detach()).norm() for p in ps])
    torch.testing.assert_close(plain, want)


@pytest.mark.parametrize("scale", [0.0, -2.0, float("inf"), float("nan"), torch.tensor(0.0)])
def test_trust_ratios_refuse_a_grad_scale_that_is_not_positive_and_finite(scale):
    with pytest.raises(ValueError) as info:
        lars_cuda.Lars(_params(), lr=0.1).trust_ratios(grad_scale=scale)
    assert str(info.value) == f"grad_scale must be a positive finite number, got {float(scale)}"


def test_the_loop_steps_a_group_on_two_devices():
    # foreach=False is torch's answer to params on several devices (meta: a second device without a GPU)
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3, device="meta"))]
    for p in params:
        p.grad = torch.ones_like(p)
    lars_cuda.Lars(params, lr=0.1, momentum=0.9, foreach=False).step()
    assert not torch.equal(params[0].detach(), torch.ones(3)) and params[1].device.type == "meta"
