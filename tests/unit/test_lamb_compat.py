"""lars_cuda.compat's LAMB classes against their originals: real ``timm.optim.Lamb``
and apex's ``FusedLAMB`` restated from its source (benchmarks/originals.py; apex
needs a CUDA build). Every switch, both of our paths, two param groups; params,
moments and step counts must agree; state dicts move both ways mid-run; timm's
factory builds ours by name."""

from __future__ import annotations

import copy
import inspect
import sys

import pytest
import torch

from lars_cuda import Lamb, compat, ops

from ..support.paths import BENCHMARKS
from .test_lamb import default_dtype, record_paths
from .test_lamb_oracle import APEX_SWITCHES, SWITCHES

sys.path.insert(0, BENCHMARKS)
from originals import ApexFusedLAMB  # noqa: E402

timm_lamb = pytest.importorskip("timm.optim.lamb")

PATHS = {"loop": dict(foreach=False), "foreach": dict(foreach=True)}
SHAPES = [(16, 3, 3, 3), (10, 40), (16,), (7, 5), (12,)]
STEPS = 4
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-13), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def make_params(dtype):
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    ps[4].zero_()  # zero weight
    return ps


def grads_for(step, dtype):
    gen = torch.Generator().manual_seed(100 + step)
    gs = [(torch.randn(s, generator=gen, dtype=torch.float64) * 2).to(dtype) for s in SHAPES]
    gs[3].zero_()  # zero grad
    return gs


def two_groups(ps):
    return [dict(params=ps[:2] + ps[3:4]), dict(params=ps[2:3] + ps[4:], weight_decay=0.0)]


def train(make, dtype, steps=STEPS, first=0, params=None):
    params = params if params is not None else [torch.nn.Parameter(p.clone()) for p in make_params(dtype)]
    opt = make(two_groups(params))
    for step in range(first, first + steps):
        for p, g in zip(params, grads_for(step, dtype)):
            p.grad = g.clone()  # fresh: apex writes its update into p.grad
        opt.step()
    return params, opt


def assert_same(mine, theirs, opt_mine, opt_theirs, dtype):
    for i, (a, b) in enumerate(zip(mine, theirs)):
        torch.testing.assert_close(a.detach(), b.detach(), **TOL[dtype], msg=f"param {i}")
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt_mine.state[a][key], opt_theirs.state[b][key], **TOL[dtype])
    for ga, gb in zip(opt_mine.param_groups, opt_theirs.param_groups):
        assert float(ga["step"]) == float(gb["step"])


# ---- timm ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("switch", SWITCHES)
def test_timm_lamb_steps_exactly_like_timm(switch, path, dtype):
    kw, _ = SWITCHES[switch]
    theirs, opt_theirs = train(lambda g: timm_lamb.Lamb(g, lr=0.02, **kw), dtype)
    mine, opt_mine = train(lambda g: compat.TimmLamb(g, lr=0.02, **kw, **PATHS[path]), dtype)
    assert_same(mine, theirs, opt_mine, opt_theirs, dtype)
    assert isinstance(opt_mine.param_groups[0]["step"], torch.Tensor)


def test_timm_lamb_takes_timms_arguments_and_defaults():
    theirs = {k: v.default for k, v in inspect.signature(timm_lamb.Lamb).parameters.items()}
    mine = {k: v.default for k, v in inspect.signature(compat.TimmLamb).parameters.items()}
    assert mine == theirs


def test_timm_lamb_holds_timms_param_groups():
    p = [torch.nn.Parameter(torch.ones(3))]
    for kw in ({}, dict(decoupled_decay=True, corrected_weight_decay=True, lr=0.3),
               dict(decoupled_decay=True, corrected_weight_decay=True, lr=torch.tensor(0.3))):
        theirs = {k: v for k, v in timm_lamb.Lamb(p, **kw).param_groups[0].items() if k != "params"}
        mine = {k: v for k, v in compat.TimmLamb(p, **kw).param_groups[0].items() if k != "params"}
        assert mine == theirs


