"""Drop-in both ways, in the middle of a run: an original (timm's Lars, torch SGD
under apex's LARC, the Barlow Twins LARS) trains K steps, its ``state_dict()``
loads into the lars_cuda.compat class, which trains N more steps, and the result
is what the original's N more steps give; and the other way round. Every path.
Also: timm's factory builds ours by name, and a state dict of another flavour is
refused naming the key."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from lars_cuda import Lars, compat

from ..support.paths import BENCHMARKS

sys.path.insert(0, BENCHMARKS)
from originals import SSLLARS, ApexLARC, BoltsLARS, SoloLARS  # noqa: E402

from .test_compat import PATHS, TOL, grads_for, make_params, two_groups  # noqa: E402

K, N = 2, 3


class _ApexWithState:
    """apex's LARC as a user holds it: its state_dict()/load_state_dict() are the SGD's."""

    def __init__(self, groups, **kw):
        self.sgd = torch.optim.SGD(groups, lr=0.4, momentum=0.9, dampening=0.1, weight_decay=1e-3)
        self.larc = ApexLARC(self.sgd, **kw)

    def step(self):
        self.larc.step()

    def state_dict(self):
        return self.sgd.state_dict()

    def load_state_dict(self, state):
        self.sgd.load_state_dict(state)

    @property
    def state(self):
        return self.sgd.state


def _timm(groups, original=False, **path):
    from timm.optim import Lars as TimmOriginal

    kw = dict(lr=0.5, momentum=0.9, dampening=0.1, weight_decay=1e-3, trust_coeff=0.01, trust_clip=True)
    return TimmOriginal(groups, **kw) if original else compat.TimmLars(groups, **kw, **path)


_BOLTS = dict(lr=0.4, momentum=0.9, dampening=0.1, weight_decay=1e-3, trust_coefficient=0.02)
_SOLO = dict(lr=0.4, momentum=0.9, nesterov=True, weight_decay=1e-3, eta=0.02, clip_lars_lr=True,
             exclude_bias_n_norm_lars=True)

ORIGINALS = {
    # name: (the original, the compat class; each takes (groups) and the compat one our path switches)
    "timm": (lambda g: _timm(g, original=True),
             lambda g, **path: _timm(g, **path)),
    "larc": (lambda g: _ApexWithState(g, trust_coefficient=0.02, clip=True),
             lambda g, **path: compat.LARC(torch.optim.SGD(g, lr=0.4, momentum=0.9, dampening=0.1,
                                                           weight_decay=1e-3), trust_coefficient=0.02, clip=True,
                                           **path)),
    "ssl": (lambda g: SSLLARS(g, lr=0.3, weight_decay=1e-3, momentum=0.9, eta=0.02, weight_decay_filter=True,
                              lars_adaptation_filter=True),
            lambda g, **path: compat.SSLLars(g, lr=0.3, weight_decay=1e-3, momentum=0.9, eta=0.02, **path)),
    "bolts": (lambda g: BoltsLARS(g, **_BOLTS),
              lambda g, **path: compat.BoltsLars(g, **_BOLTS, **path)),
    "solo": (lambda g: SoloLARS(g, **_SOLO),
             lambda g, **path: compat.SoloLars(g, **_SOLO, **path)),
}
BUFFER = {"timm": "momentum_buffer", "larc": "momentum_buffer", "ssl": "mu", "bolts": "momentum_buffer",
          "solo": "momentum_buffer"}


def _train(opt, params, steps, first):
    for step in range(first, first + steps):
        for p, g in zip(params, grads_for(step, [p.shape for p in params])):
            p.grad = g.clone()  # fresh: the originals write into p.grad
        opt.step()


def _fresh():
    return [torch.nn.Parameter(p.clone()) for p in make_params()]


def _switch(make_first, make_second, name):
    """First trains K steps; its state_dict (deep-copied, as a file would) loads into second
    over copies of the params; second trains N more. Returns second's params and state."""
    params = _fresh()
    first = make_first(two_groups(wd_second=1e-3)(params))
    _train(first, params, K, 0)
    saved = copy.deepcopy(first.state_dict())
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    second = make_second(two_groups(wd_second=1e-3)(resumed))
    second.load_state_dict(saved)
    _train(second, resumed, N, K)
    return resumed, second


