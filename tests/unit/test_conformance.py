"""The behaviours PyTorch's generic optimizer tests check, written for Lars and run
over every config of ``tests/support/optim_info.py`` and every path (loop, foreach, fused).
Oracles are independent of the code under test: the float64 restatement in
``tests/support/reference.py``, torch's own base-class contracts, or a second optimizer."""

from __future__ import annotations

import copy
import io
import os
import pickle
from unittest import mock

import pytest
import torch
from torch.nn import Parameter
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from lars_cuda import Lars, functional

from ..support.optim_info import LARS_OPTIM_INFO, lars_optim_inputs
from ..support.reference import lars_step_f64

PATHS = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
# benchmarks/gpu_check.sh runs this file again with LARS_TEST_DEVICE=cuda: the tests built on
# model_and_closure() then step CUDA tensors (the others stay on the CPU).
DEVICE = torch.device(os.environ.get("LARS_TEST_DEVICE", "cpu"))
CONFIGS = lars_optim_inputs("cpu")


def config_id(c):
    return c.desc.replace(" ", "-")


def with_path(kwargs, path):
    kwargs = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    return {**kwargs, **PATHS[path]}


def model_and_closure(seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)  # drawn in float32 so every dtype starts from the same values
    weight = Parameter(torch.randn(10, 5, generator=gen).to(dtype).to(DEVICE))
    bias = Parameter(torch.randn(10, generator=gen).to(dtype).to(DEVICE))
    x = torch.randn(5, generator=gen).to(dtype).to(DEVICE)

    def closure():
        for p in (weight, bias):
            p.grad = None
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss

    return weight, bias, closure


def run_steps(kwargs, n=5, seed=0, dtype=torch.float32, groups=None):
    weight, bias, closure = model_and_closure(seed, dtype)
    opt = Lars(groups(weight, bias) if groups else [weight, bias], **kwargs)
    for _ in range(n):
        opt.step(closure)
    return weight, bias, opt


# ---- every path steps as the float64 oracle -----------------------------------------------------