def test_timm_lamb_refuses_corrected_decay_without_a_positive_lr_as_timm_does():
    p = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(ValueError, match="Corrected weight decay requires a positive max lr"):
        timm_lamb.Lamb(p, lr=0.0, corrected_weight_decay=True)
    with pytest.raises(ValueError, match=r"^Corrected weight decay requires a positive max lr, got 0.0. Construct "
                                         r"the optimizer with the peak lr.$"):
        compat.TimmLamb(p, lr=0.0, corrected_weight_decay=True)


def test_timm_lamb_names_timms_option_in_an_error():
    with pytest.raises(ValueError, match=r"^Invalid max_lr_snapshot value: -1.0"):
        opt = compat.TimmLamb([torch.nn.Parameter(torch.ones(3))], decoupled_decay=True, corrected_weight_decay=True)
        opt.param_groups[0]["max_lr_snapshot"] = -1.0
        opt.param_groups[0]["params"][0].grad = torch.ones(3)
        opt.step()


@pytest.mark.parametrize("cls", [compat.TimmLamb, compat.FusedLAMB])
def test_a_drop_in_class_takes_the_path_its_foreach_and_a_groups_fused_key_ask_for(cls, monkeypatch):
    called = record_paths(monkeypatch)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    cls([p], foreach=False).step()
    cls([p], foreach=True).step()
    cls([dict(params=[p], fused=False)]).step()
    cls([dict(params=[p], fused=True)]).step()
    kernel = "fused" if ops.has_fused("cpu") else "foreach"
    assert called == ["loop", "foreach", "foreach", kernel]
    if cls is compat.FusedLAMB:  # (ours: apex has no such arguments)
        cls([p], fused=False).step()
        cls([p], fused=True).step()
        assert called[4:] == ["foreach", kernel]


@pytest.mark.parametrize("cls", [compat.TimmLamb, compat.FusedLAMB])
def test_a_drop_in_class_refuses_a_groups_fused_key_that_is_not_a_bool(cls):
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(TypeError, match="fused"):
        cls([dict(params=[p], fused="yes")])
    with pytest.raises(ValueError, match="foreach and fused cannot both be True"):
        cls([dict(params=[p], fused=True)], foreach=True)


@pytest.mark.parametrize("cls", [compat.TimmLamb, compat.FusedLAMB])
def test_a_drop_in_class_counts_steps_in_float32_whatever_the_default_dtype(cls):
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    with default_dtype(torch.float64):
        opt = cls([p], foreach=True)
        opt.step()
    step = opt.param_groups[0]["step"]
    assert (step.dtype == torch.float32) if cls is compat.TimmLamb else isinstance(step, int)


@pytest.mark.parametrize("done", [0, 2], ids=["fresh", "after two steps"])
@pytest.mark.parametrize("cls", [compat.TimmLamb, compat.FusedLAMB])
def test_a_drop_in_classs_trust_ratios_are_lambs_with_the_same_options(cls, done):
    """Their step counts live in the groups (timm's, apex's), Lamb's in the state."""
    ratios = []
    for make in (lambda g: cls(g, lr=0.02), lambda g: Lamb(g, lr=0.02)):
        params, opt = train(make, torch.float64, steps=done)
        for p, g in zip(params, grads_for(done, torch.float64)):
            p.grad = g
        ratios.append(opt.trust_ratios())
    assert len(ratios[0]) == 3  # (the first group: the params with weight decay)
    torch.testing.assert_close(ratios[0], ratios[1], rtol=0, atol=0)


@pytest.mark.parametrize("path", PATHS)
def test_timm_lamb_ignores_corrected_decay_without_decoupled_decay_as_timm_does(path):
    kw = dict(corrected_weight_decay=True, weight_decay=0.1)
    theirs, opt_theirs = train(lambda g: timm_lamb.Lamb(g, lr=0.02, **kw), torch.float64)
    mine, opt_mine = train(lambda g: compat.TimmLamb(g, lr=0.02, **kw, **PATHS[path]), torch.float64)
    assert_same(mine, theirs, opt_mine, opt_theirs, torch.float64)