def _uninterrupted(make, name):
    params = _fresh()
    opt = make(two_groups(wd_second=1e-3)(params))
    _train(opt, params, K + N, 0)
    return params, opt


def _assert_same(got, want, opt_got, opt_want, key):
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b.detach(), **TOL)
    for a, b in zip(got, want):
        sa, sb = opt_got.state.get(a, {}), opt_want.state.get(b, {})
        if sb.get(key) is not None:
            torch.testing.assert_close(sa[key], sb[key], **TOL)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ORIGINALS)
def test_switching_from_the_original_mid_run_continues_as_the_original_would(name, path):
    original, ours = ORIGINALS[name]
    want, opt_want = _uninterrupted(original, name)
    got, opt_got = _switch(original, lambda g: ours(g, **PATHS[path]), name)
    _assert_same(got, want, opt_got, opt_want, BUFFER[name])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ORIGINALS)
def test_switching_back_to_the_original_mid_run_continues_as_the_original_would(name, path):
    original, ours = ORIGINALS[name]
    want, opt_want = _uninterrupted(original, name)
    got, opt_got = _switch(lambda g: ours(g, **PATHS[path]), original, name)
    _assert_same(got, want, opt_got, opt_want, BUFFER[name])


def test_a_scheduler_changing_an_originals_option_between_steps_is_followed():
    """group["trust_coeff"] (timm) / group["eta"] (SSL) changed between steps: as the original."""
    for name, key, value in (("timm", "trust_coeff", 0.05), ("ssl", "eta", 0.1)):
        original, ours = ORIGINALS[name]
        results = []
        for make in (original, lambda g: ours(g, fused=True)):
            params = _fresh()
            opt = make(two_groups(wd_second=1e-3)(params))
            _train(opt, params, 1, 0)
            for group in opt.param_groups:
                group[key] = value
            _train(opt, params, 2, 1)
            results.append(params)
        for a, b in zip(*results):
            torch.testing.assert_close(a.detach(), b.detach(), **TOL)


@pytest.mark.parametrize("target, source, key", [
    (lambda ps: Lars(ps, lr=0.1), "timm", "trust_coeff"),
    (lambda ps: compat.TimmLars(ps), "seed", "eeta"),
    (lambda ps: compat.SSLLars(ps, lr=0.1), "timm", "trust_coeff"),
    (lambda ps: compat.TimmLars(ps), "ssl", "eta"),
    (lambda ps: compat.LARC(torch.optim.SGD(ps, lr=0.1)), "seed", "eeta"),
])
def test_a_state_dict_of_another_flavour_is_refused_naming_the_key(target, source, key):
    params = _fresh()
    saved = {"timm": lambda: ORIGINALS["timm"][0](params), "seed": lambda: Lars(params, lr=0.1),
             "ssl": lambda: ORIGINALS["ssl"][0](params)}[source]().state_dict()
    opt = target(_fresh())
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=rf"param group 0 holds '{key}'"):
        opt.load_state_dict(saved)
    assert opt.state_dict() == before


def test_momentum_kept_under_another_key_is_refused_not_dropped():
    """A Barlow Twins state ('mu') into TimmLars would start from zero momentum: refused."""
    params = _fresh()
    ssl = ORIGINALS["ssl"][0](params)
    _train(ssl, params, 1, 0)
    saved = ssl.state_dict()
    saved["param_groups"] = [{k: v for k, v in g.items() if k in ("params", "lr", "momentum", "weight_decay")}
                             for g in saved["param_groups"]]
    with pytest.raises(ValueError, match=r"holds 'mu' but TimmLars keeps its momentum under 'momentum_buffer'"):
        compat.TimmLars(_fresh(), momentum=0.9).load_state_dict(saved)