def oracle_steps(kwargs, n, seed=0):
    weight, bias, closure = model_and_closure(seed, torch.float64)
    bufs = {}
    kw = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()
          if k not in ("foreach", "fused")}
    for _ in range(n):
        closure()
        with torch.no_grad():
            for p in (weight, bias):
                new, bufs[p] = lars_step_f64(p, p.grad, bufs.get(p), **kw)
                p.copy_(new)
    return weight, bias


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_every_path_matches_the_float64_oracle_over_five_steps(config, path):
    weight, bias, _ = run_steps(with_path(config.kwargs, path))
    want_w, want_b = oracle_steps(config.kwargs, 5)
    torch.testing.assert_close(weight.detach().double().cpu(), want_w.detach().cpu(), rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(bias.detach().double().cpu(), want_b.detach().cpu(), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_foreach_and_fused_agree_with_the_loop(config):
    results = {path: run_steps(with_path(config.kwargs, path), n=4) for path in PATHS}
    ref_w, ref_b, ref_opt = results["loop"]
    for path in ("foreach", "fused"):
        w, b, opt = results[path]
        torch.testing.assert_close(w, ref_w, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(b, ref_b, rtol=1e-6, atol=1e-7)
        for p, q in zip((w, b), (ref_w, ref_b)):
            assert set(opt.state[p]) == set(ref_opt.state[q])
            if "momentum_buffer" in ref_opt.state[q]:
                torch.testing.assert_close(opt.state[p]["momentum_buffer"], ref_opt.state[q]["momentum_buffer"],
                                           rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_twenty_steps_go_the_right_direction(config, path):
    weight, bias, closure = model_and_closure()
    opt = Lars([weight, bias], **with_path(config.kwargs, path))
    initial = closure().item()
    for _ in range(20):
        opt.step(closure)
    final = closure().item()
    if config.kwargs.get("maximize"):
        assert final > initial
    else:
        assert final < initial


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("schedulers", LARS_OPTIM_INFO.scheduler_inputs, ids=["poly", "step", "both"])
def test_steps_with_schedulers_go_the_right_direction_and_follow_the_schedule(schedulers, path):
    weight, bias, closure = model_and_closure()
    opt = Lars([weight, bias], lr=0.5, eeta=0.05, momentum=0.9, **PATHS[path])
    scheds = [make(opt) for make in schedulers]
    initial = closure().item()
    lrs = []
    for _ in range(20):
        opt.step(closure)
        for s in scheds:
            s.step()
        lrs.append(float(opt.param_groups[0]["lr"]))
    assert closure().item() < initial
    assert lrs[-1] < 0.5  # every scheduler here ends below the base lr


@pytest.mark.parametrize("path", list(PATHS))
def test_param_groups_with_their_own_options_step_as_separate_optimizers(path):
    common = dict(lr=0.5, eeta=0.05, momentum=0.9, **PATHS[path])
    weight, bias, closure = model_and_closure()
    grouped = Lars([{"params": [weight], "lr": 0.3, "weight_decay": 0.1},
                    {"params": [bias], "lars": False, "lr": 0.01, "nesterov": True}], **common)
    w2, b2, closure2 = model_and_closure()
    separate = [Lars([w2], **dict(common, lr=0.3, weight_decay=0.1)),
                Lars([{"params": [b2], "lars": False}], **dict(common, lr=0.01, nesterov=True))]
    for _ in range(5):
        grouped.step(closure)
        closure2()
        for opt in separate:
            opt.step()
    assert torch.equal(weight, w2) and torch.equal(bias, b2)


@pytest.mark.parametrize("path", ["foreach", "fused"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_float64_and_float32_params_in_one_group_step_as_in_groups_of_their_own(config, path):
    """foreach splits a mixed group by compute type, fused=True sends float64 to foreach:
    either way each param steps as it would among params of its own dtype."""
    def run(mixed):
        w64, b64, closure64 = model_and_closure(0, torch.float64)
        w32, b32, closure32 = model_and_closure(1)
        kwargs = with_path(config.kwargs, path)
        opts = ([Lars([w64, b64, w32, b32], **kwargs)] if mixed
                else [Lars([w64, b64], **kwargs), Lars([w32, b32], **with_path(config.kwargs, path))])
        for _ in range(3):
            closure64()
            closure32()
            for opt in opts:
                opt.step()
        params = (w64, b64, w32, b32)
        bufs = [o.state[p]["momentum_buffer"] for p in params for o in opts if o.state.get(p)]
        return [t.detach().clone() for t in params], bufs

    (mixed, mixed_bufs), (alone, alone_bufs) = run(True), run(False)
    assert all(torch.equal(a, b) for a, b in zip(mixed, alone))
    assert len(mixed_bufs) == len(alone_bufs) and all(torch.equal(a, b) for a, b in zip(mixed_bufs, alone_bufs))


@pytest.mark.parametrize("path", ["loop", "foreach"])
@pytest.mark.parametrize("bad", ["shape", "dtype"])
def test_a_momentum_buffer_of_the_wrong_shape_or_dtype_is_refused(path, bad):
    a = Parameter(torch.ones(4))
    a.grad = torch.ones(4)
    opt = Lars([a], lr=0.1, momentum=0.9, **PATHS[path])
    opt.step()
    opt.state[a]["momentum_buffer"] = torch.zeros(5) if bad == "shape" else torch.zeros(4, dtype=torch.float64)
    before = a.detach().clone()
    with pytest.raises(ValueError, match="momentum_buffer of shape .* does not match its param"):
        opt.step()
    assert torch.equal(a.detach(), before)


# ---- tensor lr: every shape torch.optim accepts, on every path ------------------------------------


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)], ids=["0d", "1", "1x1"])
@pytest.mark.parametrize("lars_flag", [True, False])
def test_a_one_element_tensor_lr_of_any_shape_steps_like_the_float(shape, lars_flag, path):
    def groups(w, b):
        return [{"params": [w, b], "lars": lars_flag}]

    kwargs = dict(eeta=0.05, momentum=0.9, weight_decay=0.01, **PATHS[path])
    w_float, b_float, _ = run_steps(dict(kwargs, lr=0.1), groups=groups)
    w_tensor, b_tensor, _ = run_steps(dict(kwargs, lr=torch.full(shape, 0.1)), groups=groups)
    assert torch.equal(w_float, w_tensor) and torch.equal(b_float, b_tensor)


@pytest.mark.parametrize("path", list(PATHS))
def test_a_nan_tensor_lr_set_after_construction_is_refused_before_any_write(path):
    weight, bias, closure = model_and_closure()
    lr = torch.tensor(0.1)
    opt = Lars([weight, bias], lr=lr, momentum=0.9, **PATHS[path])
    closure()
    lr.fill_(float("nan"))
    before = [weight.detach().clone(), bias.detach().clone()]
    with pytest.raises(ValueError, match="Invalid learning rate: nan"):
        opt.step()
    assert torch.equal(weight, before[0]) and torch.equal(bias, before[1]) and not opt.state


# ---- a failed step changes nothing -------------------------------------------------------------


@pytest.mark.parametrize("path", list(PATHS))
def test_a_bad_buffer_in_a_later_group_leaves_every_group_unwritten(path):
    a, b, c = (Parameter(torch.randn(4, generator=torch.Generator().manual_seed(i))) for i in range(3))
    opt = Lars([{"params": [a, b]}, {"params": [c], "weight_decay": 0.1}], lr=0.1, momentum=0.9, **PATHS[path])
    for p in (a, b, c):
        p.grad = torch.ones(4)
    opt.step()
    opt.state[c]["momentum_buffer"] = torch.zeros(5)  # a corrupt state dict, say
    snapshot = {p: (p.detach().clone(), opt.state[p]["momentum_buffer"].clone()) for p in (a, b)}
    with pytest.raises(ValueError, match="momentum.buffer"):
        opt.step()
    for p, (value, buf) in snapshot.items():
        assert torch.equal(p.detach(), value)
        assert torch.equal(opt.state[p]["momentum_buffer"], buf)
    assert torch.equal(c.detach(), c.detach())  # c's own step was refused


@pytest.mark.parametrize("path", list(PATHS))
def test_a_failed_first_step_records_no_momentum_buffers(path):
    a, b = Parameter(torch.ones(3)), Parameter(torch.ones(2))
    lr = torch.tensor(0.1)
    opt = Lars([{"params": [a]}, {"params": [b], "lars": False}], lr=lr, momentum=0.9, **PATHS[path])
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    lr.fill_(-1.0)
    with pytest.raises(ValueError):
        opt.step()
    assert not opt.state


# ---- state_dict: a fixed point of load, deepcopy and pickle -------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_state_dict_is_a_fixed_point_of_load_deepcopy_and_pickle(config):
    _, _, opt = run_steps(with_path(config.kwargs, "fused"), n=2)
    sd = opt.state_dict()
    keys = [sorted(g) for g in sd["param_groups"]]

    weight, bias, _ = model_and_closure()
    fresh = Lars([weight, bias], lr=0.01)
    fresh.load_state_dict(sd)
    copies = [fresh, copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))]
    for _ in range(2):  # and again: nothing accumulates
        copies = [c if i == 0 else copy.deepcopy(c) for i, c in enumerate(copies)]
    for other in copies:
        other_sd = other.state_dict()
        assert [sorted(g) for g in other_sd["param_groups"]] == keys
        for g, h in zip(other_sd["param_groups"], sd["param_groups"]):
            for k in g:
                if isinstance(g[k], torch.Tensor):
                    assert torch.equal(g[k], h[k])
                else:
                    assert g[k] == h[k], k
    assert "differentiable" not in keys[0]


@pytest.mark.parametrize("path", list(PATHS))
def test_a_loaded_state_dict_continues_the_run_bit_for_bit(path):
    kwargs = dict(lr=0.5, eeta=0.05, momentum=0.9, weight_decay=0.01, **PATHS[path])
    weight, bias, closure = model_and_closure()
    opt = Lars([weight, bias], **kwargs)
    for _ in range(3):
        opt.step(closure)
    w2 = Parameter(weight.detach().clone())  # same device
    b2 = Parameter(bias.detach().clone())
    opt2 = Lars([w2, b2], **kwargs)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    x = torch.randn(5, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    for _ in range(3):
        for w, b, o in ((weight, bias, opt), (w2, b2, opt2)):
            o.zero_grad()
            (w.mv(x) + b).pow(2).sum().backward()
            o.step()
    assert torch.equal(weight, w2) and torch.equal(bias, b2)


def test_state_dict_saves_and_loads_with_weights_only():
    _, _, opt = run_steps(dict(lr=torch.tensor(0.5), eeta=0.05, momentum=0.9), n=2)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    weight, bias, _ = model_and_closure()
    fresh = Lars([weight, bias], lr=0.1)
    fresh.load_state_dict(loaded)
    assert torch.equal(fresh.param_groups[0]["lr"], torch.tensor(0.5))


def test_a_state_dict_from_before_maximize_existed_loads_with_maximize_off():
    _, _, opt = run_steps(dict(lr=0.5, eeta=0.05, momentum=0.9), n=1)
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        for key in ("maximize", "foreach", "fused"):
            del g[key]
    weight, bias, _ = model_and_closure()
    fresh = Lars([weight, bias], lr=0.1)
    fresh.load_state_dict(sd)
    group = fresh.param_groups[0]
    assert group["maximize"] is False and group["foreach"] is None and group["fused"] is None


def test_deepcopy_copies_every_public_attribute():
    _, _, opt = run_steps(dict(lr=0.5, eeta=0.05, momentum=0.9), n=2)
    clone = copy.deepcopy(opt)
    public = {k for k in vars(opt) if not k.startswith("_")}
    assert public == {k for k in vars(clone) if not k.startswith("_")}
    assert clone.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_the_optimizer_can_be_printed():
    text = repr(Lars([Parameter(torch.ones(2))], lr=0.1, maximize=True))
    assert "Lars (" in text and "maximize: True" in text and "eeta: 0.001" in text


# ---- hooks (from torch.optim.Optimizer) ---------------------------------------------------------


def test_step_pre_and_post_hooks_run_in_order_and_can_be_removed():
    weight, bias, closure = model_and_closure()
    opt = Lars([weight, bias], lr=0.1)
    calls = []
    h1 = opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    h2 = opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    g1 = register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global-pre"))
    g2 = register_optimizer_step_post_hook(lambda o, a, k: calls.append("global-post"))
    try:
        opt.step(closure)
    finally:
        g1.remove()
        g2.remove()
    assert calls == ["global-pre", "pre", "post", "global-post"]
    h1.remove()
    h2.remove()
    opt.step(closure)
    assert calls == ["global-pre", "pre", "post", "global-post"]


def test_state_dict_hooks_and_load_state_dict_hooks_run():
    weight, bias, closure = model_and_closure()
    opt = Lars([weight, bias], lr=0.1, momentum=0.9)
    opt.step(closure)
    seen = []
    opt.register_state_dict_pre_hook(lambda o: seen.append("sd-pre"))

    def post(o, sd):
        sd["extra"] = 1
        seen.append("sd-post")
        return sd

    opt.register_state_dict_post_hook(post)
    sd = opt.state_dict()
    assert sd["extra"] == 1

    def load_pre(o, sd):
        seen.append("load-pre")
        sd = dict(sd)
        sd.pop("extra")
        sd["param_groups"] = [dict(g, lr=0.25) for g in sd["param_groups"]]
        return sd

    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load-post"))
    opt.load_state_dict(sd)
    assert seen == ["sd-pre", "sd-post", "load-pre", "load-post"]
    assert opt.param_groups[0]["lr"] == 0.25


# ---- grads: none, zero, zero_grad ---------------------------------------------------------------


@pytest.mark.parametrize("path", list(PATHS))
def test_a_step_without_grads_changes_nothing(path):
    weight, bias, _ = model_and_closure()
    opt = Lars([weight, bias], lr=0.1, momentum=0.9, weight_decay=0.1, **PATHS[path])
    before = [weight.detach().clone(), bias.detach().clone()]
    opt.step()
    assert torch.equal(weight, before[0]) and torch.equal(bias, before[1]) and not opt.state


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("config", [c for c in CONFIGS if not c.kwargs.get("weight_decay")], ids=config_id)
def test_zero_grads_without_weight_decay_change_no_param(config, path):
    weight, bias, _ = model_and_closure()
    opt = Lars([weight, bias], **with_path(config.kwargs, path))
    before = [weight.detach().clone(), bias.detach().clone()]
    for p in (weight, bias):
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(weight, before[0]) and torch.equal(bias, before[1])  # on DEVICE


def test_zero_grad_sets_grads_to_none_or_zero():
    weight, bias, closure = model_and_closure()
    opt = Lars([weight, bias], lr=0.1)
    closure()
    opt.zero_grad()
    assert weight.grad is None and bias.grad is None
    closure()
    opt.zero_grad(set_to_none=False)
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_a_closure_is_called_once_and_its_loss_returned():
    weight, bias, closure = model_and_closure()
    calls = []

    def counted():
        calls.append(1)
        return closure()

    opt = Lars([weight, bias], lr=0.1)
    loss = opt.step(counted)
    assert len(calls) == 1 and isinstance(loss, torch.Tensor)


# ---- maximize ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("lars_flag", [True, False])
def test_maximize_steps_as_minimising_the_negated_gradient(path, lars_flag):
    def run(maximize, sign):
        a = Parameter(torch.linspace(-1, 2, 7))
        opt = Lars([{"params": [a], "lars": lars_flag}], lr=0.3, eeta=0.05, momentum=0.9, weight_decay=0.01,
                   maximize=maximize, **PATHS[path])
        for i in range(3):
            a.grad = sign * torch.linspace(0.5, -1.5, 7) * (i + 1)
            opt.step()
        return a.detach(), opt.state[a]["momentum_buffer"]

    (a_max, buf_max), (a_neg, buf_neg) = run(True, 1.0), run(False, -1.0)
    assert torch.equal(a_max, a_neg) and torch.equal(buf_max, buf_neg)


def test_maximize_with_grad_scaler_on_the_fused_path_matches_the_oracle():
    a = Parameter(torch.linspace(-1, 2, 7))
    g = torch.linspace(0.5, -1.5, 7)
    opt = Lars([a], lr=0.3, eeta=0.05, momentum=0.9, weight_decay=0.01, maximize=True, fused=True)
    a.grad = g * 512.0
    opt.grad_scale, opt.found_inf = torch.tensor(512.0), torch.tensor(0.0)
    opt.step()
    want, _ = lars_step_f64(torch.linspace(-1, 2, 7), g, None, lr=0.3, eeta=0.05, momentum=0.9,
                            weight_decay=0.01, maximize=True)
    torch.testing.assert_close(a.detach().double(), want, rtol=1e-6, atol=1e-7)


# ---- params the default path must take -----------------------------------------------------------


@pytest.mark.parametrize("path", [*PATHS, "default"])
def test_a_strided_view_param_steps_like_its_contiguous_copy(path):
    kwargs = PATHS.get(path, {})
    view = Parameter(torch.randn(10, 5, 2, generator=torch.Generator().manual_seed(1))[..., 0])
    dense = Parameter(view.detach().clone())
    assert not view.is_contiguous()
    results = []
    for p in (view, dense):
        opt = Lars([p], lr=0.3, eeta=0.05, momentum=0.9, weight_decay=0.01, **kwargs)
        for i in range(3):
            p.grad = torch.ones_like(p) * (i + 1) + p.detach()
            opt.step()
        results.append((p.detach().clone(), opt.state[p]["momentum_buffer"].clone()))
    if path in ("fused", "default"):  # the kernel steps a dense copy: the same sums in the same order
        assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    else:  # torch's norm of a strided view may sum in another order
        torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("path", list(PATHS))
def test_mixed_dtypes_in_one_group_each_step_as_their_own_dtype(path):
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    params = [Parameter(torch.linspace(-1, 1, 9).to(d)) for d in dtypes]
    for p in params:
        p.grad = torch.linspace(0.3, -0.2, 9).to(p.dtype)
    opt = Lars(params, lr=0.2, eeta=0.05, momentum=0.9, weight_decay=0.01, **PATHS[path])
    opt.step()
    for p in params:
        want, _ = lars_step_f64(torch.linspace(-1, 1, 9).to(p.dtype), p.grad, None, lr=0.2, eeta=0.05,
                                momentum=0.9, weight_decay=0.01)
        tol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(p.dtype, 1e-2)
        torch.testing.assert_close(p.detach().double(), want.to(p.dtype).double(), rtol=tol, atol=tol)


# ---- path selection as torch.optim.SGD's ---------------------------------------------------------


@pytest.mark.parametrize(
    "flags, want",
    [
        (dict(), "fused"),
        (dict(foreach=False), "single"),
        (dict(foreach=False, fused=False), "single"),
        (dict(foreach=True), "foreach"),
        (dict(fused=False), "foreach"),
        (dict(fused=True), "fused"),
        (dict(foreach=False, fused=True), "fused"),
    ],
    ids=lambda v: str(v),
)
def test_path_selection_matches_torch_sgd(flags, want):
    a = Parameter(torch.ones(3))
    a.grad = torch.ones(3)
    opt = Lars([a], lr=0.1, **flags)
    spies = {
        "single": mock.patch.object(functional, "single_tensor_lars", wraps=functional.single_tensor_lars),
        "foreach": mock.patch.object(functional, "multi_tensor_lars", wraps=functional.multi_tensor_lars),
        "fused": mock.patch.object(functional.ops, "fused_lars_groups_", wraps=functional.ops.fused_lars_groups_),
    }
    with spies["single"] as single, spies["foreach"] as foreach, spies["fused"] as fused:
        opt.step()
    called = {name for name, spy in (("single", single), ("foreach", foreach), ("fused", fused)) if spy.called}
    assert called == {want}


def test_every_fused_group_goes_into_one_op_call():
    groups = [{"params": [Parameter(torch.ones(3))]}, {"params": [Parameter(torch.ones(2))], "lars": False},
              {"params": [Parameter(torch.ones(4))], "momentum": 0.0}]
    for g in groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    opt = Lars(groups, lr=0.1, momentum=0.9)
    with mock.patch.object(functional.ops, "fused_lars_groups_", wraps=functional.ops.fused_lars_groups_) as spy:
        opt.step()
    assert spy.call_count == 1
    assert list(spy.call_args.args[3]) == [1, 1, 1]


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("error_input", LARS_OPTIM_INFO.optim_error_inputs_func("cpu", torch.float32),
                         ids=lambda e: e.optimizer_error_input.desc.replace(" ", "-"))
def test_documented_errors(error_input):
    oi = error_input.optimizer_error_input
    params = oi.params if oi.params is not None else [Parameter(torch.randn(2, 2))]
    if error_input.error_type is UserWarning:
        with pytest.warns(UserWarning, match=error_input.error_regex):
            Lars(params, **oi.kwargs)
        return
    with pytest.raises(error_input.error_type, match=error_input.error_regex):
        Lars(params, **oi.kwargs)


# ---- AMP (GradScaler hands the fused kernel grad_scale and found_inf) ----------------------------


def test_the_fused_step_is_skipped_when_found_inf_is_set():
    a = Parameter(torch.ones(2, 2))
    a.grad = torch.ones(2, 2)
    opt = Lars([a], lr=0.1, momentum=0.9, fused=True)
    opt.grad_scale, opt.found_inf = torch.ones(1), torch.ones(())
    opt.step()
    assert torch.equal(a.detach(), torch.ones(2, 2))


def test_the_seeds_grouping_steps_in_one_op_call():
    from lars_cuda import create_optimizer_lars

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt = create_optimizer_lars(model, lr=0.1, momentum=0.9, weight_decay=1e-4, bn_bias_separately=True)
    with mock.patch.object(functional.ops, "fused_lars_groups_", wraps=functional.ops.fused_lars_groups_) as spy:
        opt.step()
    assert spy.call_count == 1 and list(spy.call_args.args[3]) == [1, 3]  # conv weight | conv bias, bn weight+bias