@pytest.mark.parametrize("path", PATHS)
def test_timm_lamb_scales_decoupled_decay_by_lr_only_when_corrected_as_timm_does(path):
    """With decoupled decay the decay is lr*wd*p; only corrected_weight_decay scales it
    by lr/max_lr_snapshot (seen once a scheduler has moved the lr off the snapshot)."""
    for corrected in (False, True):
        kw = dict(decoupled_decay=True, corrected_weight_decay=corrected, weight_decay=0.1)

        def halved(opt):
            for group in opt.param_groups:
                group["lr"] = group["lr"] / 2
            return opt
        theirs, opt_theirs = train(lambda g: halved(timm_lamb.Lamb(g, lr=0.02, **kw)), torch.float64)
        mine, opt_mine = train(lambda g: halved(compat.TimmLamb(g, lr=0.02, **kw, **PATHS[path])), torch.float64)
        assert_same(mine, theirs, opt_mine, opt_theirs, torch.float64)


def test_timm_lamb_loads_an_older_timms_groups_with_timms_defaults():
    """An older timm's groups lack ``caution``, ``decoupled_decay``, ``corrected_weight_decay``
    and ``max_lr_snapshot``: they load with the defaults and step as timm does."""
    params, opt = train(lambda g: timm_lamb.Lamb(g, lr=0.02), torch.float32, steps=K)
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        for key in ("caution", "decoupled_decay", "corrected_weight_decay", "max_lr_snapshot"):
            del group[key]
    want, opt_want = train(lambda g: timm_lamb.Lamb(g, lr=0.02), torch.float32, steps=K + N)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    got, opt_got = train(lambda g: _loaded(compat.TimmLamb(g, lr=0.02), saved), torch.float32, steps=N, first=K,
                         params=resumed)
    assert_same(got, want, opt_got, opt_want, torch.float32)
    assert opt_got.param_groups[0]["caution"] is False and opt_got.param_groups[0]["max_lr_snapshot"] == 0.02


# ---- apex ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("switch", APEX_SWITCHES)
def test_fused_lamb_steps_exactly_like_apex(switch, path, dtype):
    kw, _ = APEX_SWITCHES[switch]
    theirs, opt_theirs = train(lambda g: ApexFusedLAMB(g, lr=0.02, **kw), dtype)
    mine, opt_mine = train(lambda g: compat.FusedLAMB(g, lr=0.02, **kw, **PATHS[path]), dtype)
    assert_same(mine, theirs, opt_mine, opt_theirs, dtype)
    assert opt_mine.param_groups[0]["step"] == STEPS and isinstance(opt_mine.param_groups[0]["step"], int)


def test_fused_lamb_takes_apexs_arguments_and_defaults():
    theirs = {k: v.default for k, v in inspect.signature(ApexFusedLAMB).parameters.items()}
    mine = {k: v.default for k, v in inspect.signature(compat.FusedLAMB).parameters.items()
            if k not in ("foreach", "fused")}
    assert mine == theirs


def test_fused_lamb_refuses_amsgrad_as_apex_does():
    with pytest.raises(RuntimeError, match=r"^FusedLAMB does not support the AMSGrad variant\.$"):
        compat.FusedLAMB([torch.nn.Parameter(torch.ones(3))], amsgrad=True)


def test_fused_lamb_sets_grads_to_none_by_default_as_apex_does():
    p = torch.nn.Parameter(torch.ones(3))
    opt = compat.FusedLAMB([p])
    p.grad = torch.ones(3)
    opt.zero_grad()
    assert p.grad is None


@pytest.mark.parametrize("set_grad_none", [True, False])
def test_fused_lamb_zero_grad_follows_set_grad_none(set_grad_none):
    p = torch.nn.Parameter(torch.ones(3))
    opt = compat.FusedLAMB([p], set_grad_none=set_grad_none)
    p.grad = torch.ones(3)
    opt.zero_grad()
    assert (p.grad is None) if set_grad_none else torch.equal(p.grad, torch.zeros(3))
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=not set_grad_none)  # an explicit argument wins
    assert (p.grad is None) if not set_grad_none else torch.equal(p.grad, torch.zeros(3))


def test_fused_lamb_does_not_write_into_the_grads():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 0.5)
    compat.FusedLAMB([p]).step()
    assert torch.equal(p.grad, torch.full((3,), 0.5))


# ---- switching mid-run, both ways -------------------------------------------------------------