def test_a_seed_lars_checkpoint_keeps_loading_into_lars():
    params = _fresh()
    opt = Lars(params, lr=0.1, momentum=0.9)
    _train(opt, params, 1, 0)
    again = Lars(_fresh(), lr=0.1, momentum=0.9)
    again.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert again.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


# ---- timm's factory -------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("ours, theirs", [("fusedlars", "lars"), ("fusedlarc", "larc"), ("fusednlars", "nlars"),
                                          ("fusednlarc", "nlarc")])
def test_timms_factory_builds_ours_by_name_and_it_steps_as_timms(ours, theirs, path):
    from timm.optim import create_optimizer_v2

    assert "fusedlars" in compat.register_timm()
    results = []
    for name in (theirs, ours):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                    torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4))
        kw = dict(PATHS[path]) if name == ours else {}
        opt = create_optimizer_v2(model, opt=name, lr=0.5, weight_decay=1e-3, momentum=0.9, **kw)
        assert isinstance(opt, compat.TimmLars) == (name == ours)
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
        groups = [{k: v for k, v in g.items() if k not in ("params", "fused", "foreach")} for g in opt.param_groups]
        results.append(groups)
    assert results[1] == results[3]  # the same param groups: no decay for biases and norms
    for a, b in zip(results[0], results[2]):
        torch.testing.assert_close(a, b, **TOL)


# ---- the refusal's words ------------------------------------------------------------------


def test_the_refusal_names_the_class_the_key_its_owner_and_every_foreign_key():
    params = _fresh()
    saved = ORIGINALS["timm"][0](params).state_dict()
    with pytest.raises(ValueError) as info:
        Lars(_fresh(), lr=0.1).load_state_dict(saved)
    assert str(info.value) == (
        "Lars.load_state_dict: param group 0 holds 'trust_coeff', an option Lars does not have: this state dict was "
        "saved by timm.optim.Lars (lars_cuda.compat.TimmLars) (keys ['eps', 'trust_coeff']); load it into that "
        "class, or see the README's 'Switching from ...' for the class that reads it")


def test_foreign_keys_no_flavour_owns_are_named_as_another_flavours():
    # an SGD's state dict into SSLLars: dampening, maximize and nesterov are nobody's own key
    saved = torch.optim.SGD(_fresh(), lr=0.1).state_dict()
    with pytest.raises(ValueError) as info:
        compat.SSLLars(_fresh(), lr=0.1).load_state_dict(saved)
    assert str(info.value).startswith(
        "SSLLars.load_state_dict: param group 0 holds 'dampening', an option SSLLars does not have: this state "
        "dict was saved by another LARS flavour (keys ['dampening', 'maximize', 'nesterov'])")


def test_the_momentum_refusal_names_both_keys_and_the_saver():
    saved = {"state": {0: {"mu": torch.zeros(3)}}, "param_groups": []}
    with pytest.raises(ValueError) as info:
        compat.TimmLars(_fresh(), momentum=0.9).load_state_dict(saved)
    assert str(info.value) == (
        "TimmLars.load_state_dict: the state of param 0 holds 'mu' but TimmLars keeps its momentum under "
        "'momentum_buffer': this state dict was saved by the self-supervised LARS (lars_cuda.compat.SSLLars); "
        "loading it here would start from zero momentum")


@pytest.mark.parametrize("state_dict", [{}, {"state": {}}, {"param_groups": []}])
def test_the_schema_check_reads_a_state_dict_missing_either_part(state_dict):
    from lars_cuda.options import LARS_OPTIONS
    from lars_cuda.validation import check_state_dict_schema

    assert check_state_dict_schema("Lars", LARS_OPTIONS, "momentum_buffer", state_dict) is None


def test_timms_registry_holds_ours_with_timms_descriptions():
    from timm.optim._optim_factory import default_registry

    compat.register_timm()
    for name, (description, defaults) in compat.TIMM_NAMES.items():
        info = default_registry.get_optimizer_info(name)
        assert (info.opt_class, info.description, info.has_momentum) == (compat.TimmLars, description, True)
        assert info.defaults == (defaults or None)
