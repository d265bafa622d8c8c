"""lars_cuda.compat against the originals: real ``timm.optim.Lars``, and apex's
LARC and the self-supervised repos' LARS restated below line for line (apex is
not installable here; the SSL LARS lives in training scripts, not packages).
Every path, two param groups, a zero-grad and a zero-weight param, several
steps; params and momentum buffers must agree."""

from __future__ import annotations

import functools
import itertools
import sys

import pytest
import torch

from lars_cuda import compat

from ..support.compiled import assert_compiled_step_matches_eager
from ..support.paths import BENCHMARKS

sys.path.insert(0, BENCHMARKS)
from originals import SSLLARS, ApexLARC, BoltsLARS, SoloLARS  # noqa: E402

PATHS = {"fused": dict(fused=True), "foreach": dict(foreach=True, fused=False),
         "reference": dict(foreach=False, fused=False)}
TOL = dict(rtol=2e-6, atol=1e-7)
STEPS = 3


# ---- the shared harness ---------------------------------------------------------------

def make_params():
    """Two groups' worth: a conv weight, a linear weight, a bias, a zero-grad and a
    zero-weight tensor (the branches where a norm is 0)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 3, 3, 3), (10, 40), (16,), (7, 5), (12,)]
    ps = [torch.randn(s, generator=gen) for s in shapes]
    ps[4].zero_()  # zero weight
    return ps


def grads_for(step, shapes):
    gen = torch.Generator().manual_seed(100 + step)
    gs = [torch.randn(s, generator=gen) * 0.1 for s in shapes]
    gs[3].zero_()  # zero grad
    return gs


def run(make_opt, groups_of, steps=STEPS):
    """Steps an optimizer built by make_opt(param groups) and returns its params and the optimizer."""
    params = [torch.nn.Parameter(p.clone()) for p in make_params()]
    opt = make_opt(groups_of(params))
    for step in range(steps):
        for p, g in zip(params, grads_for(step, [p.shape for p in params])):
            p.grad = g.clone()  # fresh: the originals write into p.grad
        opt.step()
    return params, opt


def two_groups(wd_second=0.0, **second):
    return lambda ps: [dict(params=ps[:2] + ps[3:4]), dict(params=ps[2:3] + ps[4:], weight_decay=wd_second,
                                                            **second)]


def assert_same(mine, theirs, opt_mine, opt_theirs, buffer_key="momentum_buffer"):
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), **TOL)
    for a, b in zip(mine, theirs):
        sa, sb = opt_mine.state.get(a, {}), opt_theirs.state.get(b, {})
        if buffer_key in sb and sb[buffer_key] is not None:
            torch.testing.assert_close(sa[buffer_key], sb[buffer_key], **TOL)


# ---- timm -----------------------------------------------------------------------------

MOMENTUM = {"none": dict(momentum=0.0), "plain": dict(momentum=0.9), "dampened": dict(momentum=0.9, dampening=0.1),
            "nesterov": dict(momentum=0.9, nesterov=True)}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("momentum", MOMENTUM)
@pytest.mark.parametrize("weight_decay,trust_clip,always_adapt",
                         list(itertools.product([0.0, 1e-3], [False, True], [False, True])))
def test_timm_lars_steps_exactly_like_timm(path, momentum, weight_decay, trust_clip, always_adapt):
    from timm.optim import Lars as Timm

    kw = dict(lr=0.5, weight_decay=weight_decay, trust_coeff=0.02, trust_clip=trust_clip, always_adapt=always_adapt,
              **MOMENTUM[momentum])
    groups = two_groups(wd_second=1e-2)
    theirs, opt_theirs = run(lambda g: Timm(g, **kw), groups)
    mine, opt_mine = run(lambda g: compat.TimmLars(g, **kw, **PATHS[path]), groups)
    assert_same(mine, theirs, opt_mine, opt_theirs)


def test_timm_lars_takes_timms_defaults():
    import inspect

    from timm.optim import Lars as Timm

    theirs = {k: v.default for k, v in inspect.signature(Timm).parameters.items() if k != "params"}
    mine = {k: v.default for k, v in inspect.signature(compat.TimmLars).parameters.items()
            if k not in ("params", "fused")}
    assert mine == theirs


# ---- apex LARC --------------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("momentum", ["none", "plain", "dampened", "nesterov"])
@pytest.mark.parametrize("clip", [True, False])
def test_larc_steps_exactly_like_apex_larc_around_sgd(path, momentum, clip):
    groups = two_groups(wd_second=0.0)
    sgd_kw = dict(lr=0.3, weight_decay=5e-4, **MOMENTUM[momentum])
    theirs, opt_theirs = run(lambda g: ApexLARC(torch.optim.SGD(g, **sgd_kw), clip=clip), groups)
    mine, opt_mine = run(lambda g: compat.LARC(torch.optim.SGD(g, **sgd_kw), clip=clip, **PATHS[path]), groups)
    assert_same(mine, theirs, opt_mine, opt_theirs.optim)


def test_larc_takes_an_sgd_optimizer_only():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(TypeError, match="torch.optim.SGD"):
        compat.LARC(torch.optim.Adam([p]))


def test_larc_keeps_the_sgds_momentum_buffers():
    p = torch.nn.Parameter(torch.ones(3))
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(3)
    sgd.step()
    larc = compat.LARC(sgd)
    assert larc.state[p]["momentum_buffer"] is sgd.state[p]["momentum_buffer"]


# ---- the self-supervised LARS -------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("weight_decay_filter,lars_adaptation_filter",
                         list(itertools.product([False, True], [False, True])))
@pytest.mark.parametrize("weight_decay", [0.0, 1.5e-2])
def test_ssl_lars_steps_exactly_like_the_barlow_twins_lars(path, weight_decay_filter, lars_adaptation_filter,
                                                           weight_decay):
    kw = dict(lr=0.2, weight_decay=weight_decay, momentum=0.9, eta=0.02, weight_decay_filter=weight_decay_filter,
              lars_adaptation_filter=lars_adaptation_filter)
    groups = two_groups(wd_second=weight_decay)
    theirs, opt_theirs = run(lambda g: SSLLARS(g, **kw), groups)
    mine, opt_mine = run(lambda g: compat.SSLLars(g, **kw, **PATHS[path]), groups)
    assert_same(mine, theirs, opt_mine, opt_theirs, buffer_key="mu")


# ---- Lightning Bolts' / lightly's LARS and solo-learn's --------------------------------------

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("momentum", MOMENTUM)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_bolts_lars_steps_exactly_like_lightlys_lars(path, momentum, weight_decay):
    kw = dict(lr=0.5, weight_decay=weight_decay, trust_coefficient=0.02, eps=1e-8, **MOMENTUM[momentum])
    groups = two_groups(wd_second=1e-2)
    theirs, opt_theirs = run(lambda g: BoltsLARS(g, **kw), groups)
    mine, opt_mine = run(lambda g: compat.BoltsLars(g, **kw, **PATHS[path]), groups)
    assert_same(mine, theirs, opt_mine, opt_theirs)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("momentum", MOMENTUM)
@pytest.mark.parametrize("clip_lars_lr,exclude_bias_n_norm_lars", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_solo_lars_steps_exactly_like_solo_learns_lars(path, momentum, clip_lars_lr, exclude_bias_n_norm_lars,
                                                        weight_decay):
    kw = dict(lr=0.5, weight_decay=weight_decay, eta=0.02, clip_lars_lr=clip_lars_lr,
              exclude_bias_n_norm_lars=exclude_bias_n_norm_lars, **MOMENTUM[momentum])
    groups = two_groups(wd_second=1e-2)
    theirs, opt_theirs = run(lambda g: SoloLARS(g, **kw), groups)
    mine, opt_mine = run(lambda g: compat.SoloLars(g, **kw, **PATHS[path]), groups)
    assert_same(mine, theirs, opt_mine, opt_theirs)


def test_bolts_and_solo_lars_take_their_originals_defaults():
    import inspect

    def defaults(fn):
        return {k: v.default for k, v in inspect.signature(fn).parameters.items()
                if k not in ("params", "foreach", "fused", "self")}

    assert defaults(compat.BoltsLars) == defaults(BoltsLARS.__init__)
    assert defaults(compat.SoloLars) == defaults(SoloLARS.__init__)


def test_solo_lars_refuses_a_switch_that_is_not_a_bool():
    with pytest.raises(TypeError, match=r"^clip_lars_lr must be a bool, got 1$"):
        compat.SoloLars([torch.nn.Parameter(torch.ones(3))], lr=0.1, clip_lars_lr=1)


# ---- what every flavour keeps from the seed --------------------------------------------------

FLAVOURS = {
    "timm": lambda ps, **kw: compat.TimmLars(ps, lr=0.5, momentum=0.9, weight_decay=1e-3, trust_clip=True, **kw),
    "larc": lambda ps, **kw: compat.LARC(torch.optim.SGD(ps, lr=0.5, momentum=0.9, dampening=0.1,
                                                         weight_decay=1e-3), **kw),
    "ssl": lambda ps, **kw: compat.SSLLars(ps, lr=0.5, weight_decay=1e-3, **kw),
    "bolts": lambda ps, **kw: compat.BoltsLars(ps, lr=0.5, momentum=0.9, dampening=0.1, weight_decay=1e-3, **kw),
    "solo": lambda ps, **kw: compat.SoloLars(ps, lr=0.5, momentum=0.9, weight_decay=1e-3, clip_lars_lr=True,
                                             exclude_bias_n_norm_lars=True, **kw),
}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_path_of_a_flavour_agrees(flavour):
    results = {}
    for path, kw in PATHS.items():
        results[path], _ = run(lambda g: FLAVOURS[flavour](g, **kw), lambda ps: ps)
    for path in ("foreach", "reference"):
        for a, b in zip(results["fused"], results[path]):
            torch.testing.assert_close(a.detach(), b.detach(), **TOL)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_flavour_takes_grad_scale_and_found_inf_on_the_fused_path(flavour):
    plain, _ = run(lambda g: FLAVOURS[flavour](g, fused=True), lambda ps: ps, steps=1)
    params = [torch.nn.Parameter(p.clone()) for p in make_params()]
    opt = FLAVOURS[flavour](params, fused=True)
    assert opt._step_supports_amp_scaling
    for p, g in zip(params, grads_for(0, [p.shape for p in params])):
        p.grad = g * 64.0
    opt.grad_scale, opt.found_inf = torch.tensor(64.0), torch.tensor(0.0)
    opt.step()
    for a, b in zip(params, plain):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-7)
    opt.found_inf = torch.tensor(1.0)
    before = [p.detach().clone() for p in params]
    opt.step()  # an inf: nothing moves
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, params))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_flavours_state_dict_round_trips_with_its_originals_options(flavour):
    _, opt = run(lambda g: FLAVOURS[flavour](g, fused=True), lambda ps: ps, steps=1)
    state = opt.state_dict()
    params = [torch.nn.Parameter(p.clone()) for p in make_params()]
    again = FLAVOURS[flavour](params, fused=True)
    again.load_state_dict(state)
    assert again.state_dict()["param_groups"] == state["param_groups"]
    assert set(state["param_groups"][0]) - {"params"} == set(type(opt)._OPTIONS)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_flavours_half_precision_fused_step_is_its_float32_step_rounded(flavour, dtype):
    ref, _ = run(lambda g: FLAVOURS[flavour](g, fused=True), lambda ps: ps, steps=1)
    params = [torch.nn.Parameter(p.clone().to(dtype)) for p in make_params()]
    opt = FLAVOURS[flavour](params, fused=True)
    for p, g in zip(params, grads_for(0, [p.shape for p in params])):
        p.grad = g.to(dtype)
    opt.step()
    for a, b in zip(params, ref):
        torch.testing.assert_close(a.detach().float(), b.detach(), rtol=2e-2, atol=2e-2)


def test_dampening_out_of_range_and_nesterov_with_dampening_are_refused():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="dampening"):
        compat.TimmLars([p], momentum=0.9, dampening=1.5)
    with pytest.raises(ValueError, match="zero dampening"):
        compat.TimmLars([p], momentum=0.9, dampening=0.1, nesterov=True)


@pytest.mark.parametrize("flavour", ["timm", "ssl"])
def test_a_flavours_fused_step_compiles_without_graph_breaks(flavour):
    make = {"timm": lambda ps: compat.TimmLars(ps, lr=torch.tensor(0.5), momentum=0.9, dampening=0.1,
                                                weight_decay=1e-3, trust_clip=True, fused=True),
            "ssl": lambda ps: compat.SSLLars(ps, lr=torch.tensor(0.5), weight_decay=1e-3, fused=True)}[flavour]
    assert_compiled_step_matches_eager(make)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_flavour_follows_an_lr_scheduler_as_its_original_would(flavour):
    """StepLR halves the lr: the flavour then steps as when built with the halved lr."""
    from torch.optim.lr_scheduler import StepLR

    params = [torch.nn.Parameter(p.clone()) for p in make_params()]
    opt = FLAVOURS[flavour](params, fused=True)
    StepLR(opt, step_size=1, gamma=0.5).step()  # lr 0.5 -> 0.25 before the first step
    for p, g in zip(params, grads_for(0, [p.shape for p in params])):
        p.grad = g
    opt.step()

    def halved(ps, **kw):
        o = FLAVOURS[flavour](ps, **kw)
        for group in o.param_groups:
            group["lr"] = 0.25
        return o

    want, _ = run(lambda g: halved(g, fused=True), lambda ps: ps, steps=1)
    for a, b in zip(params, want):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0)


def test_larc_and_ssl_lars_take_their_originals_defaults():
    import inspect

    def defaults(fn, skip):
        return {k: v.default for k, v in inspect.signature(fn).parameters.items() if k not in skip}

    assert defaults(compat.LARC, ("optimizer", "foreach", "fused")) == \
        defaults(ApexLARC, ("optimizer",)) == dict(trust_coefficient=0.02, clip=True, eps=1e-8)
    # The Barlow Twins/VICReg defaults, with both filters on (the MoCo v3 default)
    assert defaults(compat.SSLLars, ("params", "foreach", "fused")) == dict(
        lr=inspect.Parameter.empty, weight_decay=0, momentum=0.9, eta=0.001, weight_decay_filter=True,
        lars_adaptation_filter=True)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("path", PATHS)
def test_a_flavour_passes_the_path_switches_to_its_groups(flavour, path):
    params = [torch.nn.Parameter(p.clone()) for p in make_params()]
    opt = FLAVOURS[flavour](params, **PATHS[path])
    for key, value in PATHS[path].items():
        assert all(g[key] is value for g in opt.param_groups), key


@pytest.mark.parametrize("path", PATHS)
def test_larc_keeps_the_sgds_maximize_as_torch_defines_it(path):
    """maximize replaces g by -g before anything else (torch.optim's meaning), so the
    weight decay keeps its sign. (apex's LARC folds the decay into p.grad before
    SGD negates it, which flips the decay too; we do not copy that.)"""
    sgd_kw = dict(lr=0.3, momentum=0.9, weight_decay=5e-4)
    maximizing, _ = run(lambda g: compat.LARC(torch.optim.SGD(g, maximize=True, **sgd_kw), **PATHS[path]),
                        two_groups(wd_second=0.0))
    params = [torch.nn.Parameter(p.clone()) for p in make_params()]
    opt = compat.LARC(torch.optim.SGD(two_groups(wd_second=0.0)(params), **sgd_kw), **PATHS[path])
    for step in range(STEPS):
        for p, g in zip(params, grads_for(step, [p.shape for p in params])):
            p.grad = -g
        opt.step()
    for a, b in zip(maximizing, params):
        torch.testing.assert_close(a.detach(), b.detach(), **TOL)


def test_each_flavour_built_with_its_defaults_holds_its_originals_options():
    ps = lambda: [torch.nn.Parameter(torch.ones(3))]  # noqa: E731
    from timm.optim import Lars as Timm

    assert {k: v for k, v in compat.TimmLars(ps()).param_groups[0].items() if k not in ("params", "fused")} == \
        {k: v for k, v in Timm(ps()).param_groups[0].items() if k != "params"}
    sgd = torch.optim.SGD(ps(), lr=0.2)
    assert {k: v for k, v in compat.LARC(torch.optim.SGD(ps(), lr=0.2)).param_groups[0].items() if k != "params"} \
        == {k: v for k, v in sgd.param_groups[0].items() if k != "params"}
    assert {k: v for k, v in compat.SSLLars(ps(), lr=0.1).param_groups[0].items()
            if k not in ("params", "foreach", "fused")} == \
        {k: v for k, v in SSLLARS(ps(), lr=0.1, weight_decay_filter=True, lars_adaptation_filter=True)
         .param_groups[0].items() if k != "params"}


def test_each_flavour_steps_with_the_kernel_options_of_its_original():
    """What the step reads: the seed's clips off in every flavour, each original's switches on."""
    ps = lambda: [torch.nn.Parameter(torch.ones(3))]  # noqa: E731
    seed_clips = dict(trust_clip=None, update_clip=None)
    timm = compat.TimmLars(ps())._kernel_groups()[0]
    assert {k: timm[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "eeta", "epsilon",
                                 "larc_clip", "always_adapt", "ratio_on_grad", "trust_clip", "update_clip")} == dict(
        lr=1.0, momentum=0, dampening=0, weight_decay=0, nesterov=False, eeta=0.001, epsilon=1e-8, larc_clip=False,
        always_adapt=False, ratio_on_grad=True, **seed_clips)
    larc = compat.LARC(torch.optim.SGD(ps(), lr=0.2))._kernel_groups()[0]
    assert {k: larc[k] for k in ("lr", "eeta", "epsilon", "larc_clip", "zero_norm_skip", "maximize", "ratio_on_grad",
                                 "trust_clip", "update_clip")} == dict(
        lr=0.2, eeta=0.02, epsilon=1e-8, larc_clip=True, zero_norm_skip=True, maximize=False, ratio_on_grad=True,
        **seed_clips)
    ssl = compat.SSLLars(ps(), lr=0.1)._kernel_groups()[0]
    assert {k: ssl[k] for k in ("weight_decay", "momentum", "eeta", "epsilon", "decay", "decay_filter",
                                "adaptation_filter", "norm_of_update", "ratio_on_grad", "trust_clip",
                                "update_clip")} == dict(
        weight_decay=0, momentum=0.9, eeta=0.001, epsilon=0.0, decay=True, decay_filter=True,
        adaptation_filter=True, norm_of_update=True, ratio_on_grad=True, **seed_clips)


def test_larc_names_what_it_was_given_instead_of_an_sgd():
    with pytest.raises(TypeError, match="got Adam"):
        compat.LARC(torch.optim.Adam([torch.nn.Parameter(torch.ones(3))]))


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("path", PATHS)
def test_a_flavour_steps_on_the_path_its_groups_ask_for(flavour, path):
    from unittest import mock

    from lars_cuda import functional

    spies = {"reference": mock.patch.object(functional, "single_tensor_lars", wraps=functional.single_tensor_lars),
             "foreach": mock.patch.object(functional, "multi_tensor_lars", wraps=functional.multi_tensor_lars),
             "fused": mock.patch.object(functional.ops, "fused_lars_groups_",
                                        wraps=functional.ops.fused_lars_groups_)}
    params = [torch.nn.Parameter(p.clone()) for p in make_params()]
    opt = FLAVOURS[flavour](params, **PATHS[path])
    for p, g in zip(params, grads_for(0, [p.shape for p in params])):
        p.grad = g
    with spies["reference"] as single, spies["foreach"] as multi, spies["fused"] as fused:
        opt.step()
    assert {"reference": single.called, "foreach": multi.called, "fused": fused.called} == \
        {name: name == path for name in PATHS}
    for key, value in PATHS[path].items():
        assert all(g[key] is value for g in opt._kernel_groups()), key


def test_larc_refuses_a_differentiable_sgd():
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.1, differentiable=True)
    with pytest.raises(ValueError, match=r"^LARC: the SGD's differentiable=True is not supported$"):
        compat.LARC(sgd)


def test_larc_gives_a_group_added_later_the_sgds_defaults():
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.3, momentum=0.8, dampening=0.1,
                          weight_decay=1e-4, nesterov=False)
    opt = compat.LARC(sgd, fused=False)
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))]})
    added = {k: v for k, v in opt.param_groups[1].items() if k != "params"}
    assert added == {**{k: v for k, v in sgd.defaults.items()}, "fused": False}


def test_larc_steps_a_state_dict_without_maximize_as_not_maximizing():
    # torch < 1.12 saved SGD groups without "maximize"; torch's SGD reads that as False
    def trained(drop_maximize):
        params = [torch.nn.Parameter(p.clone()) for p in make_params()]
        opt = compat.LARC(torch.optim.SGD(params, lr=0.3, momentum=0.9, weight_decay=1e-3))
        state = opt.state_dict()
        if drop_maximize:
            for g in state["param_groups"]:
                del g["maximize"]
        opt.load_state_dict(state)
        for p, g in zip(params, grads_for(0, [p.shape for p in params])):
            p.grad = g
        opt.step()
        return params
    for a, b in zip(trained(True), trained(False)):
        assert torch.equal(a, b)


def _ssl_filters(**filters):
    params = [torch.nn.Parameter(p.clone()) for p in make_params()]
    opt = compat.SSLLars(params, lr=0.5, weight_decay=1e-3, **filters)
    for p, g in zip(params, grads_for(0, [p.shape for p in params])):
        p.grad = g
    opt.step()
    return [p.detach() for p in params]


def exclude_bias_and_norm(p):  # VICReg's filter function, by name
    return p.ndim == 1


@pytest.mark.parametrize("which", ["weight_decay_filter", "lars_adaptation_filter"])
def test_ssl_lars_takes_vicregs_filter_function_as_true(which):
    other = "lars_adaptation_filter" if which == "weight_decay_filter" else "weight_decay_filter"
    with_function = _ssl_filters(**{which: exclude_bias_and_norm, other: False})
    with_true = _ssl_filters(**{which: True, other: False})
    with_false = _ssl_filters(**{which: False, other: False})
    assert all(torch.equal(a, b) for a, b in zip(with_function, with_true))
    assert not all(torch.equal(a, b) for a, b in zip(with_function, with_false))


@pytest.mark.parametrize("which", ["weight_decay_filter", "lars_adaptation_filter"])
def test_ssl_lars_takes_none_as_no_filter(which):
    assert all(torch.equal(a, b) for a, b in zip(_ssl_filters(**{which: None}), _ssl_filters(**{which: False})))


@pytest.mark.parametrize("value", [lambda p: p.ndim == 1, functools.partial(exclude_bias_and_norm), "yes", 1])
@pytest.mark.parametrize("which", ["weight_decay_filter", "lars_adaptation_filter"])
def test_ssl_lars_refuses_a_filter_it_cannot_read_naming_it(which, value):
    with pytest.raises(TypeError) as info:
        compat.SSLLars([torch.nn.Parameter(torch.ones(3))], lr=0.1, **{which: value})
    assert str(info.value) == f"{which} must be a bool (or the SSL repos' exclude_bias_and_norm), got {value!r}"


@pytest.mark.parametrize("path", PATHS)
def test_timm_lars_clips_a_zero_norm_ratio_by_an_lr_above_one_as_timm(path):
    # timm: r = 1 where a norm is 0, then min(r / lr, 1): 0.5 at lr 2 (make_params holds a zero weight and grad)
    from timm.optim import Lars as Timm

    kw = dict(lr=2.0, weight_decay=1e-3, trust_coeff=0.02, trust_clip=True, always_adapt=True, momentum=0.9)
    theirs, opt_theirs = run(lambda g: Timm(g, **kw), two_groups(wd_second=1e-2))
    mine, opt_mine = run(lambda g: compat.TimmLars(g, **kw, **PATHS[path]), two_groups(wd_second=1e-2))
    assert_same(mine, theirs, opt_mine, opt_theirs)


@pytest.mark.parametrize("path", PATHS)
def test_larc_leaves_a_zero_norm_tensor_unscaled_at_an_lr_above_one_as_apex(path):
    # apex LARC: no adaptive lr at all where a norm is 0, even where min(1 / lr, 1) would be 0.5
    sgd_kw = dict(lr=2.0, weight_decay=5e-4, momentum=0.9)
    theirs, opt_theirs = run(lambda g: ApexLARC(torch.optim.SGD(g, **sgd_kw), clip=True), two_groups())
    mine, opt_mine = run(lambda g: compat.LARC(torch.optim.SGD(g, **sgd_kw), clip=True, **PATHS[path]), two_groups())
    assert_same(mine, theirs, opt_mine, opt_theirs.optim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_ssl_fused_step_keeps_its_ratio_where_g_nearly_cancels_weight_decay(dtype):
    """The fused kernel forms ||g + wd p||^2 = ||g||^2 + 2 wd <g, p> + wd^2 ||p||^2 from its
    sums, in double: here g = -(255/256) p, so ||g + p|| = sqrt(3)/256 is 0.4 % of ||g||
    and a float ||g|| squared would move the ratio by 0.4 % (docs/semantics.md)."""
    from lars_cuda import functional

    p = torch.ones(3, dtype=dtype)
    g = torch.full((3,), -255 / 256, dtype=dtype)
    functional.lars([p], [g], [None], lr=1.0, momentum=0.0, weight_decay=1.0, eeta=0.5, epsilon=0.0, lars=True,
                    nesterov=False, trust_clip=None, update_clip=None, norm_of_update=True, fused=True)
    # r = 0.5 * sqrt(3) / (sqrt(3) / 256) = 128; p = 1 - 128 * (1/256) = 0.5
    assert abs(p.double() - 0.5).max().item() < 1e-6