K, N = 2, 3
ORIGINALS = {
    "timm": (lambda g: timm_lamb.Lamb(g, lr=0.02, decoupled_decay=True, max_grad_norm=0.5),
             lambda g, **path: compat.TimmLamb(g, lr=0.02, decoupled_decay=True, max_grad_norm=0.5, **path)),
    "apex": (lambda g: ApexFusedLAMB(g, lr=0.02, adam_w_mode=False, max_grad_norm=0.5),
             lambda g, **path: compat.FusedLAMB(g, lr=0.02, adam_w_mode=False, max_grad_norm=0.5, **path)),
}


def _switch(make_first, make_second):
    params, first = train(make_first, torch.float32, steps=K)
    saved = copy.deepcopy(first.state_dict())
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    return train(lambda g: _loaded(make_second(g), saved), torch.float32, steps=N, first=K, params=resumed)


def _loaded(opt, state):
    opt.load_state_dict(state)
    return opt


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ORIGINALS)
def test_switching_from_the_original_mid_run_continues_as_the_original_would(name, path):
    original, ours = ORIGINALS[name]
    want, opt_want = train(original, torch.float32, steps=K + N)
    got, opt_got = _switch(original, lambda g: ours(g, **PATHS[path]))
    assert_same(got, want, opt_got, opt_want, torch.float32)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ORIGINALS)
def test_switching_back_to_the_original_mid_run_continues_as_the_original_would(name, path):
    original, ours = ORIGINALS[name]
    want, opt_want = train(original, torch.float32, steps=K + N)
    got, opt_got = _switch(lambda g: ours(g, **PATHS[path]), original)
    assert_same(got, want, opt_got, opt_want, torch.float32)


@pytest.mark.parametrize("source,target,key", [
    (lambda ps: timm_lamb.Lamb(ps), lambda ps: Lamb(ps), "decoupled_decay"),
    (lambda ps: Lamb(ps), lambda ps: compat.TimmLamb(ps), "decay_mode"),
    (lambda ps: compat.TimmLars(ps, momentum=0.9), lambda ps: compat.TimmLamb(ps), "trust_coeff"),
    (lambda ps: compat.TimmLamb(ps), lambda ps: compat.TimmLars(ps), "betas"),
], ids=["timm-into-Lamb", "Lamb-into-timm", "timm-lars-into-timm-lamb", "timm-lamb-into-timm-lars"])
def test_a_state_dict_of_another_flavour_is_refused_naming_the_key(source, target, key):
    ps = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(ValueError, match=f"holds '{key}'"):
        target(ps).load_state_dict(source(ps).state_dict())


# ---- timm's factory ---------------------------------------------------------------------------

@pytest.mark.parametrize("ours,theirs", [("lcudalamb", "lamb"), ("lcudalambc", "lambc"), ("lcudalambw", "lambw"),
                                         ("lcudalambcw", "lambcw"), ("lcudaclamb", "clamb"),
                                         ("lcudaclambw", "clambw"), ("lcudalambcd", "lambcd")])
def test_timms_factory_builds_ours_by_name_and_it_steps_as_timms(ours, theirs):
    from timm.optim import create_optimizer_v2

    compat.register_timm()
    results = []
    for name in (ours, theirs):
        torch.manual_seed(0)
        # (no BatchNorm after a biased Linear: that bias has a zero gradient, rounding noise Adam amplifies)
        model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.LayerNorm(4),
                                    torch.nn.Linear(4, 2))
        opt = create_optimizer_v2(model, opt=name, lr=0.01, weight_decay=0.05)
        for step in range(3):
            torch.manual_seed(10 + step)
            opt.zero_grad()
            model(torch.randn(8, 6)).square().mean().backward()
            opt.step()
        results.append((type(opt), [p.detach().clone() for p in model.parameters()]))
    assert results[0][0] is compat.TimmLamb and results[1][0] is timm_lamb.Lamb
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


def test_the_lamb_names_take_no_other_librarys_entry():
    from timm.optim._optim_factory import default_registry

    assert "fusedlamb" not in compat.TIMM_LAMB_NAMES  # timm's name for apex's FusedLAMB
    compat.register_timm()
    assert default_registry.get_optimizer_info("fusedlamb").opt_class == "apex.optimizers.FusedLAMB"
